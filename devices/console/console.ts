/**
 * virtio-console with one port (virtio 1.2 §5.3): the guest's hvc0.
 *
 * Queue 0 (receiveq) carries host input to the guest: the driver keeps it
 * stocked with empty writable buffers, and the receive Worker fills one
 * whenever the host's input fd has bytes. Queue 1 (transmitq) carries the
 * guest's output: readable buffers the transmit Worker writes straight from
 * guest RAM to the host's output fd.
 *
 * Receiving is lguest's pattern: wait on the input fd only while the guest
 * has buffers for it. With none left, the Worker asks for a notification and
 * sleeps on the queue's ioeventfd instead, so a guest that stops reading
 * costs no host CPU and no input is dropped.
 */
import { EAGAIN, EINTR, errno, libc, NativeBuf, writeAllAt } from "../../ffi/libc.ts";
import type { GuestMemory } from "../../vm/memory.ts";
import { ConsoleEscape } from "../console_escape.ts";
import { PanicWatch } from "../panic_watch.ts";
import type { Virtqueue } from "../virtio/ring.ts";
import { type QueueHandler, serveAll } from "../virtio/queue_handler.ts";

export const VIRTIO_ID_CONSOLE = 3;
export const CONSOLE_RX_QUEUE = 0;
export const CONSOLE_TX_QUEUE = 1;
const READ_CHUNK = 4096;

/**
 * struct virtio_console_config: cols, rows (u16, meaningful with
 * VIRTIO_CONSOLE_F_SIZE, which vmm does not offer), max_nr_ports (u32, with
 * F_MULTIPORT, not offered), emerg_wr (u32, with F_EMERG_WRITE, not offered).
 */
export function consoleConfig(): Uint8Array {
  return new Uint8Array(12);
}

/** The receive queue: host input → guest. */
export class ConsoleRx implements QueueHandler {
  readonly #mem: GuestMemory;
  readonly #inFd: number;
  readonly #onQuit: () => void;
  readonly #escape: ConsoleEscape | null;
  readonly #buf = NativeBuf.alloc(READ_CHUNK);
  #pending: Uint8Array = new Uint8Array(0);
  #eof = false;
  #starved = false;

  /** `escape`: honour Ctrl-A x (when the input is the user's terminal). */
  constructor(mem: GuestMemory, inFd: number, onQuit: () => void, escape = true) {
    this.#mem = mem;
    this.#inFd = inFd;
    this.#onQuit = onQuit;
    this.#escape = escape ? new ConsoleEscape() : null;
  }

  inputFd(): number {
    return this.#eof || this.#starved || this.#pending.length > 0 ? -1 : this.#inFd;
  }

  input(vq: Virtqueue): void {
    const n = Number(libc.read(this.#inFd, this.#buf.addr, BigInt(READ_CHUNK)));
    if (n < 0) {
      const e = errno();
      if (e === EAGAIN || e === EINTR) return;
      this.#eof = true; // EIO and friends: the input is gone for good
      return;
    }
    if (n === 0) {
      this.#eof = true;
      return;
    }
    let data: Uint8Array = this.#buf.bytes.slice(0, n);
    if (this.#escape) {
      const r = this.#escape.push(data);
      data = r.data;
      if (r.quit) {
        this.#eof = true;
        this.#onQuit();
      }
    }
    this.#pending = data;
    this.#deliver(vq);
  }

  kick(vq: Virtqueue): void {
    this.#starved = false;
    this.#deliver(vq);
  }

  /** Copy pending input into guest buffers until one side runs out. */
  #deliver(vq: Virtqueue): void {
    // A guest vCPU can post empty buffers as fast as we return them: bound the loop.
    let budget = 4 * vq.size;
    while (this.#pending.length > 0 && budget-- > 0) {
      const chain = vq.pop();
      if (!chain) {
        // No buffer: ask to be kicked when one comes, unless one just did.
        if (vq.enableNotificationAndCheck()) continue;
        this.#starved = true;
        return;
      }
      const w = chain.writer();
      const n = Math.min(w.remaining, this.#pending.length);
      w.write(this.#pending.subarray(0, n));
      vq.pushUsed(chain.head, n);
      this.#pending = this.#pending.subarray(n);
    }
    // Budget spent on input a hostile driver keeps us from placing: drop it.
    if (!this.#starved) this.#pending = new Uint8Array(0);
  }
}

/** The transmit queue: guest output → host, watched for a kernel panic. */
export class ConsoleTx implements QueueHandler {
  readonly #mem: GuestMemory;
  readonly #outFd: number;
  readonly #onPanic: (reason: string) => void;
  readonly #panic = new PanicWatch();
  #outputBroken = false;

  constructor(mem: GuestMemory, outFd: number, onPanic: (reason: string) => void) {
    this.#mem = mem;
    this.#outFd = outFd;
    this.#onPanic = onPanic;
  }

  kick(vq: Virtqueue): boolean {
    return serveAll(vq, (chain) => {
      for (const s of chain.readable) {
        if (!this.#outputBroken) {
          try {
            writeAllAt(this.#outFd, this.#mem.hostAddress(s.gpa, s.len), s.len, "write console output");
          } catch {
            this.#outputBroken = true; // the reader went away: keep the guest running, drop its output
          }
        }
        for (const b of this.#mem.slice(s.gpa, s.len)) {
          if (this.#panic.push(b) === "ended") this.#onPanic(this.#panic.reason);
        }
      }
      return 0; // nothing written into the chain
    });
  }
}
