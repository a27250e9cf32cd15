import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { close, O_RDWR, open } from "../../ffi/libc.ts";
import { GuestMemory, GuestMemoryError } from "../../vm/memory.ts";
import { HIGH_GPA, hostGuestMemory } from "../../test/support/host_memory.ts";
import { IOV_MAX, IovecArray } from "./iovec.ts";

test("fill() gives each segment's host address and length, across regions, at most IOV_MAX", () => {
  const mem = new GuestMemory(new Uint8Array(0x10000), [{ gpa: 0x100000, size: 0x10000, offset: 0 }], 0x7f00_0000_0000n);
  const iov = new IovecArray();
  assert.equal(iov.fill(mem, [{ gpa: 0x108000, len: 16 }, { gpa: 0x109000, len: 512 }]), 528);
  assert.equal(iov.count, 2);
  assert.deepEqual(iov.entry(0), { base: 0x7f00_0000_8000, len: 16 });
  assert.deepEqual(iov.entry(1), { base: 0x7f00_0000_9000, len: 512 });
  // More segments than one call takes: the first IOV_MAX, then the rest from `from`.
  const many = Array.from({ length: IOV_MAX + 3 }, (_, i) => ({ gpa: 0x100000 + i, len: 1 }));
  assert.equal(iov.fill(mem, many), IOV_MAX);
  assert.equal(iov.fill(mem, many, IOV_MAX), 3);
  assert.deepEqual(iov.entry(2), { base: 0x7f00_0000_0000 + IOV_MAX + 2, len: 1 });
  // GuestMemory checks each segment again: one past RAM is refused.
  assert.throws(() => iov.fill(mem, [{ gpa: 0x10ffff, len: 2 }]), GuestMemoryError);
  // A plain buffer (no host mapping) cannot be handed to the kernel.
  assert.throws(() => iov.fill(new GuestMemory(new Uint8Array(16)), [{ gpa: 0, len: 1 }]), RangeError);
  iov.free();
});

test("transfer() moves bytes both ways, and a read past the end stops short with the count", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-iovec-"));
  const file = join(dir, "f");
  const data = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7) & 0xff);
  writeFileSync(file, data);
  const fd = open(file, O_RDWR);
  try {
    const mem = hostGuestMemory();
    const iov = new IovecArray();
    // Three 4 KiB buffers, one in the high region; the file has 5000 bytes.
    const segs = [{ gpa: 0x1000, len: 4096 }, { gpa: HIGH_GPA + 0x3000, len: 4096 }, { gpa: 0x8000, len: 4096 }];
    assert.equal(iov.transfer(mem, segs, fd, false, 0n), 5000);
    assert.deepEqual(mem.slice(0x1000, 4096), data.subarray(0, 4096));
    assert.deepEqual(mem.slice(HIGH_GPA + 0x3000, 904), data.subarray(4096));
    // The short read left the second entry trimmed to what was not filled.
    assert.deepEqual(iov.entry(1).len, 4096 - 904);
    // Write the first two buffers back at offset 100.
    mem.slice(HIGH_GPA + 0x3000, 4096).fill(0xab);
    assert.equal(iov.transfer(mem, segs.slice(0, 2), fd, true, 100n), 8192);
    const back = readFileSync(file);
    assert.equal(back.length, 8292);
    assert.deepEqual(new Uint8Array(back.subarray(100, 4196)), data.subarray(0, 4096));
    assert.ok(back.subarray(4196).every((b) => b === 0xab));
    // A host error before any byte moved is -errno (EBADF).
    assert.equal(iov.transfer(mem, segs, -1, false, 0n), -9);
    iov.free();
  } finally {
    close(fd);
    rmSync(dir, { recursive: true });
  }
});
