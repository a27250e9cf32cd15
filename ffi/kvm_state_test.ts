/**
 * The snapshot half of the KVM API: the ioctl numbers, capabilities and
 * struct layouts ffi/kvm.ts and ffi/structs.ts add for saving and restoring
 * state, pinned against the values the kernel's headers give
 * (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h, x86-64; the
 * expected numbers were printed by a C program built against them). The
 * ioctls themselves are driven on /dev/kvm by vm/vcpu_state_test.ts and
 * vm/vm_state_test.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CAP, KVM } from "./kvm.ts";
import {
  decodeClockData, decodeDebugRegs, decodeFpu, decodeIoapic, decodeMsrList, decodeMsrs, decodePic, decodePitState2,
  decodeXcrs, encodeClockData, encodeDebugRegs, encodeFpu, encodeIoapic, encodeMsrs, encodePic, encodePitState2,
  encodeXcrs, type Fpu, FPU, IRQCHIP_CHIP, KVM_CLOCK_DATA_SIZE, KVM_DEBUGREGS_SIZE, KVM_FPU_SIZE, KVM_IOAPIC_NUM_PINS,
  KVM_IOAPIC_STATE_SIZE, KVM_IRQCHIP_SIZE, KVM_MAX_XCRS, KVM_MP_STATE_SIZE, KVM_MSR_LIST_HEADER, KVM_MSRS_HEADER,
  KVM_MSRS_PER_CALL, KVM_MSR_ENTRY_SIZE, KVM_PIC_STATE_SIZE, KVM_PIT_CHANNEL_STATE_SIZE, KVM_PIT_STATE2_SIZE,
  KVM_VCPU_EVENTS_SIZE, KVM_XCR_SIZE, KVM_XCRS_SIZE, KVM_XSAVE_SIZE, MP_STATE, PIC_FIELDS, type PicState,
  type PitState2, VCPU_EVENTS, XSAVE,
} from "./structs.ts";

const view = (n: number) => new DataView(new ArrayBuffer(n));

test("the state ioctls equal the kernel's _IOR/_IOW/_IOWR encodings", () => {
  const expected: Partial<Record<keyof typeof KVM, number>> = {
    GET_MSR_INDEX_LIST: 0xc004ae02,
    GET_IRQCHIP: 0xc208ae62,
    SET_IRQCHIP: 0x8208ae63, // _IOR in the header, though userspace writes it
    SET_CLOCK: 0x4030ae7b,
    GET_CLOCK: 0x8030ae7c,
    GET_MSRS: 0xc008ae88,
    GET_CPUID2: 0xc008ae91,
    GET_MP_STATE: 0x8004ae98,
    SET_MP_STATE: 0x4004ae99,
    GET_PIT2: 0x8070ae9f,
    SET_PIT2: 0x4070aea0,
    GET_VCPU_EVENTS: 0x8040ae9f,
    SET_VCPU_EVENTS: 0x4040aea0,
    GET_DEBUGREGS: 0x8080aea1,
    SET_DEBUGREGS: 0x4080aea2,
    SET_TSC_KHZ: 0xaea2,
    GET_XSAVE: 0x9000aea4,
    SET_XSAVE: 0x5000aea5,
    GET_XCRS: 0x8188aea6,
    SET_XCRS: 0x4188aea7,
    KVMCLOCK_CTRL: 0xaead,
    GET_XSAVE2: 0x9000aecf,
    // Used by the state code and already pinned in kvm_test.ts; repeated as the pairs they form.
    GET_FPU: 0x81a0ae8c,
    SET_FPU: 0x41a0ae8d,
    SET_MSRS: 0x4008ae89,
  };
  for (const [name, value] of Object.entries(expected)) {
    assert.equal(KVM[name as keyof typeof KVM].toString(16), value.toString(16), `KVM_${name}`);
  }
});

test("the state capabilities match uapi/linux/kvm.h", () => {
  assert.deepEqual(
    {
      MP_STATE: CAP.MP_STATE, PIT_STATE2: CAP.PIT_STATE2, ADJUST_CLOCK: CAP.ADJUST_CLOCK, VCPU_EVENTS: CAP.VCPU_EVENTS,
      DEBUGREGS: CAP.DEBUGREGS, XSAVE: CAP.XSAVE, XCRS: CAP.XCRS, TSC_CONTROL: CAP.TSC_CONTROL,
      KVMCLOCK_CTRL: CAP.KVMCLOCK_CTRL, XSAVE2: CAP.XSAVE2,
    },
    {
      MP_STATE: 14, PIT_STATE2: 35, ADJUST_CLOCK: 39, VCPU_EVENTS: 41, DEBUGREGS: 50, XSAVE: 55, XCRS: 56,
      TSC_CONTROL: 60, KVMCLOCK_CTRL: 76, XSAVE2: 208,
    },
  );
});

test("state struct sizes match the kernel's x86-64 layouts", () => {
  assert.equal(KVM_MSR_LIST_HEADER, 4); // struct kvm_msr_list: nmsrs, then u32 indices[]
  assert.equal(KVM_MSRS_PER_CALL, 255); // MAX_IO_MSRS 256, refused when nmsrs >= it
  assert.ok(KVM_MSRS_HEADER + KVM_MSRS_PER_CALL * KVM_MSR_ENTRY_SIZE <= 4096, "one call fits VcpuFd's 4 KiB scratch");
  assert.equal(KVM_FPU_SIZE, 416);
  assert.equal(KVM_XSAVE_SIZE, 4096); // u32 region[1024]
  assert.equal(KVM_XCR_SIZE, 16);
  assert.equal(KVM_MAX_XCRS, 16);
  assert.equal(KVM_XCRS_SIZE, 8 + KVM_MAX_XCRS * KVM_XCR_SIZE + 16 * 8); // 392
  assert.equal(KVM_MP_STATE_SIZE, 4);
  assert.equal(KVM_VCPU_EVENTS_SIZE, 64);
  assert.equal(KVM_DEBUGREGS_SIZE, 128); // db[4], dr6, dr7, flags, reserved[9]
  assert.equal(KVM_PIC_STATE_SIZE, 16);
  assert.equal(PIC_FIELDS.length, KVM_PIC_STATE_SIZE);
  assert.equal(KVM_IOAPIC_STATE_SIZE, 24 + KVM_IOAPIC_NUM_PINS * 8); // 216
  assert.equal(KVM_IRQCHIP_SIZE, 520); // chip_id, pad, union { char dummy[512]; … }
  assert.equal(IRQCHIP_CHIP, 8);
  assert.equal(KVM_PIT_CHANNEL_STATE_SIZE, 24);
  assert.equal(KVM_PIT_STATE2_SIZE, 112); // channels[3], flags, reserved[9]
  assert.equal(KVM_CLOCK_DATA_SIZE, 48);
});

test("FPU names every kvm_fpu offset", () => {
  assert.deepEqual({ ...FPU }, {
    FPR: 0, FCW: 128, FSW: 130, FTWX: 132, LAST_OPCODE: 134, LAST_IP: 136, LAST_DP: 144, XMM: 152, MXCSR: 408,
  });
});

test("XSAVE names the legacy-area and header offsets of the XSAVE image (SDM vol. 1 §13.4.1)", () => {
  assert.deepEqual({ ...XSAVE }, { MXCSR: 24, ST0: 32, XMM0: 160, XSTATE_BV: 512 });
});

test("VCPU_EVENTS names the offsets of struct kvm_vcpu_events", () => {
  assert.deepEqual({ ...VCPU_EVENTS }, {
    EXCEPTION_INJECTED: 0, EXCEPTION_NR: 1, EXCEPTION_HAS_ERROR_CODE: 2, EXCEPTION_PENDING: 3, EXCEPTION_ERROR_CODE: 4,
    INTERRUPT_INJECTED: 8, INTERRUPT_NR: 9, INTERRUPT_SOFT: 10, INTERRUPT_SHADOW: 11,
    NMI_INJECTED: 12, NMI_PENDING: 13, NMI_MASKED: 14,
    SIPI_VECTOR: 16, FLAGS: 20,
    SMI_SMM: 24, SMI_PENDING: 25, SMI_INSIDE_NMI: 26, SMI_LATCHED_INIT: 27,
    TRIPLE_FAULT_PENDING: 28,
    EXCEPTION_HAS_PAYLOAD: 55, EXCEPTION_PAYLOAD: 56, // reserved[26] in between, then the u64 aligned at 56
  });
});

test("MP_STATE values match uapi/linux/kvm.h", () => {
  assert.deepEqual({ ...MP_STATE }, { RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3, SIPI_RECEIVED: 4 });
});

test("decodeMsrList() reads nmsrs u32 indices after the 4-byte count", () => {
  const v = view(KVM_MSR_LIST_HEADER + 3 * 4);
  v.setUint32(0, 3, true);
  [0x10, 0x174, 0xc000_0080].forEach((x, i) => v.setUint32(4 + i * 4, x, true));
  assert.deepEqual(decodeMsrList(v), [0x10, 0x174, 0xc000_0080]);
});

test("decodeMsrs() reads back the first n entries encodeMsrs() wrote", () => {
  const msrs: [number, bigint][] = [[0x10, 1n << 40n], [0x277, 0x0007_0406_0007_0406n], [0xc000_0082, 0xffff_ffff_8100_0000n]];
  const v = view(KVM_MSRS_HEADER + 3 * KVM_MSR_ENTRY_SIZE);
  encodeMsrs(v, msrs);
  assert.deepEqual(decodeMsrs(v, 3), msrs);
  assert.deepEqual(decodeMsrs(v, 1), msrs.slice(0, 1), "only as many as KVM said it read");
});

function sampleFpu(): Fpu {
  return {
    fpr: Uint8Array.from({ length: 128 }, (_, i) => i + 1), fcw: 0x27f, fsw: 0x3800, ftwx: 0x81, lastOpcode: 0x7ff,
    lastIp: 0x1122_3344_5566_7788n, lastDp: 0x8877_6655_4433_2211n,
    xmm: Uint8Array.from({ length: 256 }, (_, i) => 255 - i), mxcsr: 0x1fa0,
  };
}

test("encodeFpu() puts every kvm_fpu field at its offset and decodeFpu() reads it back", () => {
  const v = view(KVM_FPU_SIZE);
  new Uint8Array(v.buffer).fill(0xee);
  const f = sampleFpu();
  encodeFpu(v, f);
  assert.equal(v.getUint8(0), 1); // fpr[0][0]
  assert.equal(v.getUint8(127), 128); // fpr[7][15]
  assert.equal(v.getUint16(128, true), 0x27f); // fcw
  assert.equal(v.getUint16(130, true), 0x3800); // fsw
  assert.equal(v.getUint8(132), 0x81); // ftwx
  assert.equal(v.getUint8(133), 0); // pad1
  assert.equal(v.getUint16(134, true), 0x7ff); // last_opcode
  assert.equal(v.getBigUint64(136, true), f.lastIp);
  assert.equal(v.getBigUint64(144, true), f.lastDp);
  assert.equal(v.getUint8(152), 255); // xmm[0][0]
  assert.equal(v.getUint8(407), 0); // xmm[15][15]
  assert.equal(v.getUint32(408, true), 0x1fa0); // mxcsr
  assert.equal(v.getUint32(412, true), 0); // pad2
  assert.deepEqual(decodeFpu(v), f);
});

test("encodeXcrs() writes nr_xcrs, zero flags and 16-byte entries; decodeXcrs() reads them back", () => {
  const v = view(KVM_XCRS_SIZE);
  new Uint8Array(v.buffer).fill(0xee);
  encodeXcrs(v, [{ xcr: 0, value: 0x7n }]);
  assert.equal(v.getUint32(0, true), 1); // nr_xcrs
  assert.equal(v.getUint32(4, true), 0); // flags
  assert.equal(v.getUint32(8, true), 0); // xcrs[0].xcr
  assert.equal(v.getUint32(12, true), 0); // xcrs[0].reserved
  assert.equal(v.getBigUint64(16, true), 0x7n); // xcrs[0].value
  assert.equal(v.getBigUint64(KVM_XCRS_SIZE - 8, true), 0n, "padding cleared");
  assert.deepEqual(decodeXcrs(v), [{ xcr: 0, value: 0x7n }]);
  assert.throws(() => encodeXcrs(v, Array.from({ length: 17 }, () => ({ xcr: 0, value: 1n }))), RangeError);
});

test("encodeDebugRegs() lays out db[4], dr6, dr7 and zero flags", () => {
  const v = view(KVM_DEBUGREGS_SIZE);
  new Uint8Array(v.buffer).fill(0xee);
  const d = { db: [1n, 2n, 3n, 0xffff_ffff_8100_0000n] as [bigint, bigint, bigint, bigint], dr6: 0xffff_0ff0n, dr7: 0x403n };
  encodeDebugRegs(v, d);
  assert.equal(v.getBigUint64(24, true), 0xffff_ffff_8100_0000n); // db[3]
  assert.equal(v.getBigUint64(32, true), 0xffff_0ff0n); // dr6
  assert.equal(v.getBigUint64(40, true), 0x403n); // dr7
  assert.equal(v.getBigUint64(48, true), 0n); // flags: KVM_SET_DEBUGREGS refuses any
  assert.equal(v.getBigUint64(120, true), 0n); // reserved[8]
  assert.deepEqual(decodeDebugRegs(v), d);
});

test("encodePic() writes the 16 kvm_pic_state bytes in header order after chip_id and pad", () => {
  const v = view(KVM_IRQCHIP_SIZE);
  const p = Object.fromEntries(PIC_FIELDS.map((f, i) => [f, 0x10 + i])) as PicState;
  encodePic(v, p);
  assert.equal(v.getUint8(8), 0x10); // last_irr
  assert.equal(v.getUint8(8 + 2), 0x12); // imr
  assert.equal(v.getUint8(8 + 5), 0x15); // irq_base
  assert.equal(v.getUint8(8 + 13), 0x1d); // init4
  assert.equal(v.getUint8(8 + 15), 0x1f); // elcr_mask
  assert.deepEqual(decodePic(v), p);
});

test("encodeIoapic() lays out base_address, ioregsel, id, irr and redirtbl[24]", () => {
  const v = view(KVM_IRQCHIP_SIZE);
  const s = {
    baseAddress: 0xfec0_0000n, ioregsel: 0x10, id: 2, irr: 0x8,
    redirtbl: Array.from({ length: KVM_IOAPIC_NUM_PINS }, (_, i) => (BigInt(i) << 56n) | 0x1_0020n | BigInt(i)),
  };
  encodeIoapic(v, s);
  assert.equal(v.getBigUint64(8, true), 0xfec0_0000n); // base_address
  assert.equal(v.getUint32(16, true), 0x10); // ioregsel
  assert.equal(v.getUint32(20, true), 2); // id
  assert.equal(v.getUint32(24, true), 0x8); // irr
  assert.equal(v.getBigUint64(8 + 24, true), s.redirtbl[0]); // redirtbl[0]
  assert.equal(v.getBigUint64(8 + 24 + 23 * 8, true), s.redirtbl[23]); // redirtbl[23] ends at 8 + 216
  assert.deepEqual(decodeIoapic(v), s);
  assert.throws(() => encodeIoapic(v, { ...s, redirtbl: [] }), RangeError);
});

test("encodePitState2() lays out three 24-byte channels and flags at 72", () => {
  const v = view(KVM_PIT_STATE2_SIZE);
  new Uint8Array(v.buffer).fill(0xee);
  const ch = (n: number) => ({
    count: 0x1_0000 - n, latchedCount: 0x1234 + n, countLatched: 1, statusLatched: 0, status: 0x34, readState: 3,
    writeState: 3, writeLatch: 0x9c, rwMode: 3, mode: n + 1, bcd: 0, gate: n === 2 ? 0 : 1, countLoadTime: -5n + BigInt(n),
  });
  const s: PitState2 = { channels: [ch(0), ch(1), ch(2)], flags: 1 };
  encodePitState2(v, s);
  assert.equal(v.getUint32(24, true), 0xffff); // channels[1].count
  assert.equal(v.getUint16(28, true), 0x1235); // channels[1].latched_count
  assert.equal(v.getUint8(24 + 13), 2); // channels[1].mode: count_latched is byte 6, mode byte 13
  assert.equal(v.getBigInt64(48 + 16, true), -3n); // channels[2].count_load_time, signed
  assert.equal(v.getUint32(72, true), 1); // flags
  assert.equal(v.getUint32(108, true), 0); // reserved[8]
  assert.deepEqual(decodePitState2(v), s);
});

test("encodeClockData() lays out clock, flags, realtime and host_tsc", () => {
  const v = view(KVM_CLOCK_DATA_SIZE);
  new Uint8Array(v.buffer).fill(0xee);
  const c = { clock: 1_000_000_000_000n, flags: 6, realtime: 0x18ed_0000_0000_0000n, hostTsc: 0x5_9363_f610n };
  encodeClockData(v, c);
  assert.equal(v.getBigUint64(0, true), c.clock);
  assert.equal(v.getUint32(8, true), 6);
  assert.equal(v.getUint32(12, true), 0); // pad0
  assert.equal(v.getBigUint64(16, true), c.realtime);
  assert.equal(v.getBigUint64(24, true), c.hostTsc);
  assert.equal(v.getUint32(44, true), 0); // pad[3]
  assert.deepEqual(decodeClockData(v), c);
});
