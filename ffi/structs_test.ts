/**
 * The KVM struct layouts of ffi/structs.ts pinned against the kernel's
 * headers (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h,
 * x86-64): every size, the offset of every field vmm touches, and the
 * encode/decode round trips the vCPU ioctls rely on.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  type CpuidEntry,
  decodeCpuid2,
  decodeRegs,
  decodeSregs,
  encodeCpuid2,
  encodeMemoryRegion,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
  FPU_FCW,
  FPU_MXCSR,
  KVM_CPUID2_HEADER,
  KVM_CPUID_ENTRY2_SIZE,
  KVM_FPU_SIZE,
  KVM_IOEVENTFD_SIZE,
  KVM_IRQ_LEVEL_SIZE,
  KVM_IRQFD_SIZE,
  KVM_LAPIC_STATE_SIZE,
  KVM_MSR_ENTRY_SIZE,
  KVM_MSRS_HEADER,
  KVM_PIT_CONFIG_SIZE,
  KVM_REGS_SIZE,
  KVM_SEGMENT_SIZE,
  KVM_SREGS_SIZE,
  KVM_USERSPACE_MEMORY_REGION_SIZE,
  REGS_FIELDS,
  type Regs,
  RUN,
  type Segment,
  type Sregs,
} from "./structs.ts";

function view(n: number): DataView {
  return new DataView(new ArrayBuffer(n));
}

function segment(seed: number): Segment {
  return {
    base: 0x1122_3344_0000_0000n + BigInt(seed), limit: 0xabcd_0000 + seed, selector: seed * 8, type: 0xb,
    present: 1, dpl: 3, db: 1, s: 1, l: 0, g: 1, avl: 1, unusable: 0,
  };
}

function sampleSregs(): Sregs {
  return {
    cs: segment(1), ds: segment(2), es: segment(3), fs: segment(4), gs: segment(5), ss: segment(6), tr: segment(7),
    ldt: segment(8),
    gdt: { base: 0x500n, limit: 31 },
    idt: { base: 0x520n, limit: 7 },
    cr0: 0x8000_0011n, cr2: 0xdead_0000n, cr3: 0x9000n, cr4: 0x20n, cr8: 0xfn, efer: 0x500n, apicBase: 0xfee0_0900n,
    interruptBitmap: [1n, 2n, 3n, 0x8000_0000_0000_0000n],
  };
}

test("struct sizes match the kernel's x86-64 layouts", () => {
  assert.equal(KVM_REGS_SIZE, 144); // 18 × u64
  assert.equal(KVM_SEGMENT_SIZE, 24);
  assert.equal(KVM_SREGS_SIZE, 312); // 8 segments, 2 dtables, 7 u64, interrupt_bitmap[4]
  assert.equal(KVM_USERSPACE_MEMORY_REGION_SIZE, 32);
  assert.equal(KVM_CPUID2_HEADER, 8);
  assert.equal(KVM_CPUID_ENTRY2_SIZE, 40);
  assert.equal(KVM_MSRS_HEADER, 8);
  assert.equal(KVM_MSR_ENTRY_SIZE, 16);
  assert.equal(KVM_LAPIC_STATE_SIZE, 1024);
  assert.equal(KVM_FPU_SIZE, 416);
  assert.equal(KVM_IRQ_LEVEL_SIZE, 8);
  assert.equal(KVM_IRQFD_SIZE, 32);
  assert.equal(KVM_IOEVENTFD_SIZE, 64);
  assert.equal(KVM_PIT_CONFIG_SIZE, 64);
});

test("encodeRegs() writes kvm_regs in kernel order: rax at 0, rip at 128, rflags at 136", () => {
  const v = view(KVM_REGS_SIZE);
  encodeRegs(v, { rax: 1n, rsi: 0x7000n, r15: 0xffff_ffff_ffff_ffffn, rip: 0x10_0200n, rflags: 2n });
  assert.equal(v.getBigUint64(0, true), 1n);
  assert.equal(v.getBigUint64(4 * 8, true), 0x7000n); // rsi is the 5th register
  assert.equal(v.getBigUint64(15 * 8, true), 0xffff_ffff_ffff_ffffn);
  assert.equal(v.getBigUint64(128, true), 0x10_0200n);
  assert.equal(v.getBigUint64(136, true), 2n);
  assert.equal(v.getBigUint64(8, true), 0n, "registers left out are written as 0");
  assert.equal(REGS_FIELDS.length * 8, KVM_REGS_SIZE);
});

test("decodeRegs() reads back every register encodeRegs() wrote", () => {
  const v = view(KVM_REGS_SIZE);
  const regs = Object.fromEntries(REGS_FIELDS.map((f, i) => [f, BigInt(i) * 0x1_0000_0001n])) as Regs;
  encodeRegs(v, regs);
  assert.deepEqual(decodeRegs(v), regs);
});

test("encodeSregs() puts segments, descriptor tables and control registers at the kernel's offsets", () => {
  const v = view(KVM_SREGS_SIZE);
  const s = sampleSregs();
  encodeSregs(v, s);
  // struct kvm_segment: base u64, limit u32, selector u16, then one byte each.
  const cs = 0;
  assert.equal(v.getBigUint64(cs, true), s.cs.base);
  assert.equal(v.getUint32(cs + 8, true), s.cs.limit);
  assert.equal(v.getUint16(cs + 12, true), 8);
  assert.deepEqual(
    [14, 15, 16, 17, 18, 19, 20, 21, 22, 23].map((o) => v.getUint8(cs + o)),
    [0xb, 1, 3, 1, 1, 0, 1, 1, 0, 0], // type present dpl db s l g avl unusable padding
  );
  // cs ds es fs gs ss tr ldt, 24 bytes apart.
  ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"].forEach((_, i) => assert.equal(v.getUint16(i * 24 + 12, true), (i + 1) * 8));
  assert.equal(v.getBigUint64(192, true), 0x500n); // gdt.base
  assert.equal(v.getUint16(200, true), 31); // gdt.limit
  assert.equal(v.getBigUint64(208, true), 0x520n); // idt.base
  assert.equal(v.getUint16(216, true), 7); // idt.limit
  assert.equal(v.getBigUint64(224, true), s.cr0);
  assert.equal(v.getBigUint64(232, true), s.cr2);
  assert.equal(v.getBigUint64(240, true), s.cr3);
  assert.equal(v.getBigUint64(248, true), s.cr4);
  assert.equal(v.getBigUint64(256, true), s.cr8);
  assert.equal(v.getBigUint64(264, true), s.efer);
  assert.equal(v.getBigUint64(272, true), s.apicBase);
  assert.equal(v.getBigUint64(280, true), 1n); // interrupt_bitmap[0]
  assert.equal(v.getBigUint64(304, true), 0x8000_0000_0000_0000n); // interrupt_bitmap[3], the last 8 bytes
});

test("decodeSregs() round-trips every segment and register encodeSregs() wrote", () => {
  const v = view(KVM_SREGS_SIZE);
  const s = sampleSregs();
  encodeSregs(v, s);
  assert.deepEqual(decodeSregs(v), s);
});

test("encodeMemoryRegion() lays out kvm_userspace_memory_region", () => {
  const v = view(KVM_USERSPACE_MEMORY_REGION_SIZE);
  encodeMemoryRegion(v, { slot: 1, flags: 2, gpa: 0x1_0000_0000n, size: 0x4000_0000n, hostAddr: 0x7f12_3456_7000n });
  assert.equal(v.getUint32(0, true), 1); // slot
  assert.equal(v.getUint32(4, true), 2); // flags
  assert.equal(v.getBigUint64(8, true), 0x1_0000_0000n); // guest_phys_addr
  assert.equal(v.getBigUint64(16, true), 0x4000_0000n); // memory_size
  assert.equal(v.getBigUint64(24, true), 0x7f12_3456_7000n); // userspace_addr
});

test("encodeCpuid2() writes nent, then 40-byte entries with the padding cleared", () => {
  const entries: CpuidEntry[] = [
    { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x756e6547, ecx: 0x6c65746e, edx: 0x49656e69 },
    // A register holding bit 31 arrives as a negative int32 from `|=`; it must be written as u32.
    { function: 1, index: 0, flags: 0, eax: 0x806f8, ebx: 0x0104_0800, ecx: 1 << 31, edx: -1 },
  ];
  const v = view(KVM_CPUID2_HEADER + 2 * KVM_CPUID_ENTRY2_SIZE);
  new Uint8Array(v.buffer).fill(0xee);
  encodeCpuid2(v, entries);
  assert.equal(v.getUint32(0, true), 2); // nent
  assert.equal(v.getUint32(4, true), 0); // padding
  const e1 = KVM_CPUID2_HEADER + KVM_CPUID_ENTRY2_SIZE;
  assert.equal(v.getUint32(e1, true), 1); // function
  assert.equal(v.getUint32(e1 + 16, true), 0x0104_0800); // ebx
  assert.equal(v.getUint32(e1 + 20, true), 0x8000_0000); // ecx
  assert.equal(v.getUint32(e1 + 24, true), 0xffff_ffff); // edx
  for (const p of [28, 32, 36]) assert.equal(v.getUint32(e1 + p, true), 0, `padding at ${p}`);
});

test("decodeCpuid2() reads back the entries as unsigned 32-bit values", () => {
  const entries: CpuidEntry[] = [
    { function: 0xb, index: 1, flags: 1, eax: 2, ebx: 4, ecx: 0x201, edx: 3 },
    { function: 0x8000_0008, index: 0, flags: 0, eax: 0x3030, ebx: 0, ecx: 0x2003, edx: 0xffff_ffff },
  ];
  const v = view(KVM_CPUID2_HEADER + 2 * KVM_CPUID_ENTRY2_SIZE);
  encodeCpuid2(v, entries);
  assert.deepEqual(decodeCpuid2(v), entries);
});

test("encodeMsrs() writes nmsrs, then index, reserved and data per 16-byte entry", () => {
  const v = view(KVM_MSRS_HEADER + 2 * KVM_MSR_ENTRY_SIZE);
  encodeMsrs(v, [[0x10, 5n], [0xc000_0082, 0xffff_ffff_8100_0000n]]);
  assert.equal(v.getUint32(0, true), 2);
  assert.equal(v.getUint32(8, true), 0x10);
  assert.equal(v.getUint32(12, true), 0);
  assert.equal(v.getBigUint64(16, true), 5n);
  assert.equal(v.getUint32(24, true), 0xc000_0082);
  assert.equal(v.getBigUint64(32, true), 0xffff_ffff_8100_0000n);
});

test("RUN names the kvm_run offsets of the kernel's struct", () => {
  assert.deepEqual(
    { ...RUN },
    {
      REQUEST_INTERRUPT_WINDOW: 0, IMMEDIATE_EXIT: 1, EXIT_REASON: 8, READY_FOR_INTERRUPT_INJECTION: 12, IF_FLAG: 13,
      U: 32, // the exit union follows flags (14), cr8 (16) and apic_base (24)
      IO_DIRECTION: 32, IO_SIZE: 33, IO_PORT: 34, IO_COUNT: 36, IO_DATA_OFFSET: 40,
      MMIO_PHYS_ADDR: 32, MMIO_DATA: 40, MMIO_LEN: 48, MMIO_IS_WRITE: 52,
      FAIL_ENTRY_REASON: 32,
      INTERNAL_SUBERROR: 32, INTERNAL_NDATA: 36, INTERNAL_DATA: 40,
      SYSTEM_EVENT_TYPE: 32,
    },
  );
});

test("FPU_MXCSR is the offset of kvm_fpu.mxcsr", () => {
  // fpr[8][16] (128) + fcw, fsw, ftwx, pad1, last_opcode (8) + last_ip, last_dp (16) + xmm[16][16] (256)
  assert.equal(FPU_MXCSR, 128 + 8 + 16 + 256);
});

test("FPU_FCW is the offset of kvm_fpu.fcw, right after fpr[8][16]", () => {
  assert.equal(FPU_FCW, 128);
});
