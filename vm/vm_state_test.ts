/**
 * VM state on the real /dev/kvm: each in-kernel device (both PICs, the
 * IOAPIC, the PIT) and kvmclock is given a value a fresh VM would not have,
 * read back, written into a fresh VM, and read again; the two reads must
 * agree. Then saveVmState()/restoreVmState() do the same for all of them.
 *
 * Two things move on their own and are compared with a bound, not skipped:
 * kvmclock may only have advanced by the host time between the two reads,
 * and each PIT channel's count_load_time is the host time KVM (re)loaded
 * the count, which KVM_SET_PIT2 sets to "now" (kvm_pit_load_count). A piece
 * this KVM does not offer is skipped, naming its capability.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { CAP, Kvm, VmFd } from "../ffi/kvm.ts";
import { close } from "../ffi/libc.ts";
import {
  type ClockData, type IoapicState, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_FLAGS_HPET_LEGACY,
  type PicState, type PitState2,
} from "../ffi/structs.ts";
import { restoreVmState, saveVmState, type VmState } from "./vm_state.ts";
import { requireKvm } from "../test/support/require_kvm.ts";

/** A VM with irqchip and PIT, as vm/vm.ts makes it, and one vCPU; closed by `done`. */
function freshVm() {
  requireKvm();
  const kvm = new Kvm();
  const vm = new VmFd(kvm.createVm());
  vm.createIrqchip();
  vm.createPit2();
  const vcpuFd = vm.createVcpu(0);
  return {
    kvm, vm,
    done() {
      close(vcpuFd);
      close(vm.fd);
      close(kvm.fd);
    },
  };
}

function lacks(t: TestContext, cap: keyof typeof CAP): boolean {
  requireKvm();
  const kvm = new Kvm();
  const n = kvm.checkExtension(CAP[cap]);
  close(kvm.fd);
  if (n > 0) return false;
  const why = `/dev/kvm does not offer KVM_CAP_${cap}`;
  console.warn(`skipped: ${why}`); // Deno's node:test shows a skip as "ok"; say why on stderr
  t.skip(why);
  return true;
}

/** `put` a value on VM A and read it with `get`; `set` that on a fresh VM B and `get` again. */
function roundTrip<T>(put: (vm: VmFd) => void, get: (vm: VmFd) => T, set: (vm: VmFd, x: T) => void): { a: T; b: T; ms: number } {
  const A = freshVm(), B = freshVm();
  try {
    put(A.vm);
    const t0 = performance.now();
    const a = get(A.vm);
    set(B.vm, a);
    const b = get(B.vm);
    return { a, b, ms: performance.now() - t0 };
  } finally {
    A.done();
    B.done();
  }
}

/** Both PICs as Linux leaves them after init_8259A(): ICW2 vectors 0x20/0x28, ICW4, slave on IRQ2, levels set. */
function picPattern(base: PicState, master: boolean): PicState {
  return {
    ...base,
    irqBase: master ? 0x20 : 0x28,
    imr: master ? 0xfb : 0xff, // all masked but the cascade
    init4: 1,
    readRegSelect: 1, // OCW3 "read ISR"
    priorityAdd: 3,
    specialFullyNestedMode: master ? 1 : 0,
    elcr: master ? 0x08 : 0x0c, // level-triggered lines, inside each chip's elcr_mask
  };
}

test("KVM_GET_IRQCHIP/KVM_SET_IRQCHIP: both 8259A PICs survive a move to a fresh VM", () => {
  for (const chip of [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE]) {
    let want!: PicState;
    const { a, b } = roundTrip(
      (vm) => vm.setPic(chip, (want = picPattern(vm.getPic(chip), chip === KVM_IRQCHIP_PIC_MASTER))),
      (vm) => vm.getPic(chip),
      (vm, p) => vm.setPic(chip, p),
    );
    assert.deepEqual(a, want, `chip ${chip} reads back as set`);
    assert.deepEqual(b, a, `chip ${chip}`);
  }
});

/** Redirection entries as a guest leaves them: vector, level/edge, mask, destination (82093AA §3.2.4). */
function ioapicPattern(base: IoapicState): IoapicState {
  const MASKED = 1n << 16n, LEVEL = 1n << 15n, LOGICAL = 1n << 11n;
  return {
    ...base,
    id: 1,
    ioregsel: 0x10 + 2 * 9, // the low half of pin 9's entry
    redirtbl: base.redirtbl.map((_, pin) => {
      const vector = BigInt(0x30 + pin);
      if (pin % 3 === 0) return vector | MASKED; // masked, as a guest leaves unused pins
      return vector | (pin % 3 === 1 ? LEVEL : 0n) | (pin % 2 ? LOGICAL : 0n) | (BigInt(pin % 4) << 56n);
    }),
  };
}

test("KVM_GET_IRQCHIP/KVM_SET_IRQCHIP: the IOAPIC's id, register select and redirection table survive", () => {
  let want!: IoapicState;
  const { a, b } = roundTrip(
    (vm) => vm.setIoapic((want = ioapicPattern(vm.getIoapic()))),
    (vm) => vm.getIoapic(),
    (vm, s) => vm.setIoapic(s),
  );
  assert.equal(a.baseAddress, 0xfec0_0000n);
  assert.deepEqual(a, want);
  assert.deepEqual(b, a);
});

/**
 * A PIT as Linux programs it: channel 0 periodic (mode 2) at 100 Hz, channel
 * 2 a square wave (mode 3) for the speaker, gate off. HPET_LEGACY keeps the
 * in-kernel channel 0 timer from firing, so no IRQ0 changes the PICs under
 * the test.
 */
function pitPattern(base: PitState2): PitState2 {
  const [c0, c1, c2] = base.channels;
  return {
    channels: [
      { ...c0, count: 11932, mode: 2, rwMode: 3, writeState: 3, readState: 3, gate: 1, status: 0x34 },
      c1,
      { ...c2, count: 0x533, mode: 3, rwMode: 3, writeState: 3, readState: 3, gate: 0, status: 0xb6 },
    ],
    flags: KVM_PIT_FLAGS_HPET_LEGACY,
  };
}
/** The PIT state without count_load_time, the host time KVM_SET_PIT2 resets to "now". */
function pitWithoutLoadTimes(s: PitState2) {
  return { flags: s.flags, channels: s.channels.map(({ countLoadTime: _, ...c }) => c) };
}

test("KVM_GET_PIT2/KVM_SET_PIT2: the 8254's counts, modes and flags survive", (t) => {
  if (lacks(t, "PIT_STATE2")) return;
  let want!: PitState2;
  const { a, b } = roundTrip((vm) => vm.setPit2((want = pitPattern(vm.getPit2()))), (vm) => vm.getPit2(), (vm, s) => vm.setPit2(s));
  assert.deepEqual(pitWithoutLoadTimes(a), pitWithoutLoadTimes(want));
  assert.deepEqual(pitWithoutLoadTimes(b), pitWithoutLoadTimes(a));
});

/** kvmclock read on A then on B (set from A's reading) may only have gone forward by the host time between. */
function assertClockCarried(a: ClockData, b: ClockData, ms: number): void {
  const slackNs = BigInt(Math.ceil((ms * 1.1 + 50) * 1e6));
  assert.ok(b.clock >= a.clock && b.clock - a.clock <= slackNs, `kvmclock moved from ${a.clock} to ${b.clock} in ${ms} ms`);
}

const CLOCK_PATTERN = 1_000_000_000_000n; // 1000 s: a guest up for a while, far from a fresh VM's 0

test("KVM_GET_CLOCK/KVM_SET_CLOCK: kvmclock carries on from the saved value", (t) => {
  if (lacks(t, "ADJUST_CLOCK")) return;
  const { a, b, ms } = roundTrip(
    (vm) => vm.setClock({ clock: CLOCK_PATTERN, flags: 0, realtime: 0n, hostTsc: 0n }),
    (vm) => vm.getClock(),
    (vm, c) => vm.setClock({ ...c, flags: 0 }), // flags are KVM's answers about the host; restoreVmState() sends 0
  );
  assert.ok(a.clock >= CLOCK_PATTERN && a.clock < CLOCK_PATTERN + 60_000_000_000n, `A's clock ${a.clock} started at 1000 s`);
  assertClockCarried(a, b, ms);
});

/** Every device of `vm` given the patterns above. */
function dirty(vm: VmFd, kvm: Kvm): void {
  vm.setPic(KVM_IRQCHIP_PIC_MASTER, picPattern(vm.getPic(KVM_IRQCHIP_PIC_MASTER), true));
  vm.setPic(KVM_IRQCHIP_PIC_SLAVE, picPattern(vm.getPic(KVM_IRQCHIP_PIC_SLAVE), false));
  vm.setIoapic(ioapicPattern(vm.getIoapic()));
  if (kvm.checkExtension(CAP.PIT_STATE2) > 0) vm.setPit2(pitPattern(vm.getPit2()));
  if (kvm.checkExtension(CAP.ADJUST_CLOCK) > 0) vm.setClock({ clock: CLOCK_PATTERN, flags: 0, realtime: 0n, hostTsc: 0n });
}

test("saveVmState() then restoreVmState() on a fresh VM gives back the same devices and clock", () => {
  const A = freshVm(), B = freshVm();
  try {
    dirty(A.vm, A.kvm);
    const s0 = saveVmState(B.vm); // a fresh VM, to show every piece was changed
    const t0 = performance.now();
    const s1 = saveVmState(A.vm);
    for (const k of ["picMaster", "picSlave", "ioapic"] as (keyof VmState)[]) assert.notDeepEqual(s1[k], s0[k], k);
    if (s1.pit2) assert.notDeepEqual(pitWithoutLoadTimes(s1.pit2), pitWithoutLoadTimes(s0.pit2!), "pit2");
    if (s1.clock) assert.ok(s1.clock.clock >= CLOCK_PATTERN && s0.clock!.clock < CLOCK_PATTERN, "clock");
    restoreVmState(B.vm, s1);
    const s2 = saveVmState(B.vm);
    const ms = performance.now() - t0;

    assert.equal(s1.picMaster.irqBase, 0x20, "saved what was put");
    assert.equal(s1.ioapic.id, 1);
    for (const k of ["picMaster", "picSlave", "ioapic"] as (keyof VmState)[]) assert.deepEqual(s2[k], s1[k], k);
    assert.equal(s1.pit2 === null, A.kvm.checkExtension(CAP.PIT_STATE2) <= 0, "pit2 is null only without KVM_CAP_PIT_STATE2");
    assert.equal(s1.clock === null, A.kvm.checkExtension(CAP.ADJUST_CLOCK) <= 0, "clock is null only without KVM_CAP_ADJUST_CLOCK");
    if (s1.pit2) {
      assert.equal(s1.pit2.flags, KVM_PIT_FLAGS_HPET_LEGACY);
      assert.deepEqual(pitWithoutLoadTimes(s2.pit2!), pitWithoutLoadTimes(s1.pit2));
    }
    if (s1.clock) assertClockCarried(s1.clock, s2.clock!, ms);
  } finally {
    A.done();
    B.done();
  }
});
