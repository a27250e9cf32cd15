/**
 * The guest physical address map, each address with its reason.
 *
 * Low memory follows the PC layout a Linux kernel expects from a BIOS
 * (x86 `boot.rst`, Firecracker's `arch/x86_64/layout.rs`): the first 640 KiB
 * are RAM, 640 KiB–1 MiB is the legacy hole where firmware tables live, the
 * kernel loads at 1 MiB. RAM above 3 GiB moves to 4 GiB and up, leaving the
 * top 1 GiB below 4 GiB for devices (virtio-mmio, IOAPIC, LAPIC).
 */

/** Boot GDT: null, 64-bit code, data, TSS descriptors (vm/regs.ts). */
export const BOOT_GDT = 0x500;
/** Empty boot IDT: interrupts stay disabled until the kernel installs its own. */
export const BOOT_IDT = 0x520;
/** struct boot_params, "the zero page", handed to the kernel in RSI. */
export const ZERO_PAGE = 0x7000;
/** Boot stack top: below the page tables, above the zero page. */
export const BOOT_STACK = 0x8ff0;
/** Identity-mapping page tables for the 64-bit entry: PML4, PDPT, then 4 PDs (4 GiB of 2 MiB pages). */
export const PML4 = 0x9000;
export const PDPT = 0xa000;
export const PD = 0xb000;
export const IDENTITY_MAP_GIB = 4;
/** Kernel command line (the kernel copies it early; 0x20000 keeps it clear of the tables above). */
export const CMDLINE = 0x20000;
export const CMDLINE_MAX = 0x10000;
/** Start of the Extended BIOS Data Area: low RAM ends here. */
export const EBDA_START = 0x9fc00;
/** ACPI tables live in the BIOS read-only area, where Linux also scans for the RSDP. */
export const ACPI_START = 0xe0000;
export const ACPI_MAX = 0x20000;
/** Where the protected-mode kernel is loaded (the boot protocol's default code32_start). */
export const KERNEL_START = 0x100000;
/** Top of low RAM: above it, up to 4 GiB, is the device hole. */
export const LOW_RAM_END = 0xc000_0000;
/** RAM above LOW_RAM_END continues here. */
export const HIGH_RAM_START = 0x1_0000_0000;
/** virtio-mmio devices: one 4 KiB window each, from here. */
export const VIRTIO_MMIO_START = 0xd000_0000;
export const VIRTIO_MMIO_SIZE = 0x1000;
/** First interrupt (GSI) for virtio-mmio devices; 0–4 belong to the PIT, serial and friends. */
export const VIRTIO_IRQ_START = 5;
/** In-kernel IOAPIC and local APIC windows (KVM's fixed addresses). */
export const IOAPIC_START = 0xfec0_0000;
export const LAPIC_START = 0xfee0_0000;
/** Intel VMX needs three pages for the real-mode TSS and one for the identity map, in the hole. */
export const KVM_TSS_ADDR = 0xfffb_d000;
export const KVM_IDENTITY_MAP_ADDR = 0xfffb_c000;

/** One region of guest RAM. */
export interface RamRegion {
  gpa: number;
  size: number;
}

/** Split `memSize` bytes of RAM around the device hole. */
export function ramRegions(memSize: number): RamRegion[] {
  if (memSize <= LOW_RAM_END) return [{ gpa: 0, size: memSize }];
  return [{ gpa: 0, size: LOW_RAM_END }, { gpa: HIGH_RAM_START, size: memSize - LOW_RAM_END }];
}

/** e820 types (x86 `e820/types.h`). */
export const E820_RAM = 1, E820_RESERVED = 2;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** The e820 memory map the kernel sees for `memSize` bytes of RAM. */
export function e820Map(memSize: number): E820Entry[] {
  const map: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: 0xa0000 - EBDA_START, type: E820_RESERVED },
    { addr: ACPI_START, size: 0x100000 - ACPI_START, type: E820_RESERVED },
  ];
  for (const r of ramRegions(memSize)) {
    const start = Math.max(r.gpa, KERNEL_START);
    map.push({ addr: start, size: r.gpa + r.size - start, type: E820_RAM });
  }
  return map;
}
