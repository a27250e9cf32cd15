/**
 * The stdio console's eight queues (stdio.ts) driven the way Linux's
 * virtio_console.c drives them, through test/support/driver_queue.ts, with
 * real pipes and files as vmm's stdin, stdout and stderr. Guest RAM is a
 * real mapping (test/support/host_memory.ts): the ports write(2) and read(2)
 * guest buffers by host address.
 *
 * The queues run on one thread here, so the test does the Workers' part:
 * it calls `kick()` after the guest adds buffers, and `input()` when a
 * handler's input fd polls readable (control rx's eventfd, the stdin pipe).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { close, EFD_CLOEXEC, EFD_NONBLOCK, eventfd, NativeBuf, O_CLOEXEC, O_CREAT, O_NONBLOCK, O_WRONLY, open, pipe, Poller, read, writeAll } from "../../ffi/libc.ts";
import { DEVICE_STATE_WORDS } from "../../loop/shared.ts";
import { kindOf } from "../registry.ts";
import { HIGH_GPA, hostGuestMemory } from "../../test/support/host_memory.ts";
import { DriverQueue } from "../../test/support/driver_queue.ts";
import { describe } from "../registry.ts";
import type { QueueHandler } from "../virtio/queue_handler.ts";
import { GuestError, Virtqueue } from "../virtio/ring.ts";
import { CONSOLE_CONFIG } from "../console/console.ts";
import {
  CONTROL,
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  type ControlMsg,
  decodeControl,
  encodeControl,
  NR_QUEUES,
  portQueues,
  STDERR_PORT,
  STDIN_PORT,
  STDOUT_PORT,
  VIRTIO_CONSOLE_DEVICE_READY,
  VIRTIO_CONSOLE_PORT_NAME,
  VIRTIO_CONSOLE_PORT_OPEN,
  VIRTIO_CONSOLE_PORT_READY,
  W,
} from "./control.ts";
import { type StdioSpec, stdioKind } from "./mod.ts";

const RINGS = 0x1000; // queue q's rings at RINGS + q·0x1000
const QSIZE = 64;
const DATA = 0x20000; // buffers the guest fills (stdout, stderr, control tx)
const RX = HIGH_GPA; // buffers the guest offers (control rx, stdin)
const PAGE = 4096;
const BAD_ID = 0xffff_ffff;

/** Linux's side of the device: eight driver queues and the device's handlers over one guest RAM. */
class Guest {
  readonly mem = hostGuestMemory();
  readonly state = new Int32Array(DEVICE_STATE_WORDS);
  readonly log: string[] = [];
  readonly dqs: DriverQueue[] = [];
  readonly vqs: Virtqueue[] = [];
  handlers: QueueHandler[] = [];
  readonly spec: StdioSpec;
  /** Where each offered receive buffer is, by queue and descriptor head. */
  readonly #rxBufs = new Map<string, number>();
  #data = DATA;
  #rx = RX;

  constructor(fds: { inFd: number | null; outFd: number; errFd: number; stdinPrefix?: Uint8Array; stdinClockAt?: number }) {
    const [controlWakeFd, stdinWakeFd] = [0, 1].map(() => eventfd(EFD_CLOEXEC | EFD_NONBLOCK));
    this.spec = { kind: "stdio", ...fds, controlWakeFd, stdinWakeFd };
    for (let q = 0; q < NR_QUEUES; q++) {
      const dq = new DriverQueue(this.mem, DriverQueue.layout(RINGS + q * 0x1000, QSIZE));
      this.dqs.push(dq);
      this.vqs.push(new Virtqueue(this.mem, dq.config(true)));
    }
    this.start();
  }

  /** DRIVER_OK: every Worker makes its queue's handler, through the device registry; `restored`: Workers of a restored machine. */
  start(restored = false): void {
    this.handlers = this.vqs.map((_, queue) =>
      kindOf(this.spec).handler(this.spec, {
        mem: this.mem, features: 0n, queue, state: this.state, config: new Uint8Array(0), restored,
        log: (l) => this.log.push(l), end: () => assert.fail("the stdio console ended the VM"), configChanged() {},
      })
    );
  }

  close(): void {
    stdioKind.close(this.spec);
  }

  /** Copy `bytes` into guest RAM; returns their gpa. */
  put(bytes: Uint8Array): number {
    const at = this.#data;
    this.mem.write(at, bytes);
    this.#data += (bytes.length + 15) & ~15;
    return at;
  }

  /** Offer `n` empty buffers of `len` bytes on receive queue `q` (fill_queue()). */
  offer(q: number, n: number, len = PAGE): void {
    for (let i = 0; i < n; i++) {
      const head = this.dqs[q].add([{ gpa: this.#rx, len, write: true }]);
      this.#rxBufs.set(`${q}:${head}`, this.#rx);
      this.#rx += len;
    }
  }

  /** __send_control_msg(): one 8-byte buffer on control tx, kicked, back at once. */
  send(m: ControlMsg): void {
    const dq = this.dqs[CONTROL_TX_QUEUE];
    dq.add([{ gpa: this.put(encodeControl(m)), len: CONTROL.SIZE }]);
    this.kick(CONTROL_TX_QUEUE);
    assert.ok(dq.popUsed(), "the control message did not come back");
  }

  kick(q: number): void {
    this.handlers[q].kick(this.vqs[q]);
  }

  /** What a queue Worker does when its handler's input fd polls readable. */
  pollInput(q: number): boolean {
    const fd = this.handlers[q].inputFd?.() ?? -1;
    if (fd < 0) return false;
    const poller = new Poller([fd]);
    const ready = poller.wait(0)[0] !== 0;
    poller.close();
    if (!ready) return false;
    this.handlers[q].input!(this.vqs[q]);
    return true;
  }

  /** The buffers the device filled on receive queue `q`, in order. */
  received(q: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let e = this.dqs[q].popUsed(); e; e = this.dqs[q].popUsed()) {
      out.push(this.mem.slice(this.#rxBufs.get(`${q}:${e.id}`)!, e.len).slice());
    }
    return out;
  }

  /** The control messages the host sent since last time (control_work_handler()). */
  control(): ControlMsg[] {
    this.pollInput(CONTROL_RX_QUEUE);
    return this.received(CONTROL_RX_QUEUE).map(hostMessage);
  }

  /** Probe and port set-up as Linux does it, up to the names; returns the host's messages. */
  handshake(): ControlMsg[] {
    this.offer(CONTROL_RX_QUEUE, 16);
    this.kick(CONTROL_RX_QUEUE);
    this.send({ id: BAD_ID, event: VIRTIO_CONSOLE_DEVICE_READY, value: 1 });
    const msgs = this.control();
    for (const m of msgs) {
      this.offer(portQueues(m.id).rx, 4); // add_port(): fill the port's receiveq, then PORT_READY
      this.send({ id: m.id, event: VIRTIO_CONSOLE_PORT_READY, value: 1 });
    }
    return [...msgs, ...this.control()];
  }

  /** A program writes `bytes` to port `port`, in one buffer (port_fops_write()). */
  write(port: number, bytes: Uint8Array): void {
    const q = portQueues(port).tx;
    this.dqs[q].add([{ gpa: this.put(bytes), len: bytes.length }]);
    this.kick(q);
  }
}

/** One control receive buffer as the driver reads it: the struct, and for PORT_NAME the name (buf->len − 8 bytes). */
function hostMessage(b: Uint8Array): ControlMsg {
  const m = decodeControl(b);
  return m.event === VIRTIO_CONSOLE_PORT_NAME ? { ...m, name: new TextDecoder().decode(b.subarray(CONTROL.SIZE)) } : m;
}

const brief = (ms: ControlMsg[]) => ms.map((m) => `${m.event}:${m.id}:${m.value}${m.name ? `:${m.name}` : ""}`);
const buf = NativeBuf.alloc(1 << 16);

/** Everything readable now from a non-blocking fd. */
function drain(fd: number): Uint8Array {
  const parts: number[] = [];
  for (;;) {
    let n: number;
    try {
      n = read(fd, buf);
    } catch {
      break; // EAGAIN: empty
    }
    if (n === 0) break;
    parts.push(...buf.bytes.subarray(0, n));
  }
  return new Uint8Array(parts);
}

/** Three pipes standing in for vmm's stdin, stdout, stderr; `hostIn`, `hostOut`, `hostErr` are the test's ends. */
function pipes() {
  const [inR, hostIn] = pipe(O_CLOEXEC | O_NONBLOCK);
  const [hostOut, outW] = pipe(O_CLOEXEC | O_NONBLOCK);
  const [hostErr, errW] = pipe(O_CLOEXEC | O_NONBLOCK);
  const p = {
    fds: { inFd: inR, outFd: outW, errFd: errW },
    /** Set to -1 once a test closed it. */
    hostIn, hostOut, hostErr,
    close: () => [inR, p.hostIn, p.hostOut, outW, p.hostErr, errW].forEach((fd) => fd >= 0 && close(fd)),
  };
  return p;
}

test("stdio kind: a console with F_MULTIPORT, eight queues and max_nr_ports 3, only when asked for", () => {
  assert.deepEqual(stdioKind.open({}, { outFd: 1, inFd: 0 }), []);
  const [spec] = stdioKind.open({ stdio: { inFd: 0, outFd: 1, errFd: 2 } }, { outFd: 1, inFd: null });
  try {
    assert.equal(spec.kind, "stdio");
    const m = describe(spec);
    assert.equal(m.deviceId, 3);
    assert.equal(m.features, 1n << 1n);
    assert.equal(m.queueSizes.length, 8);
    assert.equal(new DataView(m.config.buffer).getUint32(CONSOLE_CONFIG.MAX_NR_PORTS, true), 3);
    assert.ok(spec.controlWakeFd > 2 && spec.stdinWakeFd > 2);
  } finally {
    stdioKind.close(spec);
  }
});

test("the handshake: PORT_ADD for each port, then PORT_OPEN 1 and PORT_NAME for each ready port", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    assert.deepEqual(brief(g.handshake()), [
      "1:0:1", "1:1:1", "1:2:1",
      "6:0:1", "7:0:1:vmm.stdin",
      "6:1:1", "7:1:1:vmm.stdout",
      "6:2:1", "7:2:1:vmm.stderr",
    ]);
    assert.deepEqual(g.log, []);
  } finally {
    g.close();
    p.close();
  }
});

test("control messages wait for the guest's buffers and go out as it adds them", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.send({ id: BAD_ID, event: VIRTIO_CONSOLE_DEVICE_READY, value: 1 });
    assert.deepEqual(g.control(), [], "no buffer, no message");
    g.offer(CONTROL_RX_QUEUE, 2);
    g.kick(CONTROL_RX_QUEUE);
    assert.deepEqual(brief(g.received(CONTROL_RX_QUEUE).map(hostMessage)), ["1:0:1", "1:1:1"]);
    g.offer(CONTROL_RX_QUEUE, 2);
    g.kick(CONTROL_RX_QUEUE);
    assert.deepEqual(brief(g.received(CONTROL_RX_QUEUE).map(hostMessage)), ["1:2:1"]);
  } finally {
    g.close();
    p.close();
  }
});

test("a control receive buffer too small for PORT_NAME is a GuestError", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.offer(CONTROL_RX_QUEUE, 4, CONTROL.SIZE);
    g.send({ id: STDOUT_PORT, event: VIRTIO_CONSOLE_PORT_READY, value: 1 });
    assert.throws(() => g.pollInput(CONTROL_RX_QUEUE), (e) => e instanceof GuestError && e.kind === "ChainTooShort");
  } finally {
    g.close();
    p.close();
  }
});

test("a control message shorter than its struct is a GuestError", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.dqs[CONTROL_TX_QUEUE].add([{ gpa: g.put(new Uint8Array(6)), len: 6 }]);
    assert.throws(() => g.kick(CONTROL_TX_QUEUE), (e) => e instanceof GuestError && e.kind === "ChainTooShort");
  } finally {
    g.close();
    p.close();
  }
});

test("the guest's PORT_OPEN is recorded in the device's shared words", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.handshake();
    g.send({ id: STDOUT_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
    assert.equal(g.state[W.GUEST_OPEN + STDOUT_PORT], 1);
    g.send({ id: STDOUT_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 0 });
    assert.equal(g.state[W.GUEST_OPEN + STDOUT_PORT], 0);
    assert.deepEqual(g.control(), [], "nothing to answer");
  } finally {
    g.close();
    p.close();
  }
});

test("stdout and stderr reach their own fds byte for byte: binary, CR LF and NUL kept", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.handshake();
    const out = new Uint8Array([0, 1, 2, 0x0d, 0x0a, 0xff, 0x0a, 0x1b]);
    g.write(STDOUT_PORT, out);
    g.write(STDERR_PORT, new TextEncoder().encode("warning\n"));
    g.write(STDOUT_PORT, new TextEncoder().encode("no CR\n"));
    assert.deepEqual([...drain(p.hostOut)], [...out, ...new TextEncoder().encode("no CR\n")]);
    assert.equal(new TextDecoder().decode(drain(p.hostErr)), "warning\n");
    for (const port of [STDOUT_PORT, STDERR_PORT]) {
      const dq = g.dqs[portQueues(port).tx];
      while (dq.popUsed()); // every buffer came back
      assert.equal(dq.usedIdx, dq.availIdx);
    }
  } finally {
    g.close();
    p.close();
  }
});

test("4 MiB of stdout in 32 KiB writes arrive whole and in order in a file", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-stdio-"));
  const outFd = open(join(dir, "out"), O_WRONLY | O_CREAT | O_CLOEXEC);
  const p = pipes();
  const g = new Guest({ ...p.fds, outFd });
  try {
    g.handshake();
    const chunk = new Uint8Array(32 * 1024);
    const at = g.put(chunk);
    const q = portQueues(STDOUT_PORT).tx;
    const want = new Uint8Array(4 << 20);
    for (let i = 0; i < 128; i++) {
      for (let k = 0; k < chunk.length; k++) chunk[k] = (i * 7 + k * 13) & 0xff;
      g.mem.write(at, chunk);
      want.set(chunk, i * chunk.length);
      g.dqs[q].add([{ gpa: at, len: chunk.length }]);
      g.kick(q);
    }
    assert.ok(readFileSync(join(dir, "out")).equals(want));
  } finally {
    g.close();
    p.close();
    close(outFd);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("stdout whose reader went away (EPIPE) costs one log line; the guest's buffers still come back", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.handshake();
    close(p.hostOut);
    p.hostOut = -1;
    for (let i = 0; i < 3; i++) g.write(STDOUT_PORT, new TextEncoder().encode(`line ${i}\n`));
    assert.equal(g.log.length, 1);
    assert.match(g.log[0], /^vmm\.stdout output: write: EPIPE/);
    const dq = g.dqs[portQueues(STDOUT_PORT).tx];
    assert.equal(dq.usedIdx, 3);
    g.write(STDERR_PORT, new TextEncoder().encode("still here\n"));
    assert.equal(new TextDecoder().decode(drain(p.hostErr)), "still here\n");
  } finally {
    g.close();
    p.close();
  }
});

test("stdin is not read before a guest program opens vmm.stdin: Linux would drop it", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.handshake();
    const rx = portQueues(STDIN_PORT).rx;
    writeAll(p.hostIn, new TextEncoder().encode("early"));
    assert.equal(g.handlers[rx].inputFd!(), g.spec.stdinWakeFd, "waits for the guest, not on stdin");
    assert.equal(g.pollInput(rx), false);
    g.kick(rx);
    assert.deepEqual(g.received(rx), []);
    g.send({ id: STDIN_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 }); // port_fops_open()
    assert.ok(g.pollInput(rx), "the gate opens");
    assert.equal(g.handlers[rx].inputFd!(), p.fds.inFd, "now it waits on stdin");
    assert.ok(g.pollInput(rx));
    assert.deepEqual(g.received(rx).map((b) => new TextDecoder().decode(b)), ["early"]);
  } finally {
    g.close();
    p.close();
  }
});

test("stdin reaches port 0's buffers, then its end of file closes the host end: PORT_OPEN 0", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.handshake();
    const rx = portQueues(STDIN_PORT).rx;
    g.send({ id: STDIN_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
    g.pollInput(rx);
    writeAll(p.hostIn, new TextEncoder().encode("x"));
    assert.ok(g.pollInput(rx));
    assert.deepEqual(g.received(rx).map((b) => new TextDecoder().decode(b)), ["x"]);
    assert.deepEqual(g.control(), [], "stdin still open");
    close(p.hostIn);
    p.hostIn = -1;
    assert.ok(g.pollInput(rx), "EOF polls readable");
    assert.equal(g.state[W.STDIN_EOF], 1);
    assert.equal(g.handlers[rx].inputFd!(), -1, "nothing more to read");
    assert.deepEqual(brief(g.control()), ["6:0:0"]);
    assert.deepEqual(g.control(), []);
  } finally {
    g.close();
    p.close();
  }
});

test("stdin read before the guest stocked port 0 waits for its buffers, data before the end of file", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    const rx = portQueues(STDIN_PORT).rx;
    writeAll(p.hostIn, new TextEncoder().encode("all of it"));
    close(p.hostIn);
    p.hostIn = -1;
    g.send({ id: STDIN_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 }); // a driver in a hurry
    g.pollInput(rx);
    g.pollInput(rx); // read before the port has buffers: held back
    g.offer(CONTROL_RX_QUEUE, 16);
    g.kick(CONTROL_RX_QUEUE);
    g.send({ id: BAD_ID, event: VIRTIO_CONSOLE_DEVICE_READY, value: 1 });
    g.control();
    g.offer(rx, 4);
    g.kick(rx);
    assert.deepEqual(g.received(rx).map((b) => new TextDecoder().decode(b)), ["all of it"]);
    g.pollInput(rx); // now the end of file
    assert.equal(g.state[W.STDIN_EOF], 1);
    g.send({ id: STDIN_PORT, event: VIRTIO_CONSOLE_PORT_READY, value: 1 });
    assert.deepEqual(brief(g.control()), ["6:0:0", "7:0:1:vmm.stdin"]);
  } finally {
    g.close();
    p.close();
  }
});

test("no stdin (inFd null): port 0 is announced closed and its buffers wait", () => {
  const p = pipes();
  const g = new Guest({ ...p.fds, inFd: null });
  try {
    const msgs = brief(g.handshake());
    assert.ok(msgs.includes("6:0:0") && !msgs.includes("6:0:1"), msgs.join(" "));
    assert.equal(g.handlers[portQueues(STDIN_PORT).rx].inputFd?.() ?? -1, -1);
    assert.deepEqual(g.received(portQueues(STDIN_PORT).rx), []);
  } finally {
    g.close();
    p.close();
  }
});

test("a device reset starts a new conversation: stale requests are dropped, the handshake runs again", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.handshake();
    g.send({ id: STDOUT_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
    Atomics.store(g.state, W.REQUESTS, 0xff); // left over from the old driver
    g.start();
    assert.equal(g.state[W.REQUESTS], 0);
    assert.equal(g.state[W.GUEST_OPEN + STDOUT_PORT], 0, "the new driver has no port open");
    g.send({ id: BAD_ID, event: VIRTIO_CONSOLE_DEVICE_READY, value: 1 });
    assert.deepEqual(brief(g.control()), ["1:0:1", "1:1:1", "1:2:1"]);
  } finally {
    g.close();
    p.close();
  }
});

test("a prefix goes to the guest ahead of stdin, its clock stamped as it starts; with no stdin, the port closes after it", () => {
  const p = pipes();
  const prefix = new TextEncoder().encode("command:................:end");
  const g = new Guest({ ...p.fds, inFd: null, stdinPrefix: prefix, stdinClockAt: 8 });
  try {
    const msgs = brief(g.handshake());
    assert.ok(msgs.includes("6:0:1"), `stdin announced open while the prefix waits: ${msgs.join(" ")}`);
    const rx = portQueues(STDIN_PORT).rx;
    g.kick(rx);
    assert.deepEqual(g.received(rx), [], "nothing before the guest opens the port");
    const before = Date.now();
    g.send({ id: STDIN_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
    g.pollInput(rx);
    const [got, ...more] = g.received(rx);
    assert.deepEqual(more, []);
    assert.equal(new TextDecoder().decode(got.subarray(0, 8)), "command:");
    assert.equal(new TextDecoder().decode(got.subarray(24)), ":end");
    const v = new DataView(got.buffer, got.byteOffset + 8, 16);
    const ms = Number(v.getBigUint64(0, true)) * 1000 + Number(v.getBigUint64(8, true)) / 1e6;
    assert.ok(ms >= Math.floor(before / 1000) * 1000 && ms <= Date.now(), `stamped ${ms}, sent at ${before}`);
    assert.equal(g.state[W.STDIN_EOF], 1, "the prefix was all of stdin");
    assert.deepEqual(brief(g.control()), ["6:0:0"]);
  } finally {
    g.close();
    p.close();
  }
});

test("a prefix goes ahead of the host's stdin, in order", () => {
  const p = pipes();
  const g = new Guest({ ...p.fds, stdinPrefix: new TextEncoder().encode("first,") });
  try {
    g.handshake();
    const rx = portQueues(STDIN_PORT).rx;
    writeAll(p.hostIn, new TextEncoder().encode("then stdin"));
    g.send({ id: STDIN_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
    g.pollInput(rx);
    assert.equal(g.handlers[rx].inputFd!(), p.fds.inFd, "the prefix is out: now stdin");
    assert.ok(g.pollInput(rx));
    assert.deepEqual(g.received(rx).map((b) => new TextDecoder().decode(b)), ["first,", "then stdin"]);
  } finally {
    g.close();
    p.close();
  }
});

test("handlers of a restored machine go on with the session: open ports kept, and stdin's end still told", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.handshake();
    g.send({ id: STDIN_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
    g.start(true); // the snapshot's queues, taken over by new Workers
    assert.equal(g.state[W.GUEST_OPEN + STDIN_PORT], 1, "the guest still has vmm.stdin open");
    const rx = portQueues(STDIN_PORT).rx;
    g.kick(rx); // a resumed queue Worker's first act (loop/queue_worker.ts)
    assert.equal(g.handlers[rx].inputFd!(), p.fds.inFd, "sending again at once: no new PORT_OPEN will come");
    writeAll(p.hostIn, new TextEncoder().encode("after"));
    close(p.hostIn);
    p.hostIn = -1;
    assert.ok(g.pollInput(rx));
    assert.ok(g.pollInput(rx), "EOF");
    assert.deepEqual(g.received(rx).map((b) => new TextDecoder().decode(b)), ["after"]);
    // A fresh plan would not know the guest was told stdin is open, and would never close it.
    assert.deepEqual(brief(g.control()), ["6:0:0"]);
    g.send({ id: BAD_ID, event: VIRTIO_CONSOLE_DEVICE_READY, value: 1 });
    assert.deepEqual(g.control(), [], "the ports were added already: not again");
  } finally {
    g.close();
    p.close();
  }
});

test("what the guest writes to stdin's port and offers to the output ports goes nowhere, quietly", () => {
  const p = pipes();
  const g = new Guest(p.fds);
  try {
    g.handshake();
    g.write(STDIN_PORT, new TextEncoder().encode("ignored"));
    assert.equal(g.dqs[portQueues(STDIN_PORT).tx].usedIdx, 1);
    g.kick(portQueues(STDOUT_PORT).rx);
    assert.deepEqual(g.received(portQueues(STDOUT_PORT).rx), []);
    assert.deepEqual(drain(p.hostOut).length, 0);
  } finally {
    g.close();
    p.close();
  }
});
