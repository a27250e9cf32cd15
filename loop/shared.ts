/**
 * The block of shared memory through which the threads of one machine talk:
 * the control loop, the vCPU Workers, the queue Workers and the stdin
 * Worker. Whoever blocks in poll(2) cannot take Worker messages, so a thread
 * records what happened here (with Atomics) and then writes the eventfd the
 * other side polls.
 *
 * The layout is built, not typed in: each region is carved from a running
 * offset with its size and alignment (`Layout`), so no offset is written
 * twice and a region that grows moves the ones after it. loop/shared_test.ts
 * checks that no two regions overlap and that everything fits.
 *
 * ```
 * CTL words | vCPU states | ready time | vCPU thread ids | exit reason | UART | virtio device blocks… | register pages…
 * device block: MMIO registers | queue run states | queue positions | config space | device words
 * ```
 */
import { SERIAL_STATE_BYTES } from "../devices/serial.ts";
import { mmioStateWords, VIRTIO_MMIO_PAGE_SIZE } from "../devices/virtio/mmio.ts";

/** Carves consecutive regions out of a block; offsets are in bytes. */
export class Layout {
  #size = 0;
  readonly regions: { name: string; at: number; bytes: number }[] = [];
  /** A region of `bytes` bytes aligned to `align`; returns its offset. */
  region(name: string, bytes: number, align = 8): number {
    const at = Math.ceil(this.#size / align) * align;
    this.#size = at + bytes;
    this.regions.push({ name, at, bytes });
    return at;
  }
  get size(): number {
    return this.#size;
  }
}

/** Why the VM ended, in the order a first writer wins. */
export const EXIT_KIND = {
  NONE: 0,
  POWEROFF: 1,
  RESET: 2,
  PANIC: 3,
  EXIT_CODE: 4,
  ERROR: 5,
  QUIT: 6, // a signal or the console escape
  STOPPED: 7, // Machine.stop()
  TRIPLE_FAULT: 8, // KVM_EXIT_SHUTDOWN: the guest crashed, it did not ask for a reset
} as const;

/** The Int32 control words at the start of the block. */
export const CTL = {
  STOP: 0, // control loop → vCPU Workers: leave your loop
  EXIT_KIND: 1,
  EXIT_CODE: 2,
  READY: 3, // the guest init reported ready (port 0xf5)
  RUN: 4, // what the vCPUs should do: RUN.GO or RUN.PAUSE
  // The mailbox: one command at a time from the Machine to the control loop.
  CMD: 5, // CMD.*
  CMD_SEQ: 6, // bumped by the sender for each command
  CMD_DONE: 7, // the control loop stores CMD_SEQ here once the command is carried out
  // 1: the vCPU that hears the ready report pauses the machine right there,
  // before the guest goes on, for the control loop's ready hook (ControlHooks.atReady).
  HOLD_AT_READY: 8,
} as const;
const CTL_WORDS = 16;

/** Values of CTL.RUN. */
export const RUN = { GO: 0, PAUSE: 1 } as const;
/** Mailbox commands (CTL.CMD). */
export const CMD = { NONE: 0, PAUSE: 1, RESUME: 2, STOP: 3 } as const;

/**
 * The life of a vCPU Worker, one word each: STARTING until it first enters
 * KVM_RUN, RUNNING, PAUSED while parked (out of KVM_RUN, pending I/O
 * completed, asleep on its wake eventfd), STOPPED once it left its loop.
 */
export const VCPU = { STARTING: 0, RUNNING: 1, STOPPED: 2, PAUSED: 3 } as const;

/**
 * The life of a queue Worker, one word per queue. A vCPU moves IDLE → START
 * when the driver sets DRIVER_OK and RUNNING/START → STOP when it resets the
 * device; the Worker moves START → RUNNING and STOP → IDLE. The control loop
 * moves RUNNING → PAUSE (the Worker finishes the request in hand, flushes,
 * keeps its ring position and answers PAUSED) and PAUSED → RUNNING, and
 * stores EXIT when the VM stops; the Worker drains, stores GONE and leaves.
 */
export const Q = { IDLE: 0, START: 1, RUNNING: 2, STOP: 3, EXIT: 4, GONE: 5, PAUSE: 6, PAUSED: 7 } as const;

export const MAX_VCPUS = 254;
export const CTL_REASON_MAX = 1024;
/** virtio-mmio devices take GSIs 5…23 of the IOAPIC (devices/virtio/device.ts). */
export const VIRTIO_MAX_DEVICES = 19;
export const VIRTIO_MAX_QUEUES = 16;
/** Bytes of config space a device may have (virtio-fs: 36-byte tag + 4; blk: 60). */
export const VIRTIO_CONFIG_MAX = 256;
/** Int32 words of state a device kind may share between its queue Workers. */
export const DEVICE_STATE_WORDS = 32;
/** Per queue: the ring position a paused or stopped Worker leaves behind. */
export const QPOS = { VALID: 0, NEXT_AVAIL: 1, NEXT_USED: 2 } as const;
const QPOS_WORDS = 4;

const block = new Layout();
block.region("ctl", CTL_WORDS * 4, 4);
/** Int32 word index of vCPU 0's VCPU state. */
export const VCPU_STATE_WORD = block.region("vcpu states", MAX_VCPUS * 4, 4) / 4;
/** f64 epoch ms of the ready report. */
export const CTL_READY_TIME = block.region("ready time", 8, 8);
/** u64 pthread_t per vCPU, for the kick. */
export const CTL_TIDS = block.region("vcpu tids", MAX_VCPUS * 8, 8);
/** UTF-8 text, NUL-terminated. */
export const CTL_REASON = block.region("exit reason", CTL_REASON_MAX, 8);
export const SERIAL_OFFSET = block.region("uart", SERIAL_STATE_BYTES, 64);
export const SERIAL_BYTES = SERIAL_STATE_BYTES;

const device = new Layout();
/** Byte offsets inside one virtio device's block. */
export const DEV = {
  /** The transport's registers (devices/virtio/mmio.ts). */
  MMIO: device.region("mmio registers", mmioStateWords(VIRTIO_MAX_QUEUES) * 4, 4),
  /** One Q word per queue. */
  QUEUE_RUN: device.region("queue run states", VIRTIO_MAX_QUEUES * 4, 4),
  /** QPOS_WORDS per queue. */
  QUEUE_POS: device.region("queue positions", VIRTIO_MAX_QUEUES * QPOS_WORDS * 4, 4),
  /** The device's configuration space, read by the transport on any vCPU, written by the device. */
  CONFIG: device.region("config space", VIRTIO_CONFIG_MAX, 8),
  /** Words a device kind shares between its queue Workers (net: the link is down). */
  STATE: device.region("device words", DEVICE_STATE_WORDS * 4, 8),
} as const;
export const DEVICE_LAYOUT = device.regions;
export const VIRTIO_BLOCK_BYTES = Math.ceil(device.size / 64) * 64;
export const VIRTIO_OFFSET = block.region("virtio devices", VIRTIO_MAX_DEVICES * VIRTIO_BLOCK_BYTES, 64);
/**
 * One register page per virtio device (devices/virtio/mmio.ts
 * MmioOptions.page), page-aligned and alone in their pages: KVM maps each
 * read-only into the guest at the device's window, and the guest must see
 * nothing else of this block.
 */
export const MMIO_PAGES = block.region("mmio register pages", VIRTIO_MAX_DEVICES * VIRTIO_MMIO_PAGE_SIZE, VIRTIO_MMIO_PAGE_SIZE);
export const SHARED_LAYOUT = block.regions;
/** The whole block, in pages (it is one mmap). */
export const SHARED_BYTES = Math.ceil(block.size / 4096) * 4096;

/** Byte offset of device `index`'s block. */
export function virtioBlock(index: number): number {
  if (!Number.isInteger(index) || index < 0 || index >= VIRTIO_MAX_DEVICES) throw new RangeError(`No virtio device ${index}`);
  return VIRTIO_OFFSET + index * VIRTIO_BLOCK_BYTES;
}

/** Byte offset of device `index`'s register page. */
export function mmioPage(index: number): number {
  virtioBlock(index); // the same range check
  return MMIO_PAGES + index * VIRTIO_MMIO_PAGE_SIZE;
}

/** Int32 word index of queue `q`'s Q state in the device block at byte `block`. */
export function queueRunWord(block: number, q: number): number {
  return (block + DEV.QUEUE_RUN) / 4 + q;
}

/** Int32 word index of queue `q`'s QPOS words in the device block at byte `block`. */
export function queuePosWord(block: number, q: number): number {
  return (block + DEV.QUEUE_POS) / 4 + q * QPOS_WORDS;
}

/** This thread's views of the shared block at host address `addr` (mapped by the creator). */
export interface SharedViews {
  bytes: Uint8Array;
  ctl: Int32Array;
  view: DataView;
}
export function sharedViews(bytes: Uint8Array): SharedViews {
  return {
    bytes,
    ctl: new Int32Array(bytes.buffer, bytes.byteOffset, SHARED_BYTES / 4),
    view: new DataView(bytes.buffer, bytes.byteOffset, SHARED_BYTES),
  };
}

/** Record why the VM ends, if nothing did first; returns whether this call won. */
export function recordExit(ctl: Int32Array, bytes: Uint8Array, kind: number, code: number, reason: string): boolean {
  if (Atomics.compareExchange(ctl, CTL.EXIT_KIND, EXIT_KIND.NONE, -1) !== EXIT_KIND.NONE) return false;
  const enc = new TextEncoder().encode(reason).subarray(0, CTL_REASON_MAX - 1);
  bytes.set(enc, CTL_REASON);
  bytes[CTL_REASON + enc.length] = 0;
  Atomics.store(ctl, CTL.EXIT_CODE, code);
  Atomics.store(ctl, CTL.EXIT_KIND, kind);
  return true;
}

/** Read the exit reason text. */
export function exitReason(bytes: Uint8Array): string {
  let end = CTL_REASON;
  while (end < CTL_REASON + CTL_REASON_MAX && bytes[end] !== 0) end++;
  return new TextDecoder().decode(bytes.subarray(CTL_REASON, end));
}
