/**
 * The stdio console's control logic (control.ts), pure: the message layout,
 * the queue map, what a guest message asks, and the host's answers in order.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { GuestError } from "../virtio/ring.ts";
import {
  CONTROL,
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  type ControlMsg,
  ControlPlan,
  decodeControl,
  encodeControl,
  guestRequest,
  NR_PORTS,
  NR_QUEUES,
  portQueues,
  queueRole,
  REQ_DEVICE_READY,
  reqPortReady,
  STDIN_PORT,
  STDOUT_PORT,
  VIRTIO_CONSOLE_DEVICE_READY,
  VIRTIO_CONSOLE_PORT_ADD,
  VIRTIO_CONSOLE_PORT_NAME,
  VIRTIO_CONSOLE_PORT_OPEN,
  VIRTIO_CONSOLE_PORT_READY,
  VIRTIO_CONSOLE_RESIZE,
} from "./control.ts";

const ALL_READY = reqPortReady(0) | reqPortReady(1) | reqPortReady(2);
const brief = (ms: ControlMsg[]) => ms.map((m) => `${m.event}:${m.id}:${m.value}${m.name ? `:${m.name}` : ""}`);

test("struct virtio_console_control is 8 bytes: le32 id, le16 event, le16 value", () => {
  assert.equal(CONTROL.SIZE, 8);
  const b = encodeControl({ id: 0x01020304, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
  assert.deepEqual([...b], [0x04, 0x03, 0x02, 0x01, 6, 0, 1, 0]);
});

test("encodeControl() puts PORT_NAME's name right after the struct, with no NUL", () => {
  const b = encodeControl({ id: 1, event: VIRTIO_CONSOLE_PORT_NAME, value: 1, name: "vmm.stdout" });
  assert.equal(b.length, CONTROL.SIZE + "vmm.stdout".length);
  assert.equal(new TextDecoder().decode(b.subarray(CONTROL.SIZE)), "vmm.stdout");
});

test("decodeControl() reads what Linux's __send_control_msg() sends", () => {
  const b = encodeControl({ id: 2, event: VIRTIO_CONSOLE_PORT_READY, value: 1 });
  assert.deepEqual(decodeControl(b), { id: 2, event: VIRTIO_CONSOLE_PORT_READY, value: 1 });
  // A longer buffer is fine: the struct is its first 8 bytes.
  assert.deepEqual(decodeControl(new Uint8Array([...b, 9, 9])), { id: 2, event: VIRTIO_CONSOLE_PORT_READY, value: 1 });
});

test("decodeControl() rejects a message shorter than the struct", () => {
  assert.throws(() => decodeControl(new Uint8Array(7)), (e) => e instanceof GuestError && e.kind === "ChainTooShort");
});

test("queueRole() follows the multiport queue map: port 0, control, then two per port", () => {
  assert.equal(NR_QUEUES, 8);
  assert.deepEqual(portQueues(0), { rx: 0, tx: 1 });
  assert.deepEqual(portQueues(1), { rx: 4, tx: 5 });
  assert.deepEqual(portQueues(2), { rx: 6, tx: 7 });
  assert.deepEqual(queueRole(CONTROL_RX_QUEUE), { role: "control-rx" });
  assert.deepEqual(queueRole(CONTROL_TX_QUEUE), { role: "control-tx" });
  for (let port = 0; port < NR_PORTS; port++) {
    assert.deepEqual(queueRole(portQueues(port).rx), { role: "rx", port });
    assert.deepEqual(queueRole(portQueues(port).tx), { role: "tx", port });
  }
  assert.throws(() => queueRole(8), RangeError);
  assert.throws(() => queueRole(-1), RangeError);
});

test("guestRequest() turns DEVICE_READY and PORT_READY into request bits, PORT_OPEN into a guest-open state", () => {
  assert.deepEqual(guestRequest({ id: 0xffff_ffff, event: VIRTIO_CONSOLE_DEVICE_READY, value: 1 }), { requests: REQ_DEVICE_READY });
  assert.deepEqual(guestRequest({ id: 2, event: VIRTIO_CONSOLE_PORT_READY, value: 1 }), { requests: reqPortReady(2) });
  assert.deepEqual(guestRequest({ id: 1, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 }), {
    requests: 0,
    guestOpen: { port: 1, open: true },
  });
  assert.deepEqual(guestRequest({ id: 1, event: VIRTIO_CONSOLE_PORT_OPEN, value: 0 }).guestOpen, { port: 1, open: false });
});

test("guestRequest() ignores failures, unknown ports and events the driver does not send", () => {
  assert.equal(guestRequest({ id: 0, event: VIRTIO_CONSOLE_DEVICE_READY, value: 0 }).requests, 0);
  assert.equal(guestRequest({ id: 0, event: VIRTIO_CONSOLE_PORT_READY, value: 0 }).requests, 0);
  assert.deepEqual(guestRequest({ id: NR_PORTS, event: VIRTIO_CONSOLE_PORT_READY, value: 1 }), { requests: 0 });
  assert.deepEqual(guestRequest({ id: 0xffff_ffff, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 }), { requests: 0 });
  assert.deepEqual(guestRequest({ id: 0, event: VIRTIO_CONSOLE_RESIZE, value: 1 }), { requests: 0 });
  assert.deepEqual(guestRequest({ id: 0, event: VIRTIO_CONSOLE_PORT_ADD, value: 1 }), { requests: 0 });
});

test("ControlPlan answers DEVICE_READY with PORT_ADD for each port, once", () => {
  const p = new ControlPlan();
  assert.deepEqual(brief(p.next(REQ_DEVICE_READY, false)), ["1:0:1", "1:1:1", "1:2:1"]);
  assert.deepEqual(p.next(REQ_DEVICE_READY, false), []);
});

test("ControlPlan answers PORT_READY with PORT_OPEN 1 then PORT_NAME", () => {
  const p = new ControlPlan();
  p.next(REQ_DEVICE_READY, false);
  assert.deepEqual(brief(p.next(ALL_READY, false)), [
    "6:0:1", "7:0:1:vmm.stdin",
    "6:1:1", "7:1:1:vmm.stdout",
    "6:2:1", "7:2:1:vmm.stderr",
  ]);
  assert.deepEqual(p.next(ALL_READY, false), [], "a repeated PORT_READY is not answered again");
});

test("ControlPlan closes stdin's host end once when stdin ends after the port was announced", () => {
  const p = new ControlPlan();
  p.next(REQ_DEVICE_READY | reqPortReady(STDIN_PORT), false);
  assert.deepEqual(brief(p.next(0, true)), ["6:0:0"]);
  assert.deepEqual(p.next(0, true), []);
  assert.deepEqual(p.next(reqPortReady(STDIN_PORT), true), []);
});

test("ControlPlan announces stdin closed when it ended before the port was ready", () => {
  const p = new ControlPlan();
  assert.deepEqual(p.next(0, true), [], "nothing to say before the port exists");
  assert.deepEqual(brief(p.next(reqPortReady(STDIN_PORT), true)), ["6:0:0", "7:0:1:vmm.stdin"]);
  assert.deepEqual(p.next(0, true), []);
});

test("ControlPlan keeps the output ports open whatever stdin does", () => {
  const p = new ControlPlan();
  assert.deepEqual(brief(p.next(reqPortReady(STDOUT_PORT), true)), ["6:1:1", "7:1:1:vmm.stdout"]);
});
