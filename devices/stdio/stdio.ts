/**
 * The queue handlers of the stdio console: a command's stdin, stdout and
 * stderr on three ports of one multiport virtio-console (virtio 1.2 §5.3),
 * virtme-ng's way of keeping them apart from each other and from the
 * kernel's messages.
 *
 * Eight queues, all served by one Worker (loop/queue_worker.ts, DeviceKind.oneWorker):
 *
 *   0 stdin  rx   host stdin → guest           StdinRx: ConsoleRx once the guest opened the port
 *   1 stdin  tx   guest → nowhere              written off
 *   2 control rx  host → guest control         ControlRx
 *   3 control tx  guest → host control         ControlTx
 *   4 stdout rx   nothing to send              buffers wait
 *   5 stdout tx   guest → host stdout          ConsoleTx, byte for byte
 *   6 stderr rx   nothing to send              buffers wait
 *   7 stderr tx   guest → host stderr          ConsoleTx
 *
 * The data ports are devices/console/'s handlers unchanged. What is new is
 * the control conversation (control.ts), split across two queues: control
 * tx hears the guest, control rx owns the buffers to answer in. They meet
 * in the device's shared words (control.ts W) and an eventfd that control
 * rx polls as its input fd, the same way the stdin handler reports EOF. A
 * second eventfd tells the stdin handler that a guest program opened the
 * port: until then it must not send anything (StdinRx says why).
 */
import { eventfdRead, eventfdSignal } from "../../ffi/libc.ts";
import { stampClock } from "../../guest/settime.ts";
import { ConsoleRx, ConsoleTx } from "../console/console.ts";
import type { HandlerContext } from "../virtio/kind.ts";
import { type QueueHandler, serveAll } from "../virtio/queue_handler.ts";
import type { Virtqueue } from "../virtio/ring.ts";
import {
  CONTROL,
  ControlPlan,
  decodeControl,
  encodeControl,
  guestRequest,
  NR_PORTS,
  PORT_NAMES,
  queueRole,
  STDERR_PORT,
  STDIN_PORT,
  W,
} from "./control.ts";

/** What the handlers need of the device's spec (mod.ts StdioSpec). */
export interface StdioFds {
  /** Host stdin; null: the guest's stdin is empty from the start. */
  inFd: number | null;
  outFd: number;
  errFd: number;
  /** Eventfd (non-blocking) that wakes the control receive handler. */
  controlWakeFd: number;
  /** Eventfd (non-blocking) that wakes the stdin handler when the guest opens or closes vmm.stdin. */
  stdinWakeFd: number;
  /**
   * Bytes the guest reads on vmm.stdin before host stdin: how `vmm run`
   * hands its command to a guest init that is already up (guest/command.ts
   * runPayload), the same way on a cold boot and after a restore.
   */
  stdinPrefix?: Uint8Array;
  /**
   * Where in `stdinPrefix` a timespec gets the wall clock as the prefix
   * starts on its way (guest/settime.ts): the guest's clock is set from
   * it, and the Workers' start-up must not make it late.
   */
  stdinClockAt?: number;
}

/** The handler of queue `ctx.queue`. */
export function stdioHandler(fds: StdioFds, ctx: HandlerContext): QueueHandler {
  const r = queueRole(ctx.queue);
  switch (r.role) {
    case "control-rx":
      return new ControlRx(ctx.state, fds.controlWakeFd, noStdin(fds), ctx.restored ?? false);
    case "control-tx":
      return new ControlTx(ctx.state, fds.controlWakeFd, fds.stdinWakeFd, ctx.restored ?? false);
    case "rx":
      if (r.port !== STDIN_PORT || noStdin(fds)) return { kick() {} }; // the guest's buffers wait
      return new StdinRx(ctx.state, fds.stdinWakeFd, fds.inFd, () => {
        Atomics.store(ctx.state, W.STDIN_EOF, 1);
        eventfdSignal(fds.controlWakeFd);
      }, fds.stdinPrefix, fds.stdinClockAt);
    case "tx": {
      if (r.port === STDIN_PORT) return { kick: (vq) => serveAll(vq, () => 0) }; // a write to stdin goes nowhere
      const name = PORT_NAMES[r.port];
      return new ConsoleTx(ctx.mem, r.port === STDERR_PORT ? fds.errFd : fds.outFd, { log: (l) => ctx.log(`${name} ${l}`) });
    }
  }
}

/** The guest's stdin is empty from the start: no host stdin and nothing to say before it. */
function noStdin(fds: StdioFds): boolean {
  return fds.inFd === null && !fds.stdinPrefix?.length;
}

/**
 * Control transmitq: messages from the driver. Linux sends each as one
 * 8-byte buffer and spins until it comes back used, so they are answered
 * here at once and only handed over to ControlRx for the reply.
 */
export class ControlTx implements QueueHandler {
  readonly #state: Int32Array;
  readonly #wakeFd: number;
  readonly #stdinWakeFd: number;

  constructor(state: Int32Array, wakeFd: number, stdinWakeFd: number, restored = false) {
    this.#state = state;
    this.#wakeFd = wakeFd;
    this.#stdinWakeFd = stdinWakeFd;
    if (restored) return; // the snapshot's session goes on, with its open ports
    // A new driver session: requests and open ports from before a reset are not this driver's.
    Atomics.store(state, W.REQUESTS, 0);
    for (let port = 0; port < NR_PORTS; port++) Atomics.store(state, W.GUEST_OPEN + port, 0);
  }

  kick(vq: Virtqueue): boolean {
    let requests = 0;
    const more = serveAll(vq, (chain) => {
      const r = guestRequest(decodeControl(chain.reader().readBytes(Math.min(chain.readableLength, CONTROL.SIZE))));
      requests |= r.requests;
      if (r.guestOpen) {
        Atomics.store(this.#state, W.GUEST_OPEN + r.guestOpen.port, r.guestOpen.open ? 1 : 0);
        if (r.guestOpen.port === STDIN_PORT) eventfdSignal(this.#stdinWakeFd);
      }
      return 0;
    });
    if (requests !== 0) {
      Atomics.or(this.#state, W.REQUESTS, requests);
      eventfdSignal(this.#wakeFd);
    }
    return more;
  }
}

/**
 * Port 0's receiveq: host stdin → guest, only while a guest program has
 * vmm.stdin open. Linux's in_intr() throws away what arrives on a generic
 * port nobody has open ("the host won't (shouldn't) send data till the
 * guest is connected"), and the guest opens the port only when its command
 * starts, long after the driver stocked the queue. So until the guest's
 * PORT_OPEN, this handler does not even read stdin: its input fd is an
 * eventfd that ControlTx writes when that message comes. Then it is
 * ConsoleRx, with no Ctrl-A escape (stdin is data, not a terminal), which
 * reports EOF through `onEof`.
 */
export class StdinRx implements QueueHandler {
  readonly #state: Int32Array;
  readonly #gateFd: number;
  readonly #rx: ConsoleRx;
  /** What inputFd() last returned, so input() knows which fd polled readable. */
  #polled = -1;

  /** Sending has begun: the guest opened the port once. */
  #started = false;
  /** What to stamp with the clock before the first byte goes: the prefix, and where. */
  #clock: { prefix: Uint8Array; at: number } | null;

  /** `inFd` null: the guest's stdin ends after `prefix`. */
  constructor(state: Int32Array, gateFd: number, inFd: number | null, onEof: () => void, prefix?: Uint8Array, clockAt?: number) {
    this.#state = state;
    this.#gateFd = gateFd;
    this.#rx = new ConsoleRx(inFd ?? -1, { onEof, prefix });
    this.#clock = prefix && clockAt !== undefined ? { prefix, at: clockAt } : null;
  }

  #send(vq: Virtqueue): void {
    this.#started = true;
    if (this.#clock) {
      stampClock(this.#clock.prefix, this.#clock.at);
      this.#clock = null;
    }
    this.#rx.kick(vq);
  }

  #guestOpen(): boolean {
    return Atomics.load(this.#state, W.GUEST_OPEN + STDIN_PORT) === 1;
  }

  inputFd(): number {
    // Until the first delivery, the gate: once the guest opened the port it
    // holds a count, and input() starts sending. Asking the guest's state
    // here instead could miss the start: with a prefix waiting, ConsoleRx
    // polls nothing, and the guest, blocked in read(), kicks nothing.
    if (!this.#started) return this.#polled = this.#gateFd;
    return this.#polled = this.#guestOpen() ? this.#rx.inputFd() : this.#gateFd;
  }

  input(vq: Virtqueue): void {
    if (this.#polled !== this.#gateFd) return this.#rx.input(vq);
    eventfdRead(this.#gateFd); // non-blocking
    // Opened: buffers the guest added meanwhile got kicks we ignored.
    if (this.#guestOpen()) this.#send(vq);
  }

  kick(vq: Virtqueue): void {
    if (this.#guestOpen()) this.#send(vq);
  }

  close(): void {
    this.#rx.close();
  }
}

/**
 * Control receiveq: the host's messages, one per buffer the driver stocked
 * (Linux: a page each). Woken by its eventfd when there is something to
 * say, by a kick when the driver adds buffers; with messages waiting and no
 * buffer, it asks for that kick (lguest's pattern, as ConsoleRx).
 */
export class ControlRx implements QueueHandler {
  readonly #state: Int32Array;
  readonly #wakeFd: number;
  readonly #noStdin: boolean;
  readonly #plan: ControlPlan;
  readonly #out: Uint8Array[] = [];

  constructor(state: Int32Array, wakeFd: number, noStdin: boolean, restored = false) {
    this.#state = state;
    this.#wakeFd = wakeFd;
    this.#noStdin = noStdin;
    // After a restore the plan goes on from what the snapshot's session was told; else it starts anew.
    if (!restored) Atomics.store(state, W.PLAN, 0);
    this.#plan = new ControlPlan(Atomics.load(state, W.PLAN));
  }

  inputFd(): number {
    return this.#wakeFd;
  }

  input(vq: Virtqueue): void {
    eventfdRead(this.#wakeFd); // non-blocking: a stale wake reads 0
    this.kick(vq);
  }

  kick(vq: Virtqueue): void {
    const requests = Atomics.exchange(this.#state, W.REQUESTS, 0);
    const eof = this.#noStdin || Atomics.load(this.#state, W.STDIN_EOF) === 1;
    for (const m of this.#plan.next(requests, eof)) this.#out.push(encodeControl(m));
    Atomics.store(this.#state, W.PLAN, this.#plan.state);
    while (this.#out.length > 0) {
      const chain = vq.pop();
      if (!chain) {
        if (vq.enableNotificationAndCheck()) continue;
        return;
      }
      // A buffer too small for the message is the driver's mistake: GuestError, the device needs a reset.
      const w = chain.writer();
      w.write(this.#out[0]);
      vq.pushUsed(chain.head, w.written);
      this.#out.shift();
    }
  }
}
