/**
 * The boot CPU's state for the Linux 64-bit entry: long mode with paging,
 * flat 64-bit segments, identity-mapped page tables, and the MSRs and LAPIC
 * wiring a BIOS would leave behind (Firecracker's `regs.rs`, `gdt.rs`,
 * `interrupts.rs`; Intel SDM vol. 3 §9.8 for entering IA-32e mode).
 */
import type { GuestMemory } from "./memory.ts";
import type { VcpuFd } from "../ffi/kvm.ts";
import type { Segment, Sregs } from "../ffi/structs.ts";
import { BOOT_GDT, BOOT_IDT, BOOT_STACK, IDENTITY_MAP_GIB, PD, PDPT, PML4 } from "../boot/layout.ts";

const CR0_PE = 1n, CR0_ET = 0x10n, CR0_PG = 0x8000_0000n;
const CR4_PAE = 0x20n;
const EFER_LME = 0x100n, EFER_LMA = 0x400n;

/** A GDT entry from flags, base and limit (SDM vol. 3 §3.4.5). */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  return (BigInt(base >>> 24) << 56n) | (BigInt(flags & 0xf0ff) << 40n) |
    (BigInt(limit & 0xf0000) << 32n) | (BigInt(base & 0x00ffffff) << 16n) | BigInt(limit & 0xffff);
}

/** The boot GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18). */
export const BOOT_GDT_ENTRIES = [
  gdtEntry(0, 0, 0),
  gdtEntry(0xa09b, 0, 0xfffff),
  gdtEntry(0xc093, 0, 0xfffff),
  gdtEntry(0x808b, 0, 0xfffff),
];

/** Decode a GDT entry into KVM's segment form. */
export function segmentFromGdt(entry: bigint, index: number): Segment {
  const e = entry;
  const bits = (shift: bigint, mask: bigint) => Number((e >> shift) & mask);
  const base = ((e >> 16n) & 0xffffffn) | (((e >> 56n) & 0xffn) << 24n);
  const raw = Number((e & 0xffffn) | (((e >> 48n) & 0xfn) << 16n));
  // kvm_segment.limit is in bytes: scale a page-granular limit (Firecracker gdt.rs get_limit).
  const limit = bits(55n, 1n) ? ((raw << 12) | 0xfff) >>> 0 : raw;
  const present = bits(47n, 1n);
  return {
    base, limit, selector: index * 8, type: bits(40n, 0xfn), present, dpl: bits(45n, 3n),
    db: bits(54n, 1n), s: bits(44n, 1n), l: bits(53n, 1n), g: bits(55n, 1n), avl: bits(52n, 1n),
    unusable: present ? 0 : 1,
  };
}

/** Write the GDT, IDT and identity-mapping page tables into guest memory. */
export function writeBootTables(mem: GuestMemory): void {
  BOOT_GDT_ENTRIES.forEach((e, i) => mem.writeU64(BOOT_GDT + i * 8, e));
  mem.writeU64(BOOT_IDT, 0n);
  // PML4[0] → PDPT; PDPT[i] → PD i; each PD maps 1 GiB with 2 MiB pages.
  const P = 1n, RW = 2n, PS = 0x80n;
  mem.writeU64(PML4, BigInt(PDPT) | P | RW);
  for (let i = 0; i < IDENTITY_MAP_GIB; i++) {
    const pd = PD + i * 0x1000;
    mem.writeU64(PDPT + i * 8, BigInt(pd) | P | RW);
    for (let j = 0; j < 512; j++) {
      mem.writeU64(pd + j * 8, (BigInt(i * 512 + j) << 21n) | P | RW | PS);
    }
  }
}

/** Special registers for 64-bit mode over `base` (KVM_GET_SREGS output). */
export function longModeSregs(base: Sregs): Sregs {
  const code = segmentFromGdt(BOOT_GDT_ENTRIES[1], 1);
  const data = segmentFromGdt(BOOT_GDT_ENTRIES[2], 2);
  const tss = segmentFromGdt(BOOT_GDT_ENTRIES[3], 3);
  return {
    ...base,
    cs: code, ds: data, es: data, fs: data, gs: data, ss: data, tr: tss,
    gdt: { base: BigInt(BOOT_GDT), limit: BOOT_GDT_ENTRIES.length * 8 - 1 },
    idt: { base: BigInt(BOOT_IDT), limit: 7 },
    cr0: base.cr0 | CR0_PE | CR0_ET | CR0_PG,
    cr3: BigInt(PML4),
    cr4: base.cr4 | CR4_PAE,
    efer: base.efer | EFER_LME | EFER_LMA,
  };
}

/** MSR numbers (SDM vol. 4). */
export const MSR = {
  IA32_TSC: 0x10,
  IA32_SYSENTER_CS: 0x174,
  IA32_SYSENTER_ESP: 0x175,
  IA32_SYSENTER_EIP: 0x176,
  IA32_MISC_ENABLE: 0x1a0,
  MTRR_DEF_TYPE: 0x2ff,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SYSCALL_MASK: 0xc0000084,
  KERNEL_GS_BASE: 0xc0000102,
} as const;
/** MISC_ENABLE.FAST_STRING: a BIOS enables it; rep movs is slow without. */
const MISC_ENABLE_FAST_STRING = 1n;
/** MTRRs on, default type write-back: without it guest RAM would be uncached. */
const MTRR_ENABLE_WB = (1n << 11n) | 6n;

export const BOOT_MSRS: [number, bigint][] = [
  [MSR.IA32_SYSENTER_CS, 0n],
  [MSR.IA32_SYSENTER_ESP, 0n],
  [MSR.IA32_SYSENTER_EIP, 0n],
  [MSR.STAR, 0n],
  [MSR.CSTAR, 0n],
  [MSR.KERNEL_GS_BASE, 0n],
  [MSR.SYSCALL_MASK, 0n],
  [MSR.LSTAR, 0n],
  [MSR.IA32_TSC, 0n],
  [MSR.IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING],
  [MSR.MTRR_DEF_TYPE, MTRR_ENABLE_WB],
];

/** LAPIC LVT registers and delivery modes (SDM vol. 3 §10.5.1). */
const APIC_LVT_LINT0 = 0x350, APIC_LVT_LINT1 = 0x360;
const APIC_MODE_NMI = 4, APIC_MODE_EXTINT = 7;

/**
 * Wire LINT0 to the PIC (ExtINT) and LINT1 to NMI, as the MP spec's virtual
 * wire mode that a BIOS leaves (kvmtool and Firecracker do the same).
 */
export function wireLint(lapic: Uint8Array): Uint8Array {
  const out = lapic.slice();
  const v = new DataView(out.buffer);
  const set = (reg: number, mode: number) => v.setUint32(reg, (v.getUint32(reg, true) & ~0x700) | (mode << 8), true);
  set(APIC_LVT_LINT0, APIC_MODE_EXTINT);
  set(APIC_LVT_LINT1, APIC_MODE_NMI);
  return out;
}

/** Everything a vCPU needs before its first KVM_RUN, except CPUID. */
export function setupVcpuBoot(vcpu: VcpuFd, boot: { entry: number; bootParams: number } | null): void {
  vcpu.setMsrs(BOOT_MSRS);
  vcpu.setFpuDefaults();
  vcpu.setLapic(wireLint(vcpu.getLapic()));
  if (!boot) return; // application processors wait for INIT/SIPI from the BSP
  vcpu.setSregs(longModeSregs(vcpu.getSregs()));
  vcpu.setRegs({ rflags: 2n, rip: BigInt(boot.entry), rsp: BigInt(BOOT_STACK), rbp: BigInt(BOOT_STACK), rsi: BigInt(boot.bootParams) });
}
