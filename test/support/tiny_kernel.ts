/**
 * Tiny guest kernels for KVM tests: a real bzImage header (so the real loader
 * parses it) around a few bytes of 64-bit code at the 64-bit entry point.
 * The code runs in ring 0, which PVM emulates one instruction at a time, so
 * these guests stay a few dozen instructions long.
 */

/** Header fields of a minimal bzImage, each commented with its boot.rst name. */
/**
 * With `payload`, the image carries it as its compressed kernel, after the
 * code (payload_offset, payload_length: what loop/kernel_cache.ts unpacks);
 * the code itself stands for the decompressor.
 */
export function makeBzImage(
  code64: Uint8Array,
  o: { version?: number; xloadflags?: number; setupSects?: number; payload?: Uint8Array } = {},
): Uint8Array {
  const setupSects = o.setupSects ?? 1;
  const kernelOffset = (setupSects + 1) * 512;
  const payload = o.payload ?? new Uint8Array(0);
  // The 64-bit entry is 0x200 bytes into the protected-mode kernel.
  const img = new Uint8Array(kernelOffset + 0x200 + code64.length + payload.length);
  const v = new DataView(img.buffer);
  v.setUint8(0x1f1, setupSects); // setup_sects
  v.setUint16(0x1fe, 0xaa55, true); // boot_flag
  v.setUint8(0x201, 0x62); // jump: header ends at 0x202 + 0x62 = 0x264
  v.setUint32(0x202, 0x53726448, true); // header "HdrS"
  v.setUint16(0x206, o.version ?? 0x20f, true); // version
  v.setUint8(0x211, 0x01); // loadflags: LOADED_HIGH
  v.setUint32(0x22c, 0x7fffffff, true); // initrd_addr_max
  v.setUint16(0x236, o.xloadflags ?? 0x1, true); // xloadflags: XLF_KERNEL_64
  v.setUint32(0x238, 2047, true); // cmdline_size
  v.setUint32(0x260, 0x10000, true); // init_size
  img.set(code64, kernelOffset + 0x200);
  if (payload.length) {
    v.setUint32(0x248, 0x200 + code64.length, true); // payload_offset, from the protected-mode kernel
    v.setUint32(0x24c, payload.length, true); // payload_length
    img.set(payload, kernelOffset + 0x200 + code64.length);
  }
  return img;
}

/** A little x86-64 assembler for the few instructions tiny guests use. */
export const asm = {
  /** mov dx, port; mov al, value; out dx, al */
  outb(port: number, value: number): number[] {
    return [0x66, 0xba, port & 0xff, port >> 8, 0xb0, value & 0xff, 0xee];
  },
  /** Write `text` to the UART at 0x3f8 one byte at a time. */
  print(text: string): number[] {
    return [...new TextEncoder().encode(text)].flatMap((b) => asm.outb(0x3f8, b));
  },
  /** mov dx, port; in al, dx */
  inb(port: number): number[] {
    return [0x66, 0xba, port & 0xff, port >> 8, 0xec];
  },
  /** mov eax, [addr32]: an MMIO read when addr is in the device hole. */
  loadAbs32(addr: number): number[] {
    return [0x67, 0x8b, 0x04, 0x25, addr & 0xff, (addr >> 8) & 0xff, (addr >> 16) & 0xff, (addr >>> 24) & 0xff];
  },
  /** mov dword [addr32], imm32 */
  storeAbs32(addr: number, value: number): number[] {
    return [0x67, 0xc7, 0x04, 0x25, addr & 0xff, (addr >> 8) & 0xff, (addr >> 16) & 0xff, (addr >>> 24) & 0xff,
      value & 0xff, (value >> 8) & 0xff, (value >> 16) & 0xff, (value >>> 24) & 0xff];
  },
  /** A jump to itself: spin forever. */
  spin: [0xeb, 0xfe],
  /** hlt; jmp back to hlt: sleep forever (interrupts are off). */
  halt: [0xf4, 0xeb, 0xfd],
};

/** A kernel that prints `text`, then writes `code` to vmm's exit port 0xf4. */
export function printAndExit(text: string, code: number): Uint8Array {
  return makeBzImage(new Uint8Array([...asm.print(text), ...asm.outb(0xf4, code), ...asm.halt]));
}

/**
 * A minimal x86-64 `vmlinux` (boot/vmlinux.ts): an ELF executable whose first
 * PT_LOAD segment holds `code64` at `paddr`, the entry point, and a second
 * one of `bssBytes` of zeros after it (memsz past filesz, as .bss is), with
 * 0xcc filler in the file where the zeros would be, so a loader that copied
 * instead of clearing is caught.
 */
export function makeVmlinux(code64: Uint8Array, o: { paddr?: number; bssBytes?: number } = {}): Uint8Array {
  const paddr = o.paddr ?? 0x100_0000, bss = o.bssBytes ?? 0x1000;
  const text = 0x1000, data = text + 0x1000; // file offsets, page-aligned
  const img = new Uint8Array(data + 0x10 + bss).fill(0xcc);
  img.fill(0, 0, text);
  const v = new DataView(img.buffer);
  v.setUint32(0, 0x7f454c46, false); // \x7fELF
  v.setUint8(4, 2); // ELFCLASS64
  v.setUint8(5, 1); // ELFDATA2LSB
  v.setUint8(6, 1); // EV_CURRENT
  v.setUint16(16, 2, true); // e_type ET_EXEC
  v.setUint16(18, 62, true); // e_machine EM_X86_64
  v.setUint32(20, 1, true); // e_version
  v.setBigUint64(24, BigInt(paddr), true); // e_entry: startup_64's physical address
  v.setBigUint64(32, 64n, true); // e_phoff
  v.setUint16(52, 64, true); // e_ehsize
  v.setUint16(54, 56, true); // e_phentsize
  v.setUint16(56, 2, true); // e_phnum
  const phdr = (i: number, offset: number, addr: number, filesz: number, memsz: number) => {
    const p = 64 + i * 56;
    v.setUint32(p, 1, true); // PT_LOAD
    v.setUint32(p + 4, 7, true); // RWX
    v.setBigUint64(p + 8, BigInt(offset), true);
    v.setBigUint64(p + 16, 0xffff_ffff_8000_0000n + BigInt(addr), true); // p_vaddr: the kernel's mapping
    v.setBigUint64(p + 24, BigInt(addr), true); // p_paddr
    v.setBigUint64(p + 32, BigInt(filesz), true);
    v.setBigUint64(p + 40, BigInt(memsz), true);
    v.setBigUint64(p + 48, 0x1000n, true);
  };
  img.fill(0, text, data);
  img.set(code64, text);
  phdr(0, text, paddr, 0x1000, 0x1000);
  phdr(1, data, paddr + 0x1000, 0x10, 0x10 + bss);
  return img;
}
