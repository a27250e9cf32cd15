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
import type { QueueHandler } from "../devices/virtio/queue_handler.ts";
import { type MmioTransport, VIRTIO_MMIO_INT_VRING } from "../devices/virtio/mmio.ts";
import { QPOS } from "./shared.ts";

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
  handler: (driverFeatures: bigint, log: (line: string) => void, restored: boolean) => QueueHandler;
  /** Raise the device's interrupt (write its irqfd). */
  interrupt: () => void;
  /** Whether the queue is still meant to run (false once a reset is under way). */
  running: () => boolean;
  /** Where the one line about a broken queue goes; default stderr. */
  log?: (line: string) => void;
  /**
   * Where the ring position is published (loop/shared.ts QPOS words), so
   * that a paused machine's queue state can be read, and later saved, from
   * another thread; and where a restored one is taken from.
   */
  positions?: Int32Array;
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

  /**
   * DRIVER_OK: take the queue as the driver configured it (an unused queue
   * stays idle). `restored`: the queue was running in the process that took
   * a snapshot; continue at the ring position it published in `positions`.
   */
  start(restored = false): void {
    this.#discard();
    this.#vq = null;
    this.#broken = false;
    const cfg = this.#o.transport.queueConfig(this.#o.queue);
    if (!cfg.ready) return;
    try {
      this.#vq = new Virtqueue(this.#o.mem, cfg);
      const p = this.#o.positions;
      if (restored && p && Atomics.load(p, QPOS.VALID) === 1) {
        this.#vq.resumeAt(Atomics.load(p, QPOS.NEXT_AVAIL), Atomics.load(p, QPOS.NEXT_USED));
      }
      this.#handler = this.#o.handler(this.#o.transport.driverFeatures, (line) => this.#log(line), restored);
    } catch (e) {
      this.#fail(e);
    }
    this.#publish();
  }

  /**
   * Pause: the request in hand is finished (this thread was serving it, so
   * it is done by the time this runs); make what was written durable and
   * keep the queue, its ring position and its handler for `resume()`.
   */
  pause(): void {
    try {
      this.#handler?.drain?.();
    } catch (e) {
      this.#log(`flush failed: ${(e as Error).message}`);
    }
    this.#publish();
  }

  /** The ring position: the next avail slot to read, the next used index to publish. */
  get position(): { nextAvail: number; nextUsed: number } | null {
    return this.#vq ? { nextAvail: this.#vq.nextAvail, nextUsed: this.#vq.nextUsed } : null;
  }

  /** Store the ring position in the shared words (Atomics: another thread reads them). */
  #publish(): void {
    const p = this.#o.positions;
    if (!p) return;
    const vq = this.#vq;
    Atomics.store(p, QPOS.NEXT_AVAIL, vq ? vq.nextAvail : 0);
    Atomics.store(p, QPOS.NEXT_USED, vq ? vq.nextUsed : 0);
    Atomics.store(p, QPOS.VALID, vq ? 1 : 0);
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
    this.#discard();
    this.#vq = null;
    // A reset forgets the ring; a stop leaves its last position readable.
    if (!serveFirst) this.#publish();
  }

  /** Let the handler release what it holds on the host, and forget it. */
  #discard(): void {
    const h = this.#handler;
    this.#handler = null;
    try {
      h?.close?.();
    } catch (e) {
      this.#log(`close failed: ${(e as Error).message}`);
    }
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
    this.#publish();
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
