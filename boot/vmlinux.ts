/**
 * An uncompressed ELF kernel (`vmlinux`), booted the way Firecracker boots
 * one on x86: each PT_LOAD segment copied to its physical address, then the
 * 64-bit entry (`startup_64` in arch/x86/kernel/head_64.S, which the ELF
 * header's e_entry names by its physical address) entered in long mode with
 * RSI at boot_params, as for a bzImage.
 *
 * Why bother, when a bzImage boots: a bzImage's first act is to decompress
 * the real kernel, some 45 MB, with the CPU alone. On hardware that is tens
 * of milliseconds; in a nested host, where every guest instruction is
 * emulated one level down, it was over two seconds of each cold boot. vmm
 * copies the segments in with one read each instead.
 *
 * A vmlinux carries no setup header, so the loader makes one (setupHeader),
 * with what the kernel reads of it: the signature, the protocol version, the
 * load flags and the limits. The decompressor would have placed the kernel
 * at a random address (KASLR); loaded at its link address, the kernel runs
 * there unrelocated, as with `nokaslr`.
 */
import { HDR, KernelImageError, LOADED_HIGH, XLF_KERNEL_64 } from "./bzimage.ts";

/** One PT_LOAD segment: file bytes [offset, offset + fileSize) go to paddr; the rest of memSize is zeros. */
export interface VmlinuxSegment {
  paddr: number;
  offset: number;
  fileSize: number;
  memSize: number;
}

export interface Vmlinux {
  /** Physical address of the 64-bit entry. */
  entry: number;
  segments: VmlinuxSegment[];
  /** First and past-the-last physical byte the segments take. */
  start: number;
  end: number;
}

const ELF_MAGIC = 0x7f454c46;
const ELFCLASS64 = 2, ELFDATA2LSB = 1, ET_EXEC = 2, EM_X86_64 = 62, PT_LOAD = 1;
const PHDR_SIZE = 56;

/** Whether `image` starts like an ELF file. */
export function isElf(image: Uint8Array): boolean {
  return image.length >= 4 && new DataView(image.buffer, image.byteOffset, 4).getUint32(0, false) === ELF_MAGIC;
}

/**
 * Parse and check an x86-64 vmlinux from its first bytes (`image`, which
 * must hold the ELF and program headers) and the file's `size`; throws
 * KernelImageError naming what is wrong.
 */
export function parseVmlinux(image: Uint8Array, size = image.length): Vmlinux {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.length < 64 || !isElf(image)) throw new KernelImageError("Not an ELF file: no \\x7fELF signature");
  if (v.getUint8(4) !== ELFCLASS64 || v.getUint8(5) !== ELFDATA2LSB) throw new KernelImageError("ELF kernel is not 64-bit little-endian");
  if (v.getUint16(16, true) !== ET_EXEC || v.getUint16(18, true) !== EM_X86_64) {
    throw new KernelImageError("ELF file is not an x86-64 executable (a vmlinux is ET_EXEC for EM_X86_64)");
  }
  const num = (off: number, what: string) => {
    const n = v.getBigUint64(off, true);
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new KernelImageError(`ELF ${what} 0x${n.toString(16)} is out of range`);
    return Number(n);
  };
  const entry = num(24, "entry point");
  const phoff = num(32, "program header offset");
  const phentsize = v.getUint16(54, true), phnum = v.getUint16(56, true);
  if (phentsize !== PHDR_SIZE || phoff + phnum * PHDR_SIZE > image.length) {
    throw new KernelImageError(`ELF program headers (${phnum} of ${phentsize} bytes at ${phoff}) are not within the first ${image.length} bytes`);
  }
  const segments: VmlinuxSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * PHDR_SIZE;
    if (v.getUint32(p, true) !== PT_LOAD) continue;
    const s = { offset: num(p + 8, "segment offset"), paddr: num(p + 24, "segment address"), fileSize: num(p + 32, "segment size"), memSize: num(p + 40, "segment size") };
    if (s.fileSize > s.memSize || s.offset + s.fileSize > size) {
      throw new KernelImageError(`ELF segment ${i} (${s.fileSize} bytes at file offset ${s.offset}) runs past the ${size}-byte file`);
    }
    if (s.memSize > 0) segments.push(s);
  }
  if (segments.length === 0) throw new KernelImageError("ELF kernel has no PT_LOAD segment");
  const start = Math.min(...segments.map((s) => s.paddr));
  const end = Math.max(...segments.map((s) => s.paddr + s.memSize));
  if (!segments.some((s) => entry >= s.paddr && entry < s.paddr + s.fileSize)) {
    throw new KernelImageError(`ELF entry point 0x${entry.toString(16)} is not in a loaded segment (a vmlinux's is startup_64's physical address)`);
  }
  return { entry, segments, start, end };
}

/** Boot protocol 2.15, what a current bzImage declares. */
const VERSION = 0x20f;
/** CONFIG_PHYSICAL_ALIGN's default on x86-64. */
const KERNEL_ALIGN = 0x200000;
/** initrd_addr_max of a 64-bit kernel since 2.6.31. */
const INITRD_ADDR_MAX = 0x7fffffff;
/** COMMAND_LINE_SIZE on x86. */
const CMDLINE_SIZE = 2047;

/** The setup header a bzImage of this kernel would have carried (bytes from HDR.SETUP_SECTS), for boot_params. */
export function setupHeader(): Uint8Array {
  const end = HDR.INIT_SIZE + 4;
  const h = new Uint8Array(end - HDR.SETUP_SECTS);
  const v = new DataView(h.buffer);
  const at = (off: number) => off - HDR.SETUP_SECTS;
  v.setUint16(at(HDR.BOOT_FLAG), 0xaa55, true);
  v.setUint8(at(HDR.JUMP + 1), end - 0x202); // the header's length, as the jump over it says
  v.setUint32(at(HDR.HEADER), 0x53726448, true); // "HdrS"
  v.setUint16(at(HDR.VERSION), VERSION, true);
  v.setUint8(at(HDR.LOADFLAGS), LOADED_HIGH);
  v.setUint32(at(HDR.INITRD_ADDR_MAX), INITRD_ADDR_MAX, true);
  v.setUint32(at(HDR.KERNEL_ALIGNMENT), KERNEL_ALIGN, true);
  v.setUint16(at(HDR.XLOADFLAGS), XLF_KERNEL_64, true);
  v.setUint32(at(HDR.CMDLINE_SIZE), CMDLINE_SIZE, true);
  return h;
}

/** What loadLinux needs to know of a vmlinux's header (as of a bzImage's). */
export const VMLINUX_LIMITS = { initrdAddrMax: INITRD_ADDR_MAX, cmdlineSize: CMDLINE_SIZE };
