/**
 * Seeded fuzz of what a queue Worker does with its queue (loop/queue_service.ts)
 * against a hostile or broken guest driver, with the real device handlers
 * doing real I/O: virtio-blk preadv/pwritev/fallocate on small images (one
 * writable, one read-only), virtio-rng getrandom, virtio-console writes to
 * /dev/null and reads from a pipe, all by host address into guest RAM; and
 * the stdio console's eight queues (devices/stdio/), whose control queues
 * get random control messages and talk to each other through the device's
 * shared words and eventfd.
 *
 * So guest RAM is real host memory: one anonymous mapping whose first and
 * last 4 KiB are guard zones, with two 32 KiB regions and a hole between them
 * in the guest's physical map. Each case takes one device, a fresh
 * MmioTransport over zeroed state, and plays its driver: negotiates features
 * (EVENT_IDX and INDIRECT_DESC or not, sometimes nonsense), configures the
 * queues (usually well, sometimes with a size that is no power of 2 or too
 * big, rings outside RAM, misaligned, or overlapping each other and the
 * buffers), sets DRIVER_OK, then writes requests (well-formed, half-valid and
 * random descriptor chains, indirect tables, avail.idx jumps, blk headers of
 * every type with sectors inside, at, past and far past the capacity) and
 * calls `start()`, `kick()`, `input()` and `stop()` as the Worker does,
 * sometimes resetting and restarting the device in between. After every call
 * and every case it checks:
 *
 * - nothing escapes QueueService, and nothing it catches is a vmm bug (an
 *   "internal error" or a failed drain in its log);
 * - serving a queue returns: a watchdog counts ring index accesses per call;
 * - every host address handed out lies inside guest RAM, and the guard zones
 *   are intact;
 * - no image changed size (nothing written past its end), the read-only one
 *   not a byte;
 * - DEVICE_NEEDS_RESET (and a config interrupt) is set exactly when a queue
 *   broke while running, and a queue that breaks during a reset leaves no mark;
 * - the VM is only ended by the console, for a panic on hvc0 or Ctrl-A x
 *   (never by the stdio console, whatever its output says).
 *
 * The run is split in shards (seeds SEED … SEED + SHARDS − 1) so that no test
 * passes Bun's 5 s default timeout; the last prints the totals. FUZZ_SEED and
 * FUZZ_CASES override the defaults; a failure names its case and seed.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { close, EFD_CLOEXEC, EFD_NONBLOCK, eventfd, hostView, mmapAnon, O_CLOEXEC, O_NONBLOCK, O_WRONLY, open, pipe, writeAll } from "../ffi/libc.ts";
import { GuestMemory, type MemoryRegion } from "../vm/memory.ts";
import { closeDisk, type Disk, openDisk } from "../devices/blk/disk.ts";
import { initConfig, transportFor } from "../devices/virtio/device.ts";
import { describe } from "../devices/registry.ts";
import type { VirtioSpec } from "../devices/registry.ts";
import { DEV, DEVICE_STATE_WORDS, VIRTIO_BLOCK_BYTES } from "./shared.ts";
import {
  mmioStateWords,
  type MmioTransport,
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_CONFIG,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_INT_CONFIG,
  VIRTIO_MMIO_QUEUE_DESC_HIGH,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_DEVICE_HIGH,
  VIRTIO_MMIO_QUEUE_DEVICE_LOW,
  VIRTIO_MMIO_QUEUE_DRIVER_HIGH,
  VIRTIO_MMIO_QUEUE_DRIVER_LOW,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_STATUS,
} from "../devices/virtio/mmio.ts";
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, type Virtqueue } from "../devices/virtio/ring.ts";
import type { QueueHandler } from "../devices/virtio/queue_handler.ts";
import {
  SECTOR_SIZE,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "../devices/blk/request.ts";
import { CONSOLE_RX_QUEUE, CONSOLE_TX_QUEUE } from "../devices/console/console.ts";
import { CONTROL, encodeControl, NR_PORTS, queueRole } from "../devices/stdio/control.ts";
import { Rng } from "../test/support/fuzz_rng.ts";
import { QueueService } from "./queue_service.ts";
import { kindOf } from "../devices/registry.ts";
import { EXIT_KIND } from "./shared.ts";

// ---- guest RAM: a real host mapping between two guard zones ----

const GUARD = 4096;
const REGION = 0x8000;
const HIGH = 0x2_0000; // region 1: a hole from 0x8000 to 0x20000
const REGIONS: MemoryRegion[] = [
  { gpa: 0, size: REGION, offset: 0 },
  { gpa: HIGH, size: REGION, offset: REGION },
];
const RAM = 2 * REGION;
const GUARD_BYTE = 0xa5;
/**
 * Tidy drivers put queue q's rings at q·RING_SLOT in region 0, indirect
 * tables above them, data in region 1. A device with more than two queues
 * (the stdio console's eight) gets quarter slots, and rings of at most 64.
 */
const RING_SLOT = 0x2000;
const SMALL_RING = 64;
const TABLES = 0x4000;
/** Ring index accesses one QueueService call may make: a few per chain, and a call sees at most a few hundred chains. */
const WATCHDOG = 200_000;
const U64 = 0xffff_ffff_ffff_ffffn;

/** The fuzzer's own idea of guest RAM: whether [gpa, gpa + len) lies in one region. */
function inRam(gpa: number, len: number): boolean {
  return REGIONS.some((r) => gpa >= r.gpa && len >= 0 && gpa + len <= r.gpa + r.size);
}

/**
 * GuestMemory that checks, by the fuzzer's arithmetic, every host address it
 * hands to a device for the kernel, and counts ring index accesses so that a
 * queue spinning without end fails the case instead of hanging the run.
 */
class WatchedMemory extends GuestMemory {
  budget = Infinity;
  /** Why a check tripped in the current call, if one did. */
  tripped: string | null = null;

  override hostAddr(gpa: number, len: number): number {
    const a = super.hostAddr(gpa, len);
    if (!inRam(gpa, len) || a < this.hostBaseNumber || a + len > this.hostBaseNumber + RAM) {
      this.tripped ??= `host address for 0x${gpa.toString(16)}+${len} is outside guest RAM`;
    }
    return a;
  }
  override atomicLoadU16(gpa: number): number {
    this.#tick();
    return super.atomicLoadU16(gpa);
  }
  override atomicStoreU16(gpa: number, v: number): void {
    this.#tick();
    super.atomicStoreU16(gpa, v);
  }
  #tick(): void {
    if (--this.budget >= 0) return;
    // Throw once, to get out of the loop; the next access (needsInterrupt) must not throw again.
    this.budget = Infinity;
    this.tripped ??= `serving spun: more than ${WATCHDOG} ring index accesses in one call`;
    throw new Error(this.tripped);
  }
}

// ---- the driver's side ----

interface Fuzz {
  rng: Rng;
  mem: WatchedMemory;
  /** How hostile this case's driver is: 0 a good one, 1 the worst; scales every `bad()` chance. */
  evil: number;
  /** This case's driver lays its queues out like Linux does (else anywhere). */
  tidy: boolean;
  /** Next free byte of the data area (region 1) and of the indirect tables area, for tidy drivers. */
  bump: number;
  tableBump: number;
}

/** A mistake made with probability `p` by the worst driver, never by a good one. */
function bad(f: Fuzz, p: number): boolean {
  return f.evil > 0 && f.rng.chance(p * f.evil);
}

/** One buffer of a request as the driver describes it: `addr` may be anything. */
interface Buf {
  addr: bigint;
  len: number;
  write: boolean;
}

/** Copy `bytes` to `addr`, when the fuzzer itself can (it only writes inside RAM). */
function put(f: Fuzz, addr: bigint, bytes: Uint8Array): void {
  if (addr <= BigInt(Number.MAX_SAFE_INTEGER) && inRam(Number(addr), bytes.length)) f.mem.write(Number(addr), bytes);
}

/** A guest address for a `len`-byte buffer: in the data area for a tidy driver, anywhere (even outside RAM) now and then. */
function alloc(f: Fuzz, len: number): bigint {
  const { rng } = f;
  if (f.tidy && !bad(f, 0.02)) {
    if (f.bump + len > REGION) f.bump = 0;
    const at = HIGH + f.bump;
    f.bump += len;
    return BigInt(at);
  }
  const r = rng.pick(REGIONS);
  switch (bad(f, 0.1) ? rng.int(3) : 3) {
    case 0:
      return BigInt(r.gpa + r.size - rng.int(Math.min(len, 64) + 1)); // runs off the region's end
    case 1:
      return BigInt(REGION + rng.int(HIGH - REGION)); // in the hole
    case 2:
      return rng.u64(); // past 2^53, or wrapping 2^64
    default:
      return BigInt(r.gpa + rng.int(Math.max(r.size - len, 0) + 1));
  }
}

/** `len` split into 1–3 buffers at random byte boundaries (virtio 1.2 §2.7.4.1: framing is free). */
function split(f: Fuzz, addr: bigint, len: number, write: boolean): Buf[] {
  const pieces = len < 2 ? 1 : 1 + f.rng.int(3);
  const cuts = [0, ...Array.from({ length: pieces - 1 }, () => f.rng.int(len + 1)).sort((a, b) => a - b), len];
  return cuts.slice(1).map((end, i) => ({ addr: addr + BigInt(cuts[i]), len: end - cuts[i], write }));
}

/** A sector for a header or a discard range: mostly inside the disk, often at or past its end, sometimes absurd. */
function sector(f: Fuzz, capacity: number): bigint {
  const { rng } = f;
  switch (rng.int(10)) {
    case 0:
      return BigInt(Math.max(capacity - rng.int(4), 0)); // the last sectors: a longer request runs past the end
    case 1:
      return BigInt(capacity + rng.int(3));
    case 2:
      return rng.u64();
    case 3:
      return rng.pick([U64, 1n << 63n, 1n << 55n, U64 / 512n, (1n << 54n) / 512n]) - BigInt(rng.int(3));
    default:
      return BigInt(rng.int(capacity));
  }
}

/** A virtio-blk request (virtio 1.2 §5.2.6): header, data, status byte, each field sometimes wrong. */
function blkRequest(f: Fuzz, capacity: number): Buf[] {
  const { rng } = f;
  const type = rng.chance(0.85)
    ? rng.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES])
    : rng.chance(0.5) ? rng.int(16) : rng.u32();
  const header = new Uint8Array(16);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, type, true);
  hv.setUint32(4, rng.chance(0.9) ? 0 : rng.u32(), true);
  hv.setBigUint64(8, sector(f, capacity), true);

  // The data: whole sectors for in/out, ranges for discard/write-zeroes, sometimes any length.
  let data: Uint8Array = new Uint8Array(0);
  let toDevice = type === VIRTIO_BLK_T_OUT || type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES;
  if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
    const n = rng.chance(0.9) ? 1 + rng.int(3) : rng.pick([0, 16, 17]);
    data = new Uint8Array(16 * n);
    const dv = new DataView(data.buffer);
    for (let i = 0; i < n; i++) {
      dv.setBigUint64(16 * i, sector(f, capacity), true);
      dv.setUint32(16 * i + 8, rng.chance(0.8) ? rng.int(9) : rng.pick([capacity, 0x20_0000, 0x20_0001, 0xffff_ffff, rng.u32()]), true);
      dv.setUint32(16 * i + 12, rng.chance(0.8) ? rng.int(2) : rng.u32(), true);
    }
  } else if (type !== VIRTIO_BLK_T_FLUSH || bad(f, 0.3)) {
    const len = rng.chance(0.9) ? SECTOR_SIZE * rng.int(5) : rng.int(2048);
    data = type === VIRTIO_BLK_T_OUT || rng.chance(0.5) ? rng.bytes(len) : new Uint8Array(len);
    if (type !== VIRTIO_BLK_T_OUT && type > VIRTIO_BLK_T_WRITE_ZEROES) toDevice = rng.chance(0.5);
  }
  if (rng.chance(0.05)) data = data.subarray(0, rng.int(data.length + 1)); // short by a few bytes
  if (bad(f, 0.1)) toDevice = !toDevice; // data the wrong way

  const bufs: Buf[] = [];
  if (toDevice && data.length > 0 && rng.chance(0.3)) {
    // Header and data in one buffer.
    const at = alloc(f, 16 + data.length);
    put(f, at, header);
    put(f, at + 16n, data);
    bufs.push(...split(f, at, 16 + data.length, false));
  } else {
    const hlen = bad(f, 0.15) ? rng.int(16) : 16;
    const at = alloc(f, 16);
    put(f, at, header);
    bufs.push(...split(f, at, hlen, false));
    if (data.length > 0) {
      const d = alloc(f, data.length);
      put(f, d, data);
      if (toDevice) bufs.push(...split(f, d, data.length, false));
      else bufs.push(...split(f, d, data.length, true));
    }
  }
  // The status byte: one writable byte, except when it is not.
  if (!bad(f, 0.2)) bufs.push({ addr: alloc(f, 1), len: 1, write: true });
  else if (rng.chance(0.5)) bufs.push({ addr: alloc(f, 1), len: rng.int(3), write: rng.chance(0.5) });
  if (bad(f, 0.1)) {
    const b = rng.pick(bufs);
    b.write = !b.write; // one buffer the wrong way
  }
  return bufs;
}

/** virtio-rng: writable buffers to fill, now and then a readable one, a huge one or an empty one. */
function rngRequest(f: Fuzz): Buf[] {
  const { rng } = f;
  const bufs: Buf[] = [];
  if (rng.chance(0.05)) bufs.push({ addr: alloc(f, 16), len: 1 + rng.int(16), write: false });
  for (let i = 1 + rng.int(3); i > 0; i--) {
    // Two whole regions pass RNG_MAX_REQUEST; region 0, with the rings, only for a bad driver.
    const len = rng.chance(0.95) ? 1 + rng.int(600) : rng.chance(0.5) ? 0 : REGION;
    bufs.push({ addr: len === REGION ? BigInt(bad(f, 0.5) ? 0 : HIGH) : alloc(f, len), len, write: true });
  }
  return bufs;
}

const PANIC = new TextEncoder().encode(
  "Kernel panic - not syncing: VFS: Unable to mount root fs\n---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---\n",
);

/** virtio-console transmitq: guest output, sometimes a kernel panic report, sometimes a writable buffer by mistake. */
function txRequest(f: Fuzz): Buf[] {
  const { rng } = f;
  const bufs: Buf[] = [];
  for (let i = 1 + rng.int(3); i > 0; i--) {
    const text = rng.chance(0.03) ? PANIC : rng.bytes(1 + rng.int(300));
    const at = alloc(f, text.length);
    put(f, at, text);
    bufs.push({ addr: at, len: text.length, write: false });
  }
  if (rng.chance(0.05)) bufs.push({ addr: alloc(f, 8), len: 8, write: true });
  return bufs;
}

/** stdio console control transmitq: one control message, any event, mostly known ports; sometimes short or split. */
function controlRequest(f: Fuzz): Buf[] {
  const { rng } = f;
  const id = rng.chance(0.8) ? rng.int(NR_PORTS + 1) : rng.u32();
  const m = encodeControl({ id, event: rng.int(9), value: rng.chance(0.8) ? 1 : rng.int(0x10000) });
  const len = bad(f, 0.2) ? rng.int(CONTROL.SIZE) : CONTROL.SIZE;
  const at = alloc(f, len);
  put(f, at, m.subarray(0, len));
  return rng.chance(0.9) ? [{ addr: at, len, write: false }] : split(f, at, len, false);
}

/** virtio-console receiveq: empty buffers for host input, sometimes a readable one by mistake. */
function rxRequest(f: Fuzz): Buf[] {
  const { rng } = f;
  const bufs: Buf[] = [];
  if (rng.chance(0.05)) bufs.push({ addr: alloc(f, 8), len: 8, write: false });
  for (let i = 1 + rng.int(2); i > 0; i--) {
    const len = 1 + rng.int(256);
    bufs.push({ addr: alloc(f, len), len, write: true });
  }
  return bufs;
}

/** The queue as the device took it from its registers, and the driver's avail.idx. */
interface Ring {
  size: number;
  desc: number;
  avail: number;
  used: number;
  availIdx: number;
}

function writeDesc(f: Fuzz, table: number, i: number, addr: bigint, len: number, flags: number, next: number): void {
  const at = table + 16 * i;
  if (!inRam(at, 16)) return;
  f.mem.writeU64(at, addr & U64);
  f.mem.writeU32(at + 8, len >>> 0);
  f.mem.writeU16(at + 12, flags & 0xffff);
  f.mem.writeU16(at + 14, next & 0xffff);
}

/** Write `bufs` as a chain, direct or through an indirect table, maybe broken in one field; its head, or null when out of descriptors. */
function writeChain(f: Fuzz, q: Ring, bufs: Buf[], free: number[]): number | null {
  const { rng } = f;
  const n = bufs.length;
  const indirect = n > 0 && rng.chance(0.25);
  let table = q.desc;
  let idx: number[];
  if (indirect) {
    if (f.tidy) {
      if (f.tableBump + 16 * n > REGION) f.tableBump = TABLES;
      table = f.tableBump;
      f.tableBump += 16 * n;
    } else {
      table = Number(alloc(f, 16 * n) & ~15n);
    }
    idx = bufs.map((_, k) => k);
  } else {
    if (n === 0 || free.length < n) return null;
    idx = free.splice(0, n);
  }
  bufs.forEach((b, k) => {
    const last = k === n - 1;
    const flags = (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
    writeDesc(f, table, idx[k], b.addr, b.len, flags, last ? 0 : idx[k + 1]);
  });
  if (bad(f, 0.2)) {
    const k = rng.int(n);
    const at = table + 16 * idx[k];
    if (inRam(at, 16)) {
      switch (rng.int(4)) {
        case 0: f.mem.writeU16(at + 12, rng.int(8)); break; // flags
        case 1: f.mem.writeU16(at + 14, rng.chance(0.5) ? idx[rng.int(n)] : rng.int(0x10000)); break; // a loop, or out of the table
        case 2: f.mem.writeU32(at + 8, rng.u32()); break;
        default: f.mem.writeU64(at, rng.u64());
      }
    }
  }
  if (!indirect) return idx[0];
  if (free.length < 1) return null;
  const head = free.shift()!;
  let len = 16 * n;
  let flags = VIRTQ_DESC_F_INDIRECT;
  if (bad(f, 0.15)) len = rng.chance(0.5) ? len + 1 + rng.int(15) : rng.u32();
  if (bad(f, 0.1)) flags |= VIRTQ_DESC_F_NEXT;
  if (bad(f, 0.1)) writeDesc(f, table, rng.int(n), BigInt(table), 16 * n, VIRTQ_DESC_F_INDIRECT, 0); // nested
  writeDesc(f, q.desc, head, BigInt(table), len, flags, rng.int(q.size));
  return head;
}

/** One round of the driver: new chains (or noise) in the descriptor table and avail ring, then avail.idx. */
function fillRing(f: Fuzz, q: Ring, request: () => Buf[]): void {
  const { rng, mem } = f;
  const size = Math.min(q.size, 1024);
  const free = Array.from({ length: size }, (_, i) => i);
  for (let i = free.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [free[i], free[j]] = [free[j], free[i]];
  }
  const heads: number[] = [];
  if (bad(f, 0.3)) {
    // Noise: random descriptors, random heads.
    for (let i = 0; i < size; i++) {
      const len = rng.chance(0.8) ? rng.int(600) : rng.chance(0.5) ? 16 * (1 + rng.int(8)) : rng.u32();
      const addr = rng.chance(0.9) ? alloc(f, Math.min(len, 600)) : rng.u64();
      writeDesc(f, q.desc, i, addr, len, rng.chance(0.9) ? rng.int(8) : rng.int(0x10000), rng.int(rng.chance(0.9) ? size : 0x10000));
    }
    for (let i = rng.int(size + 1); i > 0; i--) heads.push(rng.chance(0.9) ? rng.int(size) : rng.int(0x10000));
  } else {
    // A good driver reuses no descriptor the device still holds, so it is never more than
    // Queue Size ahead (virtio 1.2 §2.7.13), and makes no chain longer than the queue (§2.7.5.3.1).
    const usedIdx = inRam(q.used + 2, 2) ? mem.readU16(q.used + 2) : q.availIdx;
    if (f.evil > 0 || usedIdx === q.availIdx) {
      for (let i = 1 + rng.int(Math.min(size, 6)); i > 0; i--) {
        const bufs = request();
        if (bufs.length > q.size && !bad(f, 0.3)) continue;
        const h = writeChain(f, q, bufs, free);
        if (h !== null) heads.push(h);
      }
    }
  }
  heads.forEach((h, i) => {
    const at = q.avail + 4 + 2 * ((q.availIdx + i) % q.size);
    if (inRam(at, 2)) mem.writeU16(at, h);
  });
  q.availIdx = bad(f, 0.1) ? rng.int(0x10000) : (q.availIdx + heads.length) & 0xffff; // sometimes a jump
  if (inRam(q.avail, 2)) mem.writeU16(q.avail, rng.chance(0.8) ? 0 : 1); // flags: NO_INTERRUPT
  if (inRam(q.avail + 4 + 2 * q.size, 2)) mem.writeU16(q.avail + 4 + 2 * q.size, rng.int(0x10000)); // used_event
  if (inRam(q.avail + 2, 2)) mem.writeU16(q.avail + 2, q.availIdx);
}

/** What the driver writes into one queue's registers. */
interface QueueRegs {
  num: number;
  writeNum: boolean;
  ready: boolean;
  desc: [number, number];
  avail: [number, number];
  used: [number, number];
}

const lohi = (x: number): [number, number] => [x >>> 0, Math.floor(x / 0x1_0000_0000)];

/** Where one ring part goes: mostly aligned inside a region, sometimes anywhere. */
function place(f: Fuzz, bytes: number, align: number): [number, number] {
  const { rng } = f;
  if (bad(f, 0.03)) return [rng.u32(), rng.chance(0.5) ? 0 : rng.u32()];
  if (bad(f, 0.1)) return [rng.int(HIGH + 2 * REGION), 0]; // in the hole, past RAM, straddling a region's end
  const r = rng.pick(REGIONS);
  const at = r.gpa + (rng.int(Math.max(r.size - bytes, 0) + 1) & ~(align - 1));
  return [bad(f, 0.1) ? at + 1 + rng.int(align) : at, 0]; // sometimes misaligned
}

/** Queue registers for queue `qi` whose QueueNumMax is `max`: usually what Linux writes, sometimes not. */
function queueRegs(f: Fuzz, qi: number, max: number, queues: number): QueueRegs {
  const { rng } = f;
  const slot = queues > 2 ? RING_SLOT / 4 : RING_SLOT;
  let num = 1 << rng.int(Math.log2(max) + 1);
  if (f.tidy && queues > 2) num = Math.min(num, SMALL_RING);
  if (bad(f, 0.12)) num = rng.pick([0, 3, 100, max - 1, max + 1, 2 * max, 0x8000, 0x10000, 0xffff_ffff, rng.u32()]);
  const writeNum = !rng.chance(0.05); // else the size is QueueNumMax
  const n = Math.min(writeNum ? num : max, 0x8000); // for placing only
  const descBytes = 16 * n, availBytes = 6 + 2 * n, usedBytes = 6 + 8 * n;
  let desc: [number, number], avail: [number, number], used: [number, number];
  if (f.tidy) {
    // virtio 1.2 §2.7: the three parts one after another, each aligned (Linux's vring_init).
    const d = qi * slot;
    const a = d + descBytes;
    desc = lohi(d);
    avail = lohi(a);
    used = lohi((a + availBytes + 3) & ~3);
  } else {
    desc = place(f, descBytes, 16);
    avail = place(f, availBytes, 2);
    used = place(f, usedBytes, 4);
    switch (bad(f, 0.5) ? rng.int(3) : 3) {
      case 0: // the available ring inside the descriptor table
        avail = [(desc[0] + 2 * rng.int(8 * n)) >>> 0, desc[1]];
        break;
      case 1: // the used ring over the available ring, avail.idx on used.flags at worst
        used = [(avail[0] + 2 + 4 * rng.int(2)) & ~3, avail[1]];
        if (rng.chance(0.5)) avail = [(used[0] - 2) >>> 0, used[1]];
        break;
      case 2: // the used ring over the descriptor table
        used = [(desc[0] + 4 * rng.int(4 * n)) >>> 0, desc[1]];
        break;
    }
  }
  return { num, writeNum, ready: !rng.chance(0.03), desc, avail, used };
}

/** Linux's virtio_mmio probe up to DRIVER_OK, with the features and queues the fuzzer chose; true when DRIVER_OK took. */
function probe(f: Fuzz, t: MmioTransport, regs: QueueRegs[]): boolean {
  const { rng } = f;
  const w = (offset: number, v: number) => t.write(offset, 4, v);
  w(VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE);
  w(VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  const ring = VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC;
  let features = VIRTIO_F_VERSION_1 | (t.offered & ~ring & rng.u64()) |
    (rng.chance(0.5) ? VIRTIO_F_EVENT_IDX : 0n) | (rng.chance(0.7) ? VIRTIO_F_INDIRECT_DESC : 0n);
  if (bad(f, 0.05)) features = rng.u64(); // features never offered: FEATURES_OK does not take
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  w(VIRTIO_MMIO_DRIVER_FEATURES, Number(features & 0xffff_ffffn));
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  w(VIRTIO_MMIO_DRIVER_FEATURES, Number(features >> 32n));
  w(VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  regs.forEach((q, i) => {
    w(VIRTIO_MMIO_QUEUE_SEL, i);
    if (q.writeNum) w(VIRTIO_MMIO_QUEUE_NUM, q.num);
    w(VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc[0]);
    w(VIRTIO_MMIO_QUEUE_DESC_HIGH, q.desc[1]);
    w(VIRTIO_MMIO_QUEUE_DRIVER_LOW, q.avail[0]);
    w(VIRTIO_MMIO_QUEUE_DRIVER_HIGH, q.avail[1]);
    w(VIRTIO_MMIO_QUEUE_DEVICE_LOW, q.used[0]);
    w(VIRTIO_MMIO_QUEUE_DEVICE_HIGH, q.used[1]);
    if (q.ready) w(VIRTIO_MMIO_QUEUE_READY, 1);
  });
  // Now and then a stray register write (QueueSel, QueueNum, Status… anything).
  for (let i = bad(f, 0.1) ? 1 + rng.int(3) : 0; i > 0; i--) w(4 * rng.int(VIRTIO_MMIO_CONFIG / 4), rng.u32());
  return w(VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)?.kind === "driverOk";
}

// ---- one case ----

interface Fixtures {
  rw: Disk;
  ro: Disk;
  roBytes: Uint8Array;
  devNull: number;
}

interface Totals {
  cases: number;
  chains: number;
  broken: number;
  lines: number;
  ends: number;
  ms: number;
}

/** The Worker's handler, counting the chains it returns. */
function counted(h: QueueHandler, totals: Totals): QueueHandler {
  const around = (vq: Virtqueue, call: () => void) => {
    const before = vq.nextUsed;
    try {
      call();
    } finally {
      totals.chains += (vq.nextUsed - before) & 0xffff;
    }
  };
  return {
    kick: (vq) => around(vq, () => h.kick(vq)),
    inputFd: h.inputFd && (() => h.inputFd!()),
    input: h.input && ((vq) => around(vq, () => h.input!(vq))),
    drain: h.drain && (() => h.drain!()),
  };
}

function runCase(f: Fuzz, fx: Fixtures, totals: Totals): void {
  const { rng, mem } = f;
  f.evil = rng.pick([0, 0, 0.3, 1]);
  f.tidy = f.evil === 0 || rng.chance(0.5);
  if (rng.chance(0.03)) mem.bytes.set(rng.bytes(RAM)); // stale junk everywhere

  // The device.
  let spec: VirtioSpec;
  let disk: Disk | null = null;
  let input: { r: number; w: number; fed: number } | null = null;
  let wakeFds: number[] = [];
  const kind = rng.int(12);
  if (kind < 5) {
    disk = kind < 3 ? fx.rw : fx.ro;
    spec = { kind: "blk", disk, queues: 1 };
  } else if (kind < 7) {
    spec = { kind: "rng" };
  } else {
    if (rng.chance(0.85)) {
      const [r, w] = pipe(O_CLOEXEC | O_NONBLOCK); // non-blocking: input() must never wait
      input = { r, w, fed: 0 };
    }
    if (kind < 10) {
      spec = { kind: "console", inFd: input?.r ?? null, outFd: fx.devNull, escape: rng.chance(0.5) };
    } else {
      wakeFds = [0, 1].map(() => eventfd(EFD_CLOEXEC | EFD_NONBLOCK));
      const [controlWakeFd, stdinWakeFd] = wakeFds;
      spec = { kind: "stdio", inFd: input?.r ?? null, outFd: fx.devNull, errFd: fx.devNull, controlWakeFd, stdinWakeFd };
    }
  }
  const model = describe(spec), sizes = model.queueSizes;
  const block = new Uint8Array(VIRTIO_BLOCK_BYTES); // the device's slice of the shared block, on one thread here
  initConfig(model, block);
  const t = transportFor(model, block);
  const config = block.subarray(DEV.CONFIG, DEV.CONFIG + model.config.length);
  const state = new Int32Array(DEVICE_STATE_WORDS);
  const capacity = disk ? disk.sizeBytes / SECTOR_SIZE : 0;
  const request = (q: number) => {
    if (spec.kind === "blk") return blkRequest(f, capacity);
    if (spec.kind === "rng") return rngRequest(f);
    if (spec.kind === "stdio") {
      const r = queueRole(q).role;
      return r === "control-tx" ? controlRequest(f) : r === "tx" ? txRequest(f) : rxRequest(f);
    }
    return q === CONSOLE_RX_QUEUE ? rxRequest(f) : txRequest(f);
  };

  // Its queue Workers.
  let running = false;
  let interrupts = 0;
  const lines: string[] = [];
  const ends: { queue: number; kind: number; reason: string }[] = [];
  const services = sizes.map((_, queue) =>
    new QueueService({
      name: `fuzz ${spec.kind}: queue ${queue}`,
      mem,
      transport: t,
      queue,
      handler: (features, log) => {
        const end = (kind: number, _code: number, reason: string) => ends.push({ queue, kind, reason });
        return counted(kindOf(spec).handler(spec, { mem, features, queue, log, end, state, config, configChanged: () => {} }), totals);
      },
      interrupt: () => interrupts++,
      running: () => running,
      log: (line) => lines.push(line),
    })
  );
  /** One QueueService call: nothing may escape it, and it must come back. */
  const call = (what: string, queue: number, fn: () => void) => {
    mem.budget = WATCHDOG;
    mem.tripped = null;
    try {
      fn();
    } catch (e) {
      assert.fail(`${what}() of queue ${queue} threw: ${(e as Error)?.stack ?? e}`);
    }
    mem.budget = Infinity;
    if (mem.tripped) assert.fail(`${what}() of queue ${queue}: ${mem.tripped} (queue ${JSON.stringify(t.queueConfig(queue))})`);
    const bug = lines.find((l) => l.includes("internal error") || l.includes("drain failed"));
    if (bug) assert.fail(`${what}() of queue ${queue} hit a vmm bug: ${bug}`);
  };
  /** While running, DEVICE_NEEDS_RESET (with its interrupt) is set exactly when a queue broke. */
  const checkMark = () => {
    const broken = services.some((s) => s.broken);
    assert.equal((t.status & STATUS_DEVICE_NEEDS_RESET) !== 0, broken, `DEVICE_NEEDS_RESET ${broken ? "missing" : "set"} (status 0x${t.status.toString(16)})`);
    if (broken) assert.ok((t.interruptStatus & VIRTIO_MMIO_INT_CONFIG) !== 0 && interrupts > 0, "no config interrupt for DEVICE_NEEDS_RESET");
  };

  let anyBroken = false;
  const epochs = rng.chance(0.15) ? 2 + rng.int(2) : 1;
  for (let epoch = 0; epoch < epochs; epoch++) {
    const regs = sizes.map((max, q) => queueRegs(f, q, max, sizes.length));
    f.bump = 0;
    f.tableBump = TABLES;
    if (probe(f, t, regs)) {
      // The queues as the device took them, where the driver will write.
      const rings: (Ring | null)[] = sizes.map((_, q) => {
        const c = t.queueConfig(q);
        const ok = c.ready && c.size >= 1 && c.size <= 0x8000 && [c.descAddr, c.availAddr, c.usedAddr].every(Number.isSafeInteger);
        return ok ? { size: c.size, desc: c.descAddr, avail: c.availAddr, used: c.usedAddr, availIdx: 0 } : null;
      });
      // A driver zeroes its rings (virtio 1.2 §2.7.10.1); a bad one leaves last case's bytes there.
      for (const q of rings) {
        for (const [at, len] of q && !bad(f, 0.5) ? [[q.avail, 6 + 2 * q.size], [q.used, 6 + 8 * q.size]] : []) {
          if (inRam(at, len)) mem.slice(at, len).fill(0);
        }
      }
      running = true;
      services.forEach((s, q) => call("start", q, () => s.start()));
      services.forEach((s, q) => {
        if (rng.chance(0.5)) call("kick", q, () => s.kick()); // what the Worker does right after start
      });
      checkMark();
      for (let round = 1 + rng.int(4); round > 0; round--) {
        rings.forEach((q, i) => {
          if (q && rng.chance(0.8)) fillRing(f, q, () => request(i));
        });
        for (let a = 1 + rng.int(3); a > 0; a--) {
          const q = rng.int(services.length);
          const s = services[q];
          if (input && q === CONSOLE_RX_QUEUE && rng.chance(0.6)) {
            // Host input: random bytes, with Ctrl-A x now and then, or the end of the input.
            if (input.w >= 0 && rng.chance(0.03)) {
              close(input.w);
              input.w = -1;
            } else if (input.w >= 0 && input.fed < 0xc000) {
              const bytes = rng.bytes(2 + rng.int(1500));
              if (rng.chance(0.1)) bytes.set([0x01, rng.chance(0.7) ? 0x78 : 0x01], rng.int(bytes.length - 1));
              writeAll(input.w, bytes);
              input.fed += bytes.length;
            }
            // Like the Worker: input() only when the handler waits on its fd (which may be empty: EAGAIN).
            if (s.inputFd() >= 0) call("input", q, () => s.input());
          } else if (spec.kind === "stdio" && s.inputFd() >= 0 && rng.chance(0.5)) {
            call("input", q, () => s.input()); // the control eventfd woke its Worker (or did not: a stale read)
          } else {
            call("kick", q, () => s.kick());
          }
          checkMark();
        }
      }
      anyBroken ||= services.some((s) => s.broken);
    }
    running = false;
    if (epoch === epochs - 1) {
      // The VM stops: finish what is available (or not), drain.
      const serveFirst = rng.chance(0.5);
      services.forEach((s, q) => call("stop", q, () => s.stop(serveFirst)));
    } else {
      // A device reset: the Workers stop first, one maybe still in a kick that breaks its queue.
      const marked = t.status & STATUS_DEVICE_NEEDS_RESET;
      if (rng.chance(0.3)) {
        const q = rng.int(services.length);
        call("kick", q, () => services[q].kick());
      }
      assert.equal(t.status & STATUS_DEVICE_NEEDS_RESET, marked, "a queue broken during a reset marked the device");
      services.forEach((s, q) => call("stop", q, () => s.stop(false)));
      t.write(VIRTIO_MMIO_STATUS, 4, 0);
      assert.equal(t.status, 0, "status after a reset");
    }
    for (const s of services) assert.ok(!s.serving && s.inputFd() === -1, "a stopped queue still serves");
  }

  // The device's effects on the host.
  if (input) {
    close(input.r);
    if (input.w >= 0) close(input.w);
  }
  wakeFds.forEach(close);
  if (disk) {
    const size = statSync(disk.path).size;
    assert.equal(size, disk.sizeBytes, `image ${disk.path} is ${size} bytes, was ${disk.sizeBytes}`);
    if (disk.readOnly) assert.ok(readFileSync(disk.path).equals(fx.roBytes), "the read-only image changed");
  }
  for (const e of ends) {
    const ok = spec.kind === "console" &&
      ((e.queue === CONSOLE_TX_QUEUE && e.kind === EXIT_KIND.PANIC) || (e.queue === CONSOLE_RX_QUEUE && e.kind === EXIT_KIND.QUIT && spec.escape));
    assert.ok(ok, `${spec.kind} queue ${e.queue} ended the VM (kind ${e.kind}): ${e.reason}`);
  }
  totals.broken += anyBroken ? 1 : 0;
  totals.lines += lines.length;
  totals.ends += ends.length;
}

// ---- the run ----

function guardsIntact(outer: Uint8Array): boolean {
  for (let i = 0; i < GUARD; i++) {
    if (outer[i] !== GUARD_BYTE || outer[GUARD + RAM + i] !== GUARD_BYTE) return false;
  }
  return true;
}

/** Guest RAM for the whole file: mapped once, never unmapped. */
let host = 0n;

function fuzz(seed: number, cases: number, totals: Totals): void {
  if (host === 0n) host = mmapAnon(GUARD + RAM + GUARD);
  const outer = hostView(host, GUARD + RAM + GUARD);
  outer.fill(GUARD_BYTE);
  const mem = new WatchedMemory(hostView(host + BigInt(GUARD), RAM), REGIONS, host + BigInt(GUARD));
  mem.bytes.fill(0);
  const rng = new Rng(seed);
  const f: Fuzz = { rng, mem, evil: 0, tidy: true, bump: 0, tableBump: TABLES };

  // Images on tmpfs when there is one: fdatasync is free there, and it has no ZERO_RANGE, so write-zeroes takes the pwrite fallback.
  const dir = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "vmm-qsfuzz-"));
  const devNull = open("/dev/null", O_WRONLY);
  const disks: Disk[] = [];
  try {
    const image = (name: string, sectors: number, readOnly: boolean) => {
      const path = join(dir, name);
      const bytes = rng.bytes(sectors * SECTOR_SIZE);
      writeFileSync(path, bytes);
      const d = openDisk({ path, readOnly, id: name });
      disks.push(d);
      return { d, bytes };
    };
    const rw = image("rw.img", 64, false).d;
    const ro = image("ro.img", 24, true);
    const fx: Fixtures = { rw, ro: ro.d, roBytes: ro.bytes, devNull };

    const t0 = performance.now();
    for (let n = 0; n < cases; n++) {
      try {
        runCase(f, fx, totals);
      } catch (e) {
        throw new Error(`Case ${n} (seed ${seed}): ${(e as Error).message}`, { cause: e });
      }
      if (!guardsIntact(outer)) assert.fail(`Case ${n} (seed ${seed}) wrote into a guard zone`);
    }
    totals.cases += cases;
    totals.ms += performance.now() - t0;
  } finally {
    disks.forEach(closeDisk);
    close(devNull);
    rmSync(dir, { recursive: true, force: true });
  }
}

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed_9e5e);
const CASES = Number(process.env.FUZZ_CASES ?? 60_000);
const SHARDS = 8; // eight queues a stdio case: shards stay well under 5 s on a loaded machine
const totals: Totals = { cases: 0, chains: 0, broken: 0, lines: 0, ends: 0, ms: 0 };

for (let shard = 0; shard < SHARDS; shard++) {
  test(`QueueService survives hostile drivers: seeded fuzz of blk, rng, console and stdio queues (${shard + 1}/${SHARDS})`, () => {
    fuzz(SEED + shard, Math.ceil(CASES / SHARDS), totals);
    if (shard === SHARDS - 1) {
      console.log(
        `queue service fuzz: ${totals.cases} cases, ${totals.chains} chains served, ${totals.broken} devices broken ` +
          `(${totals.lines} log lines), ${totals.ends} console ends, seeds ${SEED}..${SEED + SHARDS - 1}, ${totals.ms.toFixed(0)} ms`,
      );
      assert.ok(totals.chains > totals.cases, "most cases should serve chains; the generator is too hostile");
    }
  });
}
