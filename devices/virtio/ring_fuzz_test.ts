/**
 * Seeded fuzz of the split ring against a hostile driver.
 *
 * Guest RAM is two 16 KiB regions with a hole between them, carved out of
 * the middle of a larger ArrayBuffer whose first and last 4 KiB are guard
 * zones. Each case writes random and half-valid descriptor tables, indirect
 * tables and avail rings, then drives the device side through pop, the
 * reader/writer, pushUsed, the notification calls and parseBlkRequest.
 * After every step the fuzzer checks:
 *
 * - only GuestError is ever thrown (any other exception fails the run);
 * - every segment of a popped chain lies inside one RAM region, by the
 *   fuzzer's own arithmetic, not GuestMemory's;
 * - the reader returns exactly the bytes at those segments;
 * - the guard zones are untouched after every case, and (on sampled cases)
 *   no byte of RAM changed outside the writable segments and the used ring.
 *
 * The run is split in six shards (seeds SEED … SEED + 5) so that no test
 * passes Bun's 5 s default timeout; the last prints the totals. FUZZ_SEED and
 * FUZZ_CASES override the defaults; a failure names its case and seed.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { GuestMemory, type MemoryRegion } from "../../vm/memory.ts";
import {
  type Chain,
  GuestError,
  usedRingSize,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  Virtqueue,
} from "./ring.ts";
import { parseBlkRequest } from "../blk/request.ts";
import { Rng } from "../../test/support/fuzz_rng.ts";

const GUARD = 4096;
const REGION = 0x4000;
const REGIONS: MemoryRegion[] = [
  { gpa: 0, size: REGION, offset: 0 },
  { gpa: 0x10000, size: REGION, offset: REGION }, // a hole from 0x4000 to 0x10000
];
const RAM = 2 * REGION;
const GUARD_BYTE = 0xa5;
const READ_CAP = 0x4000; // read/write at most this much of one chain: overlapping buffers can add up to MiBs

/** The fuzzer's own idea of guest RAM: outer-buffer index of [gpa, gpa+len), or -1. */
function modelIndex(gpa: number, len: number): number {
  for (const r of REGIONS) {
    if (gpa >= r.gpa && len >= 0 && gpa + len <= r.gpa + r.size) return GUARD + r.offset + (gpa - r.gpa);
  }
  return -1;
}

interface Fuzz {
  rng: Rng;
  outer: Uint8Array;
  mem: GuestMemory;
}

/** A buffer inside one region, at most 600 bytes. */
function goodBuffer(rng: Rng): [bigint, number] {
  const r = REGIONS[rng.int(2)];
  const off = rng.int(r.size);
  return [BigInt(r.gpa + off), 1 + rng.int(Math.min(600, r.size - off))];
}

/** A buffer address and length: mostly inside RAM, sometimes hostile. */
function randomBuffer(f: Fuzz): [bigint, number] {
  const { rng } = f;
  const r = REGIONS[rng.int(2)];
  switch (rng.int(12)) {
    case 0:
      return [BigInt(r.gpa + r.size - rng.int(32)), 1 + rng.int(64)]; // runs off the region's end
    case 1:
      return [BigInt(REGION + rng.int(0x10000 - REGION)), 1 + rng.int(64)]; // in the hole
    case 2:
      return [rng.u64(), rng.int(64)]; // any u64, including past 2^53 and wrapping 2^64
    case 3:
      return [0xffff_ffff_ffff_ffffn - BigInt(rng.int(16)), 1 + rng.int(32)];
    case 4:
      return [BigInt(r.gpa + rng.int(r.size)), 0xffff_ffff - rng.int(4)]; // huge length
    case 5:
      return [BigInt(r.gpa + rng.int(r.size)), 0];
    default:
      return goodBuffer(rng);
  }
}

function writeDesc(f: Fuzz, table: number, i: number, addr: bigint, len: number, flags: number, next: number): void {
  const at = table + 16 * i;
  if (modelIndex(at, 16) < 0) return; // the fuzzer itself only writes inside RAM
  f.mem.writeU64(at, addr & 0xffff_ffff_ffff_ffffn);
  f.mem.writeU32(at + 8, len >>> 0);
  f.mem.writeU16(at + 12, flags & 0xffff);
  f.mem.writeU16(at + 14, next & 0xffff);
}

/** A well-formed chain (readable then writable), maybe through an indirect table, maybe then broken in one field. */
function plausibleChain(f: Fuzz, vqSize: number, descAddr: number, free: number[]): number | null {
  const { rng } = f;
  const indirect = rng.chance(0.3);
  // An indirect table may hold more descriptors than the queue size; the device must refuse those chains.
  const n = indirect && vqSize <= 32 && rng.chance(0.1) ? vqSize + 1 + rng.int(3) : 1 + rng.int(Math.min(vqSize, 6));
  const nRead = rng.int(n + 1);
  let table = descAddr;
  let idx: number[];
  if (indirect) {
    const r = REGIONS[rng.int(2)];
    table = r.gpa + rng.int(r.size - 16 * n + 1);
    idx = Array.from({ length: n }, (_, k) => k);
  } else {
    if (free.length < n) return null;
    idx = free.splice(0, n);
  }
  for (let k = 0; k < n; k++) {
    const [addr, len] = rng.chance(0.9) ? goodBuffer(rng) : randomBuffer(f);
    const last = k === n - 1;
    const flags = (k >= nRead ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
    writeDesc(f, table, idx[k], addr, len, flags, last ? 0 : idx[k + 1]);
  }
  if (rng.chance(0.15)) {
    // Break one field of one descriptor.
    const k = rng.int(n);
    const at = table + 16 * idx[k];
    if (modelIndex(at, 16) >= 0) {
      switch (rng.int(4)) {
        case 0: f.mem.writeU16(at + 12, rng.int(8)); break;
        case 1: f.mem.writeU16(at + 14, rng.chance(0.5) ? idx[rng.int(n)] : rng.int(0x10000)); break;
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
  if (rng.chance(0.1)) len = rng.chance(0.5) ? len + 1 + rng.int(15) : 16 * (n + rng.int(0x20000));
  if (rng.chance(0.05)) flags |= VIRTQ_DESC_F_NEXT;
  if (rng.chance(0.05)) flags |= VIRTQ_DESC_F_WRITE; // to be ignored
  if (rng.chance(0.05)) writeDesc(f, table, rng.int(n), BigInt(table), 16 * n, VIRTQ_DESC_F_INDIRECT, 0); // nested
  writeDesc(f, descAddr, head, BigInt(table), len, flags, rng.int(vqSize));
  return head;
}

/** Where to put one ring part: mostly aligned and inside a region, sometimes not. */
function placeRing(rng: Rng, bytes: number, align: number): number {
  if (rng.chance(0.03)) return rng.int(0x20000);
  if (rng.chance(0.01)) return Number(rng.u64());
  const r = REGIONS[rng.int(2)];
  const room = Math.max(r.size - bytes, 0);
  return r.gpa + (rng.int(room + 1) & ~(align - 1));
}

/** The checks run on every chain pop() returns. */
function checkChain(f: Fuzz, c: Chain, size: number, vq: Virtqueue): void {
  assert.ok(c.head >= 0 && c.head < size);
  let total = 0;
  for (const s of [...c.readable, ...c.writable]) {
    assert.ok(s.len > 0 && modelIndex(s.gpa, s.len) >= 0, `Segment 0x${s.gpa.toString(16)}+${s.len} is outside RAM`);
    total += s.len;
  }
  assert.ok(total <= 0xffff_ffff);
  assert.ok(c.readable.length + c.writable.length <= size);
  // The reader returns exactly the model's bytes.
  const r = c.reader();
  let want = Math.min(c.readableLength, READ_CAP);
  const got = r.readBytes(want);
  let at = 0;
  for (const s of c.readable) {
    if (at >= want) break;
    const n = Math.min(s.len, want - at);
    const o = modelIndex(s.gpa, n);
    for (let i = 0; i < n; i++) if (got[at + i] !== f.outer[o + i]) assert.fail("Reader returned a byte that is not in its segment");
    at += n;
  }
  // The writer lands exactly in the writable segments.
  const w = c.writer();
  want = Math.min(c.writableLength, READ_CAP);
  const data = new Uint8Array(want);
  for (let i = 0; i < want; i++) data[i] = f.rng.u32() & 0xff;
  w.write(data);
  // Overlapping segments: the last write to a byte wins, so check only the last segment in full.
  const tail = c.writable.length ? subLast(c.writable, want) : null;
  if (tail) {
    const o = modelIndex(tail.gpa, tail.len);
    for (let i = 0; i < tail.len; i++) assert.equal(f.outer[o + i], data[tail.at + i]);
  }
  vq.pushUsed(c.head, w.written);
}

/** The last writable segment the writer reached, with its offset in the written data. */
function subLast(segs: readonly { gpa: number; len: number }[], written: number) {
  let at = 0;
  let last = null;
  for (const s of segs) {
    if (at >= written) break;
    last = { gpa: s.gpa, len: Math.min(s.len, written - at), at };
    at += s.len;
  }
  return last;
}

function guardsIntact(outer: Uint8Array): boolean {
  const w = new BigUint64Array(outer.buffer);
  const g = GUARD / 8;
  const end = w.length - g;
  const pattern = 0xa5a5a5a5a5a5a5a5n;
  for (let i = 0; i < g; i++) if (w[i] !== pattern || w[end + i] !== pattern) return false;
  return true;
}

// Shards keep each test under Bun's default 5 s test timeout; together they are one run.
const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed_1e55);
const CASES = Number(process.env.FUZZ_CASES ?? 60_000);
const SHARDS = 6;
const total = { cases: 0, chains: 0, ms: 0, kinds: new Map<string, number>() };

for (let shard = 0; shard < SHARDS; shard++) {
  test(`Virtqueue survives hostile rings: seeded fuzz of pop, reader/writer, pushUsed and notifications (${shard + 1}/${SHARDS})`, () => {
    fuzz(SEED + shard, Math.ceil(CASES / SHARDS));
    if (shard === SHARDS - 1) {
      const summary = [...total.kinds].sort().map(([k, v]) => `${k} ${v}`).join(", ");
      console.log(
        `ring fuzz: ${total.cases} cases, ${total.chains} chains popped, seeds ${SEED}..${SEED + SHARDS - 1}, ` +
          `${total.ms.toFixed(0)} ms; GuestErrors: ${summary}`,
      );
    }
  });
}

function fuzz(seed: number, cases: number): void {
  const rng = new Rng(seed);
  const outer = new Uint8Array(GUARD + RAM + GUARD).fill(GUARD_BYTE);
  const mem = new GuestMemory(outer.subarray(GUARD, GUARD + RAM), REGIONS);
  const f: Fuzz = { rng, outer, mem };
  const kinds = total.kinds;
  let chains = 0;
  const t0 = performance.now();

  for (let n = 0; n < cases; n++) {
    const onGuestError = (e: unknown) => {
      if (!(e instanceof GuestError)) {
        const what = e instanceof assert.AssertionError ? "failed a check" : "threw something other than GuestError";
        throw new Error(`Case ${n} (seed ${seed}) ${what}: ${e}`, { cause: e });
      }
      kinds.set(e.kind, (kinds.get(e.kind) ?? 0) + 1);
    };
    if (rng.chance(0.05)) for (let i = 0; i < RAM; i += 4) mem.writeU32((i < REGION ? 0 : 0x10000 - REGION) + i, rng.u32());

    let size = 1 << rng.int(9);
    if (rng.chance(0.02)) size = rng.chance(0.5) ? rng.int(70000) : 32768;
    const descAddr = placeRing(rng, 16 * Math.min(size, 256), 16);
    const availAddr = placeRing(rng, 6 + 2 * Math.min(size, 256), 2);
    const usedAddr = placeRing(rng, 6 + 8 * Math.min(size, 256), 4);
    let vq: Virtqueue;
    try {
      vq = new Virtqueue(mem, { size, descAddr, availAddr, usedAddr, eventIdx: rng.chance(0.5) });
    } catch (e) {
      onGuestError(e);
      continue;
    }

    // Up to three rounds on one queue, so ring slots and counters move on between them.
    let base = 0;
    const rounds = 1 + rng.int(3);
    for (let round = 0; round < rounds; round++) {
      // Descriptor table: noise, then plausible chains on top.
      const hostile = rng.chance(0.25);
      if (hostile || rng.chance(0.3)) {
        for (let i = 0; i < size; i++) {
          const [addr, len] = randomBuffer(f);
          const flags = rng.chance(0.9) ? rng.int(8) : rng.int(0x10000);
          writeDesc(f, descAddr, i, addr, rng.chance(0.1) ? 16 * (1 + rng.int(8)) : len, flags, rng.chance(0.9) ? rng.int(size) : rng.int(0x10000));
        }
      }
      const free = Array.from({ length: size }, (_, i) => i);
      for (let i = free.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [free[i], free[j]] = [free[j], free[i]];
      }
      const heads: number[] = [];
      const want = 1 + rng.int(Math.min(size, 8));
      while (!hostile && heads.length < want) {
        const h = plausibleChain(f, size, descAddr, free);
        if (h === null) break;
        heads.push(h);
      }
      // Avail ring: the heads, or junk; avail.idx sometimes jumps.
      const pending = hostile ? rng.int(size + 1) : heads.length;
      for (let i = 0; i < pending; i++) {
        const head = heads[i] ?? (rng.chance(0.8) ? rng.int(size) : rng.int(0x10000));
        mem.writeU16(availAddr + 4 + 2 * ((base + i) % size), head);
      }
      mem.writeU16(availAddr, rng.chance(0.8) ? 0 : rng.int(0x10000)); // avail.flags
      mem.writeU16(availAddr + 4 + 2 * size, rng.int(0x10000)); // used_event
      base = rng.chance(0.03) ? rng.int(0x10000) : (base + pending) & 0xffff;
      mem.atomicStoreU16(availAddr + 2, base);

      const sample = n % 32 === 0;
      const before = sample ? outer.slice(GUARD, GUARD + RAM) : null;
      const allowed: [number, number][] = [[usedAddr, usedRingSize(size)]];
      let jumped = false;
      try {
        for (let k = 0; k <= size + 1; k++) {
          let c: Chain | null;
          try {
            c = vq.pop();
          } catch (e) {
            onGuestError(e);
            jumped = e instanceof GuestError && e.kind === "AvailIdxJump";
            if (jumped) break;
            continue;
          }
          if (c === null) break;
          chains++;
          if (sample) for (const s of c.writable) allowed.push([s.gpa, s.len]);
          try {
            parseBlkRequest(c, mem, BigInt(rng.int(1 << 20)), rng.chance(0.2));
          } catch (e) {
            onGuestError(e);
          }
          checkChain(f, c, size, vq);
          if (rng.chance(0.3)) vq.needsInterrupt();
          if (rng.chance(0.2)) vq.setNotification(rng.chance(0.5));
          if (rng.chance(0.2)) vq.enableNotificationAndCheck();
        }
        vq.needsInterrupt();
      } catch (e) {
        onGuestError(e);
      }
      if (before) {
        const ok = new Uint8Array(RAM);
        for (const [gpa, len] of allowed) {
          const o = modelIndex(gpa, len) - GUARD;
          if (o >= 0) ok.fill(1, o, o + len);
        }
        for (let i = 0; i < RAM; i++) {
          if (!ok[i] && before[i] !== outer[GUARD + i]) assert.fail(`Case ${n} (seed ${seed}) changed RAM byte ${i} outside the writable buffers`);
        }
      }
      if (jumped) break;
      base = vq.nextAvail; // not always ours: the device's writes may have landed on avail.idx
    }
    if (!guardsIntact(outer)) assert.fail(`Case ${n} (seed ${seed}) wrote into a guard zone`);
  }

  total.cases += cases;
  total.chains += chains;
  total.ms += performance.now() - t0;
  assert.ok(chains > cases / 2, "most cases should yield chains; the generator is too hostile");
}
