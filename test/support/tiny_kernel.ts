/**
 * Tiny guest kernels for KVM tests: a real bzImage header (so the real loader
 * parses it) around a few bytes of 64-bit code at the 64-bit entry point.
 * The code runs in ring 0, which PVM emulates one instruction at a time, so
 * these guests stay a few dozen instructions long.
 */

/** Header fields of a minimal bzImage, each commented with its boot.rst name. */
export function makeBzImage(code64: Uint8Array, o: { version?: number; xloadflags?: number; setupSects?: number } = {}): Uint8Array {
  const setupSects = o.setupSects ?? 1;
  const kernelOffset = (setupSects + 1) * 512;
  // The 64-bit entry is 0x200 bytes into the protected-mode kernel.
  const img = new Uint8Array(kernelOffset + 0x200 + code64.length);
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
