/**
 * The virtio-mmio register file, version 2 (virtio 1.2 §4.2.2).
 *
 * The vCPU thread forwards every MMIO exit in the device's window here. The
 * transport keeps the registers and the device status state machine
 * (virtio 1.2 §2.1, §3.1.1; Firecracker's `transport/mmio.rs` keeps the same
 * set of valid transitions), and answers with an event the caller acts on:
 * start the queue Workers on `driverOk`, stop them on `reset`, wake a queue on
 * `notify` (only when no ioeventfd caught the write first).
 *
 * A guest can write anything anywhere: unknown offsets, wrong sizes, writes
 * to read-only registers, a QueueSel past the last queue. Those are ignored
 * (reads give 0) and never throw (virtio 1.2 §4.2.2.1 only asks the driver to
 * behave; the device must survive a driver that does not).
 *
 * Every vCPU runs in its own Worker with its own heap, and any of them may
 * take the exit for this window; the queue Workers also mark the device
 * broken, report configuration changes and raise InterruptStatus bits. So
 * every register lives in one Int32Array the caller may place in memory all
 * those threads map, and each thread builds its own `MmioTransport` over it:
 * several instances over one array are one device. Every public method that
 * touches it holds a spinlock in word 0 for the few hundred nanoseconds it
 * needs, the same trick as `devices/serial.ts`. The array starts as zeroes,
 * and all zeroes is the state after power-on: the creator zero-fills the
 * shared block once and never calls anything to set it up.
 *
 * @example
 * ```ts
 * import { MmioTransport, mmioStateWords } from "./mmio.ts";
 *
 * const dev = { deviceId: 4, features: 0n, queueSizes: [256], config: new Uint8Array(0) };
 * // Zeroed memory every thread sees: here a SharedArrayBuffer, in vmm a slice of loop/shared.ts.
 * const state = new Int32Array(new SharedArrayBuffer(mmioStateWords(1) * 4));
 * const vcpu = new MmioTransport(dev, { state });
 * vcpu.read(0x000, 4); // 0x74726976, "virt"
 * const ev = vcpu.write(0x070, 4, 1); // ACKNOWLEDGE; null: nothing to do yet
 * new MmioTransport(dev, { state }).status; // 1: another thread's handle sees it
 * ```
 */

import { withSpinLock } from "../spinlock.ts";
import type { VirtqueueConfig } from "./ring.ts";

// virtio 1.2 §4.2.2, table "MMIO Device Register Layout".
export const VIRTIO_MMIO_MAGIC_VALUE = 0x000;
export const VIRTIO_MMIO_VERSION = 0x004;
export const VIRTIO_MMIO_DEVICE_ID = 0x008;
export const VIRTIO_MMIO_VENDOR_ID = 0x00c;
export const VIRTIO_MMIO_DEVICE_FEATURES = 0x010;
export const VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014;
export const VIRTIO_MMIO_DRIVER_FEATURES = 0x020;
export const VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024;
export const VIRTIO_MMIO_QUEUE_SEL = 0x030;
export const VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034;
export const VIRTIO_MMIO_QUEUE_NUM = 0x038;
export const VIRTIO_MMIO_QUEUE_READY = 0x044;
export const VIRTIO_MMIO_QUEUE_NOTIFY = 0x050;
export const VIRTIO_MMIO_INTERRUPT_STATUS = 0x060;
export const VIRTIO_MMIO_INTERRUPT_ACK = 0x064;
export const VIRTIO_MMIO_STATUS = 0x070;
export const VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080;
export const VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084;
export const VIRTIO_MMIO_QUEUE_DRIVER_LOW = 0x090;
export const VIRTIO_MMIO_QUEUE_DRIVER_HIGH = 0x094;
export const VIRTIO_MMIO_QUEUE_DEVICE_LOW = 0x0a0;
export const VIRTIO_MMIO_QUEUE_DEVICE_HIGH = 0x0a4;
export const VIRTIO_MMIO_SHM_SEL = 0x0ac;
export const VIRTIO_MMIO_SHM_LEN_LOW = 0x0b0;
export const VIRTIO_MMIO_SHM_LEN_HIGH = 0x0b4;
export const VIRTIO_MMIO_SHM_BASE_LOW = 0x0b8;
export const VIRTIO_MMIO_SHM_BASE_HIGH = 0x0bc;
export const VIRTIO_MMIO_CONFIG_GENERATION = 0x0fc;
export const VIRTIO_MMIO_CONFIG = 0x100;
/** Bytes of MMIO window one device needs (kvmtool and Linux use 0x200). */
export const VIRTIO_MMIO_WINDOW_SIZE = 0x200;

/** "virt" in little-endian (§4.2.2). */
export const VIRTIO_MMIO_MAGIC = 0x74726976;
/** The non-legacy register layout (§4.2.2; version 1 is legacy, §4.2.4). */
const MMIO_VERSION = 2;
/** Vendor ID: any value; this one spells "vmm" in ASCII, little-endian. */
export const VIRTIO_MMIO_VENDOR = 0x006d6d76;

// Device status bits (virtio 1.2 §2.1).
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 0x40;
export const STATUS_FAILED = 0x80;

// Reserved feature bits (virtio 1.2 §6).
export const VIRTIO_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_F_EVENT_IDX = 1n << 29n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;

/**
 * InterruptStatus bits (§4.2.2): a used buffer, or a configuration change.
 *
 * A read of InterruptStatus takes the bits it returns: it clears them, as
 * the driver's InterruptACK of the same value would. So the ACK write,
 * which every interrupt costs the driver (Linux's vm_interrupt reads the
 * status, then writes it back), need not reach vmm at all: loop/virtio.ts
 * lets KVM swallow it through an ioeventfd, and an interrupt costs the vCPU
 * one exit to user space instead of two. A driver sees no difference: it
 * only ever acknowledges what it read, and a bit raised after its read
 * stays set for the next interrupt. An ACK that does reach vmm (no
 * ioeventfd, as in the unit tests) still clears its bits.
 */
export const VIRTIO_MMIO_INT_VRING = 1;
export const VIRTIO_MMIO_INT_CONFIG = 2;

/**
 * Bytes of a register page (`MmioOptions.page`): the whole window, one host
 * page, which KVM maps read-only at the window's guest address.
 */
export const VIRTIO_MMIO_PAGE_SIZE = 0x1000;

/** The registers a driver reads, each mirrored into the register page. */
const READABLE = [
  VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_VERSION, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_VENDOR_ID,
  VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_STATUS,
  VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_SHM_LEN_HIGH,
] as const;

/**
 * `size` bytes (1, 2 or 4) at `off` in `bytes` as a little-endian number,
 * or 0 when the size is another or the read runs past the end.
 */
function readLE(bytes: Uint8Array, off: number, size: number): number {
  if (!(size === 1 || size === 2 || size === 4) || off + size > bytes.length) return 0;
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + bytes[off + i];
  return v;
}

/** What the transport needs to know of a device (STYLE rule 6: devices are values). */
export interface MmioDevice {
  /** Virtio device ID (virtio 1.2 §5: 1 net, 2 block, 3 console, 4 entropy). */
  deviceId: number;
  /** Device-specific feature bits; the transport adds the ring bits. */
  features: bigint;
  /** QueueNumMax of each queue. */
  queueSizes: number[];
  /** Device configuration space; the device may change it, then calls `configChanged()`. */
  config: Uint8Array;
  /** A driver write to the configuration space, already bounds-checked. */
  configWrite?(offset: number, bytes: Uint8Array): void;
}

/** Options of the transport itself. */
export interface MmioOptions {
  /** Offer VIRTIO_F_EVENT_IDX. */
  eventIdx?: boolean;
  /** Offer VIRTIO_F_INDIRECT_DESC. */
  indirectDesc?: boolean;
  /**
   * The register state, `mmioStateWords(queueSizes.length)` words, zeroed
   * once by whoever allocates it. Pass this thread's view of a block in shared
   * memory so that the transports of every thread are one device; omitted, the
   * transport allocates a private one.
   */
  state?: Int32Array;
  /**
   * The register page: `VIRTIO_MMIO_PAGE_SIZE` bytes that KVM maps read-only
   * at the device's window (loop/virtio.ts), so the driver's reads never
   * leave the guest, not even to the kernel. Every thread passes its view of
   * the same page. With it, the transport keeps the page equal to what
   * `read()` would answer after each change (see #syncPage), and
   * InterruptStatus works as the page needs, not read-to-clear (a read the
   * device never sees cannot take bits):
   * - VIRTIO_MMIO_INT_VRING, once raised, stays set until the device resets.
   *   Linux's vm_interrupt then asks every queue of the device whether it
   *   used a buffer, as it does for any VRING interrupt, and an interrupt
   *   KVM raised for a used buffer always finds one. So the driver's ACK of
   *   a plain VRING (the value 1) has nothing to clear, and KVM swallows it
   *   in an ioeventfd that matches 1: the interrupt costs the vCPU no exit
   *   to user space at all.
   * - VIRTIO_MMIO_INT_CONFIG stays set until an InterruptACK with that bit,
   *   which matches no ioeventfd and reaches `write()`.
   * Clearing VRING on ACK instead would race: a Worker raising it again
   * between the driver's read and its ACK would lose its interrupt's reason.
   */
  page?: Uint8Array;
}

/** What the caller must do after a register write. */
export type MmioEvent =
  | { kind: "driverOk" }
  | { kind: "reset" }
  | { kind: "notify"; queue: number }
  | { kind: "queueReady"; queue: number };

/**
 * Word indexes in the state. Words hold u32 registers as Int32 (0xffff_ffff
 * is stored as -1), so every read goes through `>>> 0`. The words from
 * INTERRUPT_STATUS to the end are what a reset clears; the ones before it
 * outlive a reset.
 */
const S = {
  LOCK: 0, // 0 free, 1 held: see #locked()
  CONFIG_GENERATION: 1, // the driver compares it across config reads, so a reset keeps counting
  RESETS: 2, // how many resets so far: tells a thread its own brokenReason is stale
  INTERRUPT_STATUS: 3,
  STATUS: 4,
  DEVICE_FEATURES_SEL: 5,
  DRIVER_FEATURES_SEL: 6,
  DRIVER_FEATURES_LO: 7, // bits 0–31 of the features the driver accepted
  DRIVER_FEATURES_HI: 8, // bits 32–63: a u64 as two u32 halves
  QUEUE_SEL: 9,
  QUEUES: 10, // QUEUE_WORDS for each queue, queue 0 first
} as const;

/** Word offsets inside one queue's block. */
const Q = {
  NUM: 0,
  // 0 until the driver writes QueueNum; meanwhile the queue size is QueueNumMax,
  // so a driver that never writes QueueNum still agrees with us. A flag of its
  // own, not "NUM 0 means unset", because a driver that writes 0 must still be
  // refused by new Virtqueue() (InvalidQueueSize), not handed the largest ring.
  NUM_SET: 1,
  READY: 2,
  DESC_LO: 3,
  DESC_HI: 4,
  DRIVER_LO: 5,
  DRIVER_HI: 6,
  DEVICE_LO: 7,
  DEVICE_HI: 8,
} as const;
const QUEUE_WORDS = 9;

/** The queue registers a write lands in, as word offsets in a queue block. */
const QUEUE_REG: ReadonlyMap<number, number> = new Map([
  [VIRTIO_MMIO_QUEUE_NUM, Q.NUM],
  [VIRTIO_MMIO_QUEUE_DESC_LOW, Q.DESC_LO],
  [VIRTIO_MMIO_QUEUE_DESC_HIGH, Q.DESC_HI],
  [VIRTIO_MMIO_QUEUE_DRIVER_LOW, Q.DRIVER_LO],
  [VIRTIO_MMIO_QUEUE_DRIVER_HIGH, Q.DRIVER_HI],
  [VIRTIO_MMIO_QUEUE_DEVICE_LOW, Q.DEVICE_LO],
  [VIRTIO_MMIO_QUEUE_DEVICE_HIGH, Q.DEVICE_HI],
]);

/** Int32 words of state a device with `queueCount` queues needs (all zero: just reset). */
export function mmioStateWords(queueCount: number): number {
  if (!Number.isInteger(queueCount) || queueCount < 0) throw new RangeError(`Invalid queue count ${queueCount}`);
  return S.QUEUES + queueCount * QUEUE_WORDS;
}

/**
 * The register file of one virtio-mmio device, as seen by one thread. Build
 * one per thread over the same `state` and they act as a single device.
 */
export class MmioTransport {
  readonly device: MmioDevice;
  /** Feature bits offered to the driver. */
  readonly offered: bigint;
  readonly #s: Int32Array;
  /** The register page as words, or null without one (MmioOptions.page). */
  readonly #page: Int32Array | null;
  /** The same page as bytes, which is how a guest's loads of any size see it. */
  readonly #pageBytes: Uint8Array | null;
  /** The register page's configuration space, past the registers. */
  readonly #pageConfig: Uint8Array | null;
  readonly #queueCount: number;
  /**
   * Why this thread called `markBroken`, and the reset count then. A string
   * cannot live in an Int32Array, so the reason stays in this thread's heap;
   * a reset through any thread bumps S.RESETS, which makes it stale.
   */
  #broken: { reason: string; resets: number } | null = null;

  constructor(device: MmioDevice, options: MmioOptions = {}) {
    this.device = device;
    this.offered = device.features | VIRTIO_F_VERSION_1 |
      (options.eventIdx ? VIRTIO_F_EVENT_IDX : 0n) |
      (options.indirectDesc ? VIRTIO_F_INDIRECT_DESC : 0n);
    this.#queueCount = device.queueSizes.length;
    const words = mmioStateWords(this.#queueCount);
    this.#s = options.state ?? new Int32Array(words);
    if (this.#s.length < words) {
      throw new RangeError(`MMIO state has ${this.#s.length} words, ${this.#queueCount} queues need ${words}`);
    }
    const page = options.page;
    if (page && (page.length < VIRTIO_MMIO_PAGE_SIZE || page.byteOffset % 4 !== 0)) {
      throw new RangeError(`MMIO register page: ${page.length} bytes at offset ${page.byteOffset}, needs ${VIRTIO_MMIO_PAGE_SIZE} aligned to 4`);
    }
    if (page && device.config.length > VIRTIO_MMIO_PAGE_SIZE - VIRTIO_MMIO_CONFIG) {
      throw new RangeError(`MMIO register page: a config space of ${device.config.length} bytes does not fit`);
    }
    this.#page = page ? new Int32Array(page.buffer, page.byteOffset, VIRTIO_MMIO_PAGE_SIZE / 4) : null;
    this.#pageBytes = page ? page.subarray(0, VIRTIO_MMIO_PAGE_SIZE) : null;
    this.#pageConfig = page ? page.subarray(VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG + device.config.length) : null;
  }

  /**
   * Write every register and the configuration space into the register page,
   * from the state: once before the guest first runs, and after a snapshot
   * put the state back. Without a page, nothing to do.
   */
  syncPage(): void {
    if (this.#page) this.#locked(() => this.#syncPage());
  }

  /** The device status register (virtio 1.2 §2.1). */
  get status(): number {
    return this.#locked(() => this.#s[S.STATUS]);
  }
  /** Features the driver accepted; final once FEATURES_OK is set. */
  get driverFeatures(): bigint {
    return this.#locked(() => this.#driverFeatures());
  }
  /**
   * Why `markBroken` was called on this instance since the last reset, if it
   * was. Per thread: another thread's `markBroken` does not show here (its
   * DEVICE_NEEDS_RESET bit in `status` does).
   */
  get brokenReason(): string | null {
    return this.#locked(() => this.#broken?.resets === this.#s[S.RESETS] ? this.#broken.reason : null);
  }
  /** InterruptStatus as it is now. */
  get interruptStatus(): number {
    return this.#locked(() => Atomics.load(this.#s, S.INTERRUPT_STATUS) >>> 0);
  }

  /**
   * Set InterruptStatus bits: a queue Worker raises VIRTIO_MMIO_INT_VRING here
   * before it writes its irqfd, so the driver's interrupt handler, reading
   * InterruptStatus on any vCPU, finds the reason for the interrupt.
   */
  raiseInterrupt(bits: number): void {
    this.#locked(() => {
      const now = Atomics.or(this.#s, S.INTERRUPT_STATUS, bits) | bits;
      if (this.#page) this.#page[VIRTIO_MMIO_INTERRUPT_STATUS / 4] = now;
    });
  }

  /**
   * Queue `n` as the driver configured it, in the shape `new Virtqueue()`
   * takes; that constructor checks it (size within QueueNumMax, alignment,
   * rings inside RAM) and throws the GuestError to pass to `markBroken`.
   */
  queueConfig(n: number): VirtqueueConfig & { ready: boolean } {
    if (!Number.isInteger(n) || n < 0 || n >= this.#queueCount) throw new RangeError(`No queue ${n}`);
    const maxSize = this.device.queueSizes[n];
    return this.#locked(() => {
      const s = this.#s, q = S.QUEUES + n * QUEUE_WORDS;
      return {
        size: s[q + Q.NUM_SET] ? s[q + Q.NUM] >>> 0 : maxSize,
        descAddr: this.#join(q + Q.DESC_LO, q + Q.DESC_HI),
        availAddr: this.#join(q + Q.DRIVER_LO, q + Q.DRIVER_HI),
        usedAddr: this.#join(q + Q.DEVICE_LO, q + Q.DEVICE_HI),
        eventIdx: (this.#driverFeatures() & VIRTIO_F_EVENT_IDX) !== 0n,
        maxSize,
        ready: s[q + Q.READY] !== 0,
      };
    });
  }

  /** A guest read of `size` bytes at `offset` in the window. */
  read(offset: number, size: number): number {
    if (!Number.isInteger(offset) || offset < 0) return 0;
    // With a register page, KVM answers reads from it; one that comes here
    // anyway (a caller or a test) gets the same answer, the page's bytes.
    if (this.#pageBytes) return readLE(this.#pageBytes, offset, size);
    // The config space is not under the lock: ConfigGeneration guards it (see #readConfig).
    if (offset >= VIRTIO_MMIO_CONFIG) return this.#readConfig(offset - VIRTIO_MMIO_CONFIG, size);
    // §4.2.2.2: the driver MUST use 32-bit wide, aligned accesses to registers.
    if (size !== 4 || offset % 4 !== 0) return 0;
    return this.#locked(() => this.#readReg(offset));
  }

  /** A guest write of `size` bytes at `offset`; returns what the caller must do, or null. */
  write(offset: number, size: number, value: number): MmioEvent | null {
    if (!Number.isInteger(offset) || offset < 0) return null;
    value = value >>> 0;
    if (offset >= VIRTIO_MMIO_CONFIG) {
      // Outside the lock: the device's configWrite may well call configChanged().
      this.#writeConfig(offset - VIRTIO_MMIO_CONFIG, size, value);
      if (this.#page) this.#locked(() => this.#syncPage());
      return null;
    }
    if (size !== 4 || offset % 4 !== 0) return null;
    return this.#locked(() => {
      const ev = this.#writeReg(offset, value);
      if (this.#page) this.#syncPage();
      return ev;
    });
  }

  /**
   * The device hit an error it cannot recover from, e.g. a GuestError from a
   * queue: set DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2). Returns true when the
   * caller must raise the interrupt: after DRIVER_OK the device MUST send a
   * configuration change notification.
   */
  markBroken(reason: string): boolean {
    return this.#locked(() => {
      const s = this.#s;
      // The first reason since the last reset wins: later errors are often its echoes.
      if (this.#broken?.resets !== s[S.RESETS]) this.#broken = { reason, resets: s[S.RESETS] };
      s[S.STATUS] |= STATUS_DEVICE_NEEDS_RESET;
      const raise = (s[S.STATUS] & STATUS_DRIVER_OK) !== 0;
      if (raise) Atomics.or(s, S.INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG);
      if (this.#page) this.#syncPage();
      return raise;
    });
  }

  /**
   * The device changed its configuration space: bump ConfigGeneration (virtio
   * 1.2 §2.5.1, so the driver re-reads a torn multi-word field) and, once the
   * driver is up, ask for a configuration change interrupt. Returns true when
   * the caller must raise it.
   */
  configChanged(): boolean {
    return this.#locked(() => {
      const s = this.#s;
      s[S.CONFIG_GENERATION]++; // Int32 wraps like the u32 register, read back with >>> 0
      const raise = (s[S.STATUS] & STATUS_DRIVER_OK) !== 0;
      if (raise) Atomics.or(s, S.INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG);
      if (this.#page) this.#syncPage();
      return raise;
    });
  }

  // From here to #locked(), helpers run with the lock held and never take it
  // again: the lock is not re-entrant, so a nested #locked() would spin forever.

  #readReg(offset: number): number {
    const s = this.#s;
    const sel = s[S.QUEUE_SEL] >>> 0;
    const q = sel < this.#queueCount ? S.QUEUES + sel * QUEUE_WORDS : -1;
    switch (offset) {
      case VIRTIO_MMIO_MAGIC_VALUE:
        return VIRTIO_MMIO_MAGIC;
      case VIRTIO_MMIO_VERSION:
        return MMIO_VERSION;
      case VIRTIO_MMIO_DEVICE_ID:
        return this.device.deviceId;
      case VIRTIO_MMIO_VENDOR_ID:
        return VIRTIO_MMIO_VENDOR;
      case VIRTIO_MMIO_DEVICE_FEATURES: {
        // Feature word `sel`: bits 32·sel … 32·sel + 31; words past 1 read 0.
        const fsel = s[S.DEVICE_FEATURES_SEL] >>> 0;
        return fsel > 1 ? 0 : Number((this.offered >> BigInt(32 * fsel)) & 0xffff_ffffn);
      }
      case VIRTIO_MMIO_QUEUE_NUM_MAX:
        return q < 0 ? 0 : this.device.queueSizes[sel]; // §4.2.2: 0 when the queue is not available
      case VIRTIO_MMIO_QUEUE_READY:
        return q < 0 ? 0 : s[q + Q.READY];
      case VIRTIO_MMIO_INTERRUPT_STATUS:
        return Atomics.exchange(s, S.INTERRUPT_STATUS, 0) >>> 0; // read to clear: see VIRTIO_MMIO_INT_VRING
      case VIRTIO_MMIO_STATUS:
        return s[S.STATUS];
      case VIRTIO_MMIO_SHM_LEN_LOW:
      case VIRTIO_MMIO_SHM_LEN_HIGH:
        return 0xffff_ffff; // §4.2.2: no shared memory regions, so every length reads -1
      case VIRTIO_MMIO_CONFIG_GENERATION:
        return s[S.CONFIG_GENERATION] >>> 0;
      default:
        return 0; // write-only or unknown registers
    }
  }

  #writeReg(offset: number, value: number): MmioEvent | null {
    const s = this.#s;
    switch (offset) {
      case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
        s[S.DEVICE_FEATURES_SEL] = value;
        return null;
      case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
        s[S.DRIVER_FEATURES_SEL] = value;
        return null;
      case VIRTIO_MMIO_DRIVER_FEATURES:
        this.#writeDriverFeatures(value);
        return null;
      case VIRTIO_MMIO_QUEUE_SEL:
        s[S.QUEUE_SEL] = value;
        return null;
      case VIRTIO_MMIO_QUEUE_NOTIFY:
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index (§4.2.2).
        // Reported whatever the status: a caller with no running Worker drops it.
        return value < this.#queueCount ? { kind: "notify", queue: value } : null;
      case VIRTIO_MMIO_INTERRUPT_ACK:
        // With a register page VRING stays set (MmioOptions.page).
        Atomics.and(s, S.INTERRUPT_STATUS, ~(this.#page ? value & ~VIRTIO_MMIO_INT_VRING : value));
        return null;
      case VIRTIO_MMIO_STATUS:
        return this.#writeStatus(value);
      default:
        return this.#writeQueue(offset, value);
    }
  }

  #driverFeatures(): bigint {
    const s = this.#s;
    return (BigInt(s[S.DRIVER_FEATURES_HI] >>> 0) << 32n) | BigInt(s[S.DRIVER_FEATURES_LO] >>> 0);
  }

  /** A 64-bit register pair as a number; values past 2^53 stay unsafe, and Virtqueue refuses them. */
  #join(lo: number, hi: number): number {
    return (this.#s[hi] >>> 0) * 0x1_0000_0000 + (this.#s[lo] >>> 0);
  }

  #writeDriverFeatures(value: number): void {
    const s = this.#s;
    // §3.1.1 steps 4–5: features are written after DRIVER and frozen by FEATURES_OK.
    if ((s[S.STATUS] & (STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED)) !== STATUS_DRIVER) return;
    const sel = s[S.DRIVER_FEATURES_SEL] >>> 0;
    if (sel === 0) s[S.DRIVER_FEATURES_LO] = value;
    else if (sel === 1) s[S.DRIVER_FEATURES_HI] = value;
  }

  /**
   * The status state machine (virtio 1.2 §3.1.1): 0 resets; FAILED may be set
   * at any time; otherwise exactly one step forward, ACKNOWLEDGE → DRIVER →
   * FEATURES_OK → DRIVER_OK. Anything else is ignored, so the driver reads
   * back a status that shows its write did not take.
   */
  #writeStatus(value: number): MmioEvent | null {
    const s = this.#s;
    if (value === 0) {
      this.#reset();
      return { kind: "reset" };
    }
    // The driver writes back what it read, DEVICE_NEEDS_RESET included; that bit is ours.
    const next = value & ~STATUS_DEVICE_NEEDS_RESET & 0xff;
    const cur = s[S.STATUS] & ~STATUS_DEVICE_NEEDS_RESET;
    const keep = s[S.STATUS] & STATUS_DEVICE_NEEDS_RESET;
    if (next & STATUS_FAILED) {
      s[S.STATUS] |= STATUS_FAILED;
      return null;
    }
    if (cur & STATUS_FAILED) return null;
    const step = next & ~cur;
    if ((next & cur) !== cur || (step & (step - 1)) !== 0) return null; // cleared a bit, or set two
    switch (step) {
      case STATUS_ACKNOWLEDGE:
        if (cur !== 0) return null;
        break;
      case STATUS_DRIVER:
        if (cur !== STATUS_ACKNOWLEDGE) return null;
        break;
      case STATUS_FEATURES_OK: {
        if (cur !== (STATUS_ACKNOWLEDGE | STATUS_DRIVER)) return null;
        // §2.2.2: accept only features we offered, and a non-legacy driver (§6.1: VERSION_1).
        const f = this.#driverFeatures();
        if ((f & ~this.offered) !== 0n || !(f & VIRTIO_F_VERSION_1)) return null;
        break;
      }
      case STATUS_DRIVER_OK:
        if (cur !== (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)) return null;
        s[S.STATUS] = next | keep;
        return { kind: "driverOk" };
      default:
        return null; // unknown bit, or the same value again
    }
    s[S.STATUS] = next | keep;
    return null;
  }

  #writeQueue(offset: number, value: number): MmioEvent | null {
    const s = this.#s;
    const sel = s[S.QUEUE_SEL] >>> 0;
    if (sel >= this.#queueCount) return null;
    const q = S.QUEUES + sel * QUEUE_WORDS;
    // §4.2.3.2: queues are set up after FEATURES_OK and before DRIVER_OK, and
    // a queue's registers are only written while it is not ready.
    if ((s[S.STATUS] & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED)) !== STATUS_FEATURES_OK) return null;
    if (offset === VIRTIO_MMIO_QUEUE_READY) {
      // Linux's vm_del_vq writes 0 when set-up fails half-way; before
      // DRIVER_OK no Worker runs, so taking the queue back is harmless.
      if (value === 0) s[q + Q.READY] = 0;
      if (value !== 1 || s[q + Q.READY]) return null;
      s[q + Q.READY] = 1;
      return { kind: "queueReady", queue: sel };
    }
    const reg = QUEUE_REG.get(offset);
    if (s[q + Q.READY] || reg === undefined) return null;
    s[q + reg] = value; // QueueNum: new Virtqueue() checks it against QueueNumMax
    if (reg === Q.NUM) s[q + Q.NUM_SET] = 1;
    return null;
  }

  /** §2.4: back to the state after power-on, all zeroes; the caller stops the queue Workers first. */
  #reset(): void {
    const s = this.#s;
    s[S.RESETS]++; // forgets every thread's brokenReason
    s.fill(0, S.INTERRUPT_STATUS, S.QUEUES + this.#queueCount * QUEUE_WORDS);
  }

  /**
   * Make the register page answer what `read()` would now. The driver reads
   * it without the lock, one aligned word at a time; each word here is one
   * store, so a read sees the old or the new value of a register, never a
   * mix. The configuration space goes first and ConfigGeneration last, so a
   * driver that read the old generation before a torn field reads the new
   * one after it and reads the field again (virtio 1.2 §2.5.1).
   */
  #syncPage(): void {
    const p = this.#page!, s = this.#s;
    for (const off of READABLE) p[off / 4] = this.#readReg(off);
    p[VIRTIO_MMIO_INTERRUPT_STATUS / 4] = Atomics.load(s, S.INTERRUPT_STATUS);
    this.#pageConfig!.set(this.device.config);
    p[VIRTIO_MMIO_CONFIG_GENERATION / 4] = s[S.CONFIG_GENERATION];
  }

  /** Run `f` holding the spinlock in word 0 (devices/spinlock.ts). */
  #locked<T>(f: () => T): T {
    return withSpinLock(this.#s, S.LOCK, f);
  }

  // The config space lives where the creator put it (in vmm, the device's
  // block of shared memory: devices/virtio/device.ts transportFor). It takes
  // no lock: a device that changes it bumps ConfigGeneration afterwards
  // (configChanged), and the driver re-reads a field that changed under it.

  #readConfig(off: number, size: number): number {
    return readLE(this.device.config, off, size); // §4.2.2: the config space is little-endian
  }

  #writeConfig(off: number, size: number, value: number): void {
    const cfg = this.device.config;
    if (!(size === 1 || size === 2 || size === 4) || off + size > cfg.length || !this.device.configWrite) return;
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) bytes[i] = (value >>> (8 * i)) & 0xff;
    this.device.configWrite(off, bytes);
  }
}
