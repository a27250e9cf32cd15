/**
 * A guest driver's side of a split virtqueue, for tests (rust-vmm
 * virtio-queue `src/mock.rs` plays the same part).
 *
 * It writes descriptor tables, indirect tables and the available ring into a
 * GuestMemory the way Linux's `virtio_ring.c` does, and reads the used ring
 * back. Tests that want a broken queue call the raw setters (`setDesc`,
 * `setAvailIdx`…) to change one field at a time after building a good chain.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "../../vm/memory.ts";
 * import { Virtqueue } from "../../devices/virtio/ring.ts";
 * import { DriverQueue } from "./driver_queue.ts";
 *
 * const mem = new GuestMemory(new Uint8Array(0x10000));
 * const dq = new DriverQueue(mem, DriverQueue.layout(0x1000, 16));
 * const head = dq.add([{ gpa: 0x8000, len: 16 }, { gpa: 0x9000, len: 1, write: true }]);
 * const vq = new Virtqueue(mem, dq.config(false));
 * vq.pop(); // a Chain whose head is `head`
 * ```
 */

import type { GuestMemory } from "../../vm/memory.ts";
import {
  availRingSize,
  descTableSize,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_SIZE,
  type VirtqueueConfig,
} from "../../devices/virtio/ring.ts";

/** Where the three parts of a queue live. */
export interface QueueLayout {
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
}

/** One buffer of a request, as a driver's scatterlist entry. */
export interface DriverBuffer {
  gpa: number;
  len: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE). */
  write?: boolean;
}

/** A raw descriptor, every field under the test's control. */
export interface RawDesc {
  addr: bigint | number;
  len: number;
  flags: number;
  next: number;
}

/** The driver side of one split virtqueue. */
export class DriverQueue {
  readonly mem: GuestMemory;
  readonly layout: QueueLayout;
  /** The avail.idx this driver will publish next. */
  availIdx = 0;
  /** The used ring entry this driver will read next. */
  lastUsed = 0;
  #nextFree = 0;

  constructor(mem: GuestMemory, layout: QueueLayout) {
    this.mem = mem;
    this.layout = layout;
    // A driver zeroes its rings before handing them over (virtio 1.2 §2.7.10.1: used.flags starts at 0).
    mem.slice(layout.descAddr, descTableSize(layout.size)).fill(0);
    mem.slice(layout.availAddr, availRingSize(layout.size)).fill(0);
    mem.slice(layout.usedAddr, 6 + 8 * layout.size).fill(0);
  }

  /** The three parts one after another from `base`, each aligned as virtio 1.2 §2.7 requires. */
  static layout(base: number, size: number): QueueLayout {
    const descAddr = base;
    const availAddr = descAddr + descTableSize(size);
    const usedAddr = (availAddr + availRingSize(size) + 3) & ~3;
    return { size, descAddr, availAddr, usedAddr };
  }

  /** Bytes the layout from `layout(base, size)` spans. */
  static span(size: number): number {
    const l = DriverQueue.layout(0, size);
    return l.usedAddr + 6 + 8 * size;
  }

  /** The Virtqueue configuration a device would build from this queue's registers. */
  config(eventIdx: boolean): VirtqueueConfig {
    return { ...this.layout, eventIdx };
  }

  // ---- descriptor table ----

  /** Write descriptor `i` of the table at `table` (the queue's own table by default). */
  setDesc(i: number, d: RawDesc, table = this.layout.descAddr): void {
    const at = table + VIRTQ_DESC_SIZE * i;
    this.mem.writeU64(at, BigInt(d.addr));
    this.mem.writeU32(at + 8, d.len);
    this.mem.writeU16(at + 12, d.flags);
    this.mem.writeU16(at + 14, d.next);
  }

  /** Read descriptor `i` back. */
  desc(i: number, table = this.layout.descAddr): RawDesc {
    const at = table + VIRTQ_DESC_SIZE * i;
    return {
      addr: this.mem.readU64(at),
      len: this.mem.readU32(at + 8),
      flags: this.mem.readU16(at + 12),
      next: this.mem.readU16(at + 14),
    };
  }

  /**
   * Write `bufs` as a chain into free descriptors (virtio 1.2 §2.7.13.1) and
   * return its head, without publishing it.
   */
  writeChain(bufs: DriverBuffer[]): number {
    if (bufs.length === 0 || bufs.length > this.layout.size) throw new RangeError(`Cannot chain ${bufs.length} buffers`);
    const idx = bufs.map(() => this.#alloc());
    bufs.forEach((b, k) => {
      const last = k === bufs.length - 1;
      this.setDesc(idx[k], {
        addr: b.gpa,
        len: b.len,
        flags: (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT),
        next: last ? 0 : idx[k + 1],
      });
    });
    return idx[0];
  }

  /**
   * Write `bufs` as an indirect table at `tableGpa` (virtio 1.2 §2.7.5.3) and
   * one descriptor pointing at it; returns that descriptor's index.
   */
  writeIndirect(bufs: DriverBuffer[], tableGpa: number): number {
    bufs.forEach((b, k) => {
      const last = k === bufs.length - 1;
      this.setDesc(k, {
        addr: b.gpa,
        len: b.len,
        flags: (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT),
        next: last ? 0 : k + 1,
      }, tableGpa);
    });
    const head = this.#alloc();
    this.setDesc(head, { addr: tableGpa, len: VIRTQ_DESC_SIZE * bufs.length, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    return head;
  }

  /** Write a chain and publish it: what `virtqueue_add_sgs` + kick do. */
  add(bufs: DriverBuffer[]): number {
    const head = this.writeChain(bufs);
    this.publish(head);
    return head;
  }

  /** Write an indirect chain and publish it. */
  addIndirect(bufs: DriverBuffer[], tableGpa: number): number {
    const head = this.writeIndirect(bufs, tableGpa);
    this.publish(head);
    return head;
  }

  #alloc(): number {
    const i = this.#nextFree;
    this.#nextFree = (this.#nextFree + 1) % this.layout.size;
    return i;
  }

  // ---- available ring ----

  /** Put `head` in the next avail slot, then publish avail.idx (virtio 1.2 §2.7.13.2–3). */
  publish(head: number): void {
    const { availAddr, size } = this.layout;
    this.mem.writeU16(availAddr + 4 + 2 * (this.availIdx % size), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    // Atomic store after the ring entry: the driver's half of the pairing pop() relies on.
    this.mem.atomicStoreU16(availAddr + 2, this.availIdx);
  }

  /** Write avail.ring[slot] directly. */
  setAvailEntry(slot: number, head: number): void {
    this.mem.writeU16(this.layout.availAddr + 4 + 2 * (slot % this.layout.size), head);
  }

  setAvailIdx(v: number): void {
    this.availIdx = v & 0xffff;
    this.mem.atomicStoreU16(this.layout.availAddr + 2, this.availIdx);
  }

  setAvailFlags(v: number): void {
    this.mem.writeU16(this.layout.availAddr, v);
  }

  /** avail.used_event: where the driver wants its next used notification (virtio 1.2 §2.7.7). */
  setUsedEvent(v: number): void {
    this.mem.writeU16(this.layout.availAddr + 4 + 2 * this.layout.size, v);
  }

  // ---- used ring ----

  get usedFlags(): number {
    return this.mem.readU16(this.layout.usedAddr);
  }

  get usedIdx(): number {
    return this.mem.atomicLoadU16(this.layout.usedAddr + 2);
  }

  /** used.avail_event: where the device wants its next notification (virtio 1.2 §2.7.10). */
  get availEvent(): number {
    return this.mem.readU16(this.layout.usedAddr + 4 + 8 * this.layout.size);
  }

  /** The used element in ring slot `slot`. */
  usedElem(slot: number): { id: number; len: number } {
    const at = this.layout.usedAddr + 4 + 8 * (slot % this.layout.size);
    return { id: this.mem.readU32(at), len: this.mem.readU32(at + 4) };
  }

  /** The next used element the device published, or null (Linux virtqueue_get_buf). */
  popUsed(): { id: number; len: number } | null {
    if (this.usedIdx === this.lastUsed) return null;
    const e = this.usedElem(this.lastUsed);
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    return e;
  }
}
