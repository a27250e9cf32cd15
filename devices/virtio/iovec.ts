/**
 * Guest buffers as host iovecs: how a device hands the kernel a request's
 * data without copying it (kvmtool's `virtio/blk.c` builds its iovecs from
 * the descriptors the same way, vhost does it in the kernel).
 *
 * `IovecArray` is one native `struct iovec` array, made once per thread and
 * refilled for each request. Entries are written as two 32-bit halves from
 * plain numbers: a host address in user space is below 2^47, so it is a
 * safe integer, and filling an entry allocates nothing. (The first version
 * wrote each entry with `setBigUint64`: two BigInts per buffer, which for a
 * 1 MiB request of 4 KiB pages was 512 heap objects, all of them emulated
 * code in the nested host.)
 *
 * `transfer()` is the one preadv/pwritev loop of vmm: IOV_MAX entries per
 * call, and after a short call (a signal, the 2 GiB cap of one call) the
 * entries done are skipped and the one it stopped inside is trimmed, so
 * the next call starts where the last one ended.
 *
 * Every address comes from `GuestMemory.hostAddr`, which checks that the
 * whole buffer lies in guest RAM: the second check after `Virtqueue.pop()`.
 *
 * @example
 * ```ts
 * import { IovecArray } from "./iovec.ts";
 *
 * // In a queue Worker, with `mem` over the guest RAM mapping and `chain` a popped chain:
 * const iov = IovecArray.forThread();
 * const moved = iov.transfer(mem, chain.writable, fd, false, 0n); // preadv into the guest's buffers
 * ```
 */
import { EINTR, errno, libc, NativeBuf } from "../../ffi/libc.ts";
import type { GuestMemory } from "../../vm/memory.ts";
import type { Segment } from "./ring.ts";

/** Linux's IOV_MAX (UIO_MAXIOV): readv/writev/preadv/pwritev refuse more iovecs in one call. */
export const IOV_MAX = 1024;
/** struct iovec { void *iov_base; size_t iov_len; } */
const IOVEC_SIZE = 16;
const TWO_32 = 0x1_0000_0000;

let shared: IovecArray | null = null;

/** A reusable native array of up to IOV_MAX `struct iovec`. */
export class IovecArray {
  /** Entries filled. */
  count = 0;
  readonly #buf: NativeBuf;
  /** The entries as u32 words: base lo, base hi, len lo, len hi. */
  readonly #w: Uint32Array;

  constructor() {
    this.#buf = NativeBuf.alloc(IOV_MAX * IOVEC_SIZE);
    this.#w = new Uint32Array(this.#buf.bytes.buffer, this.#buf.bytes.byteOffset, IOV_MAX * 4);
  }

  /**
   * The array this thread's devices share: a queue Worker serves one
   * request at a time, so no two users fill it at once. Kept for the
   * thread's life (`NativeBuf.freeAll` at the Worker's end).
   */
  static forThread(): IovecArray {
    return shared ??= new IovecArray();
  }

  /** Give the native array back (not the thread's shared one: it lives as long as the thread). */
  free(): void {
    if (this === shared) throw new Error("The thread's shared IovecArray is never freed");
    this.#buf.free();
  }

  /** Native address of entry `i`, for the syscall. */
  address(i = 0): bigint {
    return this.#buf.addr + BigInt(i * IOVEC_SIZE);
  }

  /** Base (a host address) and length of entry `i`. */
  entry(i: number): { base: number; len: number } {
    const w = this.#w, k = i * 4;
    return { base: w[k + 1] * TWO_32 + w[k], len: w[k + 3] * TWO_32 + w[k + 2] };
  }

  #set(i: number, base: number, len: number): void {
    const w = this.#w, k = i * 4;
    w[k] = base % TWO_32;
    w[k + 1] = Math.floor(base / TWO_32);
    w[k + 2] = len % TWO_32;
    w[k + 3] = Math.floor(len / TWO_32);
  }

  /**
   * Fill the array from guest segments `segs[from..]`, as many as fit;
   * returns the number of bytes they hold. Throws GuestMemoryError for a
   * segment outside guest RAM (never, after `pop()`'s check).
   */
  fill(mem: GuestMemory, segs: readonly Segment[], from = 0): number {
    if (mem.hostBaseNumber === 0) throw new RangeError("Iovecs need guest memory backed by a host mapping");
    const n = Math.min(IOV_MAX, segs.length - from);
    let bytes = 0;
    for (let i = 0; i < n; i++) {
      const s = segs[from + i];
      this.#set(i, mem.hostAddr(s.gpa, s.len), s.len);
      bytes += s.len;
    }
    this.count = n;
    return bytes;
  }

  /**
   * Skip `done` bytes from entry `first` on: the entries wholly done are
   * passed, the one the transfer stopped inside is trimmed. Returns the new
   * first entry not yet done.
   */
  #advance(first: number, done: number): number {
    while (done > 0) {
      const { base, len } = this.entry(first);
      if (done >= len) {
        done -= len;
        first++;
      } else {
        this.#set(first, base + done, len - done);
        done = 0;
      }
    }
    return first;
  }

  /**
   * preadv (`write` false: file → guest) or pwritev (guest → file) between
   * `fd` from `pos` on and the guest buffers `segs`, IOV_MAX at a time,
   * until all of them are moved, the file ends (a read returns 0) or the
   * device takes nothing. Returns the bytes moved, or `-errno` when the
   * host failed before any byte moved. A caller that needs every byte
   * compares the count with what it asked for.
   */
  transfer(mem: GuestMemory, segs: readonly Segment[], fd: number, write: boolean, pos: bigint): number {
    let moved = 0;
    for (let start = 0; start < segs.length; start += IOV_MAX) {
      let left = this.fill(mem, segs, start);
      const n = this.count;
      let first = 0;
      while (left > 0) {
        const addr = this.address(first);
        const r = Number(write ? libc.pwritev(fd, addr, n - first, pos) : libc.preadv(fd, addr, n - first, pos));
        if (r < 0) {
          const e = errno();
          if (e === EINTR) continue;
          return moved > 0 ? moved : -e;
        }
        if (r === 0) return moved;
        moved += r;
        left -= r;
        pos += BigInt(r);
        first = this.#advance(first, r);
      }
    }
    return moved;
  }
}
