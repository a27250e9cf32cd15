/**
 * loop/run_cache.ts: which runs share a snapshot (the key), and how the
 * cache publishes, replaces and trims them, on real files. Whether a
 * restored guest runs its command is the end-to-end tests' (test/e2e/run_test.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { HostRun } from "../guest/command.ts";
import { scriptCommand } from "../test/support/vmm_cli.ts";
import { DEFAULT_CMDLINE, type MachineOptions } from "./machine.ts";
import { cachedRun, cacheWritable, KEEP_SNAPSHOTS, runCacheDir, runCacheKey, saveRun, trimCache } from "./run_cache.ts";

function withDir(f: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "vmm-run-cache-"));
  try {
    f(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function run(dir: string, over: Partial<HostRun> = {}): HostRun {
  return {
    argv: ["true"], root: "/", cwd: dir, mounts: [{ tag: "vmm.cwd", path: dir, at: dir }], overlays: ["/etc"], env: {},
    id: { uid: 0, gid: 0, groups: [] }, ...over,
  };
}

function options(dir: string, over: Partial<MachineOptions> = {}): MachineOptions {
  const kernel = join(dir, "vmlinuz"), initrd = join(dir, "initrd");
  if (!existsSync(kernel)) writeFileSync(kernel, "kernel");
  if (!existsSync(initrd)) writeFileSync(initrd, "initrd");
  return { kernel, initrd, hostRun: run(dir), stdio: { inFd: 0, outFd: 1, errFd: 2 }, ...over };
}

test("runCacheKey(): one key for runs that differ only in their command, directories and environment", () => {
  withDir((dir) => {
    const a = runCacheKey(options(dir));
    assert.match(a ?? "", /^[0-9a-f]{32}$/);
    const other = run("/tmp", { argv: ["make", "-j4"], root: "/srv/image", env: { A: "1" }, id: { uid: 1000, gid: 1000, groups: [] } });
    assert.equal(runCacheKey(options(dir, { hostRun: other })), a);
  });
});

test("runCacheKey(): another key for anything the waiting guest would differ in", () => {
  withDir((dir) => {
    const base = runCacheKey(options(dir));
    const keys = [
      runCacheKey(options(dir, { cpus: 2 })),
      runCacheKey(options(dir, { memMiB: 1024 })),
      runCacheKey(options(dir, { append: "loglevel=7" })),
      runCacheKey(options(dir, { cmdline: "console=ttyS0" })),
      runCacheKey(options(dir, { console: { outFd: 1, inFd: null, device: "hvc" } })),
      runCacheKey(options(dir, { rng: true })),
      runCacheKey(options(dir, { kernelAsIs: true })), // the bzImage itself, not the vmlinux inside it
      runCacheKey(options(dir, { hostRun: run(dir, { mounts: [...run(dir).mounts, { tag: "vmm.rw0", path: "/x", at: "/x" }] }) })),
    ];
    for (const [i, k] of keys.entries()) assert.notEqual(k, base, `variant ${i}`);
    assert.equal(new Set(keys).size, keys.length);
    // The default command line is in the key as itself: a vmm whose default
    // changed must not restore a guest booted with the old one.
    assert.equal(runCacheKey(options(dir, { cmdline: DEFAULT_CMDLINE })), base);
    // A rebuilt image is a new file: its mtime and size change.
    writeFileSync(join(dir, "initrd"), "initrd, rebuilt");
    assert.notEqual(runCacheKey(options(dir)), base);
  });
});

test("runCacheKey(): no key (a cold boot) for runs the cache cannot serve", () => {
  withDir((dir) => {
    assert.equal(runCacheKey(options(dir, { hostRun: undefined, command: ["true"] })), null, "--busybox");
    assert.equal(runCacheKey(options(dir, { drives: ["disk.img"] })), null, "a disk: its blocks may be in the guest's page cache");
    assert.equal(runCacheKey(options(dir, { nets: ["tap0"] })), null);
    assert.equal(runCacheKey(options(dir, { kernel: new Uint8Array(1) })), null, "bytes have no file identity");
  });
});

test("saveRun(): written aside and renamed into place; a snapshot already there is kept, a dropped one replaced", () => {
  withDir((cache) => {
    const { dir, present } = cachedRun("k1", cache);
    assert.equal(present, false);
    const write = (label: string) => (to: string) => {
      assert.ok(to.startsWith(`${dir}.tmp-`), `written beside its place, not in it: ${to}`);
      mkdirSync(to, { recursive: true });
      writeFileSync(join(to, "memory"), label);
      writeFileSync(join(to, "state"), label);
    };
    assert.equal(saveRun(dir, write("first")), true);
    assert.equal(cachedRun("k1", cache).present, true);
    assert.equal(saveRun(dir, write("second")), false); // another run finished first: its snapshot stays
    assert.equal(readFileSync(join(dir, "state"), "utf8"), "first");
    assert.deepEqual(readdirSync(cache), ["k1"], "no temporary directory left behind");
    assert.equal(saveRun(dir, write("third"), true), true, "replacing one this run could not restore");
    assert.equal(readFileSync(join(dir, "state"), "utf8"), "third");
    assert.deepEqual(readdirSync(cache), ["k1"], "the old one is gone, not left aside");
    assert.throws(() => saveRun(join(cache, "k2"), () => {
      throw new Error("disk full");
    }), /disk full/);
    assert.deepEqual(readdirSync(cache), ["k1"]);
  });
});

test("processes racing to publish one entry: one snapshot wins whole, the rest are thrown away, nothing is left over", async () => {
  const cache = mkdtempSync(join(tmpdir(), "vmm-run-race-"));
  try {
    const dir = join(cache, "key");
    const start = String(Date.now() + 1500); // after every child has loaded
    const child = fileURLToPath(new URL("../test/support/save_run_child.ts", import.meta.url));
    const run = (label: string, ...more: string[]) =>
      new Promise<string>((resolve, reject) => {
        const [cmd, args] = scriptCommand(child, [dir, label, start, ...more]);
        execFile(cmd, args, { encoding: "utf8", timeout: 60_000 }, (e, out, err) => (e ? reject(new Error(`${e.message} ${err}`)) : resolve(out.trim())));
      });
    const lines = await Promise.all(["a", "b", "c", "d"].map((l) => run(l)));
    const won = lines.filter((l) => l.startsWith("published"));
    assert.equal(won.length, 1, lines.join(", "));
    const label = won[0].split(" ")[1];
    // Both files are the winner's: never one run's state with another's memory.
    assert.equal(readFileSync(join(dir, "state"), "utf8"), label);
    assert.equal(readFileSync(join(dir, "memory"), "utf8").slice(0, 4), label.repeat(4));
    assert.deepEqual(readdirSync(cache), ["key"]);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});

test("trimCache(): keeps the snapshots used last, and old leftovers of killed runs go", () => {
  withDir((cache) => {
    const n = KEEP_SNAPSHOTS + 2;
    for (let i = 0; i < n; i++) {
      mkdirSync(join(cache, `s${i}`));
      const t = new Date(Date.now() - (n - i) * 60_000); // s0 oldest
      utimesSync(join(cache, `s${i}`), t, t);
    }
    mkdirSync(join(cache, "s9.tmp-123"));
    const dayAgo = new Date(Date.now() - 25 * 3600_000);
    utimesSync(join(cache, "s9.tmp-123"), dayAgo, dayAgo);
    mkdirSync(join(cache, "s8.tmp-456")); // a run writing now
    trimCache(cache, join(cache, "s0"), KEEP_SNAPSHOTS); // s0 was just written: never trimmed
    assert.deepEqual(readdirSync(cache).sort(), ["s0", "s3", "s4", "s5", "s8.tmp-456"]);
  });
});

test("cacheWritable(): makes the cache, and says no where it cannot write", () => {
  withDir((dir) => {
    assert.equal(cacheWritable(join(dir, "a", "b")), true);
    assert.ok(existsSync(join(dir, "a", "b")));
    writeFileSync(join(dir, "file"), "");
    assert.equal(cacheWritable(join(dir, "file", "snapshots")), false, "a path through a file");
  });
});

test("runCacheDir(): $VMM_SNAPSHOT_CACHE, else snapshots/ in vmm's cache", () => {
  assert.equal(runCacheDir({ VMM_SNAPSHOT_CACHE: "/x/y" }), "/x/y");
  assert.match(runCacheDir({}), /snapshots$/);
});
