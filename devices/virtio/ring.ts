/**
 * Split virtqueue, device side (virtio 1.2 §2.7).
 *
 * A queue Worker owns one `Virtqueue`: it pops descriptor chains the driver
 * made available, lends the device a `Reader`/`Writer` over the chain's
 * buffers, and returns each chain through the used ring. Every number in the
 * rings comes from the guest, so `pop()` checks the whole chain before the
 * device sees it: indexes inside the table, a visit budget against loops (the
 * `ttl` of Firecracker's `queue.rs`), at most 2^32 − 1 bytes, one level of
 * indirection, readable buffers before writable ones, every buffer inside
 * guest RAM. A broken chain throws `GuestError`; the device then sets
 * DEVICE_NEEDS_RESET (STYLE rule 4). Guest memory is touched only through
 * `GuestMemory`, which checks every access a second time.
 *
 * Ring indexes are free-running u16 counters (virtio 1.2 §2.7.6, §2.7.8):
 * every difference is taken modulo 2^16.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "../../vm/memory.ts";
 * import { Virtqueue } from "./ring.ts";
 *
 * const mem = new GuestMemory(new Uint8Array(0x10000));
 * const vq = new Virtqueue(mem, { size: 8, descAddr: 0x1000, availAddr: 0x2000, usedAddr: 0x3000, eventIdx: true });
 * let interrupts = 0;
 * for (;;) {
 *   vq.setNotification(false);
 *   for (let chain = vq.pop(); chain; chain = vq.pop()) {
 *     const w = chain.writer();
 *     w.write(new Uint8Array(Math.min(4, w.remaining)));
 *     vq.pushUsed(chain.head, w.written);
 *   }
 *   if (!vq.enableNotificationAndCheck()) break; // lost-wakeup guard, §2.7.10
 * }
 * if (vq.needsInterrupt()) interrupts++; // a queue Worker writes its irqfd here
 * ```
 */

import { type GuestMemory, GuestMemoryError } from "../../vm/memory.ts";

// virtio 1.2 §2.7.5: struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
export const VIRTQ_DESC_SIZE = 16;
const DESC_ADDR = 0;
const DESC_LEN = 8;
const DESC_FLAGS = 12;
const DESC_NEXT = 14;
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

// virtio 1.2 §2.7.6: struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }
const AVAIL_FLAGS = 0;
const AVAIL_IDX = 2;
const AVAIL_RING = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

// virtio 1.2 §2.7.8: struct virtq_used { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[size]; le16 avail_event; }
const USED_FLAGS = 0;
const USED_IDX = 2;
const USED_RING = 4;
const USED_ELEM_SIZE = 8;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Largest split queue (virtio 1.2 §2.7: "The maximum Queue Size value is 32768"). */
export const VIRTQ_MAX_SIZE = 32768;
/** A chain longer than this in bytes is refused (virtio 1.2 §2.7.5.2: at most 2^32 bytes; used.len is a u32). */
export const MAX_CHAIN_BYTES = 0xffff_ffff;

/** Byte sizes of the three parts of a queue (virtio 1.2 §2.7, table "Virtqueue Part"). */
export function descTableSize(size: number): number {
  return VIRTQ_DESC_SIZE * size;
}
export function availRingSize(size: number): number {
  return 6 + 2 * size;
}
export function usedRingSize(size: number): number {
  return 6 + USED_ELEM_SIZE * size;
}

/** What the guest got wrong in a ring. */
export type RingErrorKind =
  | "InvalidQueueSize" | "Misaligned" | "InvalidAddress" | "RingsOverlap" // queue set-up, or a buffer
  | "InvalidIndex" | "DescriptorLoop" | "ChainTooLong" | "BadIndirect" | "WriteBeforeRead" // chain walk
  | "AvailIdxJump" // avail.idx
  | "ChainTooShort"; // Reader/Writer: the device needs more bytes than the chain has

/**
 * A guest broke the virtio contract. Never a vmm bug: the device answers it
 * with DEVICE_NEEDS_RESET and one log line, and keeps running. `K` lets other
 * parsers (`devices/blk/request.ts`) name their own kinds.
 */
export class GuestError<K extends string = RingErrorKind> extends Error {
  readonly kind: K;
  constructor(kind: K, message: string) {
    super(message);
    this.name = "GuestError";
    this.kind = kind;
  }
}

/** One guest buffer: `[gpa, gpa + len)`, already checked to lie in guest RAM. */
export interface Segment {
  readonly gpa: number;
  readonly len: number;
}

/** The part `[offset, offset + len)` of the bytes a segment list describes. */
export function subSegments(segs: readonly Segment[], offset: number, len: number): Segment[] {
  const out: Segment[] = [];
  for (const s of segs) {
    if (len <= 0) break;
    if (offset >= s.len) {
      offset -= s.len;
      continue;
    }
    const n = Math.min(s.len - offset, len);
    // A whole segment is passed on as it is: only a cut one is a new object.
    out.push(n === s.len ? s : { gpa: s.gpa + offset, len: n });
    len -= n;
    offset = 0;
  }
  if (len > 0) throw new RangeError("Segment range is longer than the segments");
  return out;
}

function totalLength(segs: readonly Segment[]): number {
  let n = 0;
  for (const s of segs) n += s.len;
  return n;
}

/** A cursor over a segment list; Reader and Writer copy through it. */
class SegmentCursor {
  protected readonly mem: GuestMemory;
  readonly #segs: readonly Segment[];
  #seg = 0;
  #off = 0;
  #done = 0;
  readonly #total: number;

  constructor(mem: GuestMemory, segs: readonly Segment[]) {
    this.mem = mem;
    this.#segs = segs;
    this.#total = totalLength(segs);
  }

  /** Bytes left in the chain part. */
  get remaining(): number {
    return this.#total - this.#done;
  }

  /** Move `n` bytes forward, calling `step(gpa, len, at)` for each piece (`at`: bytes already done in this call). */
  protected advance(n: number, step: (gpa: number, len: number, at: number) => void): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`Invalid byte count ${n}`);
    if (n > this.remaining) {
      throw new GuestError("ChainTooShort", `Chain has ${this.remaining} bytes left, device needs ${n}`);
    }
    let at = 0;
    while (at < n) {
      const s = this.#segs[this.#seg];
      const len = Math.min(s.len - this.#off, n - at);
      step(s.gpa + this.#off, len, at);
      at += len;
      this.#off += len;
      if (this.#off === s.len) {
        this.#seg++;
        this.#off = 0;
      }
    }
    this.#done += n;
  }

  /** Bytes passed so far. */
  protected get position(): number {
    return this.#done;
  }
}

/** Reads the device-readable part of a chain as one byte stream (rust-vmm `descriptor_utils.rs`). */
export class Reader extends SegmentCursor {
  /** Bytes read or skipped so far. */
  get consumed(): number {
    return this.position;
  }

  /** Skip `n` bytes. */
  skip(n: number): void {
    this.advance(n, () => {});
  }

  /** Copy the next `n` bytes out of guest memory; GuestError `ChainTooShort` when fewer remain. */
  readBytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    this.advance(n, (gpa, len, at) => out.set(this.mem.slice(gpa, len), at));
    return out;
  }
  readU8(): number {
    return this.#fill(1).getUint8(0);
  }
  readU16(): number {
    return this.#fill(2).getUint16(0, true);
  }
  readU32(): number {
    return this.#fill(4).getUint32(0, true);
  }
  readU64(): bigint {
    return this.#fill(8).getBigUint64(0, true);
  }
  #fill(n: number): DataView {
    return new DataView(this.readBytes(n).buffer);
  }
}

/** Writes the device-writable part of a chain as one byte stream. */
export class Writer extends SegmentCursor {
  readonly #scratch = new Uint8Array(8);
  readonly #view = new DataView(this.#scratch.buffer);

  /**
   * Bytes written so far, all from the first writable byte on: the `len` for
   * `pushUsed` (virtio 1.2 §2.7.8.2: the device wrote at least `len` bytes).
   * No skip(): a gap would make `len` claim bytes never written.
   */
  get written(): number {
    return this.position;
  }

  /** Copy `bytes` into guest memory; GuestError `ChainTooShort` when they do not fit. */
  write(bytes: Uint8Array): void {
    this.advance(bytes.length, (gpa, len, at) => this.mem.write(gpa, bytes.subarray(at, at + len)));
  }
  writeU8(v: number): void {
    this.#view.setUint8(0, v);
    this.write(this.#scratch.subarray(0, 1));
  }
  writeU16(v: number): void {
    this.#view.setUint16(0, v, true);
    this.write(this.#scratch.subarray(0, 2));
  }
  writeU32(v: number): void {
    this.#view.setUint32(0, v, true);
    this.write(this.#scratch.subarray(0, 4));
  }
  writeU64(v: bigint): void {
    this.#view.setBigUint64(0, v, true);
    this.write(this.#scratch.subarray(0, 8));
  }
}

/** A checked descriptor chain: what the device sees of one request. */
export class Chain {
  /** Descriptor table index of the head: the `id` for `pushUsed`. */
  readonly head: number;
  /** Device-readable buffers in chain order (zero-length descriptors are dropped). */
  readonly readable: readonly Segment[];
  /** Device-writable buffers in chain order. */
  readonly writable: readonly Segment[];
  readonly readableLength: number;
  readonly writableLength: number;
  /** The guest memory the buffers lie in (iovec.ts makes host iovecs of them). */
  readonly mem: GuestMemory;

  constructor(mem: GuestMemory, head: number, readable: Segment[], writable: Segment[]) {
    this.mem = mem;
    this.head = head;
    this.readable = readable;
    this.writable = writable;
    this.readableLength = totalLength(readable);
    this.writableLength = totalLength(writable);
  }

  /** A fresh stream over the readable buffers. */
  reader(): Reader {
    return new Reader(this.mem, this.readable);
  }
  /** A fresh stream over the writable buffers. */
  writer(): Writer {
    return new Writer(this.mem, this.writable);
  }
}

/** Where the driver put the queue (virtio-mmio QueueDesc/QueueDriver/QueueDevice) and what was negotiated. */
export interface VirtqueueConfig {
  /** Queue Size: a power of 2, at most 32768. */
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  /** VIRTIO_F_EVENT_IDX negotiated (virtio 1.2 §2.7.7, §2.7.10). */
  eventIdx: boolean;
  /** QueueNumMax the device offered (virtio 1.2 §4.2.2); defaults to 32768. */
  maxSize?: number;
}

/** The device side of one split virtqueue. */
export class Virtqueue {
  readonly size: number;
  readonly config: Readonly<VirtqueueConfig>;
  readonly #mem: GuestMemory;
  readonly #mask: number;
  readonly #usedEventAddr: number;
  readonly #availEventAddr: number;
  #nextAvail = 0;
  #nextUsed = 0;
  /** used.idx when needsInterrupt() last ran: vhost's `signalled_used`. */
  #signalledUsed = 0;
  /** Elements pushed since needsInterrupt() last ran, to survive a 2^16 wrap of the counters. */
  #unsignalled = 0;

  /**
   * Enable a queue: the driver set QueueReady (virtio 1.2 §4.2.3.2), so its
   * addresses and size are final. Throws GuestError when they are unusable.
   */
  constructor(mem: GuestMemory, config: VirtqueueConfig) {
    const { size, descAddr, availAddr, usedAddr } = config;
    const max = Math.min(config.maxSize ?? VIRTQ_MAX_SIZE, VIRTQ_MAX_SIZE);
    if (!Number.isInteger(size) || size < 1 || size > max || (size & (size - 1)) !== 0) {
      throw new GuestError("InvalidQueueSize", `Queue size ${size} is not a power of 2 up to ${max}`);
    }
    // virtio 1.2 §2.7 alignment column: descriptors 16, available ring 2, used ring 4.
    const areas: [string, number, number, number][] = [
      ["Descriptor table", descAddr, descTableSize(size), 16],
      ["Available ring", availAddr, availRingSize(size), 2],
      ["Used ring", usedAddr, usedRingSize(size), 4],
    ];
    for (const [name, gpa, len, align] of areas) {
      if (!mem.contains(gpa, len)) {
        throw new GuestError("InvalidAddress", `${name} at 0x${gpa.toString(16)}+${len} is outside guest RAM`);
      }
      if (gpa % align !== 0) {
        throw new GuestError("Misaligned", `${name} at 0x${gpa.toString(16)} is not ${align}-byte aligned`);
      }
    }
    // The device reads the available ring and writes the used ring: over each
    // other, its own writes would read back as the driver's. Without EVENT_IDX,
    // used.flags on avail.idx makes each enableNotificationAndCheck() see a
    // buffer that the next setNotification(false) takes back, and serveAll()
    // never returns.
    if (availAddr < usedAddr + usedRingSize(size) && usedAddr < availAddr + availRingSize(size)) {
      throw new GuestError("RingsOverlap", `Used ring at 0x${usedAddr.toString(16)} overlaps the available ring at 0x${availAddr.toString(16)}`);
    }
    this.#mem = mem;
    this.size = size;
    this.config = { ...config };
    this.#mask = size - 1;
    this.#usedEventAddr = availAddr + AVAIL_RING + 2 * size;
    this.#availEventAddr = usedAddr + USED_RING + USED_ELEM_SIZE * size;
  }

  /** The next avail ring slot the device will read (free-running u16). */
  get nextAvail(): number {
    return this.#nextAvail;
  }
  /** The used.idx the device will publish next (free-running u16). */
  get nextUsed(): number {
    return this.#nextUsed;
  }

  /**
   * Continue a ring another process served (a restored snapshot,
   * loop/snapshot.ts): start at the position its queue Worker published when
   * it paused, instead of 0. Everything up to `nextUsed` was published and
   * signalled by then (the pause finished the request in hand).
   */
  resumeAt(nextAvail: number, nextUsed: number): void {
    this.#nextAvail = nextAvail & 0xffff;
    this.#nextUsed = nextUsed & 0xffff;
    this.#signalledUsed = this.#nextUsed;
    this.#unsignalled = 0;
  }

  /**
   * Take the next available chain, or null when the driver has made none.
   * A chain that fails a check is consumed (its slot is not read again) and
   * throws GuestError; an avail.idx that jumped is not consumed, so the queue
   * keeps failing until reset.
   */
  pop(): Chain | null {
    const { availAddr } = this.config;
    // Pairs with the driver's store of avail.idx after it wrote the ring
    // entry and descriptors (Linux virtqueue_add_split: virtio_wmb, then
    // avail->idx): once the new idx is seen, those writes are visible.
    const availIdx = this.#mem.atomicLoadU16(availAddr + AVAIL_IDX);
    const pending = (availIdx - this.#nextAvail) & 0xffff;
    if (pending === 0) return null;
    if (pending > this.size) {
      // virtio 1.2 §2.7.13: the ring is as big as the descriptor table, so a
      // driver can never be more than Queue Size entries ahead of us.
      throw new GuestError("AvailIdxJump", `avail.idx moved by ${pending}, more than queue size ${this.size}`);
    }
    const head = this.#mem.readU16(availAddr + AVAIL_RING + 2 * (this.#nextAvail & this.#mask));
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
    try {
      return this.#walk(head);
    } catch (e) {
      // Should #walk miss a case, GuestMemory's own check still catches the guest's address.
      throw e instanceof GuestMemoryError ? new GuestError("InvalidAddress", e.message) : e;
    }
  }

  /** Walk and check one chain (virtio 1.2 §2.7.5, §2.7.5.3). */
  #walk(head: number): Chain {
    const mem = this.#mem;
    const dv = mem.dataView;
    let table = this.config.descAddr;
    let entries = this.size;
    // More visits than the current table has entries means one repeats: a loop.
    let visits = 0;
    // Buffers in the chain: §2.7.5.3.1 caps a chain at Queue Size descriptors.
    let count = 0;
    let indirect = false;
    let idx = head;
    let bytes = 0;
    let sawWritable = false;
    const readable: Segment[] = [];
    const writable: Segment[] = [];
    for (;;) {
      if (idx >= entries) {
        throw new GuestError("InvalidIndex", `Descriptor index ${idx} is outside a table of ${entries}`);
      }
      if (++visits > entries) throw new GuestError("DescriptorLoop", `Chain from head ${head} loops`);
      // One range check for the whole descriptor, then plain reads at its
      // offset; the u64 address in two halves, as a number (no BigInt).
      const d = mem.offset(table + VIRTQ_DESC_SIZE * idx, VIRTQ_DESC_SIZE);
      const addr = dv.getUint32(d + DESC_ADDR + 4, true) * 0x1_0000_0000 + dv.getUint32(d + DESC_ADDR, true);
      const len = dv.getUint32(d + DESC_LEN, true);
      const flags = dv.getUint16(d + DESC_FLAGS, true);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // §2.7.5.3.1: one table per descriptor, never nested, never with
        // NEXT (so it ends the chain; direct descriptors may precede it, and
        // its WRITE flag is ignored); the table holds whole descriptors.
        if (indirect) throw new GuestError("BadIndirect", "Indirect descriptor inside an indirect table");
        if (flags & VIRTQ_DESC_F_NEXT) throw new GuestError("BadIndirect", "Indirect descriptor has NEXT set");
        if (len === 0 || len % VIRTQ_DESC_SIZE !== 0) {
          throw new GuestError("BadIndirect", `Indirect table length ${len} is not a positive multiple of 16`);
        }
        table = this.#checkedGpa(addr, len, "Indirect table");
        // `next` is a u16: entries past 65536 are unreachable, and the chain
        // cap below stops the walk long before.
        entries = len / VIRTQ_DESC_SIZE;
        visits = 0;
        indirect = true;
        idx = 0;
        continue;
      }
      if (++count > this.size) throw new GuestError("ChainTooLong", `Chain from head ${head} has more than ${this.size} descriptors`);
      bytes += len;
      if (bytes > MAX_CHAIN_BYTES) throw new GuestError("ChainTooLong", `Chain from head ${head} exceeds 2^32 - 1 bytes`);
      // §2.7.4.2 (driver requirements, message framing): writable after readable.
      if (flags & VIRTQ_DESC_F_WRITE) {
        sawWritable = true;
        if (len > 0) writable.push({ gpa: this.#checkedGpa(addr, len, "Buffer"), len });
      } else {
        if (sawWritable) throw new GuestError("WriteBeforeRead", `Chain from head ${head} has a readable buffer after a writable one`);
        if (len > 0) readable.push({ gpa: this.#checkedGpa(addr, len, "Buffer"), len });
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      idx = dv.getUint16(d + DESC_NEXT, true);
    }
    return new Chain(mem, head, readable, writable);
  }

  /**
   * A guest u64 address (as a number, exact below 2^53) whose `[addr, addr +
   * len)` lies in one RAM region. One past 2^53 may round, but to a number
   * far beyond any RAM, so it is refused all the same.
   */
  #checkedGpa(addr: number, len: number, what: string): number {
    if (Number.isSafeInteger(addr) && this.#mem.contains(addr, len)) return addr;
    throw new GuestError("InvalidAddress", `${what} at 0x${addr.toString(16)}+${len} is outside guest RAM`);
  }

  /**
   * Return a chain to the driver: `len` bytes were written to its writable
   * buffers (virtio 1.2 §2.7.8). Throws RangeError on a vmm bug (bad head or len).
   */
  pushUsed(head: number, len: number): void {
    if (!Number.isInteger(head) || head < 0 || head >= this.size) throw new RangeError(`Used head ${head} is outside the queue`);
    if (!Number.isInteger(len) || len < 0 || len > 0xffff_ffff) throw new RangeError(`Used length ${len} is not a u32`);
    const { usedAddr } = this.config;
    const elem = usedAddr + USED_RING + USED_ELEM_SIZE * (this.#nextUsed & this.#mask);
    this.#mem.writeU32(elem, head);
    this.#mem.writeU32(elem + 4, len);
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
    this.#unsignalled++;
    // Publish after the element. Pairs with the driver's load of used.idx
    // (Linux more_used_split, then virtio_rmb in virtqueue_get_buf_ctx_split)
    // before it reads the element.
    this.#mem.atomicStoreU16(usedAddr + USED_IDX, this.#nextUsed);
  }

  /**
   * Whether the used buffers pushed since the last call deserve an interrupt
   * (virtio 1.2 §2.7.7). Call once after a batch of `pushUsed`.
   */
  needsInterrupt(): boolean {
    const old = this.#signalledUsed;
    const now = this.#nextUsed;
    const pushed = this.#unsignalled;
    this.#signalledUsed = now;
    this.#unsignalled = 0;
    if (pushed === 0) return false;
    if (pushed >= 0x10000) return true; // the u16 counters wrapped; be safe.
    if (this.config.eventIdx) {
      // Atomics are sequentially consistent, so this load is ordered after
      // the used.idx store in pushUsed: the full barrier vhost_notify has.
      // Pairs with the driver's store of used_event followed by a full
      // barrier and a re-read of used.idx (virtqueue_enable_cb_prepare_split).
      const usedEvent = this.#mem.atomicLoadU16(this.#usedEventAddr);
      // vring_need_event(used_event, new_idx, old_idx), virtio 1.2 §2.7.7.2.
      return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (this.#mem.atomicLoadU16(this.config.availAddr + AVAIL_FLAGS) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Ask the driver for (or spare us) notifications of new buffers (virtio 1.2
   * §2.7.10). With EVENT_IDX, enabling writes avail_event = the next slot we
   * will read, and disabling writes nothing: a stale avail_event the driver
   * has passed already suppresses notifications. Without it, used.flags
   * NO_NOTIFY.
   */
  setNotification(enabled: boolean): void {
    if (this.config.eventIdx) {
      if (enabled) this.#mem.atomicStoreU16(this.#availEventAddr, this.#nextAvail);
    } else {
      this.#mem.atomicStoreU16(this.config.usedAddr + USED_FLAGS, enabled ? 0 : VIRTQ_USED_F_NO_NOTIFY);
    }
  }

  /**
   * Enable notifications, then look at avail.idx again: true when buffers
   * arrived meanwhile, so the caller must pop on instead of sleeping. A
   * driver that added a buffer just before it read our (still disabled)
   * flag did not notify; without this re-check the queue would stall (the
   * lost wake-up, virtio 1.2 §2.7.10; §2.7.14 is the driver's mirror image).
   * The store and the load are sequentially consistent Atomics (on x86 the
   * store is an xchg), the full barrier of vhost_enable_notify; they pair
   * with the driver's barrier between its avail.idx store and its read of
   * avail_event / used.flags (Linux virtqueue_kick_prepare_split).
   */
  enableNotificationAndCheck(): boolean {
    this.setNotification(true);
    return this.#mem.atomicLoadU16(this.config.availAddr + AVAIL_IDX) !== this.#nextAvail;
  }
}
