/**
 * The two queues of a virtio-fs device (devices/fs/device.ts), each driven
 * through its own ring as Linux drives them: requests on the request queue,
 * FORGET, BATCH_FORGET and INTERRUPT on hiprio, and the forgets crossing
 * over the real pipe into the request queue's inode table.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { close, hostView, mmapAnon } from "../../ffi/libc.ts";
import { GuestMemory } from "../../vm/memory.ts";
import { HIGH_GPA } from "../../test/support/host_memory.ts";
import { GuestError } from "../virtio/ring.ts";
import { EBADF, FUSE_BATCH_FORGET, FUSE_FORGET, FUSE_INTERRUPT, FUSE_LOOKUP, FUSE_ROOT_ID } from "./fuse.ts";
import { cstr, FuseDriver, le } from "./fuse_driver.ts";
import { FS_CONFIG, fsConfig, FsHiprioQueue, FsRequestQueue } from "./device.ts";
import { ForgetSender, openForgetPipe } from "./forget.ts";

const ROOT = FUSE_ROOT_ID;
const MiB = 1 << 20;
let hiprioAddr = 0n;

/** Guest RAM of its own for the hiprio driver (test/support/host_memory.ts's layout, a second mapping). */
function hiprioMemory(): GuestMemory {
  if (hiprioAddr === 0n) hiprioAddr = mmapAnon(4 * MiB);
  const bytes = hostView(hiprioAddr, 4 * MiB);
  bytes.fill(0);
  return new GuestMemory(bytes, [{ gpa: 0, size: 2 * MiB, offset: 0 }, { gpa: HIGH_GPA, size: 2 * MiB, offset: 2 * MiB }], hiprioAddr);
}

interface Rig {
  dir: string;
  rq: FsRequestQueue;
  hi: FsHiprioQueue;
  /** The request queue's driver (INIT done) and the hiprio queue's. */
  d: FuseDriver;
  h: FuseDriver;
  lines: string[];
  /** The forget pipe's write end, for tests that write records themselves. */
  wr: number;
}

/** A share holding files `a` and `b`, both queues over it, INIT done; cleaned up after `fn`. */
function withDevice(fn: (r: Rig) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "vmm-fsdev-"));
  const [rd, wr] = openForgetPipe();
  const lines: string[] = [];
  const log = (l: string) => lines.push(l);
  writeFileSync(join(dir, "a"), "a");
  writeFileSync(join(dir, "b"), "b");
  const rq = new FsRequestQueue({ root: dir, readOnly: false }, rd, log);
  const hi = new FsHiprioQueue(wr, log);
  try {
    const d = new FuseDriver(rq);
    assert.equal(d.init().error, 0);
    fn({ dir, rq, hi, d, h: new FuseDriver(hi, hiprioMemory()), lines, wr });
    rq.server.checkConsistent();
    assert.equal(rq.server.internalErrors, 0, lines.join("\n"));
  } finally {
    rq.close();
    hi.close();
    close(rd);
    close(wr);
    rmSync(dir, { recursive: true, force: true });
  }
}

const inodes = (rq: FsRequestQueue) => rq.server.tables().inodes.length;
const forget = (h: FuseDriver, nodeid: bigint, n: bigint) =>
  h.send(FUSE_FORGET, [le(8).u64(0, n).bytes], { nodeid, noReply: true });

test("fsConfig() is the tag, NUL padded to 36 bytes, then num_request_queues = 1", () => {
  const c = fsConfig("src");
  assert.equal(c.length, FS_CONFIG.SIZE);
  assert.equal(FS_CONFIG.SIZE, 40);
  assert.deepEqual([...c.subarray(0, 4)], [0x73, 0x72, 0x63, 0]);
  assert.ok(c.subarray(3, 36).every((b) => b === 0));
  assert.equal(new DataView(c.buffer).getUint32(FS_CONFIG.NUM_REQUEST_QUEUES, true), 1);
  assert.deepEqual(fsConfig("t".repeat(36)).subarray(0, 36), new Uint8Array(36).fill(0x74), "a full tag has no NUL");
  assert.throws(() => fsConfig(""), RangeError);
  assert.throws(() => fsConfig("t".repeat(37)), RangeError);
});

test("a FORGET on hiprio gets no reply and reaches the request queue's inode table at its next drain", () => {
  withDevice(({ rq, d, h }) => {
    const a = d.lookup(ROOT, "a").nodeid;
    d.lookup(ROOT, "a");
    assert.equal(inodes(rq), 2);
    assert.equal(forget(h, a, 1n).used, 0, "used length 0: no reply");
    assert.equal(inodes(rq), 2, "not applied until the request thread drains the pipe");
    assert.equal(rq.applyForgets(), 1);
    assert.equal(d.getattr(a).error, 0, "one lookup left");
    forget(h, a, 1n);
    assert.equal(rq.applyForgets(), 1);
    assert.equal(d.getattr(a).error, -EBADF, "forgotten: its O_PATH fd is closed");
    assert.equal(inodes(rq), 1);
  });
});

test("a BATCH_FORGET on hiprio forgets each of its entries", () => {
  withDevice(({ rq, d, h }) => {
    const a = d.lookup(ROOT, "a").nodeid, b = d.lookup(ROOT, "b").nodeid;
    d.lookup(ROOT, "b");
    const batch = le(8 + 32).u32(0, 2).u64(8, a).u64(16, 1).u64(24, b).u64(32, 2).bytes;
    assert.equal(h.send(FUSE_BATCH_FORGET, [batch], { noReply: true }).used, 0);
    assert.equal(rq.applyForgets(), 2);
    assert.equal(inodes(rq), 1);
  });
});

test("INTERRUPT and requests that do not belong on hiprio are answered with nothing and forward nothing", () => {
  withDevice(({ rq, d, h }) => {
    const a = d.lookup(ROOT, "a").nodeid;
    assert.equal(h.send(FUSE_INTERRUPT, [le(8).u64(0, 1n).bytes], { noReply: true }).used, 0);
    assert.equal(h.send(FUSE_LOOKUP, [cstr("a")], { nodeid: ROOT }).used, 0, "no reply written, even with room for one");
    assert.equal(rq.applyForgets(), 0);
    assert.equal(d.getattr(a).error, 0);
  });
});

test("a hiprio chain too short for a fuse_in_header is the guest's error", () => {
  withDevice(({ h }) => {
    assert.throws(() => h.serveBuffers([{ gpa: 0x40000, len: 20 }], 0n, 0), (e) => e instanceof GuestError && e.kind === "ShortRequest");
  });
});

test("forgets of nodeids never given, or of the root, change nothing", () => {
  withDevice(({ rq, d, h }) => {
    forget(h, ROOT, 100n);
    forget(h, 999n, 1n);
    forget(h, 0xffff_ffff_ffff_ffffn, 1n);
    assert.equal(rq.applyForgets(), 3);
    assert.equal(d.getattr(ROOT).error, 0, "the root is never forgotten");
  });
});

test("a new request queue discards forgets a previous driver left in the pipe", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-fsdev-"));
  const [rd, wr] = openForgetPipe();
  try {
    writeFileSync(join(dir, "a"), "a");
    const tx = new ForgetSender(wr, () => {});
    tx.send([[2n, 1n]]); // nodeid 2 of the server before the reset
    const rq = new FsRequestQueue({ root: dir, readOnly: false }, rd, () => {});
    const d = new FuseDriver(rq);
    d.init();
    const a = d.lookup(ROOT, "a").nodeid;
    assert.equal(a, 2n, "the new server hands out nodeid 2 again");
    assert.equal(rq.applyForgets(), 0, "the stale record is gone");
    assert.equal(d.getattr(a).error, 0);
    rq.close();
    tx.close();
  } finally {
    close(rd);
    close(wr);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("close() closes the share: the server serves nothing afterwards", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-fsdev-"));
  const [rd, wr] = openForgetPipe();
  try {
    const rq = new FsRequestQueue({ root: dir, readOnly: false }, rd, () => {});
    const d = new FuseDriver(rq);
    d.init();
    rq.close();
    assert.throws(() => d.lookup(ROOT, "x"), /FsServer is closed/);
  } finally {
    close(rd);
    close(wr);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a request queue over a directory that is gone throws, and closes what it opened", () => {
  const [rd, wr] = openForgetPipe();
  try {
    assert.throws(() => new FsRequestQueue({ root: "/nonexistent/vmm-share", readOnly: false }, rd, () => {}), /ENOENT/);
  } finally {
    close(rd);
    close(wr);
  }
});
