/**
 * Put a Linux kernel, its initrd, command line and boot_params into guest
 * memory, following the 64-bit boot protocol (x86 boot.rst, "64-bit BOOT
 * PROTOCOL"): the kernel's 64-bit entry is 0x200 past the protected-mode
 * code, entered in long mode with RSI pointing at boot_params. An ELF
 * vmlinux (boot/vmlinux.ts) is entered the same way, at its own entry.
 */
import type { GuestMemory } from "../vm/memory.ts";
import { KernelImageError, parseBzImage } from "./bzimage.ts";
import { buildBootParams } from "./params.ts";
import { type ImageSource, imageHead, imageInto, imageSize } from "./image.ts";
import { isElf, parseVmlinux, setupHeader, VMLINUX_LIMITS } from "./vmlinux.ts";
import { CMDLINE, CMDLINE_MAX, e820Map, KERNEL_START, ZERO_PAGE } from "./layout.ts";

export interface LinuxImage {
  kernel: ImageSource;
  initrd?: ImageSource;
  /**
   * A second initramfs archive after the first (a command's files,
   * guest/command.ts), 4-byte aligned as Linux reads concatenated archives;
   * the whole is padded to a page with zeros (initrdLayout).
   */
  initrdExtra?: Uint8Array;
  cmdline: string;
  acpiRsdpAddr: number;
}

export interface LoadedKernel {
  /** 64-bit entry point (RIP). */
  entry: number;
  /** Address of boot_params (RSI). */
  bootParams: number;
}

/**
 * Where an archive appended to an initrd of `first` bytes starts (4-byte
 * aligned, as Linux reads concatenated cpio archives) and the size of the
 * whole, padded with zeros to 4 KiB pages (the kernel skips zeros between
 * and after archives). The one rule for both ways vmm appends an archive:
 * in guest RAM (`LinuxImage.initrdExtra`) and in a file (`concatInitrd`).
 */
export function initrdLayout(first: number, extra: number): { extraAt: number; size: number } {
  const extraAt = first + (4 - (first % 4)) % 4;
  return { extraAt, size: Math.ceil((extraAt + extra) / 4096) * 4096 };
}

/** Load a bzImage or vmlinux, initrd and command line; returns where to start the BSP. */
export function loadLinux(mem: GuestMemory, memSize: number, img: LinuxImage): LoadedKernel {
  const lowEnd = Math.min(memSize, mem.regions[0].gpa + mem.regions[0].size);
  const head = imageHead(img.kernel, 4096);
  const { bz, need, entry } = isElf(head) ? loadVmlinux(mem, lowEnd, img.kernel, head) : loadBzImage(mem, lowEnd, img.kernel);

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
  const first = img.initrd ? imageSize(img.initrd) : 0, extra = img.initrdExtra ?? new Uint8Array(0);
  const { extraAt, size } = extra.length ? initrdLayout(first, extra.length) : { extraAt: first, size: first };
  if (size > 0) {
    initrdSize = size;
    const top = Math.min(lowEnd, bz.initrdAddrMax + 1);
    initrdAddr = Math.floor((top - initrdSize) / 4096) * 4096;
    if (initrdAddr < need) {
      throw new KernelImageError(
        `Initrd of ${mib(initrdSize)} does not fit in guest RAM beside the kernel; give the guest more memory`,
      );
    }
    if (img.initrd) imageInto(mem, initrdAddr, img.initrd, 0, first);
    mem.write(initrdAddr + extraAt, extra);
    mem.slice(initrdAddr + first, extraAt - first).fill(0);
    mem.slice(initrdAddr + extraAt + extra.length, initrdSize - extraAt - extra.length).fill(0);
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
  return { entry, bootParams: ZERO_PAGE };
}

/** What loadLinux goes on with once the kernel is in: its header and limits, the end of its memory, its entry. */
interface KernelIn {
  bz: { header: Uint8Array; initrdAddrMax: number; cmdlineSize: number };
  need: number;
  entry: number;
}

function loadBzImage(mem: GuestMemory, lowEnd: number, src: ImageSource): KernelIn {
  const bz = parseBzImage(src instanceof Uint8Array ? src : src.read(0, src.size));
  const need = KERNEL_START + Math.max(bz.kernel.length, bz.initSize);
  if (need > lowEnd) {
    throw new KernelImageError(`Kernel needs ${mib(need)} of RAM to decompress but the guest has ${mib(lowEnd)}`);
  }
  mem.write(KERNEL_START, bz.kernel);
  return { bz, need, entry: KERNEL_START + 0x200 };
}

function loadVmlinux(mem: GuestMemory, lowEnd: number, src: ImageSource, head: Uint8Array): KernelIn {
  const elf = parseVmlinux(head, imageSize(src));
  if (elf.start < KERNEL_START) {
    throw new KernelImageError(`ELF kernel loads at 0x${elf.start.toString(16)}, below ${mib(KERNEL_START)} where vmm keeps its boot tables`);
  }
  if (elf.end > lowEnd) throw new KernelImageError(`Kernel needs ${mib(elf.end)} of RAM but the guest has ${mib(lowEnd)}`);
  for (const s of elf.segments) {
    imageInto(mem, s.paddr, src, s.offset, s.fileSize);
    mem.slice(s.paddr + s.fileSize, s.memSize - s.fileSize).fill(0);
  }
  return { bz: { header: setupHeader(), ...VMLINUX_LIMITS }, need: elf.end, entry: elf.entry };
}

function mib(n: number): string {
  return `${Math.ceil(n / 1048576)} MiB`;
}
