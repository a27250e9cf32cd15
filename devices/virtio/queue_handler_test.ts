import { test } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../vm/memory.ts";
import { DriverQueue } from "../../test/support/driver_queue.ts";
import { Virtqueue } from "./ring.ts";
import { serveAll } from "./queue_handler.ts";

function ring(chains: number) {
  const mem = new GuestMemory(new Uint8Array(0x10000));
  const dq = new DriverQueue(mem, DriverQueue.layout(0x1000, 16));
  for (let i = 0; i < chains; i++) dq.add([{ gpa: 0x8000 + i * 16, len: 16, write: true }]);
  return { dq, vq: new Virtqueue(mem, dq.config(true)) };
}

test("serveAll serves every available chain and returns false when the ring is empty", () => {
  const { dq, vq } = ring(5);
  assert.equal(serveAll(vq, () => 3), false);
  assert.equal(dq.usedIdx, 5);
  assert.deepEqual(dq.usedElem(4), { id: dq.usedElem(4).id, len: 3 });
});

test("serveAll stops at its budget and says there is more, so a Worker can hear a stop", () => {
  const { dq, vq } = ring(10);
  assert.equal(serveAll(vq, () => 0, 4), true);
  assert.equal(dq.usedIdx, 4);
  assert.equal(serveAll(vq, () => 0, 4), true);
  assert.equal(serveAll(vq, () => 0, 4), false);
  assert.equal(dq.usedIdx, 10);
});

test("serveAll re-arms notifications before it returns empty (EVENT_IDX: avail_event = next slot)", () => {
  const { dq, vq } = ring(3);
  serveAll(vq, () => 0);
  assert.equal(dq.availEvent, 3);
});
