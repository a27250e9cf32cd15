/**
 * A well-formed snapshot state for tests that need no KVM: every field the
 * state file checks is present, with values no real vCPU would hold (a real
 * one comes from loop/snapshot_kvm_test.ts). Tests change one field at a
 * time and look for the refusal that names it.
 */
import type { CpuidEntry, Segment } from "../../ffi/structs.ts";
import { REGS_FIELDS } from "../../ffi/structs.ts";
import type { VcpuState } from "../../vm/vcpu_state.ts";
import type { SnapshotState } from "../../vm/snapshot_file.ts";

const seg = (selector: number): Segment => ({
  base: 0n, limit: 0xffffffff, selector, type: 11, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
});

/** "GenuineIntel", family 6 model 0x55, with SSE4.2 (leaf 1 ECX bit 20) and AVX2 (leaf 7 EBX bit 5). */
export const INTEL_CPUID: CpuidEntry[] = [
  { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x756e6547, ecx: 0x6c65746e, edx: 0x49656e69 },
  { function: 1, index: 0, flags: 0, eax: 0x50654, ebx: 0, ecx: 1 << 20, edx: 1 },
  { function: 7, index: 0, flags: 1, eax: 0, ebx: 1 << 5, ecx: 0, edx: 0 },
];

export function fakeVcpu(): VcpuState {
  return {
    cpuid: INTEL_CPUID.map((e) => ({ ...e })),
    tscKhz: 2_000_000,
    mpState: 0,
    regs: Object.fromEntries(REGS_FIELDS.map((f, i) => [f, BigInt(i) << 40n])) as VcpuState["regs"],
    sregs: {
      cs: seg(8), ds: seg(16), es: seg(16), fs: seg(16), gs: seg(16), ss: seg(16), tr: seg(24), ldt: seg(0),
      gdt: { base: 0x500n, limit: 0x1f }, idt: { base: 0n, limit: 0 },
      cr0: 0x80050033n, cr2: 0n, cr3: 0x9000n, cr4: 0x20n, cr8: 0n, efer: 0xd01n, apicBase: 0xfee00900n,
      interruptBitmap: [0n, 0n, 0n, 0n],
    },
    fpu: {
      fpr: new Uint8Array(128), fcw: 0x37f, fsw: 0, ftwx: 0, lastOpcode: 0, lastIp: 0n, lastDp: 0n, xmm: new Uint8Array(256),
      mxcsr: 0x1f80,
    },
    xsave: new Uint8Array(4096).fill(7),
    xcrs: [{ xcr: 0, value: 7n }],
    debugRegs: { db: [0n, 0n, 0n, 0n], dr6: 0xffff0ff0n, dr7: 0x400n },
    lapic: new Uint8Array(1024).fill(3),
    msrs: [[0x10, 123456789n], [0xc0000080, 0xd01n]],
    vcpuEvents: new Uint8Array(64),
  };
}

const pic = () => ({
  lastIrr: 0, irr: 0, imr: 0xff, isr: 0, priorityAdd: 0, irqBase: 0x20, readRegSelect: 0, poll: 0, specialMask: 0, initState: 0,
  autoEoi: 0, rotateOnAutoEoi: 0, specialFullyNestedMode: 0, init4: 1, elcr: 0, elcrMask: 0xf8,
});

/** A state with `cpus` vCPUs, 16 MiB of RAM in one region and no devices. */
export function fakeState(o: { cpus?: number; memBytes?: number; sharedLayout?: string; uartBytes?: number } = {}): SnapshotState {
  const bytes = o.memBytes ?? 16 * 1024 * 1024;
  return {
    createdAt: "2026-12-01T00:00:00.000Z",
    memory: { bytes, regions: [{ gpa: 0, size: bytes, offset: 0 }] },
    cpus: o.cpus ?? 1,
    sharedLayout: o.sharedLayout ?? "layout",
    devices: [],
    vcpus: Array.from({ length: o.cpus ?? 1 }, fakeVcpu),
    vm: {
      picMaster: pic(), picSlave: pic(),
      ioapic: { baseAddress: 0xfec00000n, ioregsel: 0, id: 0, irr: 0, redirtbl: Array(24).fill(0x10000n) },
      pit2: null,
      clock: { clock: 123456789012n, flags: 2, realtime: 0n, hostTsc: 0n },
    },
    uart: new Uint8Array(o.uartBytes ?? 64),
  };
}
