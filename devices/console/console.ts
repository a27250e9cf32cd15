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
 *
 * The two queue handlers are also the ports of devices/stdio/, the
 * multiport console that carries a command's stdin, stdout and stderr.
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

/** struct virtio_console_config (virtio 1.2 §5.3.4), little-endian. */
export const CONSOLE_CONFIG = { COLS: 0, ROWS: 2, MAX_NR_PORTS: 4, EMERG_WR: 8, SIZE: 12 } as const;

/**
 * The configuration space: cols and rows mean something only with
 * VIRTIO_CONSOLE_F_SIZE and emerg_wr with F_EMERG_WRITE, which vmm does not
 * offer; max_nr_ports is read by a driver that accepted F_MULTIPORT
 * (devices/stdio/), 0 otherwise.
 */
export function consoleConfig(maxNrPorts = 0): Uint8Array {
  const c = new Uint8Array(CONSOLE_CONFIG.SIZE);
  new DataView(c.buffer).setUint32(CONSOLE_CONFIG.MAX_NR_PORTS, maxNrPorts, true);
  return c;
}

/** What a receive queue does besides copying bytes. */
export interface ConsoleRxOptions {
  /** Honour Ctrl-A x (when the input is the user's terminal); called when it comes. */
  onQuit?: () => void;
  /**
   * The input ended (EOF, or an error that will not go away). Every byte
   * read before it is already in the used ring, so a device that tells the
   * driver "no more input" from another thread cannot overtake the data.
   */
  onEof?: () => void;
  /**
   * Bytes to deliver before anything read from the input; with an input fd
   * of -1 they are all there is, and the input ends once they are delivered.
   */
  prefix?: Uint8Array;
}

/** The receive queue: host input → guest. */
export class ConsoleRx implements QueueHandler {
  readonly #inFd: number;
  readonly #o: ConsoleRxOptions;
  readonly #escape: ConsoleEscape | null;
  readonly #buf = NativeBuf.alloc(READ_CHUNK);
  #pending: Uint8Array = new Uint8Array(0);
  #eof = false;
  #starved = false;

  constructor(inFd: number, o: ConsoleRxOptions = {}) {
    this.#inFd = inFd;
    this.#o = o;
    this.#escape = o.onQuit ? new ConsoleEscape() : null;
    if (o.prefix) this.#pending = o.prefix; // not copied: StdinRx stamps its clock in place before the first delivery
  }

  inputFd(): number {
    return this.#eof || this.#starved || this.#pending.length > 0 || this.#inFd < 0 ? -1 : this.#inFd;
  }

  input(vq: Virtqueue): void {
    const n = Number(libc.read(this.#inFd, this.#buf.addr, BigInt(READ_CHUNK)));
    if (n < 0) {
      const e = errno();
      if (e === EAGAIN || e === EINTR) return;
      return this.#ended(); // EIO and friends: the input is gone for good
    }
    if (n === 0) return this.#ended();
    let data: Uint8Array = this.#buf.bytes.slice(0, n);
    if (this.#escape) {
      const r = this.#escape.push(data);
      data = r.data;
      if (r.quit) {
        this.#eof = true;
        this.#o.onQuit?.();
      }
    }
    this.#pending = data;
    this.#deliver(vq);
  }

  kick(vq: Virtqueue): void {
    this.#starved = false;
    this.#deliver(vq);
  }

  close(): void {
    this.#buf.free();
  }

  #ended(): void {
    this.#eof = true;
    this.#o.onEof?.();
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
    // No input fd: the prefix was all there is.
    if (this.#pending.length === 0 && this.#inFd < 0 && !this.#eof) this.#ended();
  }
}

/** What a transmit queue does besides writing the bytes out. */
export interface ConsoleTxOptions {
  /** Watch the output for a kernel panic report (hvc0, the kernel's console) and call this at its end. */
  onPanic?: (reason: string) => void;
  /** Where the one line about a failed output goes (EPIPE: the reader went away). */
  log?: (line: string) => void;
}

/**
 * The transmit queue: guest output → host, byte for byte, straight from
 * guest RAM by host address. Every chain popped is written out in full
 * before it goes back to the guest (writeAllAt retries short writes and
 * waits out EAGAIN), so a VM stop that serves the available chains first
 * (loop/queue_worker.ts EXIT) loses no byte. When the host side breaks
 * (EPIPE, EIO) the guest keeps running and its output is dropped: a
 * vanished reader must not take the VM, or vmm, down with it.
 */
export class ConsoleTx implements QueueHandler {
  readonly #mem: GuestMemory;
  readonly #outFd: number;
  readonly #o: ConsoleTxOptions;
  readonly #panic: PanicWatch | null;
  #outputBroken = false;

  constructor(mem: GuestMemory, outFd: number, o: ConsoleTxOptions = {}) {
    this.#mem = mem;
    this.#outFd = outFd;
    this.#o = o;
    this.#panic = o.onPanic ? new PanicWatch() : null;
  }

  kick(vq: Virtqueue): boolean {
    return serveAll(vq, (chain) => {
      for (const s of chain.readable) {
        if (!this.#outputBroken) {
          try {
            writeAllAt(this.#outFd, this.#mem.hostAddress(s.gpa, s.len), s.len, "write");
          } catch (e) {
            this.#outputBroken = true;
            this.#o.log?.(`output: ${(e as Error).message}; dropping the rest of it`);
          }
        }
        if (this.#panic) {
          for (const b of this.#mem.slice(s.gpa, s.len)) {
            if (this.#panic.push(b) === "ended") this.#o.onPanic!(this.#panic.reason);
          }
        }
      }
      return 0; // nothing written into the chain
    });
  }
}
