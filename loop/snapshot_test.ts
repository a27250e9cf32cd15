/**
 * `Machine.restore()` refusing snapshots it must not run, each with one line
 * naming what does not match. All of these are decided before KVM is asked
 * for anything (the files, the options, the devices the options open), so
 * this file runs without /dev/kvm; loop/snapshot_kvm_test.ts restores real ones.
 * Last, the sparse memory file, written from plain shared memory.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Machine, SnapshotError } from "../mod.ts";
import { encodeSnapshot, HDR, type SnapshotState } from "../vm/snapshot_file.ts";
import { MEMORY_FILE, SHARED_FINGERPRINT, STATE_FILE, stillThere, writeMemory } from "./snapshot.ts";
import { close, hostView, libc, O_RDONLY, open, MAP_ANONYMOUS, MAP_NORESERVE, MAP_SHARED, mmapAnon, PROT_READ, PROT_WRITE } from "../ffi/libc.ts";
import { fakeState } from "../test/support/snapshot_fixture.ts";

const MiB = 1024 * 1024;

/** A snapshot directory holding `s` and a memory file of `memBytes` (default: the state's), all holes. */
function snapshotDir(s: SnapshotState, o: { memBytes?: number; state?: Uint8Array } = {}): string {
  const dir = mkdtempSync(join(tmpdir(), "vmm-snap-"));
  writeFileSync(join(dir, STATE_FILE), o.state ?? encodeSnapshot(s));
  writeFileSync(join(dir, MEMORY_FILE), "");
  truncateSync(join(dir, MEMORY_FILE), o.memBytes ?? s.memory.bytes);
  return dir;
}

async function refuses(dir: string, o: Parameters<typeof Machine.restore>[1], message: string | RegExp): Promise<void> {
  try {
    await assert.rejects(Machine.restore(dir, o), (e) => {
      assert.ok(e instanceof SnapshotError, `${(e as Error).name}: ${(e as Error).message}`);
      if (typeof message === "string") assert.equal(e.message, message);
      else assert.match(e.message, message);
      assert.ok(!e.message.includes("\n"), "one line");
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const good = () => fakeState({ sharedLayout: SHARED_FINGERPRINT });

test("Machine.restore() refuses a directory with no state file", async () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-snap-"));
  await refuses(dir, {}, `${join(dir, STATE_FILE)}: no such file`);
});

test("Machine.restore() refuses a corrupted state file", async () => {
  const bytes = encodeSnapshot(good());
  bytes[HDR.SIZE + 7] ^= 0x20;
  const dir = snapshotDir(good(), { state: bytes });
  await refuses(dir, {}, `${join(dir, STATE_FILE)}: corrupted or tampered: its SHA-256 does not match`);
});

test("Machine.restore() refuses a state file cut short", async () => {
  const bytes = encodeSnapshot(good());
  const dir = snapshotDir(good(), { state: bytes.subarray(0, 4096) });
  await refuses(dir, {}, new RegExp(`^${join(dir, STATE_FILE)}: truncated: the body should be \\d+ bytes, the file holds ${4096 - HDR.SIZE}$`));
});

test("Machine.restore() refuses another vmm version's snapshot", async () => {
  const dir = snapshotDir(good(), { state: encodeSnapshot(good(), "0.0.1") });
  await refuses(dir, {}, /: made by vmm 0\.0\.1, this is vmm /);
});

test("Machine.restore() refuses a shared block layout that is not this vmm's", async () => {
  const dir = snapshotDir(fakeState({ sharedLayout: "mmio registers@0+100" }));
  await refuses(dir, {}, `${join(dir, STATE_FILE)}: its device block layout is not this vmm's`);
});

test("Machine.restore() refuses a truncated memory file, and one of another size", async () => {
  let dir = snapshotDir(good(), { memBytes: 3 * MiB });
  await refuses(dir, {}, `${join(dir, MEMORY_FILE)}: truncated: ${3 * MiB} bytes, the guest has ${16 * MiB}`);
  dir = snapshotDir(good(), { memBytes: 32 * MiB });
  await refuses(dir, {}, `${join(dir, MEMORY_FILE)}: ${32 * MiB} bytes, the guest has ${16 * MiB}: not this snapshot's memory`);
  dir = snapshotDir(good());
  rmSync(join(dir, MEMORY_FILE));
  await refuses(dir, {}, `${join(dir, MEMORY_FILE)}: no such file`);
});

test("stillThere(): a snapshot directory replaced between opening its two files is caught", () => {
  const dir = snapshotDir(good());
  const fds = [STATE_FILE, MEMORY_FILE].map((f) => open(join(dir, f), O_RDONLY));
  try {
    const pairs = [[join(dir, STATE_FILE), fds[0]], [join(dir, MEMORY_FILE), fds[1]]] as const;
    assert.equal(stillThere(pairs), true);
    // What saveRun(…, replace) does to a snapshot this run could not restore: aside, then another in its place.
    renameSync(dir, `${dir}.old`);
    assert.equal(stillThere(pairs), false, "gone");
    mkdirSync(dir);
    writeFileSync(join(dir, STATE_FILE), "another");
    writeFileSync(join(dir, MEMORY_FILE), "another");
    assert.equal(stillThere(pairs), false, "another snapshot's files under the same names");
  } finally {
    fds.forEach(close);
    rmSync(dir, { recursive: true, force: true });
    rmSync(`${dir}.old`, { recursive: true, force: true });
  }
});

test("Machine.restore() refuses options with another CPU count or memory size", async () => {
  await refuses(snapshotDir(good()), { cpus: 2 }, "The snapshot has 1 CPU, the options give 2");
  await refuses(snapshotDir(good()), { memMiB: 64 }, "The snapshot has 16 MiB of memory, the options give 64");
});

test("Machine.restore() refuses options whose devices differ from the snapshot's", async () => {
  await refuses(snapshotDir(good()), { rng: true }, "The snapshot's devices none, the options give rng");
  // A disk of another size: the guest's filesystem would run off its end.
  const s = good();
  s.devices = [{
    kind: "blk", identity: { sizeBytes: MiB, readOnly: false, serial: "" }, deviceId: 2, features: 0n, queueSizes: [256],
    block: new Uint8Array(0),
  }];
  const dir = snapshotDir(s);
  const disk = join(dir, "disk.img");
  writeFileSync(disk, "");
  truncateSync(disk, 2 * MiB);
  await refuses(dir, { drives: [disk] }, `The snapshot's device 0 (blk) has sizeBytes ${MiB}, the options give ${2 * MiB}`);
});

test("writeMemory() writes guest RAM as a sparse file: the pages with data, holes for the rest", () => {
  const size = 4 * MiB;
  // Shared anonymous memory, as vm/vm.ts maps guest RAM; pages 3 and 700 written, the rest never touched.
  const memAddr = mmapAnon(size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE);
  const dir = mkdtempSync(join(tmpdir(), "vmm-snap-"));
  try {
    const ram = hostView(memAddr, size);
    ram.set([1, 2, 3], 3 * 4096 + 100);
    ram[700 * 4096 + 4095] = 9;
    for (const memFromFile of [false, true]) { // with mincore's help, and looking at every page
      const path = join(dir, `memory-${memFromFile}`);
      writeMemory(path, { memAddr, memSize: size, memFromFile });
      const st = statSync(path);
      assert.equal(st.size, size);
      assert.ok(st.blocks * 512 <= 64 * 1024, `${st.blocks * 512} bytes on disk for two pages of data`);
      assert.deepEqual(new Uint8Array(readFileSync(path)), ram.slice());
    }
  } finally {
    libc.munmap(memAddr, BigInt(size));
    rmSync(dir, { recursive: true, force: true });
  }
});
