/**
 * FORGETs from the hiprio queue's handler to the request queue's.
 *
 * Each queue has its own handler, made and discarded with its queue, but a
 * virtio-fs device has one inode table, owned by the request queue's
 * FsServer. Linux sends FORGET on the hiprio queue (virtio_fs.c
 * `send_forget_request`; BATCH_FORGET and INTERRUPT would come there too),
 * everything else on the request queue. So the hiprio handler only reads
 * (nodeid, nlookup) pairs out of its chains and writes them down a pipe as
 * 16-byte records; the request queue's handler polls the pipe's read end
 * and applies them: the channel-plus-fd that Firecracker uses between its
 * threads, never a shared object. The two handlers run on one Worker
 * today (mod.ts, `oneWorker`), where they ran on two when this was
 * written; the pipe still keeps either from holding the other, and the
 * Worker's poll drains it on the turn after the hiprio queue filled it
 * (at most 512 chains a turn, far below the pipe's 4096 records).
 *
 * Order needs no more care than that. The kernel forgets a nodeid only after
 * it read the reply that counted the lookup, which the request queue
 * wrote before, so a forget can never overtake the lookups it takes back;
 * applying it late only keeps an fd open a little longer.
 *
 * The pipe is non-blocking on both ends. Records are written in whole
 * writes of at most PIPE_BUF bytes, which POSIX makes atomic, and read into
 * a buffer that is a multiple of 16 bytes, so a read never splits a record.
 *
 * @example
 * ```ts
 * import { ForgetReceiver, ForgetSender, openForgetPipe } from "./forget.ts";
 *
 * const [rd, wr] = openForgetPipe();
 * new ForgetSender(wr, console.error).send([[5n, 1n]]);   // hiprio queue
 * new ForgetReceiver(rd).drain((nodeid, n) => console.log(nodeid, n)); // request queue: 5n 1n
 * ```
 */
import { close, EAGAIN, errno, libc, NativeBuf, O_CLOEXEC, O_NONBLOCK, pipe } from "../../ffi/libc.ts";
import { SysError } from "../../ffi/errno.ts";
import { BATCH_FORGET_IN, FORGET_IN, FORGET_ONE, FUSE_BATCH_FORGET, FUSE_FORGET } from "./fuse.ts";
import type { FuseRequest } from "./message.ts";

/** One record: nodeid then nlookup, u64 little-endian each (the layout of fuse_forget_one). */
export const FORGET_RECORD = 16;
/** Writes up to PIPE_BUF (4096 on Linux) are atomic: 256 records at a time. */
const PIPE_BUF = 4096;

/**
 * Call `f(nodeid, nlookup)` for each lookup drop a FORGET or BATCH_FORGET
 * request carries; other requests carry none. A body shorter than its
 * struct carries none, and a BATCH_FORGET whose count claims more entries
 * than its body holds gives only the ones there.
 */
export function eachForget(req: FuseRequest, f: (nodeid: bigint, nlookup: bigint) => void): void {
  const v = req.view;
  if (req.bad) return;
  if (req.opcode === FUSE_FORGET) {
    if (req.body.length >= FORGET_IN.SIZE) f(req.nodeid, v.getBigUint64(FORGET_IN.NLOOKUP, true));
  } else if (req.opcode === FUSE_BATCH_FORGET && req.body.length >= BATCH_FORGET_IN.SIZE) {
    const fit = Math.floor((req.body.length - BATCH_FORGET_IN.SIZE) / FORGET_ONE.SIZE);
    const count = Math.min(v.getUint32(BATCH_FORGET_IN.COUNT, true), fit);
    for (let i = 0; i < count; i++) {
      const at = BATCH_FORGET_IN.SIZE + i * FORGET_ONE.SIZE;
      f(v.getBigUint64(at + FORGET_ONE.NODEID, true), v.getBigUint64(at + FORGET_ONE.NLOOKUP, true));
    }
  }
}

/** The pipe, made by the device kind's `open` on the main thread: [read end, write end], both non-blocking. */
export function openForgetPipe(): [number, number] {
  return pipe(O_CLOEXEC | O_NONBLOCK);
}

/** Close both ends (the kind's `close`). */
export function closeForgetPipe(fds: readonly number[]): void {
  for (const fd of fds) close(fd);
}

/** The hiprio queue's end: writes records, never waits. */
export class ForgetSender {
  readonly #fd: number;
  readonly #log: (line: string) => void;
  readonly #buf = NativeBuf.alloc(PIPE_BUF);
  #dropped = 0;

  constructor(writeFd: number, log: (line: string) => void) {
    this.#fd = writeFd;
    this.#log = log;
  }

  /** Lookup drops lost to a full pipe so far. */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Send `pairs` of (nodeid, nlookup). When the pipe is full (its reader
   * has not had a turn for thousands of forgets) the rest are dropped, not
   * waited for: on one Worker, waiting would wait for ourselves. A dropped
   * forget leaks a lookup count, which only keeps an O_PATH fd open until
   * the guest's DESTROY or the device's reset; logged once.
   */
  send(pairs: readonly (readonly [bigint, bigint])[]): void {
    const v = this.#buf.view;
    for (let i = 0; i < pairs.length;) {
      const n = Math.min(pairs.length - i, PIPE_BUF / FORGET_RECORD);
      for (let k = 0; k < n; k++) {
        v.setBigUint64(k * FORGET_RECORD, BigInt.asUintN(64, pairs[i + k][0]), true);
        v.setBigUint64(k * FORGET_RECORD + 8, BigInt.asUintN(64, pairs[i + k][1]), true);
      }
      const r = Number(libc.write(this.#fd, this.#buf.addr, BigInt(n * FORGET_RECORD)));
      if (r < 0) {
        const e = errno();
        if (e !== EAGAIN) throw new SysError("write virtio-fs forget pipe", e);
        if (this.#dropped === 0) this.#log("forget pipe full: lookups dropped, their inodes stay open until unmount");
        this.#dropped += pairs.length - i;
        return;
      }
      i += n;
    }
  }

  /** Free the buffer (not the fd: the kind's `close` owns it). */
  close(): void {
    this.#buf.free();
  }
}

/** The request queue's end: reads every record there is. */
export class ForgetReceiver {
  readonly #fd: number;
  readonly #buf = NativeBuf.alloc(PIPE_BUF);

  constructor(readFd: number) {
    this.#fd = readFd;
  }

  /** The fd to poll: readable when records wait. */
  get fd(): number {
    return this.#fd;
  }

  /** Read all waiting records and call `f` for each; returns how many. */
  drain(f: (nodeid: bigint, nlookup: bigint) => void): number {
    const v = this.#buf.view;
    let count = 0;
    for (;;) {
      const r = Number(libc.read(this.#fd, this.#buf.addr, BigInt(PIPE_BUF)));
      if (r < 0) {
        const e = errno();
        if (e === EAGAIN) return count;
        throw new SysError("read virtio-fs forget pipe", e);
      }
      if (r === 0) return count; // the write end is closed: nothing will come
      for (let at = 0; at + FORGET_RECORD <= r; at += FORGET_RECORD) {
        f(v.getBigUint64(at, true), v.getBigUint64(at + 8, true));
        count++;
      }
    }
  }

  /** Free the buffer (not the fd). */
  close(): void {
    this.#buf.free();
  }
}
