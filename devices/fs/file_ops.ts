/**
 * FUSE ops on open files and directories (include/uapi/linux/fuse.h): OPEN,
 * CREATE, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE, LSEEK, OPENDIR,
 * READDIR, READDIRPLUS, RELEASEDIR, FSYNCDIR.
 *
 * READ and WRITE never copy data through JavaScript: the guest's buffers
 * (the reply's writable segments after fuse_out_header, or WRITE's readable
 * segments after fuse_write_in) become iovecs of host addresses inside the
 * guest memory mapping, checked by GuestMemory, for preadv/pwritev, as
 * virtio-blk does (devices/virtio/iovec.ts).
 */
import {
  O_ACCMODE,
  O_APPEND,
  O_CREAT,
  O_DIRECTORY,
  O_DSYNC,
  O_EXCL,
  O_NOFOLLOW,
  O_RDONLY,
  O_SYNC,
  O_TRUNC,
  RESOLVE_BENEATH,
  RESOLVE_NO_MAGICLINKS,
  RESOLVE_NO_SYMLINKS,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  SEEK_HOLE,
  SEEK_SET,
} from "../../ffi/fs.ts";
import type { Segment } from "../virtio/ring.ts";
import { IovecArray } from "../virtio/iovec.ts";
import {
  CREATE_IN,
  DIRENT,
  DIRENTPLUS,
  direntplusSize,
  direntSize,
  EACCES,
  EBADF,
  EEXIST,
  EINVAL,
  EISDIR,
  ELOOP,
  ENTRY_OUT,
  ENOTDIR,
  EOPNOTSUPP,
  EROFS,
  FALLOCATE_IN,
  FLUSH_IN,
  FOPEN_KEEP_CACHE,
  FSYNC_IN,
  FUSE_FSYNC_FDATASYNC,
  IN_HEADER,
  LSEEK_IN,
  LSEEK_OUT,
  OPEN_IN,
  OPEN_OUT,
  OUT_HEADER,
  READ_IN,
  RELEASE_IN,
  WRITE_IN,
  WRITE_OUT,
} from "./fuse.ts";
import { type FuseReply, type FuseRequest, names, payload } from "./message.ts";
import type { Inode } from "./inodes.ts";
import type { Op } from "./node_ops.ts";
import { checkName, isDots, type Share } from "./share.ts";

const H = OUT_HEADER.SIZE;
/** fallocate(2) modes we pass on (uapi/linux/falloc.h): KEEP_SIZE, PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE, UNSHARE_RANGE. */
const FALLOC_MODES = 0x01 | 0x02 | 0x08 | 0x10 | 0x20 | 0x40;
/** Where WRITE's data starts in the message. */
const WRITE_DATA = IN_HEADER.SIZE + WRITE_IN.SIZE;
const I64_MAX = (1n << 63n) - 1n;

/**
 * The host open(2) flags for a guest's OPEN/CREATE flags: the access mode,
 * O_APPEND (without the writeback cache, as virtiofsd keeps it: an append
 * lands at the host file's true end even if it grew behind the guest's
 * back), O_TRUNC (we answer FUSE_ATOMIC_O_TRUNC) and the sync flags. The
 * rest would change how vmm's own fd behaves (O_NONBLOCK, O_DIRECT and its
 * alignment rules, O_NOATIME's EPERM, O_PATH…) and is the guest kernel's
 * business; or minus the errno to answer.
 */
function hostFlags(s: Share, flags: number): number {
  const acc = flags & O_ACCMODE;
  if (acc === O_ACCMODE) return -EINVAL;
  if (s.readOnly && (acc !== O_RDONLY || flags & (O_TRUNC | O_APPEND))) return -EROFS;
  return acc | (flags & (O_APPEND | O_TRUNC | O_SYNC | O_DSYNC));
}

/** Why `inode` cannot be opened as a file, or 0. */
function notAFile(inode: Inode): number {
  if (inode.type === S_IFREG) return 0;
  return inode.type === S_IFDIR ? EISDIR : inode.type === S_IFLNK ? ELOOP : EACCES;
}

/**
 * FOPEN_KEEP_CACHE when the file is as it was at its last open (mtime,
 * ctime and size): the guest's page cache still holds the truth, so exec
 * and mmap of unchanged files keep their pages. Otherwise the guest drops
 * them (virtiofsd --cache auto; FUSE_AUTO_INVAL_DATA covers changes seen
 * through attributes meanwhile).
 */
function keepCache(s: Share, fd: number, inode: Inode, flags: number): number {
  if (s.sys.fstat(fd) < 0) return 0;
  const st = s.sys.stat;
  const stamp = `${st.mtime}.${st.mtimeNsec}:${st.ctime}.${st.ctimeNsec}:${st.size}`;
  const same = stamp === inode.openStamp;
  inode.openStamp = stamp;
  return same && !(flags & O_TRUNC) ? FOPEN_KEEP_CACHE : 0;
}

function openReply(r: FuseReply, at: number, fh: number, flags: number): void {
  r.view.setBigUint64(H + at + OPEN_OUT.FH, BigInt(fh), true);
  r.view.setUint32(H + at + OPEN_OUT.OPEN_FLAGS, flags, true);
  r.view.setUint32(H + at + OPEN_OUT.PADDING, 0, true);
}

export const open: Op = (s, req, r, inode) => {
  const flags = req.view.getUint32(OPEN_IN.FLAGS, true);
  const e = notAFile(inode);
  if (e) return r.error(e);
  const hf = hostFlags(s, flags);
  if (hf < 0) return r.error(-hf);
  const fd = s.reopen(inode, hf);
  if (fd < 0) return r.error(-fd);
  const h = s.handles.add(fd, inode, false, (hf & O_ACCMODE) !== O_RDONLY);
  r.clear(OPEN_OUT.SIZE);
  openReply(r, 0, h.fh, keepCache(s, fd, inode, hf));
  return r.ok(OPEN_OUT.SIZE);
};

/**
 * CREATE: make a regular file and open it, answering its entry and a handle.
 * O_CREAT | O_EXCL first, so a new file is opened by openat2 beneath its
 * parent; an existing entry (when the guest did not ask for O_EXCL) is
 * looked up, and reopened only if it is a regular file, so a FIFO or device
 * of that name is never opened.
 */
export const create: Op = (s, req, r, dir) => {
  const v = req.view;
  const flags = v.getUint32(CREATE_IN.FLAGS, true);
  const mode = v.getUint32(CREATE_IN.MODE, true) & 0o7777;
  const n = names(req, CREATE_IN.SIZE, 1);
  if (!n) return r.error(EINVAL);
  const name = n[0];
  const e = checkName(name);
  if (e) return r.error(e);
  const hf = hostFlags(s, flags);
  if (hf < 0) return r.error(-hf);
  const sys = s.sys;
  let io = sys.openat2(dir.fd, name, hf | O_CREAT | O_EXCL | O_NOFOLLOW, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS);
  let inode: Inode;
  if (io >= 0) {
    const pfd = s.openEntry(dir, name);
    const settled = pfd < 0 ? pfd : s.settle(pfd, req.uid, req.gid, mode);
    const res = settled < 0 ? settled : s.adopt(pfd);
    if (typeof res === "number") {
      sys.close(io);
      if (pfd >= 0 && settled < 0) sys.close(pfd);
      s.unmake(dir, name, false);
      return r.error(-res);
    }
    inode = res;
  } else {
    if (io !== -EEXIST || flags & O_EXCL) return r.error(-io);
    const pfd = s.openEntry(dir, name);
    if (pfd < 0) return r.error(-pfd);
    if (sys.fstat(pfd) < 0 || (sys.stat.mode & S_IFMT) !== S_IFREG) {
      const type = sys.stat.mode & S_IFMT;
      sys.close(pfd);
      return r.error(type === S_IFDIR ? EISDIR : type === S_IFLNK ? ELOOP : EACCES);
    }
    const res = s.adopt(pfd);
    if (typeof res === "number") return r.error(-res);
    inode = res;
    io = s.reopen(inode, hf);
    if (io < 0) {
      s.inodes.forget(BigInt(inode.nodeid), 1n);
      return r.error(-io);
    }
  }
  const h = s.handles.add(io, inode, false, (hf & O_ACCMODE) !== O_RDONLY);
  const cache = keepCache(s, io, inode, hf); // its fstat leaves the entry's attributes in sys.stat
  r.clear(ENTRY_OUT.SIZE + OPEN_OUT.SIZE);
  s.writeEntry(r.view, H, inode);
  openReply(r, ENTRY_OUT.SIZE, h.fh, cache);
  return r.ok(ENTRY_OUT.SIZE + OPEN_OUT.SIZE);
};

/**
 * preadv/pwritev between `fd` at `pos` and guest segments
 * (devices/virtio/iovec.ts), until all is moved, the file ends (read) or
 * the host fails. Bytes moved, or -errno when nothing moved.
 */
function transfer(r: FuseReply, write: boolean, fd: number, segs: Segment[], pos: bigint): number {
  return IovecArray.forThread().transfer(r.chain.mem, segs, fd, write, pos);
}

export const read: Op = (s, req, r) => {
  const v = req.view;
  const h = s.handles.get(v.getBigUint64(READ_IN.FH, true), false);
  if (!h) return r.error(EBADF);
  const pos = v.getBigUint64(READ_IN.OFFSET, true);
  if (pos > I64_MAX) return r.error(EINVAL);
  // All the room the guest gave, never less than it asked for when it fits:
  // a short READ means the end of the file to the kernel (fuse_short_read).
  const n = Math.min(v.getUint32(READ_IN.SIZE_, true), r.space);
  if (n === 0) return r.okDirect(0);
  const got = transfer(r, false, h.fd, r.dataSegments(n), pos);
  return got < 0 ? r.error(-got) : r.okDirect(got);
};

export const write: Op = (s, req, r) => {
  const v = req.view;
  const h = s.handles.get(v.getBigUint64(WRITE_IN.FH, true), false);
  if (!h || !h.writable) return r.error(EBADF);
  const pos = v.getBigUint64(WRITE_IN.OFFSET, true);
  const size = v.getUint32(WRITE_IN.SIZE_, true);
  if (pos > I64_MAX || WRITE_DATA + size > req.len) return r.error(EINVAL);
  const got = size === 0 ? 0 : transfer(r, true, h.fd, payload(req, WRITE_DATA, size), pos);
  if (got < 0) return r.error(-got);
  r.clear(WRITE_OUT.SIZE);
  r.view.setUint32(H + WRITE_OUT.SIZE_, got, true);
  return r.ok(WRITE_OUT.SIZE);
};

/** FLUSH: on close(2) in the guest; the data went to the host at each WRITE already. */
export const flush: Op = (s, req, r) => r.error(s.handles.get(req.view.getBigUint64(FLUSH_IN.FH, true), false) ? 0 : EBADF);

export const release: Op = (s, req, r) => r.error(s.handles.release(req.view.getBigUint64(RELEASE_IN.FH, true), false) ? 0 : EBADF);
export const releasedir: Op = (s, req, r) => r.error(s.handles.release(req.view.getBigUint64(RELEASE_IN.FH, true), true) ? 0 : EBADF);

function fsyncOn(s: Share, req: FuseRequest, r: FuseReply, dir: boolean): number {
  const h = s.handles.get(req.view.getBigUint64(FSYNC_IN.FH, true), dir);
  if (!h) return r.error(EBADF);
  const e = s.sys.fsync(h.fd, (req.view.getUint32(FSYNC_IN.FSYNC_FLAGS, true) & FUSE_FSYNC_FDATASYNC) !== 0);
  return r.error(e < 0 ? -e : 0);
}
export const fsync: Op = (s, req, r) => fsyncOn(s, req, r, false);
export const fsyncdir: Op = (s, req, r) => fsyncOn(s, req, r, true);

export const fallocate: Op = (s, req, r) => {
  const v = req.view;
  const h = s.handles.get(v.getBigUint64(FALLOCATE_IN.FH, true), false);
  if (!h || !h.writable) return r.error(EBADF);
  const mode = v.getUint32(FALLOCATE_IN.MODE, true);
  if (mode & ~FALLOC_MODES) return r.error(EOPNOTSUPP);
  const off = BigInt.asIntN(64, v.getBigUint64(FALLOCATE_IN.OFFSET, true));
  const len = BigInt.asIntN(64, v.getBigUint64(FALLOCATE_IN.LENGTH, true));
  if (off < 0n || len <= 0n) return r.error(EINVAL);
  const e = s.sys.fallocate(h.fd, mode, off, len);
  return r.error(e < 0 ? -e : 0);
};

export const lseek: Op = (s, req, r) => {
  const v = req.view;
  const h = s.handles.get(v.getBigUint64(LSEEK_IN.FH, true), false);
  if (!h) return r.error(EBADF);
  const whence = v.getUint32(LSEEK_IN.WHENCE, true);
  if (whence > SEEK_HOLE) return r.error(EINVAL);
  // The kernel asks only for SEEK_DATA and SEEK_HOLE (fuse_file_llseek);
  // handles share no file position with READ/WRITE, which use offsets.
  const at = s.sys.lseek(h.fd, BigInt.asIntN(64, v.getBigUint64(LSEEK_IN.OFFSET, true)), whence);
  if (at < 0n) return r.error(Number(-at));
  r.view.setBigUint64(H + LSEEK_OUT.OFFSET, at, true);
  return r.ok(LSEEK_OUT.SIZE);
};

export const opendir: Op = (s, _req, r, inode) => {
  if (inode.type !== S_IFDIR) return r.error(ENOTDIR);
  const fd = s.reopen(inode, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return r.error(-fd);
  const h = s.handles.add(fd, inode, true, false);
  r.clear(OPEN_OUT.SIZE);
  openReply(r, 0, h.fh, 0);
  return r.ok(OPEN_OUT.SIZE);
};

/**
 * READDIR and READDIRPLUS: whole records only, up to the size asked.
 * `offset` is the d_off cookie of the last entry the guest got (0 to
 * start), so the directory is repositioned with lseek on every call and
 * entries read but not sent are read again next time (virtiofsd does the
 * same). READDIRPLUS looks each entry up, counting the lookup, only once
 * its record is sure to fit: a record the guest never receives must not
 * hold a lookup it cannot forget. "." and ".." get no entry (nodeid 0:
 * fuse_direntplus_link skips them).
 */
function readdirOn(s: Share, req: FuseRequest, r: FuseReply, plus: boolean): number {
  const v = req.view;
  const h = s.handles.get(v.getBigUint64(READ_IN.FH, true), true);
  if (!h) return r.error(EBADF);
  const size = Math.min(v.getUint32(READ_IN.SIZE_, true), r.room);
  const sys = s.sys;
  const seek = sys.lseek(h.fd, BigInt.asIntN(64, v.getBigUint64(READ_IN.OFFSET, true)), SEEK_SET);
  if (seek < 0n) return r.error(Number(-seek));
  const root = s.inodes.root;
  const dv = sys.dirents.view, db = sys.dirents.bytes, o = r.view, body = r.body;
  let out = 0;
  for (;;) {
    const n = sys.getdents64(h.fd);
    if (n < 0) {
      if (out === 0) return r.error(-n);
      break;
    }
    if (n === 0) break;
    // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    for (let p = 0; p < n;) {
      const reclen = dv.getUint16(p + 16, true);
      const nameEnd = db.indexOf(0, p + 19);
      const name = db.subarray(p + 19, nameEnd < 0 || nameEnd > p + reclen ? p + reclen : nameEnd);
      const need = plus ? direntplusSize(name.length) : direntSize(name.length);
      if (out + need > size) return r.ok(out);
      body.fill(0, out, out + need);
      let at = out;
      if (plus) {
        if (!isDots(name)) {
          const res = s.lookup(h.inode, name);
          // An entry gone since getdents keeps its name, with no attributes (nodeid 0).
          if (typeof res !== "number") s.writeEntry(o, H + at, res);
        }
        at += DIRENTPLUS.DIRENT;
      }
      // At the share's root ".." is the root: its inode number, not the host parent's.
      const dotdotAtRoot = h.inode === root && name.length === 2 && isDots(name);
      o.setBigUint64(H + at + DIRENT.INO, dotdotAtRoot ? root.ino : dv.getBigUint64(p, true), true);
      o.setBigUint64(H + at + DIRENT.OFF, dv.getBigUint64(p + 8, true), true);
      o.setUint32(H + at + DIRENT.NAMELEN, name.length, true);
      o.setUint32(H + at + DIRENT.TYPE, db[p + 18], true);
      body.set(name, at + DIRENT.NAME);
      out += need;
      p += reclen;
    }
  }
  return r.ok(out);
}

export const readdir: Op = (s, req, r) => readdirOn(s, req, r, false);
export const readdirplus: Op = (s, req, r) => readdirOn(s, req, r, true);
