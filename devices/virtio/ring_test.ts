import { test } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../vm/memory.ts";
import {
  Chain,
  GuestError,
  subSegments,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  Virtqueue,
} from "./ring.ts";
import { DriverQueue } from "../../test/support/driver_queue.ts";

const RAM = 0x10000;
const DATA = 0x8000; // request buffers live above the rings
const TABLE = 0xe000; // indirect tables

function setup(size = 16, eventIdx = false, mem = new GuestMemory(new Uint8Array(RAM))) {
  const dq = new DriverQueue(mem, DriverQueue.layout(0x1000, size));
  const vq = new Virtqueue(mem, dq.config(eventIdx));
  return { mem, dq, vq };
}

function throwsKind(fn: () => unknown, kind: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GuestError, `expected a GuestError, got ${e}`);
    assert.equal(e.kind, kind);
    return true;
  });
}

/** A typical request: 16-byte header, 512 bytes of data, 1 status byte. */
function addRequest(dq: DriverQueue): number {
  return dq.add([{ gpa: DATA, len: 16 }, { gpa: DATA + 0x100, len: 512, write: true }, { gpa: DATA + 0x400, len: 1, write: true }]);
}

test("Virtqueue.pop() returns null while the driver has made nothing available", () => {
  const { vq } = setup();
  assert.equal(vq.pop(), null);
});

test("Virtqueue.pop() returns a chain split into readable and writable buffers", () => {
  const { dq, vq } = setup();
  const head = addRequest(dq);
  const c = vq.pop();
  assert.ok(c instanceof Chain);
  assert.equal(c.head, head);
  assert.deepEqual(c.readable, [{ gpa: DATA, len: 16 }]);
  assert.deepEqual(c.writable, [{ gpa: DATA + 0x100, len: 512 }, { gpa: DATA + 0x400, len: 1 }]);
  assert.equal(c.readableLength, 16);
  assert.equal(c.writableLength, 513);
  assert.equal(vq.pop(), null);
});

test("Virtqueue.pop() drops zero-length buffers", () => {
  const { dq, vq } = setup();
  dq.add([{ gpa: DATA, len: 0 }, { gpa: DATA, len: 4 }, { gpa: 0xffff_ffff, len: 0, write: true }]);
  const c = vq.pop()!;
  assert.deepEqual(c.readable, [{ gpa: DATA, len: 4 }]);
  assert.deepEqual(c.writable, []);
});

test("Chain.reader() reads values that straddle buffers", () => {
  const { mem, dq, vq } = setup();
  mem.write(DATA, Uint8Array.of(1, 2, 3));
  mem.write(DATA + 0x40, Uint8Array.of(4, 5, 6, 7, 8, 9, 10, 11, 12));
  dq.add([{ gpa: DATA, len: 3 }, { gpa: DATA + 0x40, len: 9 }]);
  const r = vq.pop()!.reader();
  assert.equal(r.readU16(), 0x0201);
  assert.equal(r.readU32(), 0x06050403);
  assert.equal(r.consumed, 6);
  assert.equal(r.remaining, 6);
  assert.equal(r.readU8(), 7);
  r.skip(1);
  assert.deepEqual(r.readBytes(4), Uint8Array.of(9, 10, 11, 12));
  throwsKind(() => r.readU8(), "ChainTooShort");
});

test("Chain.reader() reads a u64 across three buffers", () => {
  const { mem, dq, vq } = setup();
  mem.write(DATA, Uint8Array.of(0x11, 0x22));
  mem.write(DATA + 0x10, Uint8Array.of(0x33, 0x44, 0x55));
  mem.write(DATA + 0x20, Uint8Array.of(0x66, 0x77, 0x88));
  dq.add([{ gpa: DATA, len: 2 }, { gpa: DATA + 0x10, len: 3 }, { gpa: DATA + 0x20, len: 3 }]);
  assert.equal(vq.pop()!.reader().readU64(), 0x8877665544332211n);
});

test("Chain.writer() writes across buffers and counts bytes for pushUsed", () => {
  const { mem, dq, vq } = setup();
  dq.add([{ gpa: DATA, len: 3, write: true }, { gpa: DATA + 0x10, len: 5, write: true }]);
  const w = vq.pop()!.writer();
  w.writeU32(0x44332211);
  w.write(Uint8Array.of(0x55, 0x66));
  w.writeU16(0x8877);
  assert.equal(w.written, 8);
  assert.equal(w.remaining, 0);
  assert.deepEqual(mem.slice(DATA, 3), Uint8Array.of(0x11, 0x22, 0x33));
  assert.deepEqual(mem.slice(DATA + 0x10, 5), Uint8Array.of(0x44, 0x55, 0x66, 0x77, 0x88));
  throwsKind(() => w.writeU8(0), "ChainTooShort");
});

test("Chain.writer() refuses a write that does not fit and writes nothing", () => {
  const { mem, dq, vq } = setup();
  dq.add([{ gpa: DATA, len: 2, write: true }]);
  const w = vq.pop()!.writer();
  throwsKind(() => w.writeU32(0xffffffff), "ChainTooShort");
  assert.deepEqual(mem.slice(DATA, 2), Uint8Array.of(0, 0));
  assert.equal(w.written, 0);
});

test("subSegments() cuts a byte range out of a segment list", () => {
  const segs = [{ gpa: 0x100, len: 4 }, { gpa: 0x200, len: 4 }, { gpa: 0x300, len: 4 }];
  assert.deepEqual(subSegments(segs, 2, 8), [{ gpa: 0x102, len: 2 }, { gpa: 0x200, len: 4 }, { gpa: 0x300, len: 2 }]);
  assert.deepEqual(subSegments(segs, 4, 4), [{ gpa: 0x200, len: 4 }]);
  assert.deepEqual(subSegments(segs, 12, 0), []);
  assert.throws(() => subSegments(segs, 10, 3), RangeError);
});

test("Virtqueue.pushUsed() writes the element before it publishes used.idx", () => {
  const { dq, vq } = setup();
  const head = addRequest(dq);
  const c = vq.pop()!;
  assert.equal(dq.popUsed(), null);
  vq.pushUsed(c.head, 513);
  assert.equal(dq.usedIdx, 1);
  assert.deepEqual(dq.popUsed(), { id: head, len: 513 });
  assert.throws(() => vq.pushUsed(16, 0), RangeError);
  assert.throws(() => vq.pushUsed(0, 2 ** 32), RangeError);
});

test("Virtqueue indexes wrap around at 65536", () => {
  const { dq, vq } = setup(4);
  for (let i = 0; i < 70000; i++) {
    const head = dq.add([{ gpa: DATA, len: 1, write: true }]);
    const c = vq.pop()!;
    assert.equal(c.head, head);
    vq.pushUsed(c.head, 1);
    assert.deepEqual(dq.popUsed(), { id: head, len: 1 });
  }
  assert.equal(vq.nextAvail, 70000 & 0xffff);
  assert.equal(dq.usedIdx, 70000 & 0xffff);
  assert.equal(vq.pop(), null);
});

// ---- queue configuration ----

test("new Virtqueue() rejects a size that is not a power of 2 up to 32768", () => {
  const mem = new GuestMemory(new Uint8Array(RAM));
  for (const size of [0, 3, 24, 65536, 1.5, -2]) {
    throwsKind(() => new Virtqueue(mem, { size, descAddr: 0, availAddr: 0x2000, usedAddr: 0x3000, eventIdx: false }), "InvalidQueueSize");
  }
  new Virtqueue(mem, { size: 1, descAddr: 0, availAddr: 0x2000, usedAddr: 0x3000, eventIdx: false });
});

test("new Virtqueue() rejects a size above the device's QueueNumMax", () => {
  const mem = new GuestMemory(new Uint8Array(RAM));
  const cfg = { size: 64, descAddr: 0x1000, availAddr: 0x2000, usedAddr: 0x3000, eventIdx: false };
  new Virtqueue(mem, { ...cfg, maxSize: 64 });
  throwsKind(() => new Virtqueue(mem, { ...cfg, maxSize: 32 }), "InvalidQueueSize");
});

test("new Virtqueue() rejects misaligned rings", () => {
  const mem = new GuestMemory(new Uint8Array(RAM));
  const good = { size: 8, descAddr: 0x1000, availAddr: 0x2000, usedAddr: 0x3000, eventIdx: false };
  new Virtqueue(mem, good);
  throwsKind(() => new Virtqueue(mem, { ...good, descAddr: 0x1008 }), "Misaligned");
  throwsKind(() => new Virtqueue(mem, { ...good, availAddr: 0x2001 }), "Misaligned");
  throwsKind(() => new Virtqueue(mem, { ...good, usedAddr: 0x3002 }), "Misaligned");
});

test("new Virtqueue() rejects a used ring over the available ring", () => {
  const mem = new GuestMemory(new Uint8Array(RAM));
  const good = { size: 8, descAddr: 0x1000, availAddr: 0x2000, usedAddr: 0x3000, eventIdx: false };
  throwsKind(() => new Virtqueue(mem, { ...good, usedAddr: 0x2004 }), "RingsOverlap"); // used.flags on avail.idx: serveAll() would spin
  throwsKind(() => new Virtqueue(mem, { ...good, usedAddr: 0x1ffc }), "RingsOverlap"); // used.ring[0] on avail.flags and avail.idx
  new Virtqueue(mem, { ...good, usedAddr: 0x2018 }); // the available ring ends at 0x2016, after used_event
});

test("new Virtqueue() rejects rings that leave guest RAM", () => {
  const mem = new GuestMemory(new Uint8Array(RAM));
  const good = { size: 8, descAddr: 0x1000, availAddr: 0x2000, usedAddr: 0x3000, eventIdx: false };
  throwsKind(() => new Virtqueue(mem, { ...good, descAddr: RAM - 0x70 }), "InvalidAddress");
  throwsKind(() => new Virtqueue(mem, { ...good, availAddr: RAM - 20 }), "InvalidAddress"); // used_event is the last 2 bytes
  throwsKind(() => new Virtqueue(mem, { ...good, usedAddr: RAM - 68 }), "InvalidAddress"); // avail_event too
  throwsKind(() => new Virtqueue(mem, { ...good, usedAddr: 2 ** 64 }), "InvalidAddress");
  throwsKind(() => new Virtqueue(mem, { ...good, size: 32768 }), "InvalidAddress");
});

// ---- hostile chains, one field at a time ----

test("Virtqueue.pop() rejects a head index outside the table", () => {
  const { dq, vq } = setup();
  addRequest(dq);
  dq.setAvailEntry(0, 16);
  throwsKind(() => vq.pop(), "InvalidIndex");
});

test("Virtqueue.pop() rejects a next index outside the table", () => {
  const { dq, vq } = setup();
  const head = addRequest(dq);
  dq.setDesc(head, { ...dq.desc(head), next: 16 });
  throwsKind(() => vq.pop(), "InvalidIndex");
});

test("Virtqueue.pop() rejects a descriptor loop", () => {
  const { dq, vq } = setup();
  const head = addRequest(dq);
  const status = head + 2;
  dq.setDesc(status, { ...dq.desc(status), flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: head + 1 });
  throwsKind(() => vq.pop(), "DescriptorLoop");
});

test("Virtqueue.pop() rejects a descriptor that chains to itself", () => {
  const { dq, vq } = setup(1);
  dq.setDesc(0, { addr: DATA, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 0 });
  dq.publish(0);
  throwsKind(() => vq.pop(), "DescriptorLoop");
});

test("Virtqueue.pop() rejects a buffer outside guest RAM", () => {
  const { dq, vq } = setup();
  const head = addRequest(dq);
  dq.setDesc(head + 1, { ...dq.desc(head + 1), addr: RAM - 511 });
  throwsKind(() => vq.pop(), "InvalidAddress");
});

test("Virtqueue.pop() rejects a buffer whose end wraps past 2^64", () => {
  const { dq, vq } = setup();
  const head = addRequest(dq);
  dq.setDesc(head, { ...dq.desc(head), addr: 0xffff_ffff_ffff_fff0n, len: 0x20 });
  throwsKind(() => vq.pop(), "InvalidAddress");
});

test("Virtqueue.pop() rejects a buffer that spans a hole in guest RAM", () => {
  const mem = new GuestMemory(new Uint8Array(2 * RAM), [
    { gpa: 0, size: RAM, offset: 0 },
    { gpa: 2 * RAM, size: RAM, offset: RAM },
  ]);
  const { dq, vq } = setup(16, false, mem);
  dq.add([{ gpa: RAM - 8, len: 16 }]); // contiguous in the host buffer, not in the guest
  throwsKind(() => vq.pop(), "InvalidAddress");
  dq.add([{ gpa: 2 * RAM, len: 16 }]);
  assert.deepEqual(vq.pop()!.readable, [{ gpa: 2 * RAM, len: 16 }]);
});

test("Virtqueue.pop() rejects a readable buffer after a writable one", () => {
  const { dq, vq } = setup();
  const head = addRequest(dq);
  dq.setDesc(head + 1, { ...dq.desc(head + 1), flags: VIRTQ_DESC_F_NEXT });
  dq.add([{ gpa: DATA, len: 1, write: true }, { gpa: DATA, len: 1 }]);
  assert.equal(vq.pop()!.head, head); // header, data (now readable), status: still in order
  throwsKind(() => vq.pop(), "WriteBeforeRead");
});

test("Virtqueue.pop() rejects a chain over 2^32 - 1 bytes", () => {
  const size = 4096;
  const mem = new GuestMemory(new Uint8Array(0x40_0000));
  const dq = new DriverQueue(mem, DriverQueue.layout(0x1000, size));
  const vq = new Virtqueue(mem, dq.config(false));
  const bufs = Array.from({ length: 2049 }, () => ({ gpa: 0x20_0000, len: 0x20_0000 })); // 2049 × 2 MiB > 4 GiB
  dq.add(bufs.slice(0, 2047));
  assert.equal(vq.pop()!.readableLength, 2047 * 0x20_0000);
  dq.add(bufs);
  throwsKind(() => vq.pop(), "ChainTooLong");
});

test("Virtqueue.pop() rejects an indirect chain longer than the queue", () => {
  const { dq, vq } = setup(4);
  dq.addIndirect(Array.from({ length: 4 }, () => ({ gpa: DATA, len: 8 })), TABLE);
  assert.equal(vq.pop()!.readable.length, 4);
  dq.addIndirect(Array.from({ length: 5 }, () => ({ gpa: DATA, len: 8 })), TABLE);
  throwsKind(() => vq.pop(), "ChainTooLong");
});

test("Virtqueue.pop() moves on after a bad chain, but not after an avail.idx jump", () => {
  const { dq, vq } = setup();
  const bad = addRequest(dq);
  dq.setDesc(bad, { ...dq.desc(bad), next: 99 });
  const good = addRequest(dq);
  throwsKind(() => vq.pop(), "InvalidIndex");
  assert.equal(vq.pop()!.head, good);
  dq.setAvailIdx(dq.availIdx + 17);
  throwsKind(() => vq.pop(), "AvailIdxJump");
  throwsKind(() => vq.pop(), "AvailIdxJump");
  assert.equal(vq.nextAvail, 2);
});

test("Virtqueue.pop() accepts avail.idx exactly one queue ahead", () => {
  const { dq, vq } = setup(4);
  for (let i = 0; i < 4; i++) dq.add([{ gpa: DATA, len: 1 }]);
  for (let i = 0; i < 4; i++) assert.ok(vq.pop());
  assert.equal(vq.pop(), null);
});

// ---- indirect descriptors ----

test("Virtqueue.pop() follows an indirect table", () => {
  const { dq, vq } = setup();
  const head = dq.addIndirect([{ gpa: DATA, len: 16 }, { gpa: DATA + 0x100, len: 512, write: true }, { gpa: DATA + 0x400, len: 1, write: true }], TABLE);
  const c = vq.pop()!;
  assert.equal(c.head, head);
  assert.equal(c.readableLength, 16);
  assert.equal(c.writableLength, 513);
});

test("Virtqueue.pop() accepts direct descriptors followed by an indirect one", () => {
  const { dq, vq } = setup();
  const ind = dq.writeIndirect([{ gpa: DATA + 0x100, len: 8, write: true }], TABLE);
  dq.setDesc(10, { addr: DATA, len: 16, flags: VIRTQ_DESC_F_NEXT, next: ind });
  dq.publish(10);
  const c = vq.pop()!;
  assert.deepEqual(c.readable, [{ gpa: DATA, len: 16 }]);
  assert.deepEqual(c.writable, [{ gpa: DATA + 0x100, len: 8 }]);
});

test("Virtqueue.pop() ignores WRITE on the descriptor that points at an indirect table", () => {
  const { dq, vq } = setup();
  const head = dq.addIndirect([{ gpa: DATA, len: 16 }], TABLE);
  dq.setDesc(head, { ...dq.desc(head), flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE });
  assert.equal(vq.pop()!.readableLength, 16);
});

function indirectCase(change: (dq: DriverQueue, head: number) => void, kind: string) {
  const { dq, vq } = setup();
  const head = dq.addIndirect([{ gpa: DATA, len: 16 }, { gpa: DATA + 0x100, len: 1, write: true }], TABLE);
  change(dq, head);
  throwsKind(() => vq.pop(), kind);
}

test("Virtqueue.pop() rejects an indirect descriptor with NEXT", () => {
  indirectCase((dq, h) => dq.setDesc(h, { ...dq.desc(h), flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, next: 0 }), "BadIndirect");
});

test("Virtqueue.pop() rejects an indirect table whose length is not a multiple of 16", () => {
  indirectCase((dq, h) => dq.setDesc(h, { ...dq.desc(h), len: 24 }), "BadIndirect");
  indirectCase((dq, h) => dq.setDesc(h, { ...dq.desc(h), len: 0 }), "BadIndirect");
});

test("Virtqueue.pop() rejects a nested indirect table", () => {
  indirectCase((dq) => dq.setDesc(1, { addr: TABLE, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }, TABLE), "BadIndirect");
});

test("Virtqueue.pop() rejects an indirect table outside guest RAM", () => {
  indirectCase((dq, h) => dq.setDesc(h, { ...dq.desc(h), addr: RAM - 16 }), "InvalidAddress");
});

test("Virtqueue.pop() rejects a loop inside an indirect table", () => {
  indirectCase((dq) => dq.setDesc(1, { addr: DATA + 0x100, len: 1, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 1 }, TABLE), "DescriptorLoop");
});

test("Virtqueue.pop() rejects a next index past the end of an indirect table", () => {
  indirectCase((dq) => dq.setDesc(1, { addr: DATA + 0x100, len: 1, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 2 }, TABLE), "InvalidIndex");
});

test("Virtqueue.pop() rejects a bad buffer inside an indirect table", () => {
  indirectCase((dq) => dq.setDesc(1, { addr: RAM, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 }, TABLE), "InvalidAddress");
});

// ---- notifications ----

test("Virtqueue.needsInterrupt() honours VIRTQ_AVAIL_F_NO_INTERRUPT without EVENT_IDX", () => {
  const { dq, vq } = setup();
  assert.equal(vq.needsInterrupt(), false); // nothing used yet
  addRequest(dq);
  vq.pushUsed(vq.pop()!.head, 0);
  assert.equal(vq.needsInterrupt(), true);
  assert.equal(vq.needsInterrupt(), false); // already signalled
  dq.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  addRequest(dq);
  vq.pushUsed(vq.pop()!.head, 0);
  assert.equal(vq.needsInterrupt(), false);
});

test("Virtqueue.needsInterrupt() signals only when used.idx passes used_event with EVENT_IDX", () => {
  const { dq, vq } = setup(16, true);
  dq.setUsedEvent(2); // interrupt when the element at index 2 is published
  dq.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT); // ignored with EVENT_IDX (§2.7.7.2)
  const used = () => {
    addRequest(dq);
    vq.pushUsed(vq.pop()!.head, 0);
  };
  used(); // used.idx 0 → 1
  assert.equal(vq.needsInterrupt(), false);
  used(); // 1 → 2
  assert.equal(vq.needsInterrupt(), false);
  used(); // 2 → 3: the element at index 2
  assert.equal(vq.needsInterrupt(), true);
  used();
  assert.equal(vq.needsInterrupt(), false);
  dq.setUsedEvent(5);
  used(); // 4 → 5
  used(); // 5 → 6, in one batch with the one before
  assert.equal(vq.needsInterrupt(), true);
});

test("Virtqueue.needsInterrupt() compares event indexes modulo 2^16", () => {
  const { dq, vq } = setup(4, true);
  for (let i = 0; i < 0xfffe; i++) {
    dq.add([{ gpa: DATA, len: 1 }]);
    vq.pushUsed(vq.pop()!.head, 0);
    vq.needsInterrupt();
  }
  dq.setUsedEvent(0xffff);
  dq.add([{ gpa: DATA, len: 1 }]);
  vq.pushUsed(vq.pop()!.head, 0); // 0xfffe → 0xffff
  assert.equal(vq.needsInterrupt(), false);
  dq.add([{ gpa: DATA, len: 1 }]);
  vq.pushUsed(vq.pop()!.head, 0); // 0xffff → 0: the element at 0xffff
  assert.equal(vq.needsInterrupt(), true);
});

test("Virtqueue.setNotification() sets used.flags NO_NOTIFY without EVENT_IDX", () => {
  const { dq, vq } = setup();
  vq.setNotification(false);
  assert.equal(dq.usedFlags, VIRTQ_USED_F_NO_NOTIFY);
  vq.setNotification(true);
  assert.equal(dq.usedFlags, 0);
});

test("Virtqueue.setNotification() writes avail_event with EVENT_IDX", () => {
  const { dq, vq } = setup(16, true);
  addRequest(dq);
  addRequest(dq);
  vq.pop();
  vq.pop();
  vq.setNotification(true);
  assert.equal(dq.availEvent, 2); // notify me when you publish slot 2
  assert.equal(dq.usedFlags, 0); // §2.7.10.2: flags stay 0 with EVENT_IDX
});

test("Virtqueue.enableNotificationAndCheck() catches a buffer added while notifications were off", () => {
  for (const eventIdx of [false, true]) {
    const { dq, vq } = setup(16, eventIdx);
    vq.setNotification(false);
    assert.equal(vq.enableNotificationAndCheck(), false); // empty: safe to sleep
    vq.setNotification(false);
    addRequest(dq); // the driver saw notifications off and did not kick
    assert.equal(vq.enableNotificationAndCheck(), true); // so we must not sleep
    assert.ok(vq.pop());
    assert.equal(vq.enableNotificationAndCheck(), false);
    if (eventIdx) assert.equal(dq.availEvent, 1);
  }
});
