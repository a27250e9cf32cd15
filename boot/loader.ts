/**
 * Put a Linux kernel, its initrd, command line and boot_params into guest
 * memory, following the 64-bit boot protocol (x86 boot.rst, "64-bit BOOT
 * PROTOCOL"): the kernel's 64-bit entry is 0x200 past the protected-mode
 * code, entered in long mode with RSI pointing at boot_params.
 */
import type { GuestMemory } from "../vm/memory.ts";
import { KernelImageError, parseBzImage } from "./bzimage.ts";
import { buildBootParams } from "./params.ts";
import { CMDLINE, CMDLINE_MAX, e820Map, KERNEL_START, ZERO_PAGE } from "./layout.ts";

export interface LinuxImage {
  kernel: Uint8Array;
  initrd?: Uint8Array;
  cmdline: string;
  acpiRsdpAddr: number;
}

export interface LoadedKernel {
  /** 64-bit entry point (RIP). */
  entry: number;
  /** Address of boot_params (RSI). */
  bootParams: number;
}

/** Load a bzImage, initrd and command line; returns where to start the BSP. */
export function loadLinux(mem: GuestMemory, memSize: number, img: LinuxImage): LoadedKernel {
  const bz = parseBzImage(img.kernel);
  const lowEnd = Math.min(memSize, mem.regions[0].gpa + mem.regions[0].size);
  const need = KERNEL_START + Math.max(bz.kernel.length, bz.initSize);
  if (need > lowEnd) {
    throw new KernelImageError(`Kernel needs ${mib(need)} of RAM to decompress but the guest has ${mib(lowEnd)}`);
  }
  mem.write(KERNEL_START, bz.kernel);

  const cmd = new TextEncoder().encode(img.cmdline);
  const maxCmd = Math.min(bz.cmdlineSize || 255, CMDLINE_MAX - 1);
  if (cmd.length > maxCmd) {
    throw new KernelImageError(`Command line is ${cmd.length} bytes; this kernel accepts at most ${maxCmd}`);
  }
  mem.write(CMDLINE, cmd);
  mem.writeU8(CMDLINE + cmd.length, 0);

  // The initrd goes as high as the kernel allows, page-aligned, clear of the
  // kernel's decompression area (as GRUB and QEMU place it).
  let initrdAddr = 0, initrdSize = 0;
  if (img.initrd && img.initrd.length > 0) {
    initrdSize = img.initrd.length;
    const top = Math.min(lowEnd, bz.initrdAddrMax + 1);
    initrdAddr = Math.floor((top - initrdSize) / 4096) * 4096;
    if (initrdAddr < need) {
      throw new KernelImageError(
        `Initrd of ${mib(initrdSize)} does not fit in guest RAM beside the kernel; give the guest more memory`,
      );
    }
    mem.write(initrdAddr, img.initrd);
  }

  mem.write(
    ZERO_PAGE,
    buildBootParams({
      header: bz.header,
      cmdlineAddr: CMDLINE,
      cmdlineSize: cmd.length,
      initrdAddr,
      initrdSize,
      e820: e820Map(memSize),
      acpiRsdpAddr: img.acpiRsdpAddr,
    }),
  );
  return { entry: KERNEL_START + 0x200, bootParams: ZERO_PAGE };
}

function mib(n: number): string {
  return `${Math.ceil(n / 1048576)} MiB`;
}
