/**
 * A hostile guest against the virtio-fs server: symlinks out of the share,
 * "..", names with '/', forged nodeids and file handles, broken chains and
 * lengths. Each gets an errno (or, for a chain with no FUSE header or no
 * room for a reply, GuestError), never an exception, and nothing outside
 * the share is reached.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../vm/memory.ts";
import { hostGuestMemory } from "../../test/support/host_memory.ts";
import { GuestError } from "../virtio/ring.ts";
import * as F from "./fuse.ts";
import { cstr, FuseDriver, le, shareRig } from "./fuse_driver.ts";
import { FsServer } from "./passthrough.ts";

const ROOT = F.FUSE_ROOT_ID;
const ENOTDIR = 20;

test("symlinks out of the share are handed back as symlinks, never followed", () => {
  const { dir, d, done } = shareRig((dir) => {
    symlinkSync("/etc", join(dir, "etc"));
    symlinkSync("/", join(dir, "slash"));
    symlinkSync("../../../../../../etc/passwd", join(dir, "up"));
  });
  try {
    for (const name of ["etc", "slash", "up"]) {
      const e = d.lookup(ROOT, name);
      assert.equal(e.mode & 0o170000, 0o120000, `${name} is a symlink`);
      assert.equal(d.lookup(e.nodeid, "passwd").error, -ENOTDIR, `no lookup through ${name}`);
      assert.equal(d.open(e.nodeid).error, -F.ELOOP, `OPEN ${name}`);
      assert.equal(d.open(e.nodeid, 0, true).error, -ENOTDIR, `OPENDIR ${name}`);
      assert.equal(d.send(F.FUSE_MKDIR, [le(8).bytes, cstr("x")], { nodeid: e.nodeid }).error, -ENOTDIR);
      assert.equal(d.create(e.nodeid, "x").error, -ENOTDIR);
    }
    assert.equal(new TextDecoder().decode(d.send(F.FUSE_READLINK, [], { nodeid: d.lookup(ROOT, "etc").nodeid }).body), "/etc");
    assert.ok(!existsSync(join(dir, "x")));
  } finally {
    done();
  }
});

test("'..' at the share's root is the root; '.' is the directory itself", () => {
  const { d, done } = shareRig((dir) => mkdirSync(join(dir, "sub")));
  try {
    assert.equal(d.lookup(ROOT, "..").nodeid, ROOT);
    assert.equal(d.lookup(ROOT, ".").nodeid, ROOT);
    const sub = d.lookup(ROOT, "sub").nodeid;
    assert.equal(d.lookup(sub, "..").nodeid, ROOT);
    assert.equal(d.lookup(sub, ".").nodeid, sub);
    // And nothing else takes "." or "..": they never name a new entry.
    assert.equal(d.mkdir(ROOT, "..").error, -F.EINVAL);
    assert.equal(d.create(sub, "..").error, -F.EINVAL);
    assert.equal(d.send(F.FUSE_UNLINK, [cstr("..")], { nodeid: sub }).error, -F.EINVAL);
    assert.equal(d.send(F.FUSE_RMDIR, [cstr(".")], { nodeid: sub }).error, -F.EINVAL);
    assert.equal(d.send(F.FUSE_RENAME, [le(8).u64(0, ROOT).bytes, cstr("sub"), cstr("..")]).error, -F.EINVAL);
    assert.equal(d.send(F.FUSE_SYMLINK, [cstr(".."), cstr("x")]).error, -F.EINVAL);
  } finally {
    done();
  }
});

test("'..' of a directory the host moved out of the share is refused", () => {
  const outside = mkdtempSync(join(tmpdir(), "vmm-fs-outside-"));
  const { dir, d, done } = shareRig((dir) => mkdirSync(join(dir, "a")));
  try {
    const a = d.lookup(ROOT, "a").nodeid;
    renameSync(join(dir, "a"), join(outside, "a"));
    assert.equal(d.lookup(a, "..").error, -F.EACCES);
  } finally {
    done();
    rmSync(outside, { recursive: true, force: true });
  }
});

test("a directory the host swaps for a symlink: the old nodeid stays on the old directory", () => {
  const { dir, d, done } = shareRig((dir) => {
    mkdirSync(join(dir, "d"));
    writeFileSync(join(dir, "d", "inside"), "x");
  });
  try {
    const old = d.lookup(ROOT, "d").nodeid;
    renameSync(join(dir, "d"), join(dir, "d.old"));
    symlinkSync("/etc", join(dir, "d"));
    assert.equal(d.lookup(old, "passwd").error, -F.ENOENT);
    assert.equal(d.lookup(old, "inside").error, 0);
    assert.equal(d.lookup(ROOT, "d").mode & 0o170000, 0o120000);
  } finally {
    done();
  }
});

test("names with '/', empty, over 255 bytes or without their NUL get an errno", () => {
  const { dir, d, done } = shareRig((dir) => mkdirSync(join(dir, "sub")));
  try {
    for (const name of ["a/b", "/etc", "../x", "sub/..", "x/", ""]) {
      assert.equal(d.lookup(ROOT, name).error, -F.EINVAL, `LOOKUP ${JSON.stringify(name)}`);
      assert.equal(d.mkdir(ROOT, name).error, -F.EINVAL, `MKDIR ${JSON.stringify(name)}`);
      assert.equal(d.send(F.FUSE_SYMLINK, [cstr(name), cstr("t")]).error, -F.EINVAL);
      assert.equal(d.send(F.FUSE_LINK, [le(8).u64(0, d.lookup(ROOT, "sub").nodeid).bytes, cstr(name)]).error, -F.EINVAL);
    }
    assert.equal(d.lookup(ROOT, "n".repeat(256)).error, -F.ENAMETOOLONG);
    assert.equal(d.mkdir(ROOT, "n".repeat(256)).error, -F.ENAMETOOLONG);
    assert.equal(d.mkdir(ROOT, "n".repeat(255)).error, 0, "255 bytes is fine");
    // A name is what comes before its NUL; none at all is malformed.
    assert.equal(d.send(F.FUSE_LOOKUP, [new TextEncoder().encode("sub")]).error, -F.EINVAL);
    assert.equal(d.send(F.FUSE_RENAME, [le(8).u64(0, ROOT).bytes, cstr("sub"), new TextEncoder().encode("other")]).error, -F.EINVAL);
    assert.equal(d.send(F.FUSE_LOOKUP, [new Uint8Array([0x73, 0x75, 0x62, 0, 0x2f, 0x65, 0])]).error, 0, "'sub' then junk");
    assert.ok(!existsSync(join(dir, "a")) && !existsSync(join(dir, "x")));
  } finally {
    done();
  }
});

test("forged nodeids and file handles get EBADF", () => {
  const { d, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "x"));
  try {
    for (const id of [0n, 2n, 3n, 999n, 1n << 53n, (1n << 53n) + 1n, 0xffff_ffff_ffff_ffffn]) {
      assert.equal(d.getattr(id).error, -F.EBADF, `GETATTR ${id}`);
      assert.equal(d.lookup(id, "f").error, -F.EBADF, `LOOKUP in ${id}`);
      assert.equal(d.open(id).error, -F.EBADF, `OPEN ${id}`);
      assert.equal(d.send(F.FUSE_STATFS, [], { nodeid: id }).error, -F.EBADF);
    }
    const f = d.lookup(ROOT, "f").nodeid;
    const { fh } = d.open(f);
    for (const bad of [0n, fh + 1n, 1n << 60n, 0xffff_ffff_ffff_ffffn]) {
      const fhArg = le(40).u64(0, bad).u32(16, 10).bytes;
      for (const op of [F.FUSE_READ, F.FUSE_FLUSH, F.FUSE_RELEASE, F.FUSE_FSYNC, F.FUSE_READDIR, F.FUSE_READDIRPLUS, F.FUSE_RELEASEDIR, F.FUSE_FSYNCDIR, F.FUSE_LSEEK]) {
        assert.equal(d.send(op, [fhArg]).error, -F.EBADF, `${F.FUSE_OPCODE_NAMES[op]} fh ${bad}`);
      }
      assert.equal(d.write(bad, 0, new Uint8Array(4)), -F.EBADF);
    }
    assert.equal(d.read(fh, 0, 1).error, 0, "the real handle still works");
  } finally {
    done();
  }
});

test("broken chains: no FUSE header or no room for a reply throw GuestError; bad lengths get EINVAL", () => {
  const { d, server, done } = shareRig((dir) => writeFileSync(join(dir, "f"), "x"));
  try {
    const { head } = d.message(F.FUSE_GETATTR, ROOT, [new Uint8Array(16)]);
    const at = 0x40000, reply = 0x1000_0000;
    d.mem.write(at, head);
    d.mem.write(at + 40, new Uint8Array(16));
    assert.throws(() => d.serveBuffers([{ gpa: at, len: 39 }, { gpa: reply, len: 200, write: true }], 0n, 200), (e: Error) => e instanceof GuestError && (e as GuestError<string>).kind === "ShortRequest");
    assert.throws(() => d.serveBuffers([{ gpa: at, len: 56 }, { gpa: reply, len: 15, write: true }], 0n, 15), (e: Error) => e instanceof GuestError && (e as GuestError<string>).kind === "NoReplySpace");
    // FORGET needs no reply space.
    assert.equal(d.send(F.FUSE_FORGET, [le(8).u64(0, 1).bytes], { noReply: true }).used, 0);
    // fuse_in_header.len past the readable buffers, or shorter than the header.
    assert.equal(d.send(F.FUSE_GETATTR, [new Uint8Array(16)], { len: 1000 }).error, -F.EINVAL);
    assert.equal(d.send(F.FUSE_GETATTR, [new Uint8Array(16)], { len: 20 }).error, -F.EINVAL);
    // A struct shorter than its op needs.
    assert.equal(d.send(F.FUSE_GETATTR, [new Uint8Array(8)]).error, -F.EINVAL);
    assert.equal(d.send(F.FUSE_READ, [new Uint8Array(39)]).error, -F.EINVAL);
    // No room for the entry: refused before the lookup is counted.
    const inodes = server.tables().inodes.length;
    assert.equal(d.send(F.FUSE_LOOKUP, [cstr("f")], { reply: 100 }).error, -F.EINVAL);
    assert.equal(server.tables().inodes.length, inodes);
    assert.equal(d.send(F.FUSE_CREATE, [le(16).u32(0, 0o102).bytes, cstr("c")], { reply: 128 }).error, -F.EINVAL);
    assert.equal(d.lookup(ROOT, "c").error, -F.ENOENT, "nothing created");
  } finally {
    done();
  }
});

/** Guest memory whose host addresses fail: an exception inside READ, a vmm bug as far as the server knows. */
class FailingMemory extends GuestMemory {
  override hostAddr(): number {
    throw new Error("Injected failure");
  }
}

test("an exception inside an op becomes EIO, logged once, and the server goes on", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-fs-"));
  writeFileSync(join(dir, "f"), "hello");
  const lines: string[] = [];
  const server = new FsServer({ root: dir, readOnly: false, log: (l) => lines.push(l) });
  try {
    const m = hostGuestMemory();
    const d = new FuseDriver(server, new FailingMemory(m.bytes, [...m.regions], m.hostBase));
    d.init();
    const { fh } = d.open(d.lookup(ROOT, "f").nodeid);
    assert.equal(d.read(fh, 0, 5).error, -F.EIO);
    assert.equal(d.read(fh, 0, 5).error, -F.EIO);
    assert.equal(server.internalErrors, 2);
    assert.equal(lines.length, 1);
    assert.match(lines[0], /internal error in READ.*Injected failure/s);
    assert.equal(d.getattr(ROOT).error, 0, "still serving");
    server.checkConsistent();
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("FsServer refuses a root that is not a directory", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-fs-"));
  try {
    writeFileSync(join(dir, "f"), "");
    assert.throws(() => new FsServer({ root: join(dir, "f"), readOnly: false }), /ENOTDIR/);
    assert.throws(() => new FsServer({ root: join(dir, "missing"), readOnly: false }), /ENOENT/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("close() is safe twice, and a closed server serves nothing", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-fs-"));
  try {
    const server = new FsServer({ root: dir, readOnly: false });
    const d = new FuseDriver(server);
    assert.equal(d.init().error, 0);
    server.close();
    server.close();
    assert.throws(() => d.getattr(ROOT), /closed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
