/**
 * GuestMemory (vm/memory.ts): every access checks the whole range
 * `[gpa, gpa + len)` against the regions before touching a byte, so no
 * guest-supplied address, however large, negative, fractional or close to
 * a region's end, makes vmm read or write outside guest RAM.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory, GuestMemoryError, gpaFromU64 } from "./memory.ts";

const SIZE = 0x2000;

/** 8 KiB of RAM in two regions around a hole: [0, 0x1000) and [0x3000, 0x4000). */
function withHole(): GuestMemory {
  return new GuestMemory(new Uint8Array(SIZE), [
    { gpa: 0, size: 0x1000, offset: 0 },
    { gpa: 0x3000, size: 0x1000, offset: 0x1000 },
  ], 0x7f00_0000_0000n);
}

function throwsKind(fn: () => unknown, kind: "InvalidAddress" | "Misaligned"): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GuestMemoryError, `expected a GuestMemoryError, got ${e}`);
    assert.equal(e.kind, kind);
    return true;
  });
}

/** Every accessor, as a function of an address. */
const ACCESSORS: [string, (m: GuestMemory, gpa: number) => unknown][] = [
  ["offset", (m, a) => m.offset(a, 1)],
  ["slice", (m, a) => m.slice(a, 1)],
  ["write", (m, a) => m.write(a, new Uint8Array([1]))],
  ["hostAddress", (m, a) => m.hostAddress(a, 1)],
  ["readU8", (m, a) => m.readU8(a)],
  ["readU16", (m, a) => m.readU16(a)],
  ["readU32", (m, a) => m.readU32(a)],
  ["readU64", (m, a) => m.readU64(a)],
  ["writeU8", (m, a) => m.writeU8(a, 1)],
  ["writeU16", (m, a) => m.writeU16(a, 1)],
  ["writeU32", (m, a) => m.writeU32(a, 1)],
  ["writeU64", (m, a) => m.writeU64(a, 1n)],
  ["atomicLoadU16", (m, a) => m.atomicLoadU16(a)],
  ["atomicStoreU16", (m, a) => m.atomicStoreU16(a, 1)],
  ["atomicLoadU32", (m, a) => m.atomicLoadU32(a)],
  ["atomicStoreU32", (m, a) => m.atomicStoreU32(a, 1)],
];

const BAD_ADDRESSES: [string, number][] = [
  ["past the end", 0x4000],
  ["in the hole", 0x1000],
  ["negative", -4],
  ["fractional", 0.5],
  ["NaN", NaN],
  ["infinite", Infinity],
  ["beyond 2^53", 2 ** 53],
  ["huge", Number.MAX_SAFE_INTEGER - 3], // gpa + len does not wrap to a small number
];

for (const [name, access] of ACCESSORS) {
  test(`GuestMemory.${name}() rejects addresses outside guest RAM as InvalidAddress`, () => {
    const m = withHole();
    for (const [what, gpa] of BAD_ADDRESSES) {
      assert.throws(() => access(m, gpa), GuestMemoryError, `${what}: ${gpa}`);
      throwsKind(() => access(m, gpa), "InvalidAddress");
    }
    access(m, 0x3000); // the first byte after the hole is RAM
    assert.ok(m.bytes.every((b) => b === 0 || b === 1), "no byte outside the accessed one changed");
  });
}

test("GuestMemory refuses a range that starts in RAM but runs past a region's end", () => {
  const m = withHole();
  throwsKind(() => m.readU32(0xffe), "InvalidAddress"); // 2 bytes in RAM, 2 in the hole
  throwsKind(() => m.readU64(0x3ffc), "InvalidAddress"); // runs off the end
  throwsKind(() => m.write(0xfff, new Uint8Array(2)), "InvalidAddress");
  throwsKind(() => m.slice(0, 0x3001), "InvalidAddress"); // spans the hole: never one region
  throwsKind(() => m.offset(0, -1), "InvalidAddress");
  throwsKind(() => m.offset(0, 1.5), "InvalidAddress");
  assert.equal(m.readU32(0xffc), 0, "the last 4 bytes of a region are fine");
  assert.ok(m.bytes.every((b) => b === 0), "a refused write changed nothing");
});

test("GuestMemory maps each region to its offset in the mapping", () => {
  const m = withHole();
  m.writeU32(0x3000, 0x1122_3344);
  assert.deepEqual([...m.bytes.subarray(0x1000, 0x1004)], [0x44, 0x33, 0x22, 0x11]);
  assert.equal(m.offset(0x3ff8, 8), 0x1ff8);
  assert.equal(m.offset(0x1000, 0), 0x1000, "an empty range at a region's end is allowed");
  assert.equal(m.size, 0x2000);
  assert.equal(m.contains(0x3000, 0x1000), true);
  assert.equal(m.contains(0x2fff, 2), false);
});

test("GuestMemory.hostAddress() adds the region's offset to the mapping's host address", () => {
  const m = withHole();
  assert.equal(m.hostAddress(0x10, 16), 0x7f00_0000_0010n);
  assert.equal(m.hostAddress(0x3000, 0x1000), 0x7f00_0000_1000n);
});

test("GuestMemory reads and writes little-endian values of every width", () => {
  const m = new GuestMemory(new Uint8Array(64));
  m.writeU64(8, 0x0102_0304_0506_0708n);
  assert.deepEqual([...m.slice(8, 8)], [8, 7, 6, 5, 4, 3, 2, 1]);
  assert.equal(m.readU8(8), 8);
  assert.equal(m.readU16(8), 0x0708);
  assert.equal(m.readU32(12), 0x0102_0304);
  m.atomicStoreU16(2, 0xbeef);
  assert.equal(m.atomicLoadU16(2), 0xbeef);
  m.atomicStoreU32(4, 0xcafe_f00d);
  assert.equal(m.atomicLoadU32(4), 0xcafe_f00d);
  assert.equal(m.readU32(4), 0xcafe_f00d);
});

test("GuestMemory atomics refuse a misaligned address as Misaligned", () => {
  const m = new GuestMemory(new Uint8Array(64));
  throwsKind(() => m.atomicLoadU16(1), "Misaligned");
  throwsKind(() => m.atomicStoreU32(2, 0), "Misaligned");
  throwsKind(() => m.atomicLoadU32(62), "InvalidAddress"); // bounds come before alignment
});

test("new GuestMemory() rejects a region that lies outside the mapping", () => {
  assert.throws(
    () => new GuestMemory(new Uint8Array(0x1000), [{ gpa: 0, size: 0x1001, offset: 0 }]),
    { name: "RangeError", message: "Memory region at gpa 0x0 lies outside the mapping" },
  );
  assert.throws(() => new GuestMemory(new Uint8Array(0x1000), [{ gpa: 0x5000, size: 0x100, offset: -1 }]), RangeError);
});

test("gpaFromU64() converts guest u64 values that can be addresses, and only those", () => {
  assert.equal(gpaFromU64(0x1000n), 0x1000);
  assert.equal(gpaFromU64(BigInt(Number.MAX_SAFE_INTEGER)), Number.MAX_SAFE_INTEGER);
  throwsKind(() => gpaFromU64(BigInt(Number.MAX_SAFE_INTEGER) + 1n), "InvalidAddress");
  throwsKind(() => gpaFromU64(0xffff_ffff_ffff_f000n), "InvalidAddress");
  throwsKind(() => gpaFromU64(-1n), "InvalidAddress");
});
