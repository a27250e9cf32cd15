import { test } from "node:test";
import assert from "node:assert/strict";
import {
  type MmioDevice,
  mmioStateWords,
  MmioTransport,
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_CONFIG,
  VIRTIO_MMIO_CONFIG_GENERATION,
  VIRTIO_MMIO_DEVICE_FEATURES,
  VIRTIO_MMIO_DEVICE_FEATURES_SEL,
  VIRTIO_MMIO_DEVICE_ID,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_INT_CONFIG,
  VIRTIO_MMIO_INT_VRING,
  VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_INTERRUPT_STATUS,
  VIRTIO_MMIO_MAGIC_VALUE,
  VIRTIO_MMIO_PAGE_SIZE,
  VIRTIO_MMIO_QUEUE_DESC_HIGH,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_DEVICE_HIGH,
  VIRTIO_MMIO_QUEUE_DEVICE_LOW,
  VIRTIO_MMIO_QUEUE_DRIVER_HIGH,
  VIRTIO_MMIO_QUEUE_DRIVER_LOW,
  VIRTIO_MMIO_QUEUE_NOTIFY,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_NUM_MAX,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_SHM_LEN_LOW,
  VIRTIO_MMIO_STATUS,
  VIRTIO_MMIO_VENDOR_ID,
  VIRTIO_MMIO_VERSION,
} from "./mmio.ts";
import { GuestError, Virtqueue } from "./ring.ts";
import { GuestMemory } from "../../vm/memory.ts";
import { DriverQueue } from "../../test/support/driver_queue.ts";

const RO = 1n << 5n; // VIRTIO_BLK_F_RO, a device-specific bit for the tests

function device(over: Partial<MmioDevice> = {}): MmioDevice {
  return { deviceId: 2, features: RO, queueSizes: [256, 128], config: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), ...over };
}

/** A seeded xorshift32: the same garbage every run. */
function xorshift(seed: number): () => number {
  return () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return seed >>> 0;
  };
}

function writeFeatures(t: MmioTransport, f: bigint): void {
  t.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 4, 1);
  t.write(VIRTIO_MMIO_DRIVER_FEATURES, 4, Number(f >> 32n));
  t.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 4, 0);
  t.write(VIRTIO_MMIO_DRIVER_FEATURES, 4, Number(f & 0xffff_ffffn));
}

/** Linux virtio_mmio's probe up to FEATURES_OK (virtio 1.2 §3.1.1 steps 1–6). */
function negotiate(t: MmioTransport, f = VIRTIO_F_VERSION_1): void {
  t.write(VIRTIO_MMIO_STATUS, 4, 0);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  writeFeatures(t, f);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
}

const UP = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

test("MmioTransport.read() identifies a version 2 virtio-mmio device", () => {
  const t = new MmioTransport(device());
  assert.equal(t.read(VIRTIO_MMIO_MAGIC_VALUE, 4), 0x74726976);
  assert.equal(t.read(VIRTIO_MMIO_VERSION, 4), 2);
  assert.equal(t.read(VIRTIO_MMIO_DEVICE_ID, 4), 2);
  assert.notEqual(t.read(VIRTIO_MMIO_VENDOR_ID, 4), 0);
  assert.equal(t.read(VIRTIO_MMIO_SHM_LEN_LOW, 4), 0xffff_ffff);
});

test("MmioTransport offers VERSION_1 always, and EVENT_IDX and INDIRECT_DESC when asked", () => {
  const words = (t: MmioTransport) =>
    [0, 1, 2].map((sel) => {
      t.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 4, sel);
      return t.read(VIRTIO_MMIO_DEVICE_FEATURES, 4);
    });
  assert.deepEqual(words(new MmioTransport(device())), [0x20, 1, 0]);
  const t = new MmioTransport(device(), { eventIdx: true, indirectDesc: true });
  assert.deepEqual(words(t), [0x20 | (1 << 28) | (1 << 29), 1, 0]);
  assert.equal(t.offered, RO | VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC);
});

test("MmioTransport walks the status machine to DRIVER_OK", () => {
  const t = new MmioTransport(device(), { eventIdx: true });
  negotiate(t, VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | RO);
  assert.equal(t.read(VIRTIO_MMIO_STATUS, 4), STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  assert.equal(t.driverFeatures, VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | RO);
  assert.deepEqual(t.write(VIRTIO_MMIO_STATUS, 4, UP), { kind: "driverOk" });
  assert.equal(t.status, UP);
  assert.equal(t.write(VIRTIO_MMIO_STATUS, 4, UP), null); // the same value again: nothing new
});

test("MmioTransport refuses FEATURES_OK for features it did not offer", () => {
  const t = new MmioTransport(device());
  negotiate(t, VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX);
  assert.equal(t.read(VIRTIO_MMIO_STATUS, 4), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  assert.equal(t.write(VIRTIO_MMIO_STATUS, 4, UP), null);
});

test("MmioTransport refuses FEATURES_OK from a legacy driver (no VERSION_1)", () => {
  const t = new MmioTransport(device());
  negotiate(t, RO);
  assert.equal(t.read(VIRTIO_MMIO_STATUS, 4) & STATUS_FEATURES_OK, 0);
});

test("MmioTransport ignores status steps out of order", () => {
  const t = new MmioTransport(device());
  assert.equal(t.write(VIRTIO_MMIO_STATUS, 4, STATUS_DRIVER), null);
  assert.equal(t.status, 0);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK); // two steps at once
  assert.equal(t.status, STATUS_ACKNOWLEDGE);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER_OK);
  assert.equal(t.status, STATUS_ACKNOWLEDGE);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE); // clearing a bit is not allowed
  assert.equal(t.status, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
});

test("MmioTransport freezes driver features at FEATURES_OK", () => {
  const t = new MmioTransport(device());
  writeFeatures(t, VIRTIO_F_VERSION_1); // before DRIVER: ignored
  assert.equal(t.driverFeatures, 0n);
  negotiate(t);
  writeFeatures(t, VIRTIO_F_VERSION_1 | RO);
  assert.equal(t.driverFeatures, VIRTIO_F_VERSION_1);
});

test("MmioTransport accepts FAILED at any time and then nothing but reset", () => {
  const t = new MmioTransport(device());
  negotiate(t);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_FAILED);
  assert.equal(t.status, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED);
  assert.equal(t.write(VIRTIO_MMIO_STATUS, 4, UP | STATUS_FAILED), null);
  assert.deepEqual(t.write(VIRTIO_MMIO_STATUS, 4, 0), { kind: "reset" });
  assert.equal(t.status, 0);
});

/** Set up queue `n` the way Linux's vm_setup_vq does. */
function setupQueue(t: MmioTransport, n: number, num: number, desc: bigint, driver: bigint, dev: bigint) {
  t.write(VIRTIO_MMIO_QUEUE_SEL, 4, n);
  assert.equal(t.read(VIRTIO_MMIO_QUEUE_READY, 4), 0);
  t.write(VIRTIO_MMIO_QUEUE_NUM, 4, num);
  const pairs: [number, number, bigint][] = [
    [VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH, desc],
    [VIRTIO_MMIO_QUEUE_DRIVER_LOW, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, driver],
    [VIRTIO_MMIO_QUEUE_DEVICE_LOW, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, dev],
  ];
  for (const [lo, hi, v] of pairs) {
    t.write(lo, 4, Number(v & 0xffff_ffffn));
    t.write(hi, 4, Number(v >> 32n));
  }
  return t.write(VIRTIO_MMIO_QUEUE_READY, 4, 1);
}

test("MmioTransport takes queue addresses and reports queueReady", () => {
  const t = new MmioTransport(device(), { eventIdx: true });
  negotiate(t, VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX);
  t.write(VIRTIO_MMIO_QUEUE_SEL, 4, 1);
  assert.equal(t.read(VIRTIO_MMIO_QUEUE_NUM_MAX, 4), 128);
  const ev = setupQueue(t, 1, 64, 0x1_2345_6000n, 0x7000n, 0x8000n);
  assert.deepEqual(ev, { kind: "queueReady", queue: 1 });
  assert.equal(t.read(VIRTIO_MMIO_QUEUE_READY, 4), 1);
  assert.deepEqual(t.queueConfig(1), {
    size: 64,
    descAddr: 0x1_2345_6000,
    availAddr: 0x7000,
    usedAddr: 0x8000,
    eventIdx: true,
    maxSize: 128,
    ready: true,
  });
  assert.equal(t.queueConfig(0).ready, false);
  assert.equal(t.queueConfig(0).size, 256); // QueueNum starts at QueueNumMax
});

test("MmioTransport.queueConfig() is what new Virtqueue() takes, QueueNumMax included", () => {
  const mem = new GuestMemory(new Uint8Array(0x10000));
  const t = new MmioTransport(device(), { eventIdx: true });
  negotiate(t, VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX);
  const l = DriverQueue.layout(0x1000, 64);
  setupQueue(t, 1, 64, BigInt(l.descAddr), BigInt(l.availAddr), BigInt(l.usedAddr));
  const dq = new DriverQueue(mem, l);
  const head = dq.add([{ gpa: 0x8000, len: 16 }]);
  assert.equal(new Virtqueue(mem, t.queueConfig(1)).pop()?.head, head);
  t.write(VIRTIO_MMIO_STATUS, 4, 0);
  negotiate(t);
  setupQueue(t, 1, 256, BigInt(l.descAddr), BigInt(l.availAddr), BigInt(l.usedAddr)); // QueueNumMax is 128
  assert.throws(() => new Virtqueue(mem, t.queueConfig(1)), (e) => e instanceof GuestError && e.kind === "InvalidQueueSize");
});

test("MmioTransport ignores queue writes before FEATURES_OK, after DRIVER_OK, or once the queue is ready", () => {
  const t = new MmioTransport(device());
  assert.equal(setupQueue(t, 0, 16, 0x1000n, 0x2000n, 0x3000n), null); // before FEATURES_OK
  assert.equal(t.queueConfig(0).descAddr, 0);
  negotiate(t);
  setupQueue(t, 0, 16, 0x1000n, 0x2000n, 0x3000n);
  t.write(VIRTIO_MMIO_QUEUE_DESC_LOW, 4, 0x9000); // queue 0 is ready
  assert.equal(t.queueConfig(0).descAddr, 0x1000);
  t.write(VIRTIO_MMIO_STATUS, 4, UP);
  t.write(VIRTIO_MMIO_QUEUE_SEL, 4, 1);
  t.write(VIRTIO_MMIO_QUEUE_NUM, 4, 2);
  assert.equal(t.write(VIRTIO_MMIO_QUEUE_READY, 4, 1), null);
  assert.equal(t.queueConfig(1).size, 128);
});

test("MmioTransport lets the driver take a queue back before DRIVER_OK", () => {
  const t = new MmioTransport(device());
  negotiate(t);
  setupQueue(t, 0, 16, 0x1000n, 0x2000n, 0x3000n);
  t.write(VIRTIO_MMIO_QUEUE_READY, 4, 0);
  assert.equal(t.read(VIRTIO_MMIO_QUEUE_READY, 4), 0);
});

test("MmioTransport reads QueueSel past the last queue as an absent queue", () => {
  const t = new MmioTransport(device());
  negotiate(t);
  t.write(VIRTIO_MMIO_QUEUE_SEL, 4, 2);
  assert.equal(t.read(VIRTIO_MMIO_QUEUE_NUM_MAX, 4), 0);
  assert.equal(t.read(VIRTIO_MMIO_QUEUE_READY, 4), 0);
  assert.equal(t.write(VIRTIO_MMIO_QUEUE_READY, 4, 1), null);
});

test("MmioTransport turns a QueueNotify write into a notify event", () => {
  const t = new MmioTransport(device());
  assert.deepEqual(t.write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 1), { kind: "notify", queue: 1 });
  assert.equal(t.write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 2), null);
});

test("MmioTransport.raiseInterrupt() sets InterruptStatus bits that a read of it, or InterruptACK, clears", () => {
  const state = new Int32Array(new SharedArrayBuffer(mmioStateWords(2) * 4));
  const vcpu = new MmioTransport(device(), { state });
  const worker = new MmioTransport(device(), { state }); // a queue Worker's handle
  worker.raiseInterrupt(VIRTIO_MMIO_INT_VRING); // before it writes its irqfd
  worker.raiseInterrupt(VIRTIO_MMIO_INT_VRING); // again: bits only accumulate
  assert.equal(vcpu.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4), VIRTIO_MMIO_INT_VRING);
  assert.equal(worker.interruptStatus, 0, "the driver's read took the bits it saw");
  assert.equal(vcpu.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4), 0, "a second read finds nothing new");
  worker.raiseInterrupt(VIRTIO_MMIO_INT_VRING); // raised after the read, before the driver's ACK
  vcpu.write(VIRTIO_MMIO_INTERRUPT_ACK, 4, 0); // Linux acknowledges what it read (here nothing)
  assert.equal(vcpu.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4), VIRTIO_MMIO_INT_VRING, "a bit raised after the read is not lost");
  // An ACK that reaches vmm (no ioeventfd swallowed it) clears what it names.
  worker.raiseInterrupt(VIRTIO_MMIO_INT_VRING);
  worker.raiseInterrupt(VIRTIO_MMIO_INT_CONFIG);
  assert.equal(vcpu.interruptStatus, VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
  vcpu.write(VIRTIO_MMIO_INTERRUPT_ACK, 4, VIRTIO_MMIO_INT_VRING);
  assert.equal(worker.interruptStatus, VIRTIO_MMIO_INT_CONFIG);
  vcpu.write(VIRTIO_MMIO_INTERRUPT_STATUS, 4, 0); // read-only: ignored
  assert.equal(vcpu.interruptStatus, VIRTIO_MMIO_INT_CONFIG);
});

test("MmioTransport.markBroken() sets DEVICE_NEEDS_RESET and asks for a config interrupt after DRIVER_OK", () => {
  const t = new MmioTransport(device());
  negotiate(t);
  assert.equal(t.markBroken("early"), false);
  t.write(VIRTIO_MMIO_STATUS, 4, t.read(VIRTIO_MMIO_STATUS, 4) | STATUS_DRIVER_OK); // Linux's read-modify-write
  assert.equal(t.status, UP | STATUS_DEVICE_NEEDS_RESET);
  assert.equal(t.markBroken("queue 0: DescriptorLoop"), true);
  assert.equal(t.interruptStatus, VIRTIO_MMIO_INT_CONFIG);
  assert.equal(t.brokenReason, "early");
  t.write(VIRTIO_MMIO_STATUS, 4, 0);
  assert.equal(t.status, 0);
  assert.equal(t.interruptStatus, 0);
  assert.equal(t.brokenReason, null);
});

test("MmioTransport reset forgets features and queues", () => {
  const t = new MmioTransport(device());
  negotiate(t);
  setupQueue(t, 0, 16, 0x1000n, 0x2000n, 0x3000n);
  t.write(VIRTIO_MMIO_STATUS, 4, UP);
  assert.deepEqual(t.write(VIRTIO_MMIO_STATUS, 4, 0), { kind: "reset" });
  assert.equal(t.driverFeatures, 0n);
  assert.deepEqual(t.queueConfig(0), { size: 256, descAddr: 0, availAddr: 0, usedAddr: 0, eventIdx: false, maxSize: 256, ready: false });
});

test("MmioTransport reads the config space little-endian and bounds-checked", () => {
  const t = new MmioTransport(device());
  assert.equal(t.read(VIRTIO_MMIO_CONFIG, 1), 1);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG + 1, 2), 0x0302);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG + 4, 4), 0x08070605);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG + 5, 4), 0); // runs past the end
  assert.equal(t.read(VIRTIO_MMIO_CONFIG, 8), 0);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG + 0x100, 1), 0);
});

test("MmioTransport hands config writes to the device, in bounds only", () => {
  const seen: [number, number[]][] = [];
  const t = new MmioTransport(device({ configWrite: (off, b) => seen.push([off, [...b]]) }));
  t.write(VIRTIO_MMIO_CONFIG + 2, 2, 0xbeef);
  t.write(VIRTIO_MMIO_CONFIG + 7, 2, 0xbeef);
  t.write(VIRTIO_MMIO_CONFIG, 3, 0);
  assert.deepEqual(seen, [[2, [0xef, 0xbe]]]);
  new MmioTransport(device()).write(VIRTIO_MMIO_CONFIG, 4, 1); // no configWrite: ignored
});

test("MmioTransport.configChanged() bumps ConfigGeneration and interrupts only after DRIVER_OK", () => {
  const dev = device();
  const t = new MmioTransport(dev);
  assert.equal(t.configChanged(), false);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG_GENERATION, 4), 1);
  negotiate(t);
  t.write(VIRTIO_MMIO_STATUS, 4, UP);
  dev.config[0] = 9;
  assert.equal(t.configChanged(), true);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG, 1), 9);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG_GENERATION, 4), 2);
  assert.equal(t.interruptStatus, VIRTIO_MMIO_INT_CONFIG);
});

test("MmioTransport reads registers with the wrong size or alignment as 0", () => {
  const t = new MmioTransport(device());
  assert.equal(t.read(VIRTIO_MMIO_MAGIC_VALUE, 2), 0);
  assert.equal(t.read(VIRTIO_MMIO_MAGIC_VALUE + 1, 4), 0);
  assert.equal(t.read(0x0f0, 4), 0);
  assert.equal(t.write(VIRTIO_MMIO_STATUS, 1, STATUS_ACKNOWLEDGE), null);
  assert.equal(t.status, 0);
});

test("MmioTransport never throws on garbage accesses", () => {
  const rand = xorshift(0x9e3779b9);
  const t = new MmioTransport(device({ configWrite: () => {} }), { eventIdx: true, indirectDesc: true });
  const sizes = [0, 1, 2, 3, 4, 8];
  for (let i = 0; i < 50_000; i++) {
    const offset = rand() % 3 === 0 ? rand() : (rand() % 0x240) & ~(rand() % 2 ? 3 : 0);
    const size = sizes[rand() % sizes.length];
    const value = rand() % 4 === 0 ? rand() % 0x100 : rand();
    if (rand() % 2) {
      const v = t.read(offset, size);
      assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff);
    } else {
      const ev = t.write(offset, size, value);
      if (ev?.kind === "notify" || ev?.kind === "queueReady") assert.ok(ev.queue < 2);
    }
  }
  for (const bad of [-4, 1.5, NaN, 2 ** 60]) {
    assert.equal(t.read(bad, 4), 0);
    assert.equal(t.write(bad, 4, 1), null);
  }
});

/** Everything a driver can observe, plus what the caller reads; reads have no side effects. */
function snapshot(t: MmioTransport) {
  const regs = [];
  for (let off = 0; off < VIRTIO_MMIO_CONFIG; off += 4) regs.push(t.read(off, 4));
  return {
    regs,
    status: t.status,
    driverFeatures: t.driverFeatures,
    interruptStatus: t.interruptStatus,
    brokenReason: t.brokenReason,
    queues: t.device.queueSizes.map((_, n) => t.queueConfig(n)),
  };
}

test("mmioStateWords() sizes a state whose zeroes are the reset state", () => {
  // What the creator of a shared block does: zero it, build transports, call nothing else.
  const zeroed = new MmioTransport(device(), { state: new Int32Array(mmioStateWords(2)) });
  const fresh = snapshot(new MmioTransport(device()));
  assert.deepEqual(snapshot(zeroed), fresh);
  assert.equal(fresh.queues[0].size, 256); // QueueNum never written: QueueNumMax
  // A device driven all the way up, broken, then reset, is back to all zeroes.
  const used = new MmioTransport(device());
  negotiate(used, VIRTIO_F_VERSION_1 | RO);
  setupQueue(used, 1, 64, 0x1000n, 0x2000n, 0x3000n);
  used.write(VIRTIO_MMIO_STATUS, 4, UP);
  used.markBroken("queue 1: DescriptorLoop");
  used.raiseInterrupt(VIRTIO_MMIO_INT_VRING);
  used.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 4, 1);
  used.write(VIRTIO_MMIO_STATUS, 4, 0);
  assert.deepEqual(snapshot(used), fresh);
  // More words than needed are fine (a slice of a bigger block); fewer are refused.
  assert.ok(mmioStateWords(3) > mmioStateWords(2));
  new MmioTransport(device(), { state: new Int32Array(mmioStateWords(2) + 7) });
  assert.throws(() => new MmioTransport(device(), { state: new Int32Array(mmioStateWords(1)) }), RangeError);
});

test("MmioTransport keeps a QueueNum of 0 apart from one never written", () => {
  const mem = new GuestMemory(new Uint8Array(0x10000));
  const t = new MmioTransport(device());
  negotiate(t);
  setupQueue(t, 0, 0, 0x1000n, 0x2000n, 0x3000n);
  assert.equal(t.queueConfig(0).size, 0); // not 256: the driver asked for an empty ring
  assert.throws(() => new Virtqueue(mem, t.queueConfig(0)), (e) => e instanceof GuestError && e.kind === "InvalidQueueSize");
});

test("Two MmioTransports over one shared Int32Array act as one device", () => {
  // One per thread in vmm: two vCPU Workers taking turns on the exits, or a vCPU and a queue Worker.
  const state = new Int32Array(new SharedArrayBuffer(mmioStateWords(2) * 4));
  const a = new MmioTransport(device(), { eventIdx: true, state });
  const b = new MmioTransport(device(), { eventIdx: true, state });

  // Linux's probe, each register access taken by whichever vCPU the guest ran on.
  a.write(VIRTIO_MMIO_STATUS, 4, 0);
  b.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE);
  a.write(VIRTIO_MMIO_STATUS, 4, b.read(VIRTIO_MMIO_STATUS, 4) | STATUS_DRIVER);
  b.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 4, 1);
  assert.equal(a.read(VIRTIO_MMIO_DEVICE_FEATURES, 4), 1); // VERSION_1, in the word b selected
  a.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 4, 1);
  b.write(VIRTIO_MMIO_DRIVER_FEATURES, 4, 1);
  b.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 4, 0);
  a.write(VIRTIO_MMIO_DRIVER_FEATURES, 4, Number(VIRTIO_F_EVENT_IDX));
  assert.equal(b.driverFeatures, VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX);
  b.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  assert.equal(a.status, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);

  // Queue 1 set up through a (QueueSel included), read back by b, the way a queue Worker would.
  b.write(VIRTIO_MMIO_QUEUE_SEL, 4, 1);
  assert.equal(a.read(VIRTIO_MMIO_QUEUE_NUM_MAX, 4), 128);
  assert.deepEqual(setupQueue(a, 1, 64, 0x1_2345_6000n, 0x7000n, 0x8000n), { kind: "queueReady", queue: 1 });
  assert.equal(b.read(VIRTIO_MMIO_QUEUE_READY, 4), 1);
  assert.deepEqual(b.queueConfig(1), {
    size: 64,
    descAddr: 0x1_2345_6000,
    availAddr: 0x7000,
    usedAddr: 0x8000,
    eventIdx: true,
    maxSize: 128,
    ready: true,
  });
  assert.deepEqual(b.write(VIRTIO_MMIO_STATUS, 4, UP), { kind: "driverOk" });
  assert.equal(a.write(VIRTIO_MMIO_STATUS, 4, UP), null); // one device: already up

  // A queue Worker (b) raises VRING; the vCPU (a) reads it, which takes it.
  b.raiseInterrupt(VIRTIO_MMIO_INT_VRING);
  assert.equal(a.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4), VIRTIO_MMIO_INT_VRING);
  assert.equal(b.configChanged(), true);
  assert.equal(a.read(VIRTIO_MMIO_CONFIG_GENERATION, 4), 1);
  assert.equal(b.interruptStatus, VIRTIO_MMIO_INT_CONFIG);

  // b breaks the device: a sees the status bit; the reason stays with b.
  assert.equal(b.markBroken("queue 1: DescriptorLoop"), true);
  assert.equal(a.status, UP | STATUS_DEVICE_NEEDS_RESET);
  assert.equal(b.brokenReason, "queue 1: DescriptorLoop");
  assert.equal(a.brokenReason, null);

  // A reset through a is a reset for b: status, features, queues, interrupts, and b's reason.
  assert.deepEqual(a.write(VIRTIO_MMIO_STATUS, 4, 0), { kind: "reset" });
  const fresh = new MmioTransport(device(), { eventIdx: true });
  fresh.configChanged(); // ConfigGeneration survives a reset (§2.5.1: the driver compares it)
  assert.deepEqual(snapshot(b), snapshot(fresh));
  assert.equal(b.brokenReason, null);
  assert.equal(b.markBroken("after reset"), false);
  assert.equal(b.brokenReason, "after reset");
});

test("MmioTransports in Workers update shared state under the lock without losing writes", async () => {
  // A Worker from source text, so the test needs no file of its own; Deno and Bun both take blob: module Workers.
  const mmioUrl = new URL("./mmio.ts", import.meta.url).href;
  const src = `
    import { MmioTransport } from ${JSON.stringify(mmioUrl)};
    self.onmessage = (e) => {
      const { state, go, n, bit } = e.data;
      const t = new MmioTransport({ deviceId: 2, features: 0n, queueSizes: [256, 128], config: new Uint8Array(0) }, { state });
      self.postMessage("ready");
      while (Atomics.load(go, 0) === 0) { /* start together, so the threads really contend */ }
      for (let i = 0; i < n; i++) {
        t.configChanged(); // a read-modify-write of ConfigGeneration: racy without the lock
        t.raiseInterrupt(bit);
      }
      self.postMessage("done");
    };`;
  const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
  const state = new Int32Array(new SharedArrayBuffer(mmioStateWords(2) * 4));
  const go = new Int32Array(new SharedArrayBuffer(4));
  const n = 50_000;
  const workers = [VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_INT_CONFIG].map((bit) => {
    const w = new Worker(url, { type: "module" });
    const settle = new Map<string, () => void>();
    const ready = new Promise<void>((resolve) => settle.set("ready", resolve));
    const done = new Promise<void>((resolve) => settle.set("done", resolve));
    w.onmessage = (e) => settle.get(e.data)?.();
    w.postMessage({ state, go, n, bit });
    return { w, ready, done };
  });
  await Promise.all(workers.map(({ ready }) => ready));
  const t = new MmioTransport(device(), { state });
  Atomics.store(go, 0, 1);
  for (let i = 0; i < n; i++) t.configChanged(); // this thread competes too
  await Promise.all(workers.map(({ done }) => done));
  for (const { w } of workers) w.terminate();
  URL.revokeObjectURL(url);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG_GENERATION, 4), 3 * n);
  assert.equal(t.interruptStatus, VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
  assert.equal(state[0], 0); // the lock is free
});

/** A transport with a register page (MmioOptions.page), and the page as KVM's reads see it. */
function paged(over: Partial<MmioDevice> = {}, state = new Int32Array(new SharedArrayBuffer(mmioStateWords(2) * 4))) {
  const page = new Uint8Array(VIRTIO_MMIO_PAGE_SIZE);
  const t = new MmioTransport(device(over), { eventIdx: true, indirectDesc: true, state, page });
  t.syncPage(); // what loop/virtio.ts syncPages does before the guest runs
  const word = (off: number) => new DataView(page.buffer).getUint32(off, true);
  return { t, page, state, word };
}

test("a register page answers every register as the exit path would, through a random walk of driver writes", () => {
  const rand = xorshift(0x2545f491);
  const plain = new MmioTransport(device({ configWrite: () => {} }), { eventIdx: true, indirectDesc: true });
  const { t, page, word } = paged({ configWrite: () => {} });
  // A driver's writes, mostly the registers it uses with values it uses, some garbage.
  const regs = [
    VIRTIO_MMIO_STATUS, VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_INTERRUPT_ACK,
  ];
  const statuses = [0, 1, 3, 11, 15, 0x80];
  for (let i = 0; i < 20_000; i++) {
    const off = rand() % 8 === 0 ? (rand() % 0x120) & ~3 : regs[rand() % regs.length];
    const value = off === VIRTIO_MMIO_STATUS ? statuses[rand() % statuses.length] : rand() % 4 ? rand() % 3 : rand();
    assert.deepEqual(t.write(off, 4, value), plain.write(off, 4, value), `write ${off.toString(16)} = ${value}`);
    if (rand() % 16 === 0) {
      plain.markBroken("test");
      t.markBroken("test");
    }
    for (let r = 0; r < VIRTIO_MMIO_CONFIG; r += 4) {
      if (r === VIRTIO_MMIO_INTERRUPT_STATUS) continue; // read-to-clear on the exit path: its own test
      assert.equal(word(r), plain.read(r, 4), `register 0x${r.toString(16)} after write ${off.toString(16)} = ${value}`);
      assert.equal(t.read(r, 4), word(r), "a read that reaches the transport answers from the page");
    }
    assert.deepEqual(page.subarray(VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG + 8), device().config);
  }
});

test("a register page keeps VRING set until a reset; an ACK that reaches vmm clears CONFIG only", () => {
  const { t, word } = paged();
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  writeFeatures(t, VIRTIO_F_VERSION_1);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
  t.raiseInterrupt(VIRTIO_MMIO_INT_VRING);
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING, "the driver's read finds the reason");
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING, "and reading takes nothing");
  t.write(VIRTIO_MMIO_INTERRUPT_ACK, 4, VIRTIO_MMIO_INT_VRING); // KVM swallows this one; were it to come here:
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING, "VRING stays");
  const gen = word(VIRTIO_MMIO_CONFIG_GENERATION);
  t.device.config[0] = 0xaa; // the device changes its config space, then says so
  assert.equal(t.configChanged(), true);
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
  assert.equal(word(VIRTIO_MMIO_CONFIG_GENERATION), gen + 1);
  assert.equal(t.read(VIRTIO_MMIO_CONFIG, 1), 0xaa, "the page holds the new config space");
  t.write(VIRTIO_MMIO_INTERRUPT_ACK, 4, VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING, "the ACK took CONFIG");
  assert.equal(t.markBroken("bad chain"), true);
  assert.equal(word(VIRTIO_MMIO_STATUS) & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
  t.write(VIRTIO_MMIO_STATUS, 4, 0);
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), 0, "a reset clears both");
  assert.equal(word(VIRTIO_MMIO_STATUS), 0);
});

test("every thread's transport over one state and one page raises into the page", () => {
  const { t, page, state, word } = paged();
  const worker = new MmioTransport(device(), { state, page }); // a queue Worker's handle
  worker.raiseInterrupt(VIRTIO_MMIO_INT_VRING);
  assert.equal(word(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
  t.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 4, 1);
  assert.equal(worker.read(VIRTIO_MMIO_DEVICE_FEATURES, 4), Number(VIRTIO_F_VERSION_1 >> 32n) | Number((VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC) >> 32n));
});

test("a register page answers reads of any size, as a guest's loads see memory", () => {
  const { t } = paged();
  assert.equal(t.read(VIRTIO_MMIO_MAGIC_VALUE, 1), 0x76); // "v"
  assert.equal(t.read(VIRTIO_MMIO_MAGIC_VALUE + 1, 2), 0x7269); // "ir"
  assert.equal(t.read(VIRTIO_MMIO_CONFIG + 2, 2), 0x0403);
  assert.equal(t.read(VIRTIO_MMIO_PAGE_SIZE - 2, 4), 0, "past the page");
  assert.equal(t.read(0, 8), 0);
});

test("a register page must be a whole page", () => {
  assert.throws(() => new MmioTransport(device(), { page: new Uint8Array(0x200) }), /register page/);
});
