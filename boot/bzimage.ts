/**
 * The bzImage format: a real-mode setup part, then the protected-mode kernel.
 *
 * Offsets are from the x86 boot protocol (Documentation/arch/x86/boot.rst,
 * "THE REAL-MODE KERNEL HEADER"). vmm uses the 64-bit entry point, so it
 * needs protocol 2.12 or later with XLF_KERNEL_64 set.
 */

/** A bzImage that cannot be booted. */
export class KernelImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KernelImageError";
  }
}

/** Setup header offsets, from the start of the image (== offsets in boot_params). */
export const HDR = {
  SETUP_SECTS: 0x1f1,
  SYSSIZE: 0x1f4, // 16-byte paragraphs of protected-mode code; 4 bytes wide from protocol 2.04
  BOOT_FLAG: 0x1fe, // 0xAA55
  JUMP: 0x200, // the byte at 0x201 gives the header's end: 0x202 + it
  HEADER: 0x202, // "HdrS"
  VERSION: 0x206,
  TYPE_OF_LOADER: 0x210,
  LOADFLAGS: 0x211,
  CODE32_START: 0x214,
  RAMDISK_IMAGE: 0x218,
  RAMDISK_SIZE: 0x21c,
  HEAP_END_PTR: 0x224,
  CMD_LINE_PTR: 0x228,
  INITRD_ADDR_MAX: 0x22c,
  KERNEL_ALIGNMENT: 0x230,
  RELOCATABLE_KERNEL: 0x234,
  XLOADFLAGS: 0x236,
  CMDLINE_SIZE: 0x238,
  PREF_ADDRESS: 0x258,
  INIT_SIZE: 0x260,
} as const;
export const HDRS_MAGIC = 0x53726448; // "HdrS" little-endian
export const LOADED_HIGH = 0x01;
export const XLF_KERNEL_64 = 0x01;
const MIN_VERSION = 0x20c;

/** What the loader needs from a bzImage. */
export interface BzImage {
  /** Boot protocol version, e.g. 0x20f. */
  version: number;
  /** The setup header bytes, to copy into boot_params at HDR.SETUP_SECTS. */
  header: Uint8Array;
  /** The protected-mode kernel, loaded at KERNEL_START. */
  kernel: Uint8Array;
  initrdAddrMax: number;
  cmdlineSize: number;
  /** Memory the kernel needs from its load address while it decompresses. */
  initSize: number;
}

/** Parse and check a bzImage; throws KernelImageError naming what is wrong. */
export function parseBzImage(image: Uint8Array): BzImage {
  if (image.length < 0x264) throw new KernelImageError(`Truncated: ${image.length} bytes is too short for a bzImage header`);
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (v.getUint16(HDR.BOOT_FLAG, true) !== 0xaa55 || v.getUint32(HDR.HEADER, true) !== HDRS_MAGIC) {
    if (v.getUint32(0, false) === 0x7f454c46) {
      throw new KernelImageError("Is an ELF vmlinux; vmm boots bzImage kernels (arch/x86/boot/bzImage)");
    }
    throw new KernelImageError("Not a bzImage: no boot signature 0xAA55 and 'HdrS' header");
  }
  const version = v.getUint16(HDR.VERSION, true);
  if (version < MIN_VERSION) {
    throw new KernelImageError(`Boot protocol ${fmtVersion(version)} is too old: the 64-bit entry needs 2.12 or later`);
  }
  if (!(v.getUint8(HDR.LOADFLAGS) & LOADED_HIGH)) throw new KernelImageError("Kernel does not load high (LOADED_HIGH unset)");
  if (!(v.getUint16(HDR.XLOADFLAGS, true) & XLF_KERNEL_64)) {
    throw new KernelImageError("Kernel has no 64-bit entry point (XLF_KERNEL_64 unset): is it a 32-bit kernel?");
  }
  const setupSects = v.getUint8(HDR.SETUP_SECTS) || 4;
  const kernelOffset = (setupSects + 1) * 512;
  if (kernelOffset >= image.length) {
    throw new KernelImageError(`Truncated: setup claims ${setupSects} sectors but the file is ${image.length} bytes`);
  }
  // The whole image is the boot sector and setup sectors, then syssize
  // paragraphs of protected-mode kernel (boot.rst, "syssize"). A shorter file
  // would load, jump into whatever follows its end, and triple-fault.
  const expected = kernelOffset + v.getUint32(HDR.SYSSIZE, true) * 16;
  if (image.length < expected) {
    throw new KernelImageError(`bzImage is truncated: the header says ${expected} bytes, the file has ${image.length}`);
  }
  const headerEnd = 0x202 + v.getUint8(HDR.JUMP + 1);
  return {
    version,
    header: image.slice(HDR.SETUP_SECTS, Math.min(headerEnd, kernelOffset)),
    kernel: image.subarray(kernelOffset),
    initrdAddrMax: v.getUint32(HDR.INITRD_ADDR_MAX, true),
    cmdlineSize: v.getUint32(HDR.CMDLINE_SIZE, true),
    initSize: v.getUint32(HDR.INIT_SIZE, true),
  };
}

function fmtVersion(v: number): string {
  return `${v >> 8}.${(v & 0xff).toString().padStart(2, "0")}`;
}
