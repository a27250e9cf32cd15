/**
 * The block of shared memory through which the main thread and the Workers
 * talk once the VM runs. The main thread blocks in poll() and so cannot take
 * Worker messages; a Worker records what happened here (with Atomics) and
 * then writes the control eventfd the main thread polls.
 */

/** Why the VM ended, in the order a first writer wins. */
export const EXIT_KIND = {
  NONE: 0,
  POWEROFF: 1,
  RESET: 2,
  PANIC: 3,
  EXIT_CODE: 4,
  ERROR: 5,
  QUIT: 6,
} as const;

/** Int32 word indexes. */
export const CTL = {
  STOP: 0, // main → Workers: leave your loop
  EXIT_KIND: 1,
  EXIT_CODE: 2,
  READY: 3, // the guest init reported ready (port 0xf5)
  VCPUS_RUNNING: 4,
  VCPU_STATE: 16, // one word per vCPU: 0 starting, 1 running, 2 stopped
} as const;
export const MAX_VCPUS = 254;
/** Byte offsets. */
export const CTL_READY_TIME = 1088; // f64 epoch ms of the ready report
export const CTL_TIDS = 1096; // u64 pthread_t per vCPU
export const CTL_REASON = CTL_TIDS + MAX_VCPUS * 8; // UTF-8 text, NUL-terminated
export const CTL_REASON_MAX = 1024;
export const SERIAL_OFFSET = 8192;

/**
 * One block per virtio device: its transport's register state (words from
 * 0), then one word per queue saying what that queue's Worker should be
 * doing (QUEUE_STATE_WORD + q, values in Q).
 */
export const VIRTIO_OFFSET = SERIAL_OFFSET + 16384;
export const VIRTIO_BLOCK_BYTES = 1024;
export const VIRTIO_MAX_DEVICES = 19;
export const QUEUE_STATE_WORD = 192;
export const VIRTIO_MAX_QUEUES = 16;
export const SHARED_BYTES = VIRTIO_OFFSET + VIRTIO_MAX_DEVICES * VIRTIO_BLOCK_BYTES;

/**
 * The life of a queue Worker. A vCPU moves IDLE → START when the driver
 * sets DRIVER_OK and RUNNING/START → STOP when it resets the device; the
 * Worker moves START → RUNNING and STOP → IDLE. The main thread stores EXIT
 * when the VM stops; the Worker drains, stores GONE and leaves its loop.
 */
export const Q = { IDLE: 0, START: 1, RUNNING: 2, STOP: 3, EXIT: 4, GONE: 5 } as const;

/** Byte offset of device `index`'s block. */
export function virtioBlock(index: number): number {
  return VIRTIO_OFFSET + index * VIRTIO_BLOCK_BYTES;
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
