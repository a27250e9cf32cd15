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

// ---------------------------------------------------------------------------
// State a snapshot needs (KVM_GET_*/KVM_SET_* pairs). Layouts from
// arch/x86/include/uapi/asm/kvm.h and include/uapi/linux/kvm.h, x86-64.

/** struct kvm_msr_list (4-byte header): nmsrs, then nmsrs u32 indices (KVM_GET_MSR_INDEX_LIST). */
export const KVM_MSR_LIST_HEADER = 4;
/** MAX_IO_MSRS (arch/x86/kvm/x86.c): msr_io() refuses nmsrs >= 256 with E2BIG, so 255 per call. */
export const KVM_MSRS_PER_CALL = 255;

export function decodeMsrList(v: DataView): number[] {
  const n = v.getUint32(0, true);
  return Array.from({ length: n }, (_, i) => v.getUint32(KVM_MSR_LIST_HEADER + i * 4, true));
}
/** The `n` entries of a struct kvm_msrs as [index, data] (KVM_GET_MSRS writes data back in place). */
export function decodeMsrs(v: DataView, n: number): [number, bigint][] {
  return Array.from({ length: n }, (_, i): [number, bigint] => {
    const o = KVM_MSRS_HEADER + i * KVM_MSR_ENTRY_SIZE;
    return [v.getUint32(o, true), v.getBigUint64(o + 8, true)];
  });
}

/** struct kvm_fpu, every field: the legacy x87/SSE state in fxsave order but not fxsave layout. */
export const FPU = {
  FPR: 0, // u8 fpr[8][16]: st0..st7, 16 bytes each (10 used)
  FCW: FPU_FCW,
  FSW: 130,
  FTWX: 132, // u8, abridged tag word as fxsave stores it
  LAST_OPCODE: 134,
  LAST_IP: 136,
  LAST_DP: 144,
  XMM: 152, // u8 xmm[16][16]
  MXCSR: FPU_MXCSR,
} as const;
export interface Fpu {
  /** st0..st7, 16 bytes each. */
  fpr: Uint8Array;
  fcw: number;
  fsw: number;
  ftwx: number;
  lastOpcode: number;
  lastIp: bigint;
  lastDp: bigint;
  /** xmm0..xmm15, 16 bytes each. */
  xmm: Uint8Array;
  /**
   * Ignored by x86 KVM both ways: kvm_arch_vcpu_ioctl_get_fpu/set_fpu
   * (arch/x86/kvm/x86.c) copy every field but this one. MXCSR travels in the
   * XSAVE image (XSAVE.MXCSR).
   */
  mxcsr: number;
}
export function decodeFpu(v: DataView): Fpu {
  const bytes = new Uint8Array(v.buffer, v.byteOffset, KVM_FPU_SIZE);
  return {
    fpr: bytes.slice(FPU.FPR, FPU.FPR + 128), fcw: v.getUint16(FPU.FCW, true), fsw: v.getUint16(FPU.FSW, true),
    ftwx: v.getUint8(FPU.FTWX), lastOpcode: v.getUint16(FPU.LAST_OPCODE, true), lastIp: v.getBigUint64(FPU.LAST_IP, true),
    lastDp: v.getBigUint64(FPU.LAST_DP, true), xmm: bytes.slice(FPU.XMM, FPU.XMM + 256), mxcsr: v.getUint32(FPU.MXCSR, true),
  };
}
export function encodeFpu(v: DataView, f: Fpu): void {
  const bytes = new Uint8Array(v.buffer, v.byteOffset, KVM_FPU_SIZE);
  bytes.fill(0);
  bytes.set(f.fpr.subarray(0, 128), FPU.FPR);
  v.setUint16(FPU.FCW, f.fcw, true);
  v.setUint16(FPU.FSW, f.fsw, true);
  v.setUint8(FPU.FTWX, f.ftwx);
  v.setUint16(FPU.LAST_OPCODE, f.lastOpcode, true);
  v.setBigUint64(FPU.LAST_IP, f.lastIp, true);
  v.setBigUint64(FPU.LAST_DP, f.lastDp, true);
  bytes.set(f.xmm.subarray(0, 256), FPU.XMM);
  v.setUint32(FPU.MXCSR, f.mxcsr, true);
}

/**
 * struct kvm_xsave: u32 region[1024], the XSAVE image (legacy area, header
 * at 512, extended components at their CPUID 0xD offsets). Since Linux 5.17
 * it may be followed by `extra[]`: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) gives
 * the whole size (at least 4096) and KVM_GET_XSAVE2 fills it; KVM_SET_XSAVE
 * then reads that many bytes. Kept as raw bytes: the kernel validates it.
 */
export const KVM_XSAVE_SIZE = 4096;
/** Offsets in the XSAVE image (Intel SDM vol. 1 §13.4): fxsave's xmm0 and mxcsr, the header's XSTATE_BV. */
export const XSAVE = { MXCSR: 24, ST0: 32, XMM0: 160, XSTATE_BV: 512 } as const;

/** struct kvm_xcrs (392 bytes): nr_xcrs, flags, struct kvm_xcr xcrs[KVM_MAX_XCRS], u64 padding[16]. */
export const KVM_XCRS_SIZE = 392, KVM_XCR_SIZE = 16, KVM_MAX_XCRS = 16;
const XCRS_NR = 0, XCRS_FLAGS = 4, XCRS_ENTRIES = 8;
/** struct kvm_xcr: xcr (the XCR number: 0 is XCR0), reserved, value. */
export interface Xcr {
  xcr: number;
  value: bigint;
}
export function decodeXcrs(v: DataView): Xcr[] {
  const n = Math.min(v.getUint32(XCRS_NR, true), KVM_MAX_XCRS);
  return Array.from({ length: n }, (_, i) => {
    const o = XCRS_ENTRIES + i * KVM_XCR_SIZE;
    return { xcr: v.getUint32(o, true), value: v.getBigUint64(o + 8, true) };
  });
}
export function encodeXcrs(v: DataView, xcrs: Xcr[]): void {
  if (xcrs.length > KVM_MAX_XCRS) throw new RangeError(`kvm_xcrs holds at most ${KVM_MAX_XCRS} XCRs, not ${xcrs.length}`);
  new Uint8Array(v.buffer, v.byteOffset, KVM_XCRS_SIZE).fill(0);
  v.setUint32(XCRS_NR, xcrs.length, true);
  v.setUint32(XCRS_FLAGS, 0, true); // must be 0: KVM_SET_XCRS rejects any flag
  xcrs.forEach((x, i) => {
    const o = XCRS_ENTRIES + i * KVM_XCR_SIZE;
    v.setUint32(o, x.xcr, true);
    v.setBigUint64(o + 8, x.value, true);
  });
}

/** struct kvm_mp_state: one u32. */
export const KVM_MP_STATE_SIZE = 4;
/** kvm_mp_state.mp_state values on x86 (uapi/linux/kvm.h). */
export const MP_STATE = { RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3, SIPI_RECEIVED: 4 } as const;

/**
 * struct kvm_vcpu_events (64 bytes): the pending or injected exception,
 * interrupt and NMI, the interrupt shadow, SMM, and (with the caps enabled)
 * triple fault and exception payload. Kept as raw bytes in a snapshot so
 * fields newer kernels add in `reserved` survive; these offsets name the rest.
 */
export const KVM_VCPU_EVENTS_SIZE = 64;
export const VCPU_EVENTS = {
  EXCEPTION_INJECTED: 0, EXCEPTION_NR: 1, EXCEPTION_HAS_ERROR_CODE: 2, EXCEPTION_PENDING: 3, EXCEPTION_ERROR_CODE: 4,
  INTERRUPT_INJECTED: 8, INTERRUPT_NR: 9, INTERRUPT_SOFT: 10, INTERRUPT_SHADOW: 11,
  NMI_INJECTED: 12, NMI_PENDING: 13, NMI_MASKED: 14,
  SIPI_VECTOR: 16, FLAGS: 20,
  SMI_SMM: 24, SMI_PENDING: 25, SMI_INSIDE_NMI: 26, SMI_LATCHED_INIT: 27,
  TRIPLE_FAULT_PENDING: 28,
  EXCEPTION_HAS_PAYLOAD: 55, EXCEPTION_PAYLOAD: 56,
} as const;
/** kvm_vcpu_events.flags: which optional fields KVM_SET_VCPU_EVENTS should take. */
export const KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1, KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2,
  KVM_VCPUEVENT_VALID_SHADOW = 0x4, KVM_VCPUEVENT_VALID_SMM = 0x8;

/** struct kvm_debugregs (128 bytes): db[4], dr6, dr7, flags (must be 0), reserved[9]. */
export const KVM_DEBUGREGS_SIZE = 128;
const DEBUGREGS_DR6 = 32, DEBUGREGS_DR7 = 40, DEBUGREGS_FLAGS = 48;
export interface DebugRegs {
  db: [bigint, bigint, bigint, bigint];
  dr6: bigint;
  dr7: bigint;
}
export function decodeDebugRegs(v: DataView): DebugRegs {
  const db = [0, 1, 2, 3].map((i) => v.getBigUint64(i * 8, true)) as DebugRegs["db"];
  return { db, dr6: v.getBigUint64(DEBUGREGS_DR6, true), dr7: v.getBigUint64(DEBUGREGS_DR7, true) };
}
export function encodeDebugRegs(v: DataView, d: DebugRegs): void {
  new Uint8Array(v.buffer, v.byteOffset, KVM_DEBUGREGS_SIZE).fill(0); // flags and reserved stay 0
  d.db.forEach((x, i) => v.setBigUint64(i * 8, x, true));
  v.setBigUint64(DEBUGREGS_DR6, d.dr6, true);
  v.setBigUint64(DEBUGREGS_DR7, d.dr7, true);
  v.setBigUint64(DEBUGREGS_FLAGS, 0n, true);
}

/**
 * struct kvm_irqchip (520 bytes): chip_id, pad, then a 512-byte union of
 * struct kvm_pic_state and struct kvm_ioapic_state (KVM_GET/SET_IRQCHIP).
 */
export const KVM_IRQCHIP_SIZE = 520, IRQCHIP_CHIP = 8;
export const KVM_IRQCHIP_PIC_MASTER = 0, KVM_IRQCHIP_PIC_SLAVE = 1, KVM_IRQCHIP_IOAPIC = 2;

/** struct kvm_pic_state (16 bytes): one u8 each, in this order (an 8259A's registers and init sequence state). */
export const PIC_FIELDS = [
  "lastIrr", "irr", "imr", "isr", "priorityAdd", "irqBase", "readRegSelect", "poll", "specialMask", "initState",
  "autoEoi", "rotateOnAutoEoi", "specialFullyNestedMode", "init4", "elcr", "elcrMask",
] as const;
export type PicState = Record<(typeof PIC_FIELDS)[number], number>;
export const KVM_PIC_STATE_SIZE = 16;
export function decodePic(v: DataView, o = IRQCHIP_CHIP): PicState {
  const p = {} as PicState;
  PIC_FIELDS.forEach((f, i) => (p[f] = v.getUint8(o + i)));
  return p;
}
export function encodePic(v: DataView, p: PicState, o = IRQCHIP_CHIP): void {
  PIC_FIELDS.forEach((f, i) => v.setUint8(o + i, p[f]));
}

/**
 * struct kvm_ioapic_state (216 bytes): base_address u64, ioregsel, id, irr,
 * pad (u32 each), then redirtbl[KVM_IOAPIC_NUM_PINS], each a u64 redirection
 * entry (vector, delivery mode, mask… as the 82093AA lays them out).
 */
export const KVM_IOAPIC_STATE_SIZE = 216, KVM_IOAPIC_NUM_PINS = 24;
const IOAPIC_BASE = 0, IOAPIC_IOREGSEL = 8, IOAPIC_ID = 12, IOAPIC_IRR = 16, IOAPIC_REDIRTBL = 24;
export interface IoapicState {
  baseAddress: bigint;
  ioregsel: number;
  id: number;
  irr: number;
  redirtbl: bigint[];
}
export function decodeIoapic(v: DataView, o = IRQCHIP_CHIP): IoapicState {
  return {
    baseAddress: v.getBigUint64(o + IOAPIC_BASE, true), ioregsel: v.getUint32(o + IOAPIC_IOREGSEL, true),
    id: v.getUint32(o + IOAPIC_ID, true), irr: v.getUint32(o + IOAPIC_IRR, true),
    redirtbl: Array.from({ length: KVM_IOAPIC_NUM_PINS }, (_, i) => v.getBigUint64(o + IOAPIC_REDIRTBL + i * 8, true)),
  };
}
export function encodeIoapic(v: DataView, s: IoapicState, o = IRQCHIP_CHIP): void {
  if (s.redirtbl.length !== KVM_IOAPIC_NUM_PINS) {
    throw new RangeError(`kvm_ioapic_state has ${KVM_IOAPIC_NUM_PINS} redirection entries, not ${s.redirtbl.length}`);
  }
  v.setBigUint64(o + IOAPIC_BASE, s.baseAddress, true);
  v.setUint32(o + IOAPIC_IOREGSEL, s.ioregsel, true);
  v.setUint32(o + IOAPIC_ID, s.id, true);
  v.setUint32(o + IOAPIC_IRR, s.irr, true);
  v.setUint32(o + IOAPIC_IRR + 4, 0, true); // pad
  s.redirtbl.forEach((e, i) => v.setBigUint64(o + IOAPIC_REDIRTBL + i * 8, e, true));
}

/**
 * struct kvm_pit_channel_state (24 bytes): count u32 (65536 fits), latched_count
 * u16, ten u8 of 8254 latch/mode state, then count_load_time s64 (host ktime
 * in ns when the count was loaded: KVM_SET_PIT2 resets it to "now").
 */
export const KVM_PIT_CHANNEL_STATE_SIZE = 24;
const PIT_CHANNEL_BYTES = [
  "countLatched", "statusLatched", "status", "readState", "writeState", "writeLatch", "rwMode", "mode", "bcd", "gate",
] as const;
export type PitChannel = { count: number; latchedCount: number; countLoadTime: bigint } & Record<(typeof PIT_CHANNEL_BYTES)[number], number>;
/** struct kvm_pit_state2 (112 bytes): channels[3], flags (KVM_PIT_FLAGS_*), reserved[9]. */
export const KVM_PIT_STATE2_SIZE = 112, PIT_STATE2_FLAGS = 72;
export const KVM_PIT_FLAGS_HPET_LEGACY = 1, KVM_PIT_FLAGS_SPEAKER_DATA_ON = 2;
export interface PitState2 {
  channels: [PitChannel, PitChannel, PitChannel];
  flags: number;
}
export function decodePitState2(v: DataView): PitState2 {
  const ch = (o: number): PitChannel => {
    const c = { count: v.getUint32(o, true), latchedCount: v.getUint16(o + 4, true), countLoadTime: v.getBigInt64(o + 16, true) } as PitChannel;
    PIT_CHANNEL_BYTES.forEach((f, i) => (c[f] = v.getUint8(o + 6 + i)));
    return c;
  };
  return { channels: [ch(0), ch(24), ch(48)], flags: v.getUint32(PIT_STATE2_FLAGS, true) };
}
export function encodePitState2(v: DataView, s: PitState2): void {
  new Uint8Array(v.buffer, v.byteOffset, KVM_PIT_STATE2_SIZE).fill(0); // reserved stays 0
  s.channels.forEach((c, n) => {
    const o = n * KVM_PIT_CHANNEL_STATE_SIZE;
    v.setUint32(o, c.count, true);
    v.setUint16(o + 4, c.latchedCount, true);
    PIT_CHANNEL_BYTES.forEach((f, i) => v.setUint8(o + 6 + i, c[f]));
    v.setBigInt64(o + 16, c.countLoadTime, true);
  });
  v.setUint32(PIT_STATE2_FLAGS, s.flags, true);
}

/**
 * struct kvm_clock_data (48 bytes): clock (kvmclock ns), flags, pad0,
 * realtime and host_tsc (valid when flags say so, Linux 5.16+), pad[4].
 */
export const KVM_CLOCK_DATA_SIZE = 48;
const CLOCK_FLAGS = 8, CLOCK_REALTIME = 16, CLOCK_HOST_TSC = 24;
/** kvm_clock_data.flags (uapi/linux/kvm.h, "For KVM_CAP_ADJUST_CLOCK"). */
export const KVM_CLOCK_TSC_STABLE = 2, KVM_CLOCK_REALTIME = 4, KVM_CLOCK_HOST_TSC = 8;
export interface ClockData {
  clock: bigint;
  flags: number;
  realtime: bigint;
  hostTsc: bigint;
}
export function decodeClockData(v: DataView): ClockData {
  return {
    clock: v.getBigUint64(0, true), flags: v.getUint32(CLOCK_FLAGS, true),
    realtime: v.getBigUint64(CLOCK_REALTIME, true), hostTsc: v.getBigUint64(CLOCK_HOST_TSC, true),
  };
}
export function encodeClockData(v: DataView, c: ClockData): void {
  new Uint8Array(v.buffer, v.byteOffset, KVM_CLOCK_DATA_SIZE).fill(0);
  v.setBigUint64(0, c.clock, true);
  v.setUint32(CLOCK_FLAGS, c.flags, true);
  v.setBigUint64(CLOCK_REALTIME, c.realtime, true);
  v.setBigUint64(CLOCK_HOST_TSC, c.hostTsc, true);
}
