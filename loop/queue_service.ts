/**
 * What a queue Worker does with its queue, apart from the thread: take the
 * queue the driver configured, run the device's handler, interrupt the guest
 * when the ring says it wants one, and turn anything the handler throws into
 * DEVICE_NEEDS_RESET plus one log line. loop/queue_worker.ts wraps it in
 * the poll loop; tests drive it directly, hostile rings included, to show
 * that nothing a guest writes escapes it.
 */
import { writeAll } from "../ffi/libc.ts";
import type { GuestMemory } from "../vm/memory.ts";
import { GuestError, Virtqueue } from "../devices/virtio/ring.ts";
import { type QueueHandler, serveAll } from "../devices/virtio/queue_handler.ts";
import { NET_QUEUE_SIZE, type VirtioSpec } from "../devices/virtio/device.ts";
import { type MmioTransport, VIRTIO_MMIO_INT_VRING } from "../devices/virtio/mmio.ts";
import { BlkQueue } from "../devices/virtio/blk.ts";
import { RngQueue } from "../devices/virtio/rng.ts";
import { CONSOLE_RX_QUEUE, ConsoleRx, ConsoleTx } from "../devices/virtio/console.ts";
import { NET_RX_QUEUE, NetRx, NetStats, NetTx } from "../devices/virtio/net.ts";
import { EXIT_KIND } from "./shared.ts";

export interface QueueServiceOptions {
  /** For log lines: "virtio-blk vda (disk.img): queue 0". */
  name: string;
  mem: GuestMemory;
  /** This thread's view of the device's registers. */
  transport: MmioTransport;
  queue: number;
  /**
   * A fresh handler, made at each start (a reset forgets the device's queue
   * state), given the features the driver accepted and where to log.
   */
  handler: (driverFeatures: bigint, log: (line: string) => void) => QueueHandler;
  /** Raise the device's interrupt (write its irqfd). */
  interrupt: () => void;
  /** Whether the queue is still meant to run (false once a reset is under way). */
  running: () => boolean;
  /** Where the one line about a broken queue goes; default stderr. */
  log?: (line: string) => void;
}

export class QueueService {
  readonly #o: QueueServiceOptions;
  #vq: Virtqueue | null = null;
  #handler: QueueHandler | null = null;
  #broken = false;

  constructor(o: QueueServiceOptions) {
    this.#o = o;
  }

  /** A queue is in hand and not broken. */
  get serving(): boolean {
    return this.#vq !== null && this.#handler !== null && !this.#broken;
  }
  get broken(): boolean {
    return this.#broken;
  }

  /** DRIVER_OK: take the queue as the driver configured it (an unused queue stays idle). */
  start(): void {
    this.#vq = null;
    this.#handler = null;
    this.#broken = false;
    const cfg = this.#o.transport.queueConfig(this.#o.queue);
    if (!cfg.ready) return;
    try {
      this.#vq = new Virtqueue(this.#o.mem, cfg);
      this.#handler = this.#o.handler(this.#o.transport.driverFeatures, (line) => this.#log(line));
    } catch (e) {
      this.#fail(e);
    }
  }

  /** The host fd the handler waits on now, or -1. */
  inputFd(): number {
    return this.serving ? this.#handler!.inputFd?.() ?? -1 : -1;
  }

  /** Serve what the guest made available; true when there is more to do right away. */
  kick(): boolean {
    let more = false;
    this.#serve((vq, h) => {
      more = h.kick(vq) === true;
    });
    return more && this.serving;
  }

  input(): void {
    this.#serve((vq, h) => h.input?.(vq));
  }

  /** Reset (`serveFirst` false: the driver gave up its buffers) or VM stop (true: finish them first). */
  stop(serveFirst: boolean): void {
    if (serveFirst) this.kick();
    try {
      this.#handler?.drain?.();
    } catch (e) {
      this.#log(`drain failed: ${(e as Error).message}`);
    }
    this.#vq = null;
    this.#handler = null;
  }

  /** Run one handler call, then interrupt the guest if it wants to hear. */
  #serve(f: (vq: Virtqueue, h: QueueHandler) => void): void {
    const vq = this.#vq, handler = this.#handler;
    if (!vq || !handler || this.#broken) return;
    try {
      f(vq, handler);
    } catch (e) {
      this.#fail(e);
    }
    if (vq.needsInterrupt()) {
      this.#o.transport.raiseInterrupt(VIRTIO_MMIO_INT_VRING);
      this.#o.interrupt();
    }
  }

  /** The guest broke the queue (or vmm hit a bug serving it): tell the driver, log once, stop serving. */
  #fail(e: unknown): void {
    this.#broken = true;
    const what = e instanceof GuestError ? e.message : `internal error: ${(e as Error)?.message ?? e}`;
    this.#log(`${what}; the device needs a reset`);
    // Only while running: a reset racing with this error must not leave its mark.
    if (this.#o.running() && this.#o.transport.markBroken(what)) this.#o.interrupt();
  }

  #log(text: string): void {
    const line = `vmm: ${this.#o.name}: ${text}`;
    if (this.#o.log) return this.#o.log(line);
    try {
      writeAll(2, new TextEncoder().encode(line + "\n"));
    } catch { /* stderr is gone: nothing else to tell */ }
  }
}

/** What a device's queue handler may use. */
export interface HandlerContext {
  mem: GuestMemory;
  /** Features the driver accepted. */
  features: bigint;
  /** End the VM (a panic on hvc0, Ctrl-A x). */
  end: (kind: number, code: number, reason: string) => void;
  /** One line about the device (already prefixed with its name). */
  log: (line: string) => void;
}

/** The handler of queue `queue` of a device. */
export function deviceHandler(spec: VirtioSpec, queue: number, ctx: HandlerContext): QueueHandler {
  const { mem, end } = ctx;
  switch (spec.kind) {
    case "blk": {
      const blk = new BlkQueue(mem, spec.disk);
      return { kick: (vq) => serveAll(vq, (chain) => blk.serve(chain)), drain: () => blk.flush() };
    }
    case "rng":
      return new RngQueue(mem);
    case "net": {
      const stats = new NetStats(ctx.log);
      if (queue === NET_RX_QUEUE) return new NetRx(mem, spec.net.tapFd, ctx.features, stats);
      return new NetTx(mem, spec.net.tapFd, NET_QUEUE_SIZE, stats);
    }
    case "console":
      if (queue === CONSOLE_RX_QUEUE) {
        if (spec.inFd === null) return { kick() {} }; // no input: the buffers wait
        return new ConsoleRx(mem, spec.inFd, () => end(EXIT_KIND.QUIT, 0, "console escape Ctrl-A x"), spec.escape);
      }
      return new ConsoleTx(mem, spec.outFd, (reason) => end(EXIT_KIND.PANIC, 0, reason));
  }
}
