/**
 * FUSE ops on names and inodes (include/uapi/linux/fuse.h): LOOKUP, GETATTR,
 * SETATTR, READLINK, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, RENAME2,
 * LINK, STATFS, GETXATTR, LISTXATTR. Each takes the share, the request, its
 * reply and the inode the request's nodeid names (already checked), and
 * returns the used length. Every name goes through `checkName` and is
 * resolved by the share (share.ts says why that keeps the guest inside).
 */
import {
  AT_REMOVEDIR,
  O_CLOEXEC,
  O_WRONLY,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
  STATFS,
  UTIME_NOW,
  UTIME_OMIT,
  XATTR_SIZE_MAX,
} from "../../ffi/fs.ts";
import {
  ATTR_OUT,
  EBADF,
  EINVAL,
  EISDIR,
  ENAMETOOLONG,
  ENOENT,
  ENTRY_OUT,
  EPERM,
  ERANGE,
  FATTR_ATIME,
  FATTR_ATIME_NOW,
  FATTR_FH,
  FATTR_GID,
  FATTR_MODE,
  FATTR_MTIME,
  FATTR_MTIME_NOW,
  FATTR_SIZE,
  FATTR_UID,
  FUSE_GETATTR_FH,
  GETATTR_IN,
  GETXATTR_IN,
  GETXATTR_OUT,
  KSTATFS,
  LINK_IN,
  MKDIR_IN,
  MKNOD_IN,
  OUT_HEADER,
  RENAME2_IN,
  RENAME_IN,
  SETATTR_IN,
} from "./fuse.ts";
import { type FuseReply, type FuseRequest, names } from "./message.ts";
import type { Inode } from "./inodes.ts";
import { checkName, isDots, NAME_MAX, type Share } from "./share.ts";

/** One op: the used length of its reply. */
export type Op = (s: Share, req: FuseRequest, r: FuseReply, inode: Inode) => number;

const H = OUT_HEADER.SIZE; // scratch offset of the reply body
/** PATH_MAX less its NUL: the longest symlink target. */
const TARGET_MAX = 4095;
/** XATTR_NAME_MAX. */
const XATTR_NAME_MAX = 255;

/** Reply with an entry for `res` (an inode whose attributes are in `sys.stat`), or its errno. */
export function entryReply(s: Share, r: FuseReply, res: Inode | number): number {
  if (typeof res === "number") return r.error(-res);
  r.clear(ENTRY_OUT.SIZE);
  s.writeEntry(r.view, H, res);
  return r.ok(ENTRY_OUT.SIZE);
}

/** Reply with fuse_attr_out from `sys.stat`. */
function attrReply(s: Share, r: FuseReply): number {
  r.clear(ATTR_OUT.SIZE);
  r.view.setBigUint64(H + ATTR_OUT.ATTR_VALID, s.timeout, true);
  s.writeAttr(r.view, H + ATTR_OUT.ATTR);
  return r.ok(ATTR_OUT.SIZE);
}

/** The single name after a struct of `at` bytes, checked; or the errno. */
function oneName(req: FuseRequest, at: number): Uint8Array | number {
  const n = names(req, at, 1);
  if (!n) return EINVAL;
  return checkName(n[0]) || n[0];
}

export const lookup: Op = (s, req, r, dir) => {
  const n = names(req, 0, 1);
  if (!n) return r.error(EINVAL);
  const name = n[0];
  if (name.length > NAME_MAX) return r.error(ENAMETOOLONG);
  if (isDots(name)) {
    // The kernel sends "." and ".." only with FUSE_EXPORT_SUPPORT, which we do
    // not offer; a guest that asks anyway gets the directory or its parent,
    // and at the share's root ".." is the root.
    if (name.length === 1) {
      s.inodes.ref(dir);
      const e = s.sys.fstat(dir.fd);
      if (e < 0) {
        s.inodes.forget(BigInt(dir.nodeid), 1n);
        return r.error(-e);
      }
      return entryReply(s, r, dir);
    }
    return entryReply(s, r, s.dotdot(dir));
  }
  const e = checkName(name);
  if (e) return r.error(e);
  const res = s.lookup(dir, name);
  if (res === -ENOENT && s.negativeTimeout > 0n) {
    // nodeid 0 with a timeout: the guest keeps "not there" (Share.negativeTimeout).
    r.clear(ENTRY_OUT.SIZE);
    r.view.setBigUint64(H + ENTRY_OUT.ENTRY_VALID, s.negativeTimeout, true);
    return r.ok(ENTRY_OUT.SIZE);
  }
  return entryReply(s, r, res);
};

export const getattr: Op = (s, req, r, inode) => {
  let fd = inode.fd;
  if (req.view.getUint32(GETATTR_IN.GETATTR_FLAGS, true) & FUSE_GETATTR_FH) {
    const h = s.handles.get(req.view.getBigUint64(GETATTR_IN.FH, true), false);
    if (!h) return r.error(EBADF);
    fd = h.fd;
  }
  const e = s.sys.fstat(fd);
  return e < 0 ? r.error(-e) : attrReply(s, r);
};

/** SETATTR in virtiofsd's order: mode, owner, size, times; then the new attributes. */
export const setattr: Op = (s, req, r, inode) => {
  const v = req.view;
  const valid = v.getUint32(SETATTR_IN.VALID, true);
  const sys = s.sys;
  let h = null;
  if (valid & FATTR_FH) {
    h = s.handles.get(v.getBigUint64(SETATTR_IN.FH, true), false);
    if (!h) return r.error(EBADF);
  }
  let e = 0;
  if (valid & FATTR_MODE) e = sys.chmodFd(inode.fd, v.getUint32(SETATTR_IN.MODE, true) & 0o7777);
  if (!e && valid & (FATTR_UID | FATTR_GID)) {
    const uid = valid & FATTR_UID ? v.getUint32(SETATTR_IN.UID, true) : -1;
    const gid = valid & FATTR_GID ? v.getUint32(SETATTR_IN.GID, true) : -1;
    e = sys.chownFd(inode.fd, uid, gid);
  }
  if (!e && valid & FATTR_SIZE) {
    const size = BigInt.asIntN(64, v.getBigUint64(SETATTR_IN.SIZE_, true));
    if (inode.type !== S_IFREG) e = -(inode.type === S_IFDIR ? EISDIR : EINVAL);
    else if (h?.writable) e = sys.ftruncate(h.fd, size);
    else {
      const fd = s.reopen(inode, O_WRONLY | O_CLOEXEC);
      e = fd < 0 ? fd : sys.ftruncate(fd, size);
      if (fd >= 0) sys.close(fd);
    }
  }
  if (!e && valid & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)) {
    // A guest's nanoseconds past 10^9 - 1 could read as UTIME_NOW or UTIME_OMIT: refused (-1).
    const time = (set: number, now: number, sec: number, nsec: number): [bigint, number] =>
      valid & now ? [0n, UTIME_NOW] : valid & set ? [BigInt.asIntN(64, v.getBigUint64(sec, true)), v.getUint32(nsec, true) > 999_999_999 ? -1 : v.getUint32(nsec, true)] : [0n, UTIME_OMIT];
    const [as, ans] = time(FATTR_ATIME, FATTR_ATIME_NOW, SETATTR_IN.ATIME, SETATTR_IN.ATIMENSEC);
    const [ms, mns] = time(FATTR_MTIME, FATTR_MTIME_NOW, SETATTR_IN.MTIME, SETATTR_IN.MTIMENSEC);
    e = ans < 0 || mns < 0 ? -EINVAL : sys.utimesFd(inode.fd, as, ans, ms, mns);
  }
  if (e < 0) return r.error(-e);
  e = sys.fstat(inode.fd);
  return e < 0 ? r.error(-e) : attrReply(s, r);
};

export const readlink: Op = (s, _req, r, inode) => {
  if (inode.type !== S_IFLNK) return r.error(EINVAL);
  const n = s.sys.readlinkFd(inode.fd);
  if (n < 0) return r.error(-n);
  if (n > r.room) return r.error(ERANGE);
  r.body.set(s.sys.data.bytes.subarray(0, n));
  return r.ok(n);
};

/** Finish a MKNOD, MKDIR or SYMLINK that made `name` in `dir`: settle it and answer its entry. */
function made(s: Share, req: FuseRequest, r: FuseReply, dir: Inode, name: Uint8Array, mode: number, isDir: boolean): number {
  const fd = s.openEntry(dir, name);
  if (fd < 0) return r.error(-fd);
  const e = s.settle(fd, req.uid, req.gid, mode);
  if (e < 0) {
    s.sys.close(fd);
    s.unmake(dir, name, isDir);
    return r.error(-e);
  }
  return entryReply(s, r, s.adopt(fd));
}

export const symlink: Op = (s, req, r, dir) => {
  // fuse_symlink(): in_args[0] is the new entry's name, in_args[1] the target.
  const n = names(req, 0, 2);
  if (!n) return r.error(EINVAL);
  const [name, target] = n;
  const e = checkName(name);
  if (e) return r.error(e);
  if (target.length === 0) return r.error(ENOENT);
  if (target.length > TARGET_MAX) return r.error(ENAMETOOLONG);
  // The target is stored as text and never followed by vmm, whatever it says.
  const rc = s.sys.symlinkat(target, dir.fd, name);
  return rc < 0 ? r.error(-rc) : made(s, req, r, dir, name, 0o777, false);
};

export const mknod: Op = (s, req, r, dir) => {
  const name = oneName(req, MKNOD_IN.SIZE);
  if (typeof name === "number") return r.error(name);
  const mode = req.view.getUint32(MKNOD_IN.MODE, true);
  const type = mode & S_IFMT;
  // Device nodes are refused: one made in the share would let the guest open
  // the host's device through it (vmm itself reopens only regular files,
  // but any other host process using the share might not).
  if (type === S_IFCHR || type === S_IFBLK) return r.error(EPERM);
  if (type !== 0 && type !== S_IFREG && type !== S_IFIFO && type !== S_IFSOCK) return r.error(EINVAL);
  const rc = s.sys.mknodat(dir.fd, name, type | (mode & 0o7777), 0n);
  return rc < 0 ? r.error(-rc) : made(s, req, r, dir, name, mode, false);
};

export const mkdir: Op = (s, req, r, dir) => {
  const name = oneName(req, MKDIR_IN.SIZE);
  if (typeof name === "number") return r.error(name);
  const mode = req.view.getUint32(MKDIR_IN.MODE, true) & 0o7777;
  const rc = s.sys.mkdirat(dir.fd, name, mode);
  return rc < 0 ? r.error(-rc) : made(s, req, r, dir, name, mode, true);
};

function remove(s: Share, req: FuseRequest, r: FuseReply, dir: Inode, flags: number): number {
  const name = oneName(req, 0);
  if (typeof name === "number") return r.error(name);
  const rc = s.sys.unlinkat(dir.fd, name, flags);
  return rc < 0 ? r.error(-rc) : r.ok(0);
}

export const unlink: Op = (s, req, r, dir) => remove(s, req, r, dir, 0);
export const rmdir: Op = (s, req, r, dir) => remove(s, req, r, dir, AT_REMOVEDIR);

function rename(s: Share, req: FuseRequest, r: FuseReply, dir: Inode, at: number, flags: number): number {
  // RENAME_WHITEOUT would make a character device: refused like MKNOD's.
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return r.error(EINVAL);
  const newdir = s.inodes.get(req.view.getBigUint64(RENAME_IN.NEWDIR, true));
  if (!newdir) return r.error(EBADF);
  const n = names(req, at, 2);
  if (!n) return r.error(EINVAL);
  const e = checkName(n[0]) || checkName(n[1]);
  if (e) return r.error(e);
  const rc = s.sys.renameat2(dir.fd, n[0], newdir.fd, n[1], flags);
  return rc < 0 ? r.error(-rc) : r.ok(0);
}

export const rename1: Op = (s, req, r, dir) => rename(s, req, r, dir, RENAME_IN.SIZE, 0);
export const rename2: Op = (s, req, r, dir) => rename(s, req, r, dir, RENAME2_IN.SIZE, req.view.getUint32(RENAME2_IN.FLAGS, true));

export const link: Op = (s, req, r, dir) => {
  const old = s.inodes.get(req.view.getBigUint64(LINK_IN.OLDNODEID, true));
  if (!old) return r.error(EBADF);
  const name = oneName(req, LINK_IN.SIZE);
  if (typeof name === "number") return r.error(name);
  if (old.type === S_IFDIR) return r.error(EPERM);
  const rc = s.sys.linkFd(old.fd, dir.fd, name);
  return rc < 0 ? r.error(-rc) : entryReply(s, r, s.lookup(dir, name));
};

export const statfs: Op = (s, _req, r, inode) => {
  const e = s.sys.fstatfs(inode.fd);
  if (e < 0) return r.error(-e);
  const f = s.sys.statfs.view, o = r.view;
  r.clear(KSTATFS.SIZE);
  const u64 = (to: number, from: number) => o.setBigUint64(H + to, f.getBigUint64(from, true), true);
  const u32 = (to: number, from: number) => o.setUint32(H + to, Number(f.getBigInt64(from, true)) >>> 0, true);
  u64(KSTATFS.BLOCKS, STATFS.BLOCKS);
  u64(KSTATFS.BFREE, STATFS.BFREE);
  u64(KSTATFS.BAVAIL, STATFS.BAVAIL);
  u64(KSTATFS.FILES, STATFS.FILES);
  u64(KSTATFS.FFREE, STATFS.FFREE);
  u32(KSTATFS.BSIZE, STATFS.BSIZE);
  u32(KSTATFS.NAMELEN, STATFS.NAMELEN);
  u32(KSTATFS.FRSIZE, STATFS.FRSIZE);
  return r.ok(KSTATFS.SIZE);
};

/**
 * GETXATTR and LISTXATTR answer in two ways (fuse.h): asked with size 0,
 * the value's length in fuse_getxattr_out; else the value itself, or ERANGE
 * when it is longer than size.
 */
function xattrReply(s: Share, r: FuseReply, size: number, call: (size: number) => number): number {
  if (size === 0) {
    const n = call(0);
    if (n < 0) return r.error(-n);
    if (r.room < GETXATTR_OUT.SIZE) return r.error(EINVAL);
    r.clear(GETXATTR_OUT.SIZE);
    r.view.setUint32(H + GETXATTR_OUT.SIZE_, n, true);
    return r.ok(GETXATTR_OUT.SIZE);
  }
  // Size 0 would ask for the length: with no room for a value, the answer is ERANGE.
  const room = Math.min(size, r.room, XATTR_SIZE_MAX);
  if (room === 0) return r.error(ERANGE);
  const n = call(room);
  if (n < 0) return r.error(-n);
  r.body.set(s.sys.data.bytes.subarray(0, n));
  return r.ok(n);
}

export const getxattr: Op = (s, req, r, inode) => {
  const n = names(req, GETXATTR_IN.SIZE, 1);
  if (!n || n[0].length === 0) return r.error(EINVAL);
  if (n[0].length > XATTR_NAME_MAX) return r.error(ERANGE);
  return xattrReply(s, r, req.view.getUint32(GETXATTR_IN.SIZE_, true), (size) => s.sys.getxattrFd(inode.fd, n[0], size));
};

export const listxattr: Op = (s, req, r, inode) =>
  xattrReply(s, r, req.view.getUint32(GETXATTR_IN.SIZE_, true), (size) => s.sys.listxattrFd(inode.fd, size));
