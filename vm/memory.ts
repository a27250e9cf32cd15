/**
 * GuestMemory: the only way vmm touches guest RAM.
 *
 * Guest RAM is one host mapping shared by every thread; each thread builds its
 * own GuestMemory over its own view of that mapping. The guest physical map
 * can have holes (the MMIO hole below 4 GiB), so a guest physical address
 * (gpa) is translated through a short list of regions. Every access checks
 * that the whole range `[gpa, gpa + len)` lies inside one region before any
 * byte is touched, the rule lguest's `check_pointer` taught: a guest-supplied
 * address or length must never make vmm read or write outside guest RAM.
 */

/** Why a guest memory access was refused. */
export type GuestMemoryErrorKind = "InvalidAddress" | "Misaligned";

/** A guest address or length that does not fit in guest RAM. */
export class GuestMemoryError extends Error {
  readonly kind: GuestMemoryErrorKind;
  constructor(kind: GuestMemoryErrorKind, message: string) {
    super(message);
    this.name = "GuestMemoryError";
    this.kind = kind;
  }
}

/** One contiguous piece of guest physical memory. */
export interface MemoryRegion {
  /** First guest physical address of the region. */
  gpa: number;
  /** Size in bytes. */
  size: number;
  /** Offset of the region's first byte inside the host mapping. */
  offset: number;
}

/** A range GuestMemory can look up at all: non-negative safe integers. */
function validRange(gpa: number, len: number): boolean {
  return Number.isSafeInteger(gpa) && Number.isSafeInteger(len) && gpa >= 0 && len >= 0;
}

/** Guest RAM over one host mapping, with checked access by guest address. */
export class GuestMemory {
  readonly bytes: Uint8Array;
  readonly regions: readonly MemoryRegion[];
  /** Host virtual address of `bytes[0]` (0n when the mapping is a plain buffer in tests). */
  readonly hostBase: bigint;
  /** `hostBase` as a number (user-space addresses are below 2^47): iovecs are filled without BigInt. */
  readonly hostBaseNumber: number;
  readonly #view: DataView;
  readonly #u16: Uint16Array;
  readonly #u32: Uint32Array;

  constructor(bytes: Uint8Array, regions?: MemoryRegion[], hostBase = 0n) {
    this.bytes = bytes;
    this.regions = regions ?? [{ gpa: 0, size: bytes.length, offset: 0 }];
    for (const r of this.regions) {
      if (r.offset < 0 || r.size < 0 || r.offset + r.size > bytes.length) {
        throw new RangeError(`Memory region at gpa 0x${r.gpa.toString(16)} lies outside the mapping`);
      }
    }
    this.hostBase = hostBase;
    this.hostBaseNumber = Number(hostBase);
    if (!Number.isSafeInteger(this.hostBaseNumber)) throw new RangeError(`Host address 0x${hostBase.toString(16)} is not a user-space address`);
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 1);
    this.#u32 = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  }

  /** Total bytes of guest RAM. */
  get size(): number {
    let n = 0;
    for (const r of this.regions) n += r.size;
    return n;
  }

  /**
   * Offset in the mapping of `[gpa, gpa + len)`, or -1 when it does not lie
   * inside one region (or is not a pair of non-negative safe integers).
   * `len` may be 0. The check every other access makes, without a throw.
   */
  find(gpa: number, len: number): number {
    if (!validRange(gpa, len)) return -1;
    const regions = this.regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.size) return r.offset + (gpa - r.gpa);
    }
    return -1;
  }

  /**
   * Offset in the mapping of `[gpa, gpa + len)`, which must lie inside one
   * region; throws GuestMemoryError otherwise. `len` may be 0.
   */
  offset(gpa: number, len: number): number {
    const o = this.find(gpa, len);
    if (o >= 0) return o;
    const what = validRange(gpa, len) ? "is outside guest RAM" : "is not a valid address";
    throw new GuestMemoryError("InvalidAddress", `Guest range 0x${gpa.toString(16)}+${len} ${what}`);
  }

  /** True when `[gpa, gpa + len)` lies inside guest RAM. */
  contains(gpa: number, len: number): boolean {
    return this.find(gpa, len) >= 0;
  }

  /** A DataView over the whole mapping, for a reader that checked its range with `offset()` once. */
  get dataView(): DataView {
    return this.#view;
  }

  /** A view (no copy) of `[gpa, gpa + len)`. */
  slice(gpa: number, len: number): Uint8Array {
    const o = this.offset(gpa, len);
    return this.bytes.subarray(o, o + len);
  }

  /** Copy `data` into guest RAM at `gpa`. */
  write(gpa: number, data: Uint8Array): void {
    this.bytes.set(data, this.offset(gpa, data.length));
  }

  /**
   * Host virtual address of `[gpa, gpa + len)`, for the kernel, as a number
   * (iovecs are filled from it without BigInt: devices/virtio/iovec.ts).
   */
  hostAddr(gpa: number, len: number): number {
    return this.hostBaseNumber + this.offset(gpa, len);
  }

  /** `hostAddr()` as a bigint, for a pointer argument. */
  hostAddress(gpa: number, len: number): bigint {
    return BigInt(this.hostAddr(gpa, len));
  }

  readU8(gpa: number): number {
    return this.bytes[this.offset(gpa, 1)];
  }
  readU16(gpa: number): number {
    return this.#view.getUint16(this.offset(gpa, 2), true);
  }
  readU32(gpa: number): number {
    return this.#view.getUint32(this.offset(gpa, 4), true);
  }
  readU64(gpa: number): bigint {
    return this.#view.getBigUint64(this.offset(gpa, 8), true);
  }
  writeU8(gpa: number, v: number): void {
    this.bytes[this.offset(gpa, 1)] = v;
  }
  writeU16(gpa: number, v: number): void {
    this.#view.setUint16(this.offset(gpa, 2), v, true);
  }
  writeU32(gpa: number, v: number): void {
    this.#view.setUint32(this.offset(gpa, 4), v, true);
  }
  writeU64(gpa: number, v: bigint): void {
    this.#view.setBigUint64(this.offset(gpa, 8), v, true);
  }

  /**
   * Atomic 16-bit load, for ring index fields another CPU writes (virtio 1.2
   * §2.7.13: the driver publishes `avail.idx` after the ring entries).
   */
  atomicLoadU16(gpa: number): number {
    return Atomics.load(this.#u16, this.#aligned(gpa, 2) >>> 1);
  }
  /** Atomic 16-bit store: everything written before it is visible first. */
  atomicStoreU16(gpa: number, v: number): void {
    Atomics.store(this.#u16, this.#aligned(gpa, 2) >>> 1, v);
  }
  atomicLoadU32(gpa: number): number {
    return Atomics.load(this.#u32, this.#aligned(gpa, 4) >>> 2);
  }
  atomicStoreU32(gpa: number, v: number): void {
    Atomics.store(this.#u32, this.#aligned(gpa, 4) >>> 2, v);
  }

  #aligned(gpa: number, n: number): number {
    const o = this.offset(gpa, n);
    if ((o + this.bytes.byteOffset) % n !== 0) {
      throw new GuestMemoryError("Misaligned", `Guest address 0x${gpa.toString(16)} is not ${n}-byte aligned`);
    }
    return o;
  }
}

/** Convert a guest-supplied u64 to a number, or throw when it cannot be an address. */
export function gpaFromU64(v: bigint): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new GuestMemoryError("InvalidAddress", `Guest address 0x${v.toString(16)} is out of range`);
  }
  return Number(v);
}
