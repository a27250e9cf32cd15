/**
 * The host side of a virtio-fs share: the directory, the inode and handle
 * tables, and the few ways a guest's request may reach a host file. Every
 * op in node_ops.ts and file_ops.ts goes through here, so the rules that
 * keep the guest inside the share are in this one file:
 *
 * - a name is one path component: 1 to 255 bytes, no '/' (and no NUL: names
 *   end at their NUL), "." and ".." only where LOOKUP gives them meaning;
 * - a name is resolved by openat2 relative to its parent's O_PATH fd with
 *   RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS and
 *   O_NOFOLLOW: the fd is the entry itself, a symlink stays a symlink (the
 *   guest gets it back as one and follows it in its own namespace);
 * - every other syscall that takes a name (mkdirat, unlinkat, renameat2…)
 *   takes such a checked name and its parent's fd, and acts on that entry
 *   only, never following it;
 * - files are opened for I/O only by `reopen`, which reopens an inode's own
 *   fd through /proc/self/fd (the proof is at `reopen`), and only regular
 *   files and directories, so a FIFO or a device node in the share is never
 *   opened by vmm.
 *
 * By induction every fd in the tables refers to something in the share: the
 * root is, and each new inode is found beneath an inode already there.
 */
import {
  AT_REMOVEDIR,
  HostFs,
  O_CLOEXEC,
  O_DIRECTORY,
  O_NOFOLLOW,
  O_PATH,
  PROC_SUPER_MAGIC,
  RESOLVE_BENEATH,
  RESOLVE_NO_MAGICLINKS,
  RESOLVE_NO_SYMLINKS,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_ISGID,
  STAT,
  STATFS,
} from "../../ffi/fs.ts";
import { SysError } from "../../ffi/errno.ts";
import { ATTR, EACCES, EINVAL, ENAMETOOLONG, ENTRY_OUT } from "./fuse.ts";
import { HandleTable } from "./handles.ts";
import { type Inode, InodeTable } from "./inodes.ts";

/**
 * How long the guest may trust a name and its attributes before it asks
 * again, by the share's `cache` mode, as virtiofsd's `--cache` sets them:
 * `auto`, 1 s, for a directory the host may change under the guest; `always`,
 * a day, for one only the guest's reads reach, such as the system root
 * `vmm run` shares read-only (crosvm shares its host root so,
 * `type=fs:cache=always`). A guest that trusts for a day makes each name's
 * LOOKUP and each GETATTR once per run instead of once a second, which a
 * slow guest (a nested one) spends much of its time on.
 */
export type CacheMode = "auto" | "always";
export const CACHE_TIMEOUT_S: Record<CacheMode, bigint> = { auto: 1n, always: 86400n };
/**
 * How long the guest may trust that a name is absent (a negative dentry:
 * LOOKUP answered with nodeid 0 and this entry timeout, which FUSE counts as
 * ENOENT that holds). Only `always`: there the names cannot change under
 * the guest, and a run over the host root looks up names that are not
 * there (a shell's $PATH search, a compiler's include path, `test -e`):
 * without it each such lookup goes to the host again. Nested, 2,000
 * `[ -e ]` of missing names took 3.8 s without it and 0.3 s with it. Under
 * `auto` a file the host makes must show at once, so ENOENT stays ENOENT,
 * as virtiofsd answers.
 */
export const NEGATIVE_TIMEOUT_S: Record<CacheMode, bigint> = { auto: 0n, always: 86400n };
/** NAME_MAX: longest name of one component. */
export const NAME_MAX = 255;
/** How far `dotdot` climbs looking for the share's root before it gives up. */
const MAX_DEPTH = 4096;

const SLASH = 0x2f, DOT = 0x2e;
/** Resolution for every name: inside the parent, no magic links, no symlinks. */
const RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS;
const DOTDOT = new Uint8Array([DOT, DOT]);

/** 0 when `name` can name an entry of a directory, else the errno for it. */
export function checkName(name: Uint8Array): number {
  if (name.length === 0) return EINVAL;
  if (name.length > NAME_MAX) return ENAMETOOLONG;
  if (name.includes(SLASH) || name.includes(0)) return EINVAL;
  if (isDots(name)) return EINVAL;
  return 0;
}

/** "." or "..". */
export function isDots(name: Uint8Array): boolean {
  return name[0] === DOT && (name.length === 1 || (name.length === 2 && name[1] === DOT));
}

/** glibc's dev_t as the kernel's new_encode_dev() u32, what fuse_attr.rdev carries. */
function encodeDev(d: bigint): number {
  const major = Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)) >>> 0;
  const minor = Number((d & 0xffn) | ((d >> 12n) & ~0xffn)) >>> 0;
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/** The share: a host directory and what the guest holds of it. */
export class Share {
  readonly sys = new HostFs();
  readonly readOnly: boolean;
  readonly inodes: InodeTable;
  readonly handles: HandleTable;
  /** Running as root: new files get the guest caller's uid and gid, as virtiofsd does. */
  readonly asRoot: boolean;
  /** O_PATH fd of /proc/self/fd on the real procfs. */
  readonly #procFd: number;

  /** Seconds the guest may cache entries and attributes (CACHE_TIMEOUT_S). */
  readonly timeout: bigint;
  /** Seconds the guest may cache a name's absence; 0: not at all (NEGATIVE_TIMEOUT_S). */
  readonly negativeTimeout: bigint;

  constructor(root: string, readOnly: boolean, cache: CacheMode = "auto") {
    const sys = this.sys;
    this.readOnly = readOnly;
    this.timeout = CACHE_TIMEOUT_S[cache];
    this.negativeTimeout = NEGATIVE_TIMEOUT_S[cache];
    this.asRoot = sys.geteuid() === 0;
    const close = (fd: number) => void sys.close(fd);
    this.#procFd = sys.openRoot("/proc/self/fd");
    if (sys.fstatfs(this.#procFd) < 0 || sys.statfs.view.getBigInt64(STATFS.TYPE, true) !== PROC_SUPER_MAGIC) {
      sys.close(this.#procFd);
      throw new SysError("/proc/self/fd is not procfs; virtio-fs", EACCES);
    }
    let fd: number;
    try {
      fd = sys.openRoot(root); // O_DIRECTORY: anything else is ENOTDIR
    } catch (e) {
      sys.close(this.#procFd);
      throw e;
    }
    if (sys.fstat(fd) < 0) {
      sys.close(fd);
      sys.close(this.#procFd);
      throw new SysError(`virtio-fs share ${root}`, EACCES);
    }
    this.inodes = new InodeTable({ fd, dev: sys.stat.dev, ino: sys.stat.ino, type: S_IFDIR }, close);
    this.handles = new HandleTable(this.inodes, close);
  }

  #closed = false;

  /** Close every fd (once); the share is unusable afterwards. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.handles.clear();
    this.inodes.clear();
    this.sys.close(this.inodes.root.fd);
    this.sys.close(this.#procFd);
    this.sys.free();
  }

  /** close() was called: its fd numbers may belong to someone else now. */
  get closed(): boolean {
    return this.#closed;
  }

  /** O_PATH fd of entry `name` (checked by `checkName`) of directory `parent`, or -errno. */
  openEntry(parent: Inode, name: Uint8Array): number {
    return this.sys.openat2(parent.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0, RESOLVE);
  }

  /**
   * Look `name` up in `parent` and count the lookup: the inode, with its
   * attributes left in `sys.stat` for the reply; or -errno.
   */
  lookup(parent: Inode, name: Uint8Array): Inode | number {
    const fd = this.openEntry(parent, name);
    if (fd < 0) return fd;
    return this.adopt(fd);
  }

  /** fstat `fd` (an O_PATH fd this call takes over) and count it as one lookup; attributes stay in `sys.stat`. */
  adopt(fd: number): Inode | number {
    const r = this.sys.fstat(fd);
    if (r < 0) {
      this.sys.close(fd);
      return r;
    }
    const st = this.sys.stat;
    return this.inodes.adopt(fd, st.dev, st.ino, st.mode & S_IFMT);
  }

  /**
   * LOOKUP of "..": the parent directory, or the root itself at the root.
   * openat2 refuses ".." under RESOLVE_BENEATH (it leaves the dirfd), so the
   * parent is opened plainly and then proved inside the share by climbing
   * from it to the share's root; a directory the host moved out of the share
   * climbs to "/" instead and is refused.
   */
  dotdot(dir: Inode): Inode | number {
    const root = this.inodes.root;
    if (dir === root) {
      this.inodes.ref(root);
      return this.sys.fstat(root.fd) < 0 ? -EACCES : root;
    }
    const sys = this.sys;
    const parent = sys.openat2(dir.fd, DOTDOT, O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS);
    if (parent < 0) return parent;
    let cur = sys.openat2(parent, new Uint8Array([DOT]), O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE);
    let inside = false;
    for (let depth = 0; cur >= 0 && depth < MAX_DEPTH; depth++) {
      if (sys.fstat(cur) < 0) break;
      const dev = sys.stat.dev, ino = sys.stat.ino;
      if (dev === root.dev && ino === root.ino) {
        inside = true;
        break;
      }
      const up = sys.openat2(cur, DOTDOT, O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS);
      sys.close(cur);
      cur = up;
      if (cur >= 0 && sys.fstat(cur) === 0 && sys.stat.dev === dev && sys.stat.ino === ino) break; // "/": its own parent
    }
    if (cur >= 0) sys.close(cur);
    if (!inside) {
      sys.close(parent);
      return -EACCES;
    }
    return this.adopt(parent);
  }

  /**
   * Open `inode` for I/O with `flags` (O_CLOEXEC added); the fd or -errno.
   * Callers pass only regular files and directories (an inode's type never
   * changes), so no FIFO, device or socket is ever opened.
   *
   * Why this cannot leave the share: `#procFd` is /proc/self/fd on the real
   * procfs (checked at start), and openat(#procFd, "N") resolves one
   * component, the magic link of our own fd N, which the kernel jumps
   * straight to the file object N holds (proc_fd_link, nd_jump_link): no
   * name inside the share is looked up again, so nothing renamed or swapped
   * meanwhile can redirect it. The walk ends at that object, since a magic
   * link's target is not resolved further and open(2) refuses a symlink
   * there with ELOOP (may_open). N itself came from `openEntry` (beneath an
   * inode of the share) or is the root: the object is in the share.
   */
  reopen(inode: Inode, flags: number): number {
    return this.sys.openat(this.#procFd, this.sys.encode(String(inode.fd)), (flags & ~O_NOFOLLOW) | O_CLOEXEC, 0);
  }

  /**
   * After a MKNOD, MKDIR, SYMLINK or CREATE made `name`: give it the guest
   * caller's owner when we run as root, and the mode the guest asked for
   * (our own process umask must not narrow it; the guest kernel applied
   * the guest's umask already, since we do not ask for FUSE_DONT_MASK).
   * `fd` is the new entry's O_PATH fd; leaves its attributes in `sys.stat`.
   */
  settle(fd: number, uid: number, gid: number, mode: number): number {
    const sys = this.sys;
    if (this.asRoot) {
      const r = sys.chownFd(fd, uid, gid);
      if (r < 0) return r;
    }
    let r = sys.fstat(fd);
    if (r < 0) return r;
    const type = sys.stat.mode & S_IFMT;
    if (type !== S_IFLNK) {
      const want = (mode & 0o7777) | (type === S_IFDIR ? sys.stat.mode & S_ISGID : 0);
      if (want !== (sys.stat.mode & 0o7777)) {
        r = sys.chmodFd(fd, want);
        if (r < 0) return r;
        r = sys.fstat(fd);
      }
    }
    return r;
  }

  /** Undo a creation whose entry could not be settled: remove `name` again. */
  unmake(parent: Inode, name: Uint8Array, dir: boolean): void {
    this.sys.unlinkat(parent.fd, name, dir ? AT_REMOVEDIR : 0);
  }

  /** Write `sys.stat` as a struct fuse_attr at scratch offset `at`. */
  writeAttr(out: DataView, at: number): void {
    const s = this.sys.stat.buf.view;
    const u64 = (o: number, v: bigint) => out.setBigUint64(at + o, BigInt.asUintN(64, v), true);
    const u32 = (o: number, v: number) => out.setUint32(at + o, v >>> 0, true);
    u64(ATTR.INO, s.getBigUint64(STAT.INO, true));
    u64(ATTR.SIZE_, s.getBigInt64(STAT.SIZE, true));
    u64(ATTR.BLOCKS, s.getBigInt64(STAT.BLOCKS, true));
    u64(ATTR.ATIME, s.getBigInt64(STAT.ATIME, true));
    u64(ATTR.MTIME, s.getBigInt64(STAT.MTIME, true));
    u64(ATTR.CTIME, s.getBigInt64(STAT.CTIME, true));
    u32(ATTR.ATIMENSEC, Number(s.getBigInt64(STAT.ATIME_NSEC, true)));
    u32(ATTR.MTIMENSEC, Number(s.getBigInt64(STAT.MTIME_NSEC, true)));
    u32(ATTR.CTIMENSEC, Number(s.getBigInt64(STAT.CTIME_NSEC, true)));
    u32(ATTR.MODE, s.getUint32(STAT.MODE, true));
    const nlink = s.getBigUint64(STAT.NLINK, true);
    u32(ATTR.NLINK, nlink > 0xffff_ffffn ? 0xffff_ffff : Number(nlink));
    u32(ATTR.UID, s.getUint32(STAT.UID, true));
    u32(ATTR.GID, s.getUint32(STAT.GID, true));
    u32(ATTR.RDEV, encodeDev(s.getBigUint64(STAT.RDEV, true)));
    u32(ATTR.BLKSIZE, Number(s.getBigInt64(STAT.BLKSIZE, true)));
    u32(ATTR.FLAGS, 0);
  }

  /** Write a struct fuse_entry_out for `inode` (attributes from `sys.stat`) at scratch offset `at`. */
  writeEntry(out: DataView, at: number, inode: Inode): void {
    out.setBigUint64(at + ENTRY_OUT.NODEID, BigInt(inode.nodeid), true);
    out.setBigUint64(at + ENTRY_OUT.GENERATION, 0n, true);
    out.setBigUint64(at + ENTRY_OUT.ENTRY_VALID, this.timeout, true);
    out.setBigUint64(at + ENTRY_OUT.ATTR_VALID, this.timeout, true);
    out.setUint32(at + ENTRY_OUT.ENTRY_VALID_NSEC, 0, true);
    out.setUint32(at + ENTRY_OUT.ATTR_VALID_NSEC, 0, true);
    this.writeAttr(out, at + ENTRY_OUT.ATTR);
  }
}
