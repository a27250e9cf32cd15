/**
 * Snapshot and restore on the real /dev/kvm, the way a library user does
 * it: a tiny guest counting in memory is paused and snapshotted, goes on
 * counting, and another process (the same runtime, test/support/
 * restore_child.ts) restores the snapshot and finds the count where the
 * pause left it, then sees it move once resumed. One guest and one child
 * carry every check, since each tiny VM costs seconds in the nested host.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Machine } from "../mod.ts";
import { makeBzImage } from "../test/support/tiny_kernel.ts";
import { requireKvm } from "../test/support/require_kvm.ts";
import { scriptCommand } from "../test/support/vmm_cli.ts";
import { MEMORY_FILE, STATE_FILE } from "./snapshot.ts";

/** Where the counting guest keeps its count (as in loop/machine_test.ts). */
const COUNTER = 0x30000;
const le32 = (x: number) => [x & 0xff, (x >> 8) & 0xff, (x >> 16) & 0xff, (x >>> 24) & 0xff];
/** `inc qword [COUNTER]; jmp back`: counts for ever. */
const counting = makeBzImage(new Uint8Array([0x67, 0x48, 0xff, 0x04, 0x25, ...le32(COUNTER), 0xeb, 0xf5]));
const MEM_MIB = 16;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(f: () => boolean, ms: number, what: string): Promise<void> {
  for (const end = Date.now() + ms; !f(); await sleep(10)) if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
}

test("a counting guest snapshotted here goes on counting after a restore in another process", async () => {
  requireKvm();
  const dir = mkdtempSync(join(tmpdir(), "vmm-snapshot-"));
  try {
    let frozen: number;
    {
      await using m = await Machine.create({ kernel: counting, memMiB: MEM_MIB, cpus: 2, console: { outFd: 2, inFd: null } });
      const count = () => m.vm.mem.readU32(COUNTER);
      m.start();
      await until(() => count() > 0, 60_000, "the guest to count");
      await assert.rejects(m.snapshot(dir), { message: "snapshot() on a running machine" });
      await m.pause();
      frozen = count();
      await m.snapshot(dir);
      assert.equal(m.state, "paused", "a snapshot leaves the machine paused");
      // The machine may go on after its snapshot.
      await m.resume();
      await until(() => count() !== frozen, 30_000, "the count to move after the snapshot");
      await m.stop();
    }
    const mem = statSync(join(dir, MEMORY_FILE));
    assert.equal(mem.size, MEM_MIB * 1024 * 1024);
    // Sparse: the guest touched a few pages (kernel, boot tables, the counter); the rest are holes.
    assert.ok(mem.blocks * 512 < mem.size / 4, `memory file holds ${mem.blocks * 512} bytes on disk of ${mem.size}`);
    assert.ok(statSync(join(dir, STATE_FILE)).size > 0);

    const [cmd, args] = scriptCommand(fileURLToPath(new URL("../test/support/restore_child.ts", import.meta.url)), [dir, String(COUNTER)]);
    const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 180_000 });
    assert.equal(r.status, 0, `child stderr: ${r.stderr}`);
    const line = (word: string) => {
      const l = r.stdout.split("\n").find((x) => x.startsWith(word + " "));
      assert.ok(l, `no '${word}' line in: ${r.stdout}`);
      return l.split(" ").slice(1);
    };
    const [restored, state] = line("restored");
    // Paused at restore, the count is the one the pause left in memory.
    assert.equal(Number(restored), frozen);
    assert.equal(state, "paused");
    assert.ok(Number(line("later")[0]) > frozen, "the count moved after resume()");
    assert.ok(Number(line("again")[0]) > Number(line("later")[0]), "it kept counting after a second snapshot over the mapped one");
    assert.deepEqual(line("stopped"), ["STOPPED"]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * `out 0xF5` (ready), then count to COUNT_TO and `out 0xF4` with 42: the
 * shape of vmm run's guest, whose init reports ready and waits.
 */
const COUNT_TO = 100_000;
const readyThenCount = makeBzImage(new Uint8Array([
  0xb0, 0x01, 0xe6, 0xf5, //                                   mov al, 1; out 0xf5, al
  0x67, 0x48, 0xff, 0x04, 0x25, ...le32(COUNTER), //           loop: inc qword [COUNTER]
  0x67, 0x48, 0x81, 0x3c, 0x25, ...le32(COUNTER), ...le32(COUNT_TO), // cmp qword [COUNTER], COUNT_TO
  0x72, 0xe8, //                                               jb loop
  0xb0, 0x2a, 0xe6, 0xf4, //                                   mov al, 42; out 0xf4, al
  0xf4, 0xeb, 0xfd, //                                         hlt; jmp hlt
]));

test("the ready hook sees the guest held at its ready report, and a machine made from that snapshot goes on with run()", async () => {
  requireKvm();
  const dir = mkdtempSync(join(tmpdir(), "vmm-snapshot-ready-"));
  try {
    let atReady = -1;
    {
      const m: Machine = await Machine.create({
        kernel: readyThenCount, memMiB: MEM_MIB, cpus: 2, console: { outFd: 2, inFd: null },
        atReady: (snapshot) => {
          atReady = m.vm.mem.readU32(COUNTER);
          snapshot(dir);
        },
      });
      try {
        const r = await m.run();
        assert.equal(r.code, 42, r.reason);
        assert.equal(m.vm.mem.readU32(COUNTER), COUNT_TO);
      } finally {
        await m.close();
      }
    }
    // Held at the port write: not one increment had run, on either vCPU.
    assert.equal(atReady, 0, "the guest went on past its ready report before the hook");
    const [cmd, args] = scriptCommand(fileURLToPath(new URL("../test/support/restore_child.ts", import.meta.url)), [dir, String(COUNTER), "run"]);
    const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 180_000 });
    assert.equal(r.status, 0, `child stderr: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^ran 42 ${COUNT_TO}$`, "m"), `the restored guest did not count from 0 to the end: ${r.stdout}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
