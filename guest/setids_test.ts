/**
 * vmm-setids (guest/setids.ts) built and run on this host: it enters the
 * given root, takes on the built-in ids and executes the program; where this
 * host is not root it can only show that it refuses (126).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { callerIdentity, type Identity, MAX_GROUPS, setidsElf } from "./setids.ts";

/** Run a fresh vmm-setids with `id` built in and `args`. */
function runSetids(id: Identity, args: string[]): { status: number | null; stdout: string } {
  const dir = mkdtempSync(join(tmpdir(), "vmm-setids-"));
  try {
    const path = join(dir, "setids");
    writeFileSync(path, setidsElf(id));
    chmodSync(path, 0o755);
    const r = spawnSync(path, args, { encoding: "utf8", env: { ONLY: "this" } });
    return { status: r.status, stdout: r.stdout };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const isRoot = callerIdentity().uid === 0;

test("setidsElf() puts the uid, gid and groups where the code loads them", () => {
  const elf = setidsElf({ uid: 1000, gid: 1001, groups: [27, 100] });
  const v = new DataView(elf.buffer);
  const code = 64 + 56; // after the ELF header and the one program header
  assert.equal(v.getUint32(code + 0x33, true), 2, "NGROUPS");
  assert.equal(v.getUint32(code + 0x4a, true), 1001, "gid");
  assert.equal(v.getUint32(code + 0x5e, true), 1000, "uid");
  assert.deepEqual([v.getUint32(code + 0x9d, true), v.getUint32(code + 0xa1, true)], [27, 100]);
  assert.equal(elf.length, code + 0x9d + 8);
});

test("setidsElf() refuses ids that are not u32 and too many groups", () => {
  assert.throws(() => setidsElf({ uid: -1, gid: 0, groups: [] }), RangeError);
  assert.throws(() => setidsElf({ uid: 0, gid: 0xffffffff, groups: [] }), RangeError);
  assert.throws(() => setidsElf({ uid: 0, gid: 0, groups: [1.5] }), RangeError);
  assert.throws(() => setidsElf({ uid: 0, gid: 0, groups: new Array(MAX_GROUPS + 1).fill(1) }), RangeError);
});

test("vmm-setids enters the root, takes on the ids and runs the program with its environment", { skip: !isRoot && "needs root" }, () => {
  const r = runSetids({ uid: 65534, gid: 65533, groups: [5, 6] }, ["/", "/bin/sh", "-c", 'echo "$(id -u) $(id -g) $(id -G) $(pwd) $ONLY"']);
  assert.equal(r.status, 0);
  assert.equal(r.stdout, "65534 65533 65533 5 6 / this\n");
});

test("vmm-setids exits 126 when it cannot enter the root and 127 when the program cannot run", { skip: !isRoot && "needs root" }, () => {
  const id = { uid: 0, gid: 0, groups: [] };
  assert.equal(runSetids(id, ["/nonexistent-root", "/bin/sh"]).status, 126);
  assert.equal(runSetids(id, ["/", "/nonexistent-program"]).status, 127);
  assert.equal(runSetids(id, ["/"]).status, 126, "no program given");
});

test("vmm-setids refuses (126) where this process may not change its ids", { skip: isRoot && "runs as root" }, () => {
  assert.equal(runSetids({ uid: 0, gid: 0, groups: [] }, ["/", "/bin/true"]).status, 126);
});

test("callerIdentity() reads the real ids and the groups, also when there are none", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-status-"));
  try {
    const status = join(dir, "status");
    writeFileSync(status, "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t0\t0\t0\nFDSize:\t64\nGroups:\t\nNStgid:\t7\n");
    assert.deepEqual(callerIdentity(status), { uid: 1000, gid: 100, groups: [] });
    writeFileSync(status, "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t4 27 \n");
    assert.deepEqual(callerIdentity(status), { uid: 0, gid: 0, groups: [4, 27] });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
