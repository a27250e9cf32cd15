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
 * InterruptStatus lives in an Int32Array the caller may place in memory
 * shared with the queue Workers: a Worker sets VIRTIO_MMIO_INT_VRING with
 * `Atomics.or(state, 0, VIRTIO_MMIO_INT_VRING)` before it signals the irqfd,
 * and the driver's InterruptACK clears bits here with `Atomics.and`.
 *
 * @example
 * ```ts
 * import { MmioTransport } from "./mmio.ts";
 *
 * const t = new MmioTransport({ deviceId: 4, features: 0n, queueSizes: [256], config: new Uint8Array(0) });
 * t.read(0x000, 4); // 0x74726976, "virt"
 * const ev = t.write(0x070, 4, 1); // ACKNOWLEDGE; null: nothing to do yet
 * ```
 */

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

// InterruptStatus bits (§4.2.2): a used buffer, or a configuration change.
export const VIRTIO_MMIO_INT_VRING = 1;
export const VIRTIO_MMIO_INT_CONFIG = 2;

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
  /** InterruptStatus in element 0; pass one over shared memory to let queue Workers set bits. */
  interruptState?: Int32Array;
}

/** What the caller must do after a register write. */
export type MmioEvent =
  | { kind: "driverOk" }
  | { kind: "reset" }
  | { kind: "notify"; queue: number }
  | { kind: "queueReady"; queue: number };

interface QueueRegs {
  num: number;
  ready: boolean;
  desc: [number, number];
  driver: [number, number];
  device: [number, number];
}

function freshQueue(max: number): QueueRegs {
  // QueueNum starts at the maximum, so a driver that never writes it still agrees with us.
  return { num: max, ready: false, desc: [0, 0], driver: [0, 0], device: [0, 0] };
}

/** A 64-bit register pair as a number; values past 2^53 stay unsafe, and Virtqueue refuses them. */
function join([lo, hi]: [number, number]): number {
  return hi * 0x1_0000_0000 + lo;
}

/** The register file of one virtio-mmio device. */
export class MmioTransport {
  readonly device: MmioDevice;
  /** Feature bits offered to the driver. */
  readonly offered: bigint;
  readonly #irq: Int32Array;
  #status = 0;
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #driverFeatures = 0n;
  #queueSel = 0;
  #queues: QueueRegs[];
  #configGeneration = 0;
  #brokenReason: string | null = null;

  constructor(device: MmioDevice, options: MmioOptions = {}) {
    this.device = device;
    this.offered = device.features | VIRTIO_F_VERSION_1 |
      (options.eventIdx ? VIRTIO_F_EVENT_IDX : 0n) |
      (options.indirectDesc ? VIRTIO_F_INDIRECT_DESC : 0n);
    this.#irq = options.interruptState ?? new Int32Array(1);
    this.#queues = device.queueSizes.map(freshQueue);
  }

  /** The device status register (virtio 1.2 §2.1). */
  get status(): number {
    return this.#status;
  }
  /** Features the driver accepted; final once FEATURES_OK is set. */
  get driverFeatures(): bigint {
    return this.#driverFeatures;
  }
  /** Why `markBroken` was called, if it was. */
  get brokenReason(): string | null {
    return this.#brokenReason;
  }
  /** InterruptStatus as it is now. */
  get interruptStatus(): number {
    return Atomics.load(this.#irq, 0) >>> 0;
  }

  /**
   * Queue `n` as the driver configured it, in the shape `new Virtqueue()`
   * takes; that constructor checks it (size within QueueNumMax, alignment,
   * rings inside RAM) and throws the GuestError to pass to `markBroken`.
   */
  queueConfig(n: number): VirtqueueConfig & { ready: boolean } {
    const q = this.#queues[n];
    if (!q) throw new RangeError(`No queue ${n}`);
    return {
      size: q.num,
      descAddr: join(q.desc),
      availAddr: join(q.driver),
      usedAddr: join(q.device),
      eventIdx: (this.#driverFeatures & VIRTIO_F_EVENT_IDX) !== 0n,
      maxSize: this.device.queueSizes[n],
      ready: q.ready,
    };
  }

  /** A guest read of `size` bytes at `offset` in the window. */
  read(offset: number, size: number): number {
    if (!Number.isInteger(offset) || offset < 0) return 0;
    if (offset >= VIRTIO_MMIO_CONFIG) return this.#readConfig(offset - VIRTIO_MMIO_CONFIG, size);
    // §4.2.2.2: the driver MUST use 32-bit wide, aligned accesses to registers.
    if (size !== 4 || offset % 4 !== 0) return 0;
    const q = this.#queues[this.#queueSel];
    switch (offset) {
      case VIRTIO_MMIO_MAGIC_VALUE:
        return VIRTIO_MMIO_MAGIC;
      case VIRTIO_MMIO_VERSION:
        return MMIO_VERSION;
      case VIRTIO_MMIO_DEVICE_ID:
        return this.device.deviceId;
      case VIRTIO_MMIO_VENDOR_ID:
        return VIRTIO_MMIO_VENDOR;
      case VIRTIO_MMIO_DEVICE_FEATURES:
        // Feature word `sel`: bits 32·sel … 32·sel + 31; words past 1 read 0.
        return this.#deviceFeaturesSel > 1 ? 0 : Number((this.offered >> BigInt(32 * this.#deviceFeaturesSel)) & 0xffff_ffffn);
      case VIRTIO_MMIO_QUEUE_NUM_MAX:
        return q ? this.device.queueSizes[this.#queueSel] : 0; // §4.2.2: 0 when the queue is not available
      case VIRTIO_MMIO_QUEUE_READY:
        return q?.ready ? 1 : 0;
      case VIRTIO_MMIO_INTERRUPT_STATUS:
        return Atomics.load(this.#irq, 0) >>> 0;
      case VIRTIO_MMIO_STATUS:
        return this.#status;
      case VIRTIO_MMIO_SHM_LEN_LOW:
      case VIRTIO_MMIO_SHM_LEN_HIGH:
        return 0xffff_ffff; // §4.2.2: no shared memory regions, so every length reads -1
      case VIRTIO_MMIO_CONFIG_GENERATION:
        return this.#configGeneration;
      default:
        return 0; // write-only or unknown registers
    }
  }

  /** A guest write of `size` bytes at `offset`; returns what the caller must do, or null. */
  write(offset: number, size: number, value: number): MmioEvent | null {
    if (!Number.isInteger(offset) || offset < 0) return null;
    value = value >>> 0;
    if (offset >= VIRTIO_MMIO_CONFIG) {
      this.#writeConfig(offset - VIRTIO_MMIO_CONFIG, size, value);
      return null;
    }
    if (size !== 4 || offset % 4 !== 0) return null;
    switch (offset) {
      case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
        this.#deviceFeaturesSel = value;
        return null;
      case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
        this.#driverFeaturesSel = value;
        return null;
      case VIRTIO_MMIO_DRIVER_FEATURES:
        this.#writeDriverFeatures(value);
        return null;
      case VIRTIO_MMIO_QUEUE_SEL:
        this.#queueSel = value;
        return null;
      case VIRTIO_MMIO_QUEUE_NOTIFY:
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index (§4.2.2).
        // Reported whatever the status: a caller with no running Worker drops it.
        return value < this.#queues.length ? { kind: "notify", queue: value } : null;
      case VIRTIO_MMIO_INTERRUPT_ACK:
        Atomics.and(this.#irq, 0, ~value);
        return null;
      case VIRTIO_MMIO_STATUS:
        return this.#writeStatus(value);
      default:
        return this.#writeQueue(offset, value);
    }
  }

  /**
   * The device hit an error it cannot recover from, e.g. a GuestError from a
   * queue: set DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2). Returns true when the
   * caller must raise the interrupt: after DRIVER_OK the device MUST send a
   * configuration change notification.
   */
  markBroken(reason: string): boolean {
    this.#brokenReason ??= reason;
    this.#status |= STATUS_DEVICE_NEEDS_RESET;
    if (!(this.#status & STATUS_DRIVER_OK)) return false;
    Atomics.or(this.#irq, 0, VIRTIO_MMIO_INT_CONFIG);
    return true;
  }

  /**
   * The device changed its configuration space: bump ConfigGeneration (virtio
   * 1.2 §2.5.1, so the driver re-reads a torn multi-word field) and, once the
   * driver is up, ask for a configuration change interrupt. Returns true when
   * the caller must raise it.
   */
  configChanged(): boolean {
    this.#configGeneration = (this.#configGeneration + 1) >>> 0;
    if (!(this.#status & STATUS_DRIVER_OK)) return false;
    Atomics.or(this.#irq, 0, VIRTIO_MMIO_INT_CONFIG);
    return true;
  }

  #writeDriverFeatures(value: number): void {
    // §3.1.1 steps 4–5: features are written after DRIVER and frozen by FEATURES_OK.
    if ((this.#status & (STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED)) !== STATUS_DRIVER) return;
    if (this.#driverFeaturesSel > 1) return;
    const shift = BigInt(32 * this.#driverFeaturesSel);
    this.#driverFeatures = (this.#driverFeatures & ~(0xffff_ffffn << shift)) | (BigInt(value) << shift);
  }

  /**
   * The status state machine (virtio 1.2 §3.1.1): 0 resets; FAILED may be set
   * at any time; otherwise exactly one step forward, ACKNOWLEDGE → DRIVER →
   * FEATURES_OK → DRIVER_OK. Anything else is ignored, so the driver reads
   * back a status that shows its write did not take.
   */
  #writeStatus(value: number): MmioEvent | null {
    if (value === 0) {
      this.#reset();
      return { kind: "reset" };
    }
    // The driver writes back what it read, DEVICE_NEEDS_RESET included; that bit is ours.
    const next = value & ~STATUS_DEVICE_NEEDS_RESET & 0xff;
    const cur = this.#status & ~STATUS_DEVICE_NEEDS_RESET;
    const keep = this.#status & STATUS_DEVICE_NEEDS_RESET;
    if (next & STATUS_FAILED) {
      this.#status |= STATUS_FAILED;
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
      case STATUS_FEATURES_OK:
        if (cur !== (STATUS_ACKNOWLEDGE | STATUS_DRIVER)) return null;
        // §2.2.2: accept only features we offered, and a non-legacy driver (§6.1: VERSION_1).
        if ((this.#driverFeatures & ~this.offered) !== 0n || !(this.#driverFeatures & VIRTIO_F_VERSION_1)) return null;
        break;
      case STATUS_DRIVER_OK:
        if (cur !== (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)) return null;
        this.#status = next | keep;
        return { kind: "driverOk" };
      default:
        return null; // unknown bit, or the same value again
    }
    this.#status = next | keep;
    return null;
  }

  #writeQueue(offset: number, value: number): MmioEvent | null {
    const q = this.#queues[this.#queueSel];
    if (!q) return null;
    // §4.2.3.2: queues are set up after FEATURES_OK and before DRIVER_OK, and
    // a queue's registers are only written while it is not ready.
    const s = this.#status;
    if ((s & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED)) !== STATUS_FEATURES_OK) return null;
    if (offset === VIRTIO_MMIO_QUEUE_READY) {
      // Linux's vm_del_vq writes 0 when set-up fails half-way; before
      // DRIVER_OK no Worker runs, so taking the queue back is harmless.
      if (value === 0) q.ready = false;
      if (value !== 1 || q.ready) return null;
      q.ready = true;
      return { kind: "queueReady", queue: this.#queueSel };
    }
    if (q.ready) return null;
    switch (offset) {
      case VIRTIO_MMIO_QUEUE_NUM:
        q.num = value; // new Virtqueue() checks it against QueueNumMax
        break;
      case VIRTIO_MMIO_QUEUE_DESC_LOW:
        q.desc[0] = value;
        break;
      case VIRTIO_MMIO_QUEUE_DESC_HIGH:
        q.desc[1] = value;
        break;
      case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
        q.driver[0] = value;
        break;
      case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
        q.driver[1] = value;
        break;
      case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
        q.device[0] = value;
        break;
      case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
        q.device[1] = value;
        break;
    }
    return null;
  }

  #readConfig(off: number, size: number): number {
    const cfg = this.device.config;
    if (!(size === 1 || size === 2 || size === 4) || off + size > cfg.length) return 0;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + cfg[off + i]; // little-endian (§4.2.2: config is LE)
    return v;
  }

  #writeConfig(off: number, size: number, value: number): void {
    const cfg = this.device.config;
    if (!(size === 1 || size === 2 || size === 4) || off + size > cfg.length || !this.device.configWrite) return;
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) bytes[i] = (value >>> (8 * i)) & 0xff;
    this.device.configWrite(off, bytes);
  }

  /** §2.4: back to the state after power-on; the caller stops the queue Workers first. */
  #reset(): void {
    this.#status = 0;
    this.#deviceFeaturesSel = 0;
    this.#driverFeaturesSel = 0;
    this.#driverFeatures = 0n;
    this.#queueSel = 0;
    this.#queues = this.device.queueSizes.map(freshQueue);
    this.#brokenReason = null;
    Atomics.store(this.#irq, 0, 0);
  }
}
