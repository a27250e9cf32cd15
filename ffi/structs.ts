/**
 * KVM's struct layouts, each defined once (uapi/linux/kvm.h and
 * arch/x86/include/uapi/asm/kvm.h, x86-64). Offsets are named; every struct
 * is read and written little-endian through a DataView. The tests pin each
 * size against the kernel's.
 */

/** struct kvm_regs: 18 u64 general registers in this order. */
export const REGS_FIELDS = [
  "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
] as const;
export type Regs = Record<(typeof REGS_FIELDS)[number], bigint>;
export const KVM_REGS_SIZE = 144;

export function decodeRegs(v: DataView): Regs {
  const r = {} as Regs;
  REGS_FIELDS.forEach((f, i) => (r[f] = v.getBigUint64(i * 8, true)));
  return r;
}
export function encodeRegs(v: DataView, r: Partial<Regs>): void {
  REGS_FIELDS.forEach((f, i) => v.setBigUint64(i * 8, r[f] ?? 0n, true));
}

/** struct kvm_segment (24 bytes). */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}
export const KVM_SEGMENT_SIZE = 24;
function decodeSegment(v: DataView, o: number): Segment {
  return {
    base: v.getBigUint64(o, true), limit: v.getUint32(o + 8, true), selector: v.getUint16(o + 12, true),
    type: v.getUint8(o + 14), present: v.getUint8(o + 15), dpl: v.getUint8(o + 16), db: v.getUint8(o + 17),
    s: v.getUint8(o + 18), l: v.getUint8(o + 19), g: v.getUint8(o + 20), avl: v.getUint8(o + 21),
    unusable: v.getUint8(o + 22),
  };
}
function encodeSegment(v: DataView, o: number, s: Segment): void {
  v.setBigUint64(o, s.base, true);
  v.setUint32(o + 8, s.limit, true);
  v.setUint16(o + 12, s.selector, true);
  const b = [s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable, 0];
  b.forEach((x, i) => v.setUint8(o + 14 + i, x));
}

/** struct kvm_sregs (312 bytes): segments, descriptor tables, control registers. */
export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: { base: bigint; limit: number };
  idt: { base: bigint; limit: number };
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apicBase: bigint;
  interruptBitmap: bigint[];
}
export const KVM_SREGS_SIZE = 312;
const SEGS = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
const SREGS_GDT = 192, SREGS_IDT = 208, SREGS_CR0 = 224, SREGS_BITMAP = 280;
const CRS = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apicBase"] as const;

export function decodeSregs(v: DataView): Sregs {
  // deno-lint-ignore no-explicit-any
  const s: any = {};
  SEGS.forEach((n, i) => (s[n] = decodeSegment(v, i * KVM_SEGMENT_SIZE)));
  s.gdt = { base: v.getBigUint64(SREGS_GDT, true), limit: v.getUint16(SREGS_GDT + 8, true) };
  s.idt = { base: v.getBigUint64(SREGS_IDT, true), limit: v.getUint16(SREGS_IDT + 8, true) };
  CRS.forEach((n, i) => (s[n] = v.getBigUint64(SREGS_CR0 + i * 8, true)));
  s.interruptBitmap = [0, 1, 2, 3].map((i) => v.getBigUint64(SREGS_BITMAP + i * 8, true));
  return s as Sregs;
}
export function encodeSregs(v: DataView, s: Sregs): void {
  SEGS.forEach((n, i) => encodeSegment(v, i * KVM_SEGMENT_SIZE, s[n]));
  v.setBigUint64(SREGS_GDT, s.gdt.base, true);
  v.setUint16(SREGS_GDT + 8, s.gdt.limit, true);
  v.setBigUint64(SREGS_IDT, s.idt.base, true);
  v.setUint16(SREGS_IDT + 8, s.idt.limit, true);
  CRS.forEach((n, i) => v.setBigUint64(SREGS_CR0 + i * 8, s[n], true));
  s.interruptBitmap.forEach((x, i) => v.setBigUint64(SREGS_BITMAP + i * 8, x, true));
}

/** struct kvm_userspace_memory_region (32 bytes). */
export const KVM_USERSPACE_MEMORY_REGION_SIZE = 32;
export function encodeMemoryRegion(
  v: DataView,
  r: { slot: number; flags?: number; gpa: bigint; size: bigint; hostAddr: bigint },
): void {
  v.setUint32(0, r.slot, true);
  v.setUint32(4, r.flags ?? 0, true);
  v.setBigUint64(8, r.gpa, true);
  v.setBigUint64(16, r.size, true);
  v.setBigUint64(24, r.hostAddr, true);
}

/** struct kvm_cpuid_entry2 (40 bytes) inside struct kvm_cpuid2 (8-byte header). */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}
export const KVM_CPUID2_HEADER = 8, KVM_CPUID_ENTRY2_SIZE = 40;
/** KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf's index (ECX) selects a sub-leaf. */
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

export function decodeCpuid2(v: DataView): CpuidEntry[] {
  const n = v.getUint32(0, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = KVM_CPUID2_HEADER + i * KVM_CPUID_ENTRY2_SIZE;
    out.push({
      function: v.getUint32(o, true), index: v.getUint32(o + 4, true), flags: v.getUint32(o + 8, true),
      eax: v.getUint32(o + 12, true), ebx: v.getUint32(o + 16, true), ecx: v.getUint32(o + 20, true),
      edx: v.getUint32(o + 24, true),
    });
  }
  return out;
}
export function encodeCpuid2(v: DataView, entries: CpuidEntry[]): void {
  v.setUint32(0, entries.length, true);
  v.setUint32(4, 0, true);
  entries.forEach((e, i) => {
    const o = KVM_CPUID2_HEADER + i * KVM_CPUID_ENTRY2_SIZE;
    v.setUint32(o, e.function, true);
    v.setUint32(o + 4, e.index, true);
    v.setUint32(o + 8, e.flags, true);
    v.setUint32(o + 12, e.eax >>> 0, true);
    v.setUint32(o + 16, e.ebx >>> 0, true);
    v.setUint32(o + 20, e.ecx >>> 0, true);
    v.setUint32(o + 24, e.edx >>> 0, true);
    for (let p = 28; p < 40; p += 4) v.setUint32(o + p, 0, true);
  });
}

/** struct kvm_msrs (8-byte header) + struct kvm_msr_entry (16 bytes each). */
export const KVM_MSRS_HEADER = 8, KVM_MSR_ENTRY_SIZE = 16;
export function encodeMsrs(v: DataView, msrs: [number, bigint][]): void {
  v.setUint32(0, msrs.length, true);
  v.setUint32(4, 0, true);
  msrs.forEach(([index, data], i) => {
    const o = KVM_MSRS_HEADER + i * KVM_MSR_ENTRY_SIZE;
    v.setUint32(o, index, true);
    v.setUint32(o + 4, 0, true);
    v.setBigUint64(o + 8, data, true);
  });
}

/** struct kvm_lapic_state: the 1 KiB APIC register page. */
export const KVM_LAPIC_STATE_SIZE = 1024;
/** struct kvm_fpu (416 bytes): fpr[8][16], fcw, fsw, ftwx, pad, opcode, last_ip, last_dp, xmm[16][16], mxcsr, pad. */
export const KVM_FPU_SIZE = 416;
export const FPU_FCW = 128, FPU_MXCSR = 408;

/** struct kvm_irq_level (8 bytes): irq, level. */
export const KVM_IRQ_LEVEL_SIZE = 8;
/** struct kvm_irqfd (32 bytes): fd, gsi, flags, resamplefd, pad[16]. */
export const KVM_IRQFD_SIZE = 32;
/** struct kvm_ioeventfd (64 bytes): datamatch u64, addr u64, len u32, fd s32, flags u32, pad[36]. */
export const KVM_IOEVENTFD_SIZE = 64;
/** struct kvm_pit_config (64 bytes): flags, pad[15]. */
export const KVM_PIT_CONFIG_SIZE = 64;

/**
 * struct kvm_run, the page shared with the kernel for each vCPU.
 * Only the fields vmm reads or writes are named.
 */
export const RUN = {
  REQUEST_INTERRUPT_WINDOW: 0,
  IMMEDIATE_EXIT: 1,
  EXIT_REASON: 8,
  READY_FOR_INTERRUPT_INJECTION: 12,
  IF_FLAG: 13,
  /** Start of the exit-reason union. */
  U: 32,
  // KVM_EXIT_IO
  IO_DIRECTION: 32,
  IO_SIZE: 33,
  IO_PORT: 34,
  IO_COUNT: 36,
  IO_DATA_OFFSET: 40,
  // KVM_EXIT_MMIO
  MMIO_PHYS_ADDR: 32,
  MMIO_DATA: 40,
  MMIO_LEN: 48,
  MMIO_IS_WRITE: 52,
  // KVM_EXIT_FAIL_ENTRY
  FAIL_ENTRY_REASON: 32,
  // KVM_EXIT_INTERNAL_ERROR
  INTERNAL_SUBERROR: 32,
  INTERNAL_NDATA: 36,
  INTERNAL_DATA: 40,
  // KVM_EXIT_SYSTEM_EVENT
  SYSTEM_EVENT_TYPE: 32,
} as const;
