/**
 * The virtio-fs server (devices/fs/passthrough.ts) against a real temporary
 * directory: the protocol (INIT, DESTROY, FORGET, INTERRUPT, ENOSYS) and the
 * ops on names and inodes (node_ops.ts). Requests travel as descriptor
 * chains through a real split queue in host-backed guest memory
 * (fuse_driver.ts); results are checked with node:fs on the host.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { runtime } from "../../ffi/runtime.ts";
import { NativeBuf } from "../../ffi/libc.ts";
import * as F from "./fuse.ts";
import { cstr, FuseDriver, le, shareRig } from "./fuse_driver.ts";
import { FS_MAX_PAGES, FS_MAX_WRITE } from "./passthrough.ts";

const ROOT = F.FUSE_ROOT_ID;
const ENOTDIR = 20, ENOTEMPTY = 39;

// ---- protocol ----

test("INIT answers our version, the flags we take of those offered, max_write and max_pages", () => {
  const { d, server, done } = shareRig();
  try {
    d.send(F.FUSE_DESTROY, []);
    const r = d.init(36, F.FUSE_ASYNC_READ | F.FUSE_WRITEBACK_CACHE | F.FUSE_DO_READDIRPLUS | F.FUSE_EXPORT_SUPPORT);
    assert.equal(r.error, 0);
    assert.equal(r.body.length, F.INIT_OUT.SIZE);
    assert.equal(r.view.getUint32(F.INIT_OUT.MAJOR, true), 7);
    assert.equal(r.view.getUint32(F.INIT_OUT.MINOR, true), 38);
    // Only what was offered and we want: no writeback cache, no export support.
    assert.equal(r.view.getUint32(F.INIT_OUT.FLAGS, true), F.FUSE_ASYNC_READ | F.FUSE_DO_READDIRPLUS);
    assert.equal(r.view.getUint32(F.INIT_OUT.MAX_WRITE, true), FS_MAX_WRITE);
    assert.equal(r.view.getUint16(F.INIT_OUT.MAX_PAGES, true), FS_MAX_PAGES);
    assert.equal(r.view.getUint32(F.INIT_OUT.MAX_READAHEAD, true), 0x20000);
    assert.equal(server.minor, 36, "the smaller minor is used");
  } finally {
    done();
  }
});

test("INIT refuses old protocols, a second INIT and anything before INIT", () => {
  const { d, server, done } = shareRig();
  try {
    assert.equal(d.init().error, -F.EIO, "second INIT");
    d.send(F.FUSE_DESTROY, []);
    assert.equal(d.send(F.FUSE_GETATTR, [new Uint8Array(16)]).error, -F.EIO, "before INIT");
    assert.equal(d.init(30).error, -F.EPROTO, "7.30 predates virtio-fs");
    const old = d.send(F.FUSE_INIT, [le(64).u32(0, 6).u32(4, 38).bytes]);
    assert.equal(old.error, -F.EPROTO, "major 6");
    const newer = d.send(F.FUSE_INIT, [le(64).u32(0, 8).u32(4, 0).bytes]);
    assert.equal(newer.error, 0, "major 8 gets our major, to send INIT again");
    assert.equal(newer.view.getUint32(F.INIT_OUT.MAJOR, true), 7);
    assert.equal(server.minor, 0, "not initialised yet");
    assert.equal(d.send(F.FUSE_INIT, [new Uint8Array(8)]).error, -F.EINVAL, "init_in shorter than 16 bytes");
    assert.equal(d.init().error, 0);
  } finally {
    done();
  }
});

test("DESTROY closes every inode and handle; INIT starts over", () => {
  const { d, server, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "x"));
  try {
    const e = d.lookup(ROOT, "f");
    d.open(e.nodeid);
    d.open(ROOT, 0, true);
    assert.equal(server.tables().inodes.length, 2);
    assert.equal(server.tables().handles.length, 2);
    assert.equal(d.send(F.FUSE_DESTROY, []).error, 0);
    assert.deepEqual(server.tables().handles, []);
    assert.equal(server.tables().inodes.length, 1, "only the root");
    assert.equal(d.init().error, 0);
    assert.equal(d.getattr(e.nodeid).error, -F.EBADF, "nodeids of the old session are gone");
    assert.ok(d.lookup(ROOT, "f").nodeid > e.nodeid, "nodeids are not reused");
  } finally {
    done();
  }
});

test("close() gives back the server's native buffers: a device reset makes a new server", () => {
  const before = NativeBuf.liveCount;
  const { d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "x"));
  d.lookup(ROOT, "f");
  assert.ok(NativeBuf.liveCount > before);
  done();
  assert.equal(NativeBuf.liveCount, before);
});

test("FORGET, BATCH_FORGET and INTERRUPT get no reply; lookups are counted", () => {
  const { d, server, done } = shareRig((dir) => ["a", "b"].forEach((n) => writeFileSync(join(dir, n), n)));
  try {
    const a = d.lookup(ROOT, "a").nodeid;
    assert.equal(d.lookup(ROOT, "a").nodeid, a, "one nodeid per host file");
    const b = d.lookup(ROOT, "b").nodeid;
    const forget = (id: bigint, n: bigint) => d.send(F.FUSE_FORGET, [le(8).u64(0, n).bytes], { nodeid: id, noReply: true });
    assert.equal(forget(a, 1n).used, 0);
    assert.equal(d.getattr(a).error, 0, "one lookup left");
    forget(a, 1n);
    assert.equal(d.getattr(a).error, -F.EBADF, "forgotten");
    forget(ROOT, 100n);
    forget(999n, 1n);
    forget(0xffff_ffff_ffff_ffffn, 1n);
    assert.equal(d.getattr(ROOT).error, 0, "the root is never forgotten");
    // BATCH_FORGET: its count claims more entries than were sent; the ones there are done.
    const c = d.lookup(ROOT, "a").nodeid;
    const batch = le(8 + 32).u32(0, 1000).u64(8, b).u64(16, 1).u64(24, c).u64(32, 5).bytes;
    assert.equal(d.send(F.FUSE_BATCH_FORGET, [batch], { noReply: true }).used, 0);
    assert.equal(d.getattr(b).error, -F.EBADF);
    assert.equal(d.getattr(c).error, -F.EBADF);
    assert.equal(d.send(F.FUSE_INTERRUPT, [le(8).u64(0, 1).bytes]).used, 0, "INTERRUPT: nothing to interrupt");
    assert.equal(server.tables().inodes.length, 1);
  } finally {
    done();
  }
});

test("opcodes we do not serve answer ENOSYS", () => {
  const { d, done } = shareRig();
  try {
    for (const op of [F.FUSE_SETXATTR, F.FUSE_REMOVEXATTR, F.FUSE_GETLK, F.FUSE_SETLK, F.FUSE_ACCESS, F.FUSE_IOCTL, F.FUSE_POLL, F.FUSE_COPY_FILE_RANGE, F.FUSE_SETUPMAPPING, F.FUSE_SYNCFS, F.FUSE_TMPFILE, 0, 7, 19, 4096, 0xffff_ffff]) {
      assert.equal(d.send(op, [new Uint8Array(64)]).error, -F.ENOSYS, `opcode ${op}`);
    }
  } finally {
    done();
  }
});

// ---- ops on names and inodes ----

test("LOOKUP answers the host file's attributes; ENOENT, ENOTDIR as the host says", () => {
  const { dir, d, done } = shareRig((dir) => {
    mkdirSync(join(dir, "sub"));
    writeFileSync(join(dir, "sub", "f"), "12345");
  });
  try {
    const sub = d.lookup(ROOT, "sub");
    const f = d.lookup(sub.nodeid, "f");
    const st = statSync(join(dir, "sub", "f"), { bigint: true });
    assert.equal(f.ino, st.ino);
    assert.equal(f.size, 5n);
    assert.equal(f.mode, Number(st.mode));
    assert.equal(f.nlink, 1);
    assert.equal(d.lookup(ROOT, "missing").error, -F.ENOENT);
    assert.equal(d.lookup(f.nodeid, "x").error, -ENOTDIR);
  } finally {
    done();
  }
});

test("GETATTR by nodeid and by file handle", () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "abc"));
  try {
    const root = d.getattr(ROOT);
    assert.equal(root.ino, statSync(dir, { bigint: true }).ino);
    assert.equal(root.mode & 0o170000, 0o040000);
    const f = d.lookup(ROOT, "f");
    const { fh } = d.open(f.nodeid);
    const r = d.send(F.FUSE_GETATTR, [le(16).u32(0, F.FUSE_GETATTR_FH).u64(8, fh).bytes], { nodeid: f.nodeid });
    assert.equal(r.error, 0);
    assert.equal(r.view.getBigUint64(F.ATTR_OUT.ATTR + F.ATTR.SIZE_, true), 3n);
    assert.equal(r.view.getBigUint64(F.ATTR_OUT.ATTR_VALID, true), 1n, "attributes cached 1 s");
    const bad = d.send(F.FUSE_GETATTR, [le(16).u32(0, F.FUSE_GETATTR_FH).u64(8, 77).bytes], { nodeid: f.nodeid });
    assert.equal(bad.error, -F.EBADF);
  } finally {
    done();
  }
});

test("cache=always lets the guest keep entries and attributes for a day; auto, for a second", () => {
  for (const [cache, secs] of [["auto", 1n], ["always", 86400n]] as const) {
    const { d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "abc"), true, cache);
    try {
      const r = d.send(F.FUSE_LOOKUP, [cstr("f")], { nodeid: ROOT });
      assert.equal(r.error, 0);
      assert.equal(r.view.getBigUint64(F.ENTRY_OUT.ENTRY_VALID, true), secs, `${cache}: the name`);
      assert.equal(r.view.getBigUint64(F.ENTRY_OUT.ATTR_VALID, true), secs, `${cache}: the lookup's attributes`);
      const nodeid = r.view.getBigUint64(F.ENTRY_OUT.NODEID, true);
      const a = d.send(F.FUSE_GETATTR, [le(16).bytes], { nodeid });
      assert.equal(a.view.getBigUint64(F.ATTR_OUT.ATTR_VALID, true), secs, `${cache}: GETATTR`);
    } finally {
      done();
    }
  }
});

test("cache=always answers a missing name with a negative entry the guest keeps; auto, with ENOENT", () => {
  const { d, done } = shareRig(() => {}, true, "always");
  try {
    const r = d.send(F.FUSE_LOOKUP, [cstr("missing")], { nodeid: ROOT });
    assert.equal(r.error, 0, "nodeid 0 is FUSE's ENOENT that holds");
    assert.equal(r.body.length, F.ENTRY_OUT.SIZE);
    assert.equal(r.view.getBigUint64(F.ENTRY_OUT.NODEID, true), 0n);
    assert.equal(r.view.getBigUint64(F.ENTRY_OUT.ENTRY_VALID, true), 86400n, "kept for a day, as names are");
    assert.equal(r.view.getBigUint64(F.ENTRY_OUT.ATTR_VALID, true), 0n);
    assert.equal(d.lookup(ROOT, "missing").error, 0);
  } finally {
    done();
  }
  const auto = shareRig(() => {}, true, "auto");
  try {
    assert.equal(auto.d.lookup(ROOT, "missing").error, -F.ENOENT);
  } finally {
    auto.done();
  }
});

function setattr(d: FuseDriver, nodeid: bigint, fill: (b: ReturnType<typeof le>) => unknown) {
  const b = le(F.SETATTR_IN.SIZE);
  fill(b);
  return d.send(F.FUSE_SETATTR, [b.bytes], { nodeid });
}

test("SETATTR changes mode, owner, size (with and without a handle) and times", () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "0123456789"));
  try {
    const p = join(dir, "f");
    const f = d.lookup(ROOT, "f").nodeid;
    assert.equal(setattr(d, f, (b) => b.u32(F.SETATTR_IN.VALID, F.FATTR_MODE).u32(F.SETATTR_IN.MODE, 0o100600)).error, 0);
    assert.equal(statSync(p).mode & 0o7777, 0o600);
    if (process.getuid?.() === 0) {
      assert.equal(setattr(d, f, (b) => b.u32(F.SETATTR_IN.VALID, F.FATTR_UID | F.FATTR_GID).u32(F.SETATTR_IN.UID, 1234).u32(F.SETATTR_IN.GID, 4321)).error, 0);
      assert.equal(statSync(p).uid, 1234);
      assert.equal(statSync(p).gid, 4321);
    }
    const r = setattr(d, f, (b) => b.u32(F.SETATTR_IN.VALID, F.FATTR_SIZE).u64(F.SETATTR_IN.SIZE_, 4));
    assert.equal(r.error, 0);
    assert.equal(r.view.getBigUint64(F.ATTR_OUT.ATTR + F.ATTR.SIZE_, true), 4n, "the reply has the new attributes");
    assert.equal(readFileSync(p, "utf8"), "0123");
    const { fh } = d.open(f, 2 /* O_RDWR */);
    assert.equal(setattr(d, f, (b) => b.u32(F.SETATTR_IN.VALID, F.FATTR_SIZE | F.FATTR_FH).u64(F.SETATTR_IN.FH, fh).u64(F.SETATTR_IN.SIZE_, 2)).error, 0);
    assert.equal(readFileSync(p, "utf8"), "01");
    assert.equal(setattr(d, f, (b) => b.u32(F.SETATTR_IN.VALID, F.FATTR_SIZE | F.FATTR_FH).u64(F.SETATTR_IN.FH, 999)).error, -F.EBADF);
    assert.equal(setattr(d, ROOT, (b) => b.u32(F.SETATTR_IN.VALID, F.FATTR_SIZE)).error, -F.EISDIR);
    const t = setattr(d, f, (b) =>
      b.u32(F.SETATTR_IN.VALID, F.FATTR_ATIME | F.FATTR_MTIME).u64(F.SETATTR_IN.ATIME, 1_000_000).u32(F.SETATTR_IN.ATIMENSEC, 5)
        .u64(F.SETATTR_IN.MTIME, 2_000_000).u32(F.SETATTR_IN.MTIMENSEC, 7));
    assert.equal(t.error, 0);
    const a = F.ATTR_OUT.ATTR;
    assert.deepEqual(
      [t.view.getBigUint64(a + F.ATTR.ATIME, true), t.view.getUint32(a + F.ATTR.ATIMENSEC, true), t.view.getBigUint64(a + F.ATTR.MTIME, true), t.view.getUint32(a + F.ATTR.MTIMENSEC, true)],
      [1_000_000n, 5, 2_000_000n, 7],
    );
    assert.equal(Math.floor(statSync(p).mtimeMs), 2_000_000_000);
    assert.equal(setattr(d, f, (b) => b.u32(F.SETATTR_IN.VALID, F.FATTR_MTIME_NOW)).error, 0);
    assert.ok(Math.abs(statSync(p).mtimeMs - Date.now()) < 10_000, "mtime is now");
    assert.equal(setattr(d, f, (b) => b.u32(F.SETATTR_IN.VALID, F.FATTR_MTIME).u32(F.SETATTR_IN.MTIMENSEC, 1e9)).error, -F.EINVAL);
  } finally {
    done();
  }
});

test("SYMLINK stores any target as text; READLINK reads it back", () => {
  const { dir, d, done } = shareRig();
  try {
    const r = d.send(F.FUSE_SYMLINK, [cstr("l"), cstr("../../etc/passwd")]);
    const e = FuseDriver.entry(r);
    assert.equal(e.error, 0);
    assert.equal(e.mode & 0o170000, 0o120000);
    assert.equal(readlinkSync(join(dir, "l")), "../../etc/passwd");
    const rl = d.send(F.FUSE_READLINK, [], { nodeid: e.nodeid });
    assert.equal(new TextDecoder().decode(rl.body), "../../etc/passwd");
    assert.equal(d.send(F.FUSE_READLINK, [], { nodeid: ROOT }).error, -F.EINVAL, "not a symlink");
    assert.equal(d.send(F.FUSE_SYMLINK, [cstr("e"), cstr("")]).error, -F.ENOENT);
    assert.equal(d.send(F.FUSE_SYMLINK, [cstr("l"), cstr("x")]).error, -F.EEXIST);
    assert.equal(d.send(F.FUSE_SYMLINK, [cstr("long"), cstr("x".repeat(4096))]).error, -F.ENAMETOOLONG);
  } finally {
    done();
  }
});

test("MKNOD makes files, FIFOs and sockets, never device nodes", () => {
  const { dir, d, done } = shareRig();
  try {
    const mknod = (name: string, mode: number, rdev = 0) =>
      FuseDriver.entry(d.send(F.FUSE_MKNOD, [le(16).u32(0, mode).u32(4, rdev).bytes, cstr(name)]));
    assert.equal(mknod("fifo", 0o010644).error, 0);
    assert.ok(lstatSync(join(dir, "fifo")).isFIFO());
    assert.equal(mknod("reg", 0o100640).error, 0);
    assert.equal(lstatSync(join(dir, "reg")).mode & 0o7777, 0o640);
    assert.equal(mknod("sock", 0o140600).error, 0);
    assert.equal(mknod("null", 0o020666, 0x103).error, -F.EPERM, "character device");
    assert.equal(mknod("sda", 0o060600, 0x800).error, -F.EPERM, "block device");
    assert.equal(mknod("dir", 0o040755).error, -F.EINVAL);
  } finally {
    done();
  }
});

test("MKDIR gives the mode asked for (the guest applied its umask; ours must not) and the caller's owner", () => {
  const { dir, d, done } = shareRig();
  try {
    d.uid = 1000;
    d.gid = 1001;
    const e = d.mkdir(ROOT, "open", 0o777);
    assert.equal(e.error, 0);
    const st = statSync(join(dir, "open"));
    assert.equal(st.mode & 0o7777, 0o777);
    if (process.getuid?.() === 0) assert.deepEqual([st.uid, st.gid, e.uid, e.gid], [1000, 1001, 1000, 1001]);
    assert.equal(d.mkdir(ROOT, "open").error, -F.EEXIST);
    assert.equal(d.mkdir(e.nodeid, "inner", 0o700).error, 0);
    assert.equal(statSync(join(dir, "open", "inner")).mode & 0o7777, 0o700);
  } finally {
    done();
  }
});

test("UNLINK and RMDIR remove entries; a nodeid stays valid until forgotten", () => {
  const { dir, d, done } = shareRig((dir) => {
    writeFileSync(join(dir, "f"), "x");
    mkdirSync(join(dir, "d"));
    mkdirSync(join(dir, "full"));
    writeFileSync(join(dir, "full", "x"), "");
  });
  try {
    const f = d.lookup(ROOT, "f").nodeid;
    assert.equal(d.send(F.FUSE_UNLINK, [cstr("f")]).error, 0);
    assert.throws(() => lstatSync(join(dir, "f")));
    assert.equal(d.getattr(f).error, 0, "still held");
    assert.equal(d.send(F.FUSE_UNLINK, [cstr("f")]).error, -F.ENOENT);
    assert.equal(d.send(F.FUSE_UNLINK, [cstr("d")]).error, -F.EISDIR);
    assert.equal(d.send(F.FUSE_RMDIR, [cstr("d")]).error, 0);
    assert.equal(d.send(F.FUSE_RMDIR, [cstr("full")]).error, -ENOTEMPTY);
  } finally {
    done();
  }
});

test("RENAME and RENAME2 move entries between directories; NOREPLACE, EXCHANGE; no WHITEOUT", () => {
  const { dir, d, done } = shareRig((dir) => {
    mkdirSync(join(dir, "a"));
    writeFileSync(join(dir, "x"), "x");
    writeFileSync(join(dir, "y"), "y");
  });
  try {
    const a = d.lookup(ROOT, "a").nodeid;
    const rename = (from: string, newdir: bigint, to: string) => d.send(F.FUSE_RENAME, [le(8).u64(0, newdir).bytes, cstr(from), cstr(to)]);
    const rename2 = (from: string, to: string, flags: number) => d.send(F.FUSE_RENAME2, [le(16).u64(0, ROOT).u32(8, flags).bytes, cstr(from), cstr(to)]);
    assert.equal(rename("x", a, "moved").error, 0);
    assert.equal(readFileSync(join(dir, "a", "moved"), "utf8"), "x");
    assert.equal(rename("nope", a, "z").error, -F.ENOENT);
    assert.equal(rename("y", 4242n, "z").error, -F.EBADF, "forged newdir");
    writeFileSync(join(dir, "x"), "x2");
    assert.equal(rename2("x", "y", 1 /* RENAME_NOREPLACE */).error, -F.EEXIST);
    assert.equal(rename2("x", "y", 2 /* RENAME_EXCHANGE */).error, 0);
    assert.deepEqual([readFileSync(join(dir, "x"), "utf8"), readFileSync(join(dir, "y"), "utf8")], ["y", "x2"]);
    assert.equal(rename2("x", "w", 4 /* RENAME_WHITEOUT */).error, -F.EINVAL);
  } finally {
    done();
  }
});

test("LINK adds a name to an inode and answers the same nodeid", () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "x"));
  try {
    const f = d.lookup(ROOT, "f").nodeid;
    const r = FuseDriver.entry(d.send(F.FUSE_LINK, [le(8).u64(0, f).bytes, cstr("g")]));
    assert.equal(r.error, 0);
    assert.equal(r.nodeid, f);
    assert.equal(r.nlink, 2);
    assert.equal(statSync(join(dir, "g")).ino, statSync(join(dir, "f")).ino);
    assert.equal(d.send(F.FUSE_LINK, [le(8).u64(0, ROOT).bytes, cstr("h")]).error, -F.EPERM, "a directory");
    assert.equal(d.send(F.FUSE_LINK, [le(8).u64(0, 31337).bytes, cstr("h")]).error, -F.EBADF, "forged old nodeid");
  } finally {
    done();
  }
});

test("STATFS answers the host file system's numbers", () => {
  const { d, done } = shareRig();
  try {
    const r = d.send(F.FUSE_STATFS, []);
    assert.equal(r.error, 0);
    assert.ok(r.view.getBigUint64(F.KSTATFS.BLOCKS, true) > 0n);
    assert.ok(r.view.getUint32(F.KSTATFS.BSIZE, true) >= 512);
    assert.equal(r.view.getUint32(F.KSTATFS.NAMELEN, true), 255);
  } finally {
    done();
  }
});

const xattr = runtime.dlopen("libc.so.6", {
  setxattr: { args: ["u64", "u64", "u64", "u64", "i32"], result: "i32" },
});

test("GETXATTR and LISTXATTR: size 0 asks the length; too small is ERANGE; missing is ENODATA", async () => {
  const { dir, d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "x"));
  try {
    const path = NativeBuf.cstring(join(dir, "f")), name = NativeBuf.cstring("user.vmm"), value = NativeBuf.cstring("hello");
    if (xattr.setxattr(path.addr, name.addr, value.addr, 5n, 0) !== 0) return; // no user xattrs on this file system
    const f = d.lookup(ROOT, "f").nodeid;
    const get = (size: number, n = "user.vmm") => d.send(F.FUSE_GETXATTR, [le(8).u32(0, size).bytes, cstr(n)], { nodeid: f });
    assert.equal(get(0).view.getUint32(0, true), 5);
    assert.equal(new TextDecoder().decode(get(100).body), "hello");
    assert.equal(get(2).error, -F.ERANGE);
    assert.equal(get(100, "user.none").error, -F.ENODATA);
    assert.equal(get(100, "user." + "x".repeat(300)).error, -F.ERANGE);
    const list = (size: number) => d.send(F.FUSE_LISTXATTR, [le(8).u32(0, size).bytes], { nodeid: f });
    assert.equal(list(0).view.getUint32(0, true), 9);
    assert.equal(new TextDecoder().decode(list(100).body), "user.vmm\0");
  } finally {
    done();
  }
});
