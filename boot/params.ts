/**
 * struct boot_params, "the zero page" (arch/x86/include/uapi/asm/bootparam.h):
 * what the kernel learns from its loader: the setup header, the command line
 * and initrd, the e820 memory map and where the ACPI RSDP is.
 */
import { HDR } from "./bzimage.ts";
import type { E820Entry } from "./layout.ts";

export const BOOT_PARAMS_SIZE = 4096;
/** Offsets inside boot_params. */
export const BP = {
  ACPI_RSDP_ADDR: 0x070,
  E820_ENTRIES: 0x1e8,
  HDR: HDR.SETUP_SECTS,
  E820_TABLE: 0x2d0,
} as const;
export const E820_MAX_ENTRIES = 128;
const E820_ENTRY_SIZE = 20;
/** type_of_loader 0xff: "undefined" boot loader, as Firecracker and kvmtool declare. */
const LOADER_OTHER = 0xff;

export interface BootParamsInput {
  /** Setup header bytes copied from the bzImage (starting at offset 0x1f1). */
  header: Uint8Array;
  cmdlineAddr: number;
  cmdlineSize: number;
  initrdAddr: number;
  initrdSize: number;
  e820: E820Entry[];
  acpiRsdpAddr: number;
}

/** Build the 4 KiB zero page. */
export function buildBootParams(p: BootParamsInput): Uint8Array {
  if (p.e820.length > E820_MAX_ENTRIES) throw new RangeError(`Too many e820 entries: ${p.e820.length}`);
  const bp = new Uint8Array(BOOT_PARAMS_SIZE);
  const v = new DataView(bp.buffer);
  bp.set(p.header, BP.HDR);
  v.setUint8(HDR.TYPE_OF_LOADER, LOADER_OTHER);
  v.setUint32(HDR.CMD_LINE_PTR, p.cmdlineAddr, true);
  // cmdline_size is the kernel's maximum; the string itself is NUL-terminated.
  v.setUint32(HDR.RAMDISK_IMAGE, p.initrdAddr, true);
  v.setUint32(HDR.RAMDISK_SIZE, p.initrdSize, true);
  v.setBigUint64(BP.ACPI_RSDP_ADDR, BigInt(p.acpiRsdpAddr), true);
  v.setUint8(BP.E820_ENTRIES, p.e820.length);
  p.e820.forEach((e, i) => {
    const o = BP.E820_TABLE + i * E820_ENTRY_SIZE;
    v.setBigUint64(o, BigInt(e.addr), true);
    v.setBigUint64(o + 8, BigInt(e.size), true);
    v.setUint32(o + 16, e.type, true);
  });
  return bp;
}
