/**
 * QueueService's handler lifecycle (loop/queue_service.ts): a handler is made
 * at each start and closed exactly once when it is discarded, by a reset, a
 * restart or the VM's stop, so a device can give back what it opened on the
 * host (virtio-fs: the share's fds). A pause keeps it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { hostGuestMemory } from "../test/support/host_memory.ts";
import { DriverQueue } from "../test/support/driver_queue.ts";
import {
  MmioTransport,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_DEVICE_LOW,
  VIRTIO_MMIO_QUEUE_DRIVER_LOW,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_STATUS,
} from "../devices/virtio/mmio.ts";
import type { QueueHandler } from "../devices/virtio/queue_handler.ts";
import { QueueService } from "./queue_service.ts";

/** A one-queue device taken through Linux's probe to DRIVER_OK, its queue at 0x1000. */
function readyTransport(): MmioTransport {
  const t = new MmioTransport({ deviceId: 4, features: 0n, queueSizes: [16], config: new Uint8Array(0) });
  const w = (offset: number, v: number) => t.write(offset, 4, v);
  const A = STATUS_ACKNOWLEDGE, D = STATUS_DRIVER, F = STATUS_FEATURES_OK;
  w(VIRTIO_MMIO_STATUS, A);
  w(VIRTIO_MMIO_STATUS, A | D);
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  w(VIRTIO_MMIO_DRIVER_FEATURES, Number(VIRTIO_F_VERSION_1 >> 32n));
  w(VIRTIO_MMIO_STATUS, A | D | F);
  const l = DriverQueue.layout(0x1000, 16);
  w(VIRTIO_MMIO_QUEUE_SEL, 0);
  w(VIRTIO_MMIO_QUEUE_NUM, 16);
  w(VIRTIO_MMIO_QUEUE_DESC_LOW, l.descAddr);
  w(VIRTIO_MMIO_QUEUE_DRIVER_LOW, l.availAddr);
  w(VIRTIO_MMIO_QUEUE_DEVICE_LOW, l.usedAddr);
  w(VIRTIO_MMIO_QUEUE_READY, 1);
  w(VIRTIO_MMIO_STATUS, A | D | F | STATUS_DRIVER_OK);
  return t;
}

/** A service whose handlers record what happens to them. */
function rig(closeThrows = false) {
  const events: string[] = [];
  const lines: string[] = [];
  let made = 0;
  const service = new QueueService({
    name: "test",
    mem: hostGuestMemory(),
    transport: readyTransport(),
    queue: 0,
    handler: (): QueueHandler => {
      const n = ++made;
      return {
        kick: () => void events.push(`kick ${n}`),
        drain: () => void events.push(`drain ${n}`),
        close: () => {
          events.push(`close ${n}`);
          if (closeThrows) throw new Error("EBADF");
        },
      };
    },
    interrupt: () => {},
    running: () => true,
    log: (l) => lines.push(l),
  });
  return { service, events, lines };
}

test("QueueService closes a handler once, after its drain, when a reset stops the queue", () => {
  const { service, events } = rig();
  service.start();
  service.kick();
  service.pause();
  service.stop(false);
  service.stop(false);
  assert.deepEqual(events, ["kick 1", "drain 1", "drain 1", "close 1"], "a pause keeps the handler; a second stop has none to close");
});

test("QueueService closes the old handler when a new DRIVER_OK makes another, and the last at the VM's stop", () => {
  const { service, events } = rig();
  service.start();
  service.start();
  service.stop(true);
  assert.deepEqual(events, ["close 1", "kick 2", "drain 2", "close 2"]);
});

test("a handler whose close throws costs one log line, not the Worker", () => {
  const { service, events, lines } = rig(true);
  service.start();
  service.stop(false);
  assert.deepEqual(events, ["drain 1", "close 1"]);
  assert.deepEqual(lines, ["vmm: test: close failed: EBADF"]);
  assert.equal(service.serving, false);
});
