/**
 * The virtio-fs server's ops on open files and directories
 * (devices/fs/file_ops.ts) against a real temporary directory, and a
 * read-only share. READ and WRITE data travel in page-sized guest buffers
 * with gaps between them, as the Linux driver's scatterlists do.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as F from "./fuse.ts";
import { cstr, type FuseDriver, le, PAGE, shareRig } from "./fuse_driver.ts";
import { FS_MAX_WRITE } from "./passthrough.ts";

const ROOT = F.FUSE_ROOT_ID;
const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CREAT = 0o100, O_EXCL = 0o200, O_TRUNC = 0o1000;

/** Bytes that differ at every offset, so a misplaced page shows. */
function pattern(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + (i >>> 12) * 7 + seed) & 0xff;
  return b;
}

test("OPEN a file for reading, READ it across pages; reads stop at the end of the file", () => {
  const data = pattern(3 * PAGE + 100);
  const { d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), data));
  try {
    const f = d.lookup(ROOT, "f").nodeid;
    const o = d.open(f, O_RDONLY);
    assert.equal(o.error, 0);
    const all = d.read(o.fh, 0, 4 * PAGE);
    assert.equal(all.error, 0);
    assert.deepEqual(all.body, data);
    const mid = d.read(o.fh, PAGE - 10, 20);
    assert.deepEqual(mid.body, data.subarray(PAGE - 10, PAGE + 10));
    assert.equal(d.read(o.fh, data.length, 100).body.length, 0, "at the end");
    assert.equal(d.read(o.fh, 1n << 63n, 100).error, -F.EINVAL, "offset past 2^63 - 1");
    // The guest offered less room than it asked for: only what fits is read.
    const capped = d.read(o.fh, 0, 2 * PAGE, PAGE + 5);
    assert.deepEqual(capped.body, data.subarray(0, PAGE + 5));
    assert.equal(d.read(77n, 0, 10).error, -F.EBADF, "forged handle");
    assert.equal(d.release(o.fh).error, 0);
    assert.equal(d.read(o.fh, 0, 10).error, -F.EBADF, "released handle");
    assert.equal(d.release(o.fh).error, -F.EBADF);
  } finally {
    done();
  }
});

test("READ and WRITE of max_write bytes in one request, and over more buffers than IOV_MAX", () => {
  const data = pattern(FS_MAX_WRITE, 5);
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), ""));
  try {
    const o = d.open(d.lookup(ROOT, "f").nodeid, O_RDWR);
    assert.equal(d.write(o.fh, 0, data), FS_MAX_WRITE, "256 pages");
    assert.deepEqual(new Uint8Array(readFileSync(join(dir, "f"))), data);
    const all = d.read(o.fh, 0, FS_MAX_WRITE);
    assert.equal(all.body.length, FS_MAX_WRITE, "not cut short: a short READ means the end of the file");
    assert.deepEqual(all.body, data);
    // 1200 buffers of 512 bytes: preadv takes IOV_MAX (1024) at a time.
    const many = d.read(o.fh, 1000, 1200 * 512, 1200 * 512, 512);
    assert.deepEqual(many.body, data.subarray(1000, 1000 + 1200 * 512));
  } finally {
    done();
  }
});

test("OPEN refuses directories, symlinks and FIFOs, keeps O_APPEND and strips flags that would change vmm's fd", () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "abc"));
  try {
    assert.equal(d.open(ROOT, O_RDONLY).error, -F.EISDIR);
    d.send(F.FUSE_SYMLINK, [cstr("l"), cstr("f")]);
    assert.equal(d.open(d.lookup(ROOT, "l").nodeid).error, -F.ELOOP);
    d.send(F.FUSE_MKNOD, [le(16).u32(0, 0o010644).bytes, cstr("fifo")]);
    assert.equal(d.open(d.lookup(ROOT, "fifo").nodeid).error, -F.EACCES, "a FIFO is never opened (it would block)");
    const f = d.lookup(ROOT, "f").nodeid;
    assert.equal(d.open(f, 3).error, -F.EINVAL, "access mode 3");
    // O_NONBLOCK, O_DIRECT, O_NOATIME, O_PATH, O_DIRECTORY: all dropped; the handle works.
    const o = d.open(f, O_WRONLY | 0o4000 | 0o40000 | 0o1000000 | 0o10000000 | 0o200000);
    assert.equal(o.error, 0);
    assert.equal(d.write(o.fh, 1, new Uint8Array([0x58])), 1);
    assert.equal(readFileSync(join(dir, "f"), "utf8"), "aXc");
    // O_APPEND is kept: the write lands at the host file's end, wherever the guest thought it was.
    const a = d.open(f, O_WRONLY | 0o2000);
    assert.equal(d.write(a.fh, 0, new Uint8Array([0x59])), 1);
    assert.equal(readFileSync(join(dir, "f"), "utf8"), "aXcY");
  } finally {
    done();
  }
});

test("OPEN with O_TRUNC truncates; FOPEN_KEEP_CACHE only while the file is unchanged since its last open", () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "0123456789"));
  try {
    const f = d.lookup(ROOT, "f").nodeid;
    assert.equal(d.open(f).openFlags & F.FOPEN_KEEP_CACHE, 0, "first open");
    assert.equal(d.open(f).openFlags & F.FOPEN_KEEP_CACHE, F.FOPEN_KEEP_CACHE, "unchanged");
    writeFileSync(join(dir, "f"), "changed on the host");
    assert.equal(d.open(f).openFlags & F.FOPEN_KEEP_CACHE, 0, "changed on the host");
    const t = d.open(f, O_WRONLY | O_TRUNC);
    assert.equal(t.error, 0);
    assert.equal(t.openFlags & F.FOPEN_KEEP_CACHE, 0);
    assert.equal(statSync(join(dir, "f")).size, 0);
  } finally {
    done();
  }
});

test("CREATE makes and opens a file; O_EXCL; an existing file is opened; a FIFO of that name is not", () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "old"), "old"));
  try {
    const c = d.create(ROOT, "new", O_RDWR | O_CREAT, 0o640);
    assert.equal(c.error, 0);
    assert.equal(c.mode, 0o100640);
    assert.equal(statSync(join(dir, "new")).mode & 0o7777, 0o640);
    assert.equal(d.write(c.fh, 0, pattern(10)), 10);
    assert.deepEqual(new Uint8Array(readFileSync(join(dir, "new"))), pattern(10));
    assert.equal(d.lookup(ROOT, "new").nodeid, c.nodeid);
    assert.equal(d.create(ROOT, "new", O_RDWR | O_CREAT | O_EXCL).error, -F.EEXIST);
    const again = d.create(ROOT, "old", O_RDWR | O_CREAT | O_TRUNC);
    assert.equal(again.error, 0);
    assert.equal(statSync(join(dir, "old")).size, 0, "O_TRUNC");
    d.send(F.FUSE_MKNOD, [le(16).u32(0, 0o010644).bytes, cstr("fifo")]);
    assert.equal(d.create(ROOT, "fifo", O_RDONLY | O_CREAT).error, -F.EACCES);
    mkdirSync(join(dir, "d"));
    assert.equal(d.create(ROOT, "d", O_RDONLY | O_CREAT).error, -F.EISDIR);
    assert.equal(d.create(ROOT, "a/b").error, -F.EINVAL);
  } finally {
    done();
  }
});

test("WRITE moves page-sized guest buffers to the file at the offset; EBADF on read-only and forged handles", () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), ""));
  try {
    const f = d.lookup(ROOT, "f").nodeid;
    const o = d.open(f, O_RDWR);
    const data = pattern(5 * PAGE + 17, 3);
    assert.equal(d.write(o.fh, 100, data), data.length);
    const file = new Uint8Array(readFileSync(join(dir, "f")));
    assert.equal(file.length, 100 + data.length);
    assert.deepEqual(file.subarray(100), data);
    assert.deepEqual(d.read(o.fh, 100, data.length).body, data, "and READ gets it back");
    assert.equal(d.write(o.fh, 0, new Uint8Array(0)), 0);
    const ro = d.open(f, O_RDONLY);
    assert.equal(d.write(ro.fh, 0, data), -F.EBADF);
    assert.equal(d.write(12345n, 0, data), -F.EBADF);
    // fuse_write_in.size larger than the data sent.
    const lie = d.send(F.FUSE_WRITE, [le(40).u64(0, o.fh).u32(16, 100).bytes], { data: new Uint8Array(10), reply: 8 });
    assert.equal(lie.error, -F.EINVAL);
    assert.equal(d.write(o.fh, 1n << 63n, data), -F.EINVAL);
  } finally {
    done();
  }
});

test("FLUSH, FSYNC and FSYNCDIR answer 0 for known handles, EBADF for others", () => {
  const { d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "x"));
  try {
    const f = d.open(d.lookup(ROOT, "f").nodeid, O_RDWR).fh;
    const dir = d.open(ROOT, 0, true).fh;
    const flush = (fh: bigint) => d.send(F.FUSE_FLUSH, [le(24).u64(0, fh).bytes]).error;
    const fsync = (fh: bigint, flags: number, op = F.FUSE_FSYNC) => d.send(op, [le(16).u64(0, fh).u32(8, flags).bytes]).error;
    assert.equal(flush(f), 0);
    assert.equal(flush(99n), -F.EBADF);
    assert.equal(fsync(f, 0), 0);
    assert.equal(fsync(f, F.FUSE_FSYNC_FDATASYNC), 0);
    assert.equal(fsync(dir, 0), -F.EBADF, "a directory handle for FSYNC");
    assert.equal(fsync(dir, 0, F.FUSE_FSYNCDIR), 0);
    assert.equal(fsync(f, 0, F.FUSE_FSYNCDIR), -F.EBADF, "a file handle for FSYNCDIR");
    assert.equal(d.release(dir).error, -F.EBADF, "RELEASE of a directory handle");
    assert.equal(d.release(dir, true).error, 0);
    assert.equal(d.release(f, true).error, -F.EBADF, "RELEASEDIR of a file handle");
  } finally {
    done();
  }
});

test("FALLOCATE allocates, keeps size, punches holes; LSEEK finds data and holes", () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), ""));
  try {
    const p = join(dir, "f");
    const o = d.open(d.lookup(ROOT, "f").nodeid, O_RDWR);
    const falloc = (mode: number, off: number | bigint, len: number | bigint, fh = o.fh) =>
      d.send(F.FUSE_FALLOCATE, [le(32).u64(0, fh).u64(8, off).u64(16, len).u32(24, mode).bytes]).error;
    assert.equal(falloc(0, 0, 1 << 20), 0);
    assert.equal(statSync(p).size, 1 << 20);
    assert.equal(falloc(1 /* KEEP_SIZE */, 1 << 20, 1 << 20), 0);
    assert.equal(statSync(p).size, 1 << 20);
    d.write(o.fh, 0, pattern(PAGE));
    assert.equal(falloc(3 /* PUNCH_HOLE | KEEP_SIZE */, 0, PAGE), 0);
    assert.deepEqual(d.read(o.fh, 0, PAGE).body, new Uint8Array(PAGE));
    assert.equal(falloc(0x80, 0, 1), -F.EOPNOTSUPP, "unknown mode bit");
    assert.equal(falloc(0, -1n, 1), -F.EINVAL);
    assert.equal(falloc(0, 0, 0), -F.EINVAL);
    assert.equal(falloc(0, 0, 1, d.open(d.lookup(ROOT, "f").nodeid, O_RDONLY).fh), -F.EBADF, "read-only handle");

    // A sparse file: data at 64 KiB only.
    truncateSync(p, 0);
    d.write(o.fh, 65536, pattern(PAGE));
    const lseek = (off: number | bigint, whence: number) => d.send(F.FUSE_LSEEK, [le(24).u64(0, o.fh).u64(8, off).u32(16, whence).bytes]);
    const data = lseek(0, 3 /* SEEK_DATA */);
    assert.equal(data.error, 0);
    assert.ok(data.view.getBigUint64(0, true) <= 65536n);
    assert.equal(lseek(65536, 4 /* SEEK_HOLE */).view.getBigUint64(0, true), 65536n + BigInt(PAGE));
    assert.equal(lseek(1 << 30, 3).error, -6 /* ENXIO */);
    assert.equal(lseek(0, 5).error, -F.EINVAL, "unknown whence");
  } finally {
    done();
  }
});

function names(d: FuseDriver, fh: bigint, plus = false, size = 4096): string[] {
  return d.list(fh, plus, size).map((e) => e.name).sort();
}

test("OPENDIR and READDIR list every entry once, page by page, whatever the reply size", () => {
  const many = Array.from({ length: 150 }, (_, i) => `file-${i}-${"x".repeat(i % 40)}`);
  const { dir, d, done } = shareRig((dir) => many.forEach((n) => writeFileSync(join(dir, n), n)));
  try {
    const want = [".", "..", ...readdirSync(dir)].sort();
    const o = d.open(ROOT, 0, true);
    assert.equal(o.error, 0);
    assert.deepEqual(names(d, o.fh), want);
    assert.deepEqual(names(d, o.fh, false, 120), want, "one or two entries per reply");
    const first = d.list(o.fh);
    assert.equal(first.find((e) => e.name === "file-0-")?.ino, BigInt(statSync(join(dir, "file-0-")).ino));
    assert.equal(first.find((e) => e.name === "file-0-")?.type, 8, "DT_REG");
    const dot = first.find((e) => e.name === "..");
    assert.equal(dot?.ino, BigInt(statSync(dir).ino), "at the root, '..' is the root");
    assert.equal(d.readdir(o.fh, 0, false, 10).entries.length, 0, "no room for one record");
    assert.equal(d.open(d.lookup(ROOT, many[0]).nodeid, 0, true).error, -20 /* ENOTDIR */);
    assert.equal(d.readdir(999n).error, -F.EBADF);
    const file = d.open(d.lookup(ROOT, many[0]).nodeid).fh;
    assert.equal(d.readdir(file).error, -F.EBADF, "a file handle");
  } finally {
    done();
  }
});

test("READDIRPLUS answers entries with nodeids, counting one lookup for each record sent", () => {
  const { dir, d, server, done } = shareRig((dir) => {
    for (let i = 0; i < 40; i++) writeFileSync(join(dir, `f${i}`), "x".repeat(i));
    mkdirSync(join(dir, "sub"));
  });
  try {
    const o = d.open(ROOT, 0, true);
    const all = d.list(o.fh, true, 1000);
    assert.deepEqual(all.map((e) => e.name).sort(), [".", "..", ...readdirSync(dir)].sort());
    for (const e of all) {
      if (e.name === "." || e.name === "..") assert.equal(e.nodeid, 0n);
      else assert.equal(e.nodeid, d.lookup(ROOT, e.name).nodeid, e.name);
    }
    // Each name now holds two lookups (READDIRPLUS + LOOKUP): forgetting two drops them all.
    const forget = (id: bigint) => d.send(F.FUSE_FORGET, [le(8).u64(0, 2).bytes], { nodeid: id, noReply: true });
    for (const e of all) if (e.nodeid) forget(e.nodeid!);
    d.release(o.fh, true);
    assert.equal(server.tables().inodes.length, 1, "only the root is left: no record was counted twice or lost");
  } finally {
    done();
  }
});

test("a read-only share refuses every change with EROFS and still serves reads", () => {
  const { dir, d, done } = shareRig((dir) => {
    writeFileSync(join(dir, "f"), "data");
    mkdirSync(join(dir, "d"));
  }, true);
  try {
    const before = JSON.stringify(readdirSync(dir)) + readFileSync(join(dir, "f"), "utf8");
    const f = d.lookup(ROOT, "f").nodeid;
    const changes: [number, Uint8Array[], string][] = [
      [F.FUSE_SETATTR, [le(88).u32(0, F.FATTR_SIZE).bytes], "SETATTR"],
      [F.FUSE_SYMLINK, [cstr("l"), cstr("f")], "SYMLINK"],
      [F.FUSE_MKNOD, [le(16).u32(0, 0o100644).bytes, cstr("n")], "MKNOD"],
      [F.FUSE_MKDIR, [le(8).u32(0, 0o755).bytes, cstr("m")], "MKDIR"],
      [F.FUSE_UNLINK, [cstr("f")], "UNLINK"],
      [F.FUSE_RMDIR, [cstr("d")], "RMDIR"],
      [F.FUSE_RENAME, [le(8).u64(0, 1).bytes, cstr("f"), cstr("g")], "RENAME"],
      [F.FUSE_RENAME2, [le(16).u64(0, 1).bytes, cstr("f"), cstr("g")], "RENAME2"],
      [F.FUSE_LINK, [le(8).u64(0, f).bytes, cstr("h")], "LINK"],
      [F.FUSE_CREATE, [le(16).u32(0, O_RDWR | O_CREAT).u32(4, 0o644).bytes, cstr("c")], "CREATE"],
      [F.FUSE_WRITE, [le(40).u32(16, 1).bytes], "WRITE"],
      [F.FUSE_FALLOCATE, [le(32).u64(16, 1).bytes], "FALLOCATE"],
    ];
    for (const [op, args, name] of changes) {
      const nodeid = op === F.FUSE_SETATTR ? f : ROOT;
      assert.equal(d.send(op, args, { nodeid, data: op === F.FUSE_WRITE ? new Uint8Array(1) : undefined }).error, -F.EROFS, name);
    }
    assert.equal(d.open(f, O_WRONLY).error, -F.EROFS);
    assert.equal(d.open(f, O_RDWR).error, -F.EROFS);
    assert.equal(d.open(f, O_RDONLY | O_TRUNC).error, -F.EROFS);
    assert.equal(d.open(f, O_RDONLY | 0o2000).error, -F.EROFS, "O_APPEND");
    const o = d.open(f, O_RDONLY);
    assert.equal(new TextDecoder().decode(d.read(o.fh, 0, 100).body), "data");
    assert.equal(d.send(F.FUSE_FSYNC, [le(16).u64(0, o.fh).bytes]).error, 0);
    assert.equal(before, JSON.stringify(readdirSync(dir)) + readFileSync(join(dir, "f"), "utf8"));
  } finally {
    done();
  }
});
