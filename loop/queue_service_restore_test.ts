/**
 * A queue taken over by another process, as a restored snapshot does
 * (loop/snapshot.ts): the first QueueService serves some requests and
 * pauses, publishing its ring position in the QPOS words; a second one over
 * the same guest memory and registers starts with `restored` and goes on
 * from there: it neither serves the old requests again nor rewinds used.idx.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { hostGuestMemory } from "../test/support/host_memory.ts";
import { DriverQueue } from "../test/support/driver_queue.ts";
import { MmioTransport } from "../devices/virtio/mmio.ts";
import { serveAll } from "../devices/virtio/queue_handler.ts";
import type { GuestMemory } from "../vm/memory.ts";
import { QueueService } from "./queue_service.ts";
import { QPOS } from "./shared.ts";

const SIZE = 16;
const LAYOUT = DriverQueue.layout(0x1000, SIZE);

/** Registers of a one-queue device whose driver set the queue up and DRIVER_OK. */
function readyRegisters(): Int32Array {
  const state = new Int32Array(new SharedArrayBuffer(4096));
  const t = new MmioTransport({ deviceId: 4, features: 0n, queueSizes: [SIZE], config: new Uint8Array(0) }, { state });
  const w = (offset: number, v: number) => t.write(offset, 4, v);
  w(0x070, 1), w(0x070, 3), w(0x024, 1), w(0x020, 1), w(0x070, 11); // ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK
  w(0x030, 0), w(0x038, SIZE), w(0x080, LAYOUT.descAddr), w(0x090, LAYOUT.availAddr), w(0x0a0, LAYOUT.usedAddr);
  w(0x044, 1), w(0x070, 15); // QueueReady, DRIVER_OK
  return state;
}

/** A service whose handler records the gpa of each request it serves. */
function service(mem: GuestMemory, state: Int32Array, positions: Int32Array, served: number[]): QueueService {
  const transport = new MmioTransport({ deviceId: 4, features: 0n, queueSizes: [SIZE], config: new Uint8Array(0) }, { state });
  return new QueueService({
    name: "test", mem, transport, queue: 0, positions, interrupt: () => {}, running: () => true,
    handler: () => ({ kick: (vq) => serveAll(vq, (c) => (served.push(c.readable[0].gpa), 0)) }),
  });
}

test("QueueService.start(true) continues at the ring position another service published when it paused", () => {
  const mem = hostGuestMemory();
  const state = readyRegisters();
  const positions = new Int32Array(new SharedArrayBuffer(16));
  const driver = new DriverQueue(mem, LAYOUT);
  const before: number[] = [];
  const first = service(mem, state, positions, before);
  first.start();
  for (let i = 0; i < 3; i++) driver.add([{ gpa: 0x8000 + i * 0x100, len: 16 }]);
  first.kick();
  first.pause();
  assert.equal(before.length, 3);
  assert.deepEqual([positions[QPOS.VALID], positions[QPOS.NEXT_AVAIL], positions[QPOS.NEXT_USED]], [1, 3, 3]);

  // "Another process": a fresh service over the same memory, registers and QPOS words.
  driver.add([{ gpa: 0x9000, len: 16 }]);
  const after: number[] = [];
  const second = service(mem, state, positions, after);
  second.start(true);
  assert.deepEqual(second.position, { nextAvail: 3, nextUsed: 3 });
  second.kick();
  assert.deepEqual(after, [0x9000], "only the request made after the pause is served");
  assert.equal(driver.usedIdx, 4, "used.idx goes on from 3");

  // Without `restored`, a start is a new driver's: position 0.
  const fresh = service(mem, state, positions, []);
  fresh.start();
  assert.deepEqual(fresh.position, { nextAvail: 0, nextUsed: 0 });
});
