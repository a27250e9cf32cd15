/**
 * File-system system calls for the virtio-fs server (devices/fs/), through
 * the runtime's FFI.
 *
 * Unlike `libc.ts`, nothing here throws on a failed call: every method
 * returns the result, or `-errno` when the call failed, the convention of
 * the kernel and of the FUSE out header, so an error reaches the guest
 * without an exception on the way. Names are raw bytes (a host file name
 * need not be UTF-8) copied with their NUL into scratch buffers the `HostFs`
 * owns: one `HostFs` per server, so no call allocates native memory.
 * Pointers are bigint addresses (ffi/runtime.ts).
 *
 * @example
 * ```ts
 * import { AT_FDCWD, HostFs, O_CLOEXEC, O_DIRECTORY, O_PATH, RESOLVE_BENEATH } from "./fs.ts";
 *
 * const fs = new HostFs();
 * const root = fs.openat(AT_FDCWD, fs.encode("/tmp"), O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
 * const fd = fs.openat2(root, fs.encode("x"), O_PATH | O_CLOEXEC, 0, RESOLVE_BENEATH);
 * if (fd >= 0 && fs.fstat(fd) === 0) console.log(fs.stat.size);
 * ```
 */
import { runtime } from "./runtime.ts";
import { errno, NativeBuf } from "./libc.ts";
import { E, SysError } from "./errno.ts";

const u64 = "u64" as const, i32 = "i32" as const, i64 = "i64" as const, u32 = "u32" as const;

/** The raw libc functions. Pointers are bigint addresses; results are -1 and errno on failure. */
const fsLib = runtime.dlopen("libc.so.6", {
  openat: { args: [i32, u64, i32, u32], result: i32 },
  // syscall(2) with room for six arguments: openat2 and renameat2 (glibc's
  // renameat2 exists, openat2 has no wrapper in bookworm's glibc 2.36).
  syscall: { args: [i64, i64, i64, i64, i64, i64, i64], result: i64 },
  close: { args: [i32], result: i32 },
  fstatat: { args: [i32, u64, u64, i32], result: i32 },
  fstatfs: { args: [i32, u64], result: i32 },
  fchmodat: { args: [i32, u64, u32, i32], result: i32 },
  fchownat: { args: [i32, u64, u32, u32, i32], result: i32 },
  utimensat: { args: [i32, u64, u64, i32], result: i32 },
  ftruncate: { args: [i32, i64], result: i32 },
  mkdirat: { args: [i32, u64, u32], result: i32 },
  mknodat: { args: [i32, u64, u32, u64], result: i32 },
  symlinkat: { args: [u64, i32, u64], result: i32 },
  readlinkat: { args: [i32, u64, u64, u64], result: i64 },
  unlinkat: { args: [i32, u64, i32], result: i32 },
  linkat: { args: [i32, u64, i32, u64, i32], result: i32 },
  getdents64: { args: [i32, u64, u64], result: i64 },
  getxattr: { args: [u64, u64, u64, u64], result: i64 },
  listxattr: { args: [u64, u64, u64], result: i64 },
  fallocate: { args: [i32, i32, i64, i64], result: i32 },
  lseek: { args: [i32, i64, i32], result: i64 },
  fsync: { args: [i32], result: i32 },
  fdatasync: { args: [i32], result: i32 },
  geteuid: { args: [], result: u32 },
  realpath: { args: [u64, u64], result: u64 },
  faccessat: { args: [i32, u64, i32, i32], result: i32 },
});

// x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
const SYS_renameat2 = 316;
const SYS_openat2 = 437;

// fcntl.h / uapi/asm-generic/fcntl.h, x86-64 values.
export const AT_FDCWD = -100;
export const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_ACCMODE = 3;
export const O_CREAT = 0o100, O_EXCL = 0o200, O_NOCTTY = 0o400, O_TRUNC = 0o1000, O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000, O_DSYNC = 0o10000, O_DIRECT = 0o40000, O_LARGEFILE = 0o100000;
export const O_DIRECTORY = 0o200000, O_NOFOLLOW = 0o400000, O_NOATIME = 0o1000000, O_CLOEXEC = 0o2000000;
export const O_SYNC = 0o4010000, O_PATH = 0o10000000;
export const AT_SYMLINK_NOFOLLOW = 0x100, AT_REMOVEDIR = 0x200, AT_SYMLINK_FOLLOW = 0x400, AT_EMPTY_PATH = 0x1000;
// uapi/linux/openat2.h: how->resolve.
export const RESOLVE_NO_XDEV = 0x01, RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_NO_SYMLINKS = 0x04, RESOLVE_BENEATH = 0x08;
// uapi/linux/fs.h: renameat2 flags.
export const RENAME_NOREPLACE = 1, RENAME_EXCHANGE = 2, RENAME_WHITEOUT = 4;
// uapi/linux/stat.h: file types in st_mode.
export const S_IFMT = 0o170000, S_IFSOCK = 0o140000, S_IFLNK = 0o120000, S_IFREG = 0o100000;
export const S_IFBLK = 0o60000, S_IFDIR = 0o40000, S_IFCHR = 0o20000, S_IFIFO = 0o10000;
export const S_ISGID = 0o2000;
// utimensat(2): tv_nsec values that mean "now" and "leave alone".
export const UTIME_NOW = (1 << 30) - 1, UTIME_OMIT = (1 << 30) - 2;
export const SEEK_SET = 0, SEEK_DATA = 3, SEEK_HOLE = 4;

/** struct stat on x86-64 (glibc bits/struct_stat.h = the kernel's struct stat): byte offsets. */
export const STAT = {
  DEV: 0, INO: 8, NLINK: 16, MODE: 24, UID: 28, GID: 32, RDEV: 40, SIZE: 48, BLKSIZE: 56, BLOCKS: 64,
  ATIME: 72, ATIME_NSEC: 80, MTIME: 88, MTIME_NSEC: 96, CTIME: 104, CTIME_NSEC: 112, SIZEOF: 144,
} as const;
/** struct statfs on x86-64 (bits/statfs.h): byte offsets. */
export const STATFS = {
  TYPE: 0, BSIZE: 8, BLOCKS: 16, BFREE: 24, BAVAIL: 32, FILES: 40, FFREE: 48, FSID: 56, NAMELEN: 64,
  FRSIZE: 72, FLAGS: 80, SIZEOF: 120,
} as const;
/** struct open_how (uapi/linux/openat2.h): three u64s. */
const OPEN_HOW_SIZE = 24;
/** PROC_SUPER_MAGIC (uapi/linux/magic.h): the real procfs, for `/proc/self/fd`. */
export const PROC_SUPER_MAGIC = 0x9fa0n;

/** Longest path the kernel takes (PATH_MAX, with its NUL). */
export const PATH_MAX = 4096;
/** XATTR_SIZE_MAX and XATTR_LIST_MAX (uapi/linux/limits.h). */
export const XATTR_SIZE_MAX = 65536;
const DIRENT_BUF = 32768;

const enc = new TextEncoder();
const EMPTY = new Uint8Array(0);

/** A struct stat in native memory, read field by field. */
export class StatBuf {
  readonly buf: NativeBuf;
  constructor() {
    this.buf = NativeBuf.alloc(STAT.SIZEOF);
  }
  get dev(): bigint {
    return this.buf.view.getBigUint64(STAT.DEV, true);
  }
  get ino(): bigint {
    return this.buf.view.getBigUint64(STAT.INO, true);
  }
  get mode(): number {
    return this.buf.view.getUint32(STAT.MODE, true);
  }
  get size(): bigint {
    return this.buf.view.getBigInt64(STAT.SIZE, true);
  }
  get mtime(): bigint {
    return this.buf.view.getBigInt64(STAT.MTIME, true);
  }
  get mtimeNsec(): number {
    return Number(this.buf.view.getBigInt64(STAT.MTIME_NSEC, true));
  }
  get ctime(): bigint {
    return this.buf.view.getBigInt64(STAT.CTIME, true);
  }
  get ctimeNsec(): number {
    return Number(this.buf.view.getBigInt64(STAT.CTIME_NSEC, true));
  }
}

/**
 * The file-system calls of one server, with the scratch buffers they use.
 * Methods return the result (an fd, a count, 0) or `-errno`.
 */
export class HostFs {
  /** Filled by `fstat`/`fstatat`. */
  readonly stat = new StatBuf();
  /** Filled by `fstatfs`. */
  readonly statfs: NativeBuf = NativeBuf.alloc(STATFS.SIZEOF);
  /** Directory entries from `getdents64` (struct linux_dirent64). */
  readonly dirents: NativeBuf = NativeBuf.alloc(DIRENT_BUF);
  /** xattr values and lists, and readlink targets. */
  readonly data: NativeBuf = NativeBuf.alloc(XATTR_SIZE_MAX);
  readonly #names = [NativeBuf.alloc(PATH_MAX + 1), NativeBuf.alloc(PATH_MAX + 1)];
  readonly #how = NativeBuf.alloc(OPEN_HOW_SIZE);
  readonly #times = NativeBuf.alloc(32); // struct timespec[2]
  /** "/proc/self/fd/N" as a C string, for the calls that take only a path. */
  readonly #procPath = NativeBuf.alloc(64);

  /** Give the scratch buffers back (a device reset makes a new server; the old one's go now, not at the Worker's end). */
  free(): void {
    for (const b of [this.stat.buf, this.statfs, this.dirents, this.data, ...this.#names, this.#how, this.#times, this.#procPath]) b.free();
  }

  /** `s` as bytes (no NUL), for names vmm itself makes. */
  encode(s: string): Uint8Array {
    return enc.encode(s);
  }

  /** Copy `name` with a NUL into scratch `slot` (0 or 1); its address. Names must be under PATH_MAX bytes. */
  #cstr(name: Uint8Array, slot = 0): bigint {
    const b = this.#names[slot];
    if (name.length > PATH_MAX - 1) throw new RangeError(`Name of ${name.length} bytes is longer than PATH_MAX`);
    b.bytes.set(name);
    b.bytes[name.length] = 0;
    return b.addr;
  }

  /** "/proc/self/fd/<fd>": the magic link to what `fd` holds. */
  procFdPath(fd: number): bigint {
    const s = enc.encode(`/proc/self/fd/${fd}`);
    this.#procPath.bytes.set(s);
    this.#procPath.bytes[s.length] = 0;
    return this.#procPath.addr;
  }

  #ret(r: number | bigint): number {
    const n = Number(r);
    return n < 0 ? -errno() : n;
  }

  openat(dirfd: number, name: Uint8Array, flags: number, mode: number): number {
    return this.#ret(fsLib.openat(dirfd, this.#cstr(name), flags, mode));
  }

  /** openat2(2): `name` under `dirfd` with `resolve` restrictions (uapi/linux/openat2.h). */
  openat2(dirfd: number, name: Uint8Array, flags: number, mode: number, resolve: number): number {
    const v = this.#how.view;
    v.setBigUint64(0, BigInt(flags), true);
    v.setBigUint64(8, BigInt(mode), true);
    v.setBigUint64(16, BigInt(resolve), true);
    return this.#ret(fsLib.syscall(BigInt(SYS_openat2), BigInt(dirfd), this.#cstr(name), this.#how.addr, BigInt(OPEN_HOW_SIZE), 0n, 0n));
  }

  close(fd: number): number {
    return this.#ret(fsLib.close(fd));
  }

  /** fstat of any fd, O_PATH ones and symlinks included, into `this.stat`. */
  fstat(fd: number): number {
    return this.#ret(fsLib.fstatat(fd, this.#cstr(EMPTY), this.stat.buf.addr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
  }

  /** fstatat(2) into `this.stat`. */
  fstatat(dirfd: number, name: Uint8Array, flags: number): number {
    return this.#ret(fsLib.fstatat(dirfd, this.#cstr(name), this.stat.buf.addr, flags));
  }

  fstatfs(fd: number): number {
    return this.#ret(fsLib.fstatfs(fd, this.statfs.addr));
  }

  /** chmod of what `fd` holds, through /proc/self/fd (fchmod refuses O_PATH fds). */
  chmodFd(fd: number, mode: number): number {
    return this.#ret(fsLib.fchmodat(AT_FDCWD, this.procFdPath(fd), mode, 0));
  }

  /** chown of what `fd` holds, never following a symlink. `-1` (0xffffffff) leaves an id alone. */
  chownFd(fd: number, uid: number, gid: number): number {
    return this.#ret(fsLib.fchownat(fd, this.#cstr(EMPTY), uid >>> 0, gid >>> 0, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
  }

  /**
   * utimensat of what `fd` holds (times as seconds + nanoseconds, or UTIME_NOW/UTIME_OMIT
   * in the nsec fields), never following a symlink.
   */
  utimesFd(fd: number, atime: bigint, atimeNsec: number, mtime: bigint, mtimeNsec: number): number {
    const v = this.#times.view;
    v.setBigInt64(0, atime, true);
    v.setBigInt64(8, BigInt(atimeNsec), true);
    v.setBigInt64(16, mtime, true);
    v.setBigInt64(24, BigInt(mtimeNsec), true);
    return this.#ret(fsLib.utimensat(fd, this.#cstr(EMPTY), this.#times.addr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
  }

  ftruncate(fd: number, size: bigint): number {
    return this.#ret(fsLib.ftruncate(fd, size));
  }

  mkdirat(dirfd: number, name: Uint8Array, mode: number): number {
    return this.#ret(fsLib.mkdirat(dirfd, this.#cstr(name), mode));
  }

  mknodat(dirfd: number, name: Uint8Array, mode: number, dev: bigint): number {
    return this.#ret(fsLib.mknodat(dirfd, this.#cstr(name), mode, dev));
  }

  symlinkat(target: Uint8Array, dirfd: number, name: Uint8Array): number {
    return this.#ret(fsLib.symlinkat(this.#cstr(target, 1), dirfd, this.#cstr(name, 0)));
  }

  /** readlink of the symlink `fd` holds into `this.data`; the target's length. */
  readlinkFd(fd: number): number {
    return this.#ret(fsLib.readlinkat(fd, this.#cstr(EMPTY), this.data.addr, BigInt(PATH_MAX)));
  }

  unlinkat(dirfd: number, name: Uint8Array, flags: number): number {
    return this.#ret(fsLib.unlinkat(dirfd, this.#cstr(name), flags));
  }

  /** Hard link `name` in `newdirfd` to what `fd` holds, through its /proc/self/fd magic link. */
  linkFd(fd: number, newdirfd: number, name: Uint8Array): number {
    return this.#ret(fsLib.linkat(AT_FDCWD, this.procFdPath(fd), newdirfd, this.#cstr(name), AT_SYMLINK_FOLLOW));
  }

  renameat2(olddirfd: number, oldname: Uint8Array, newdirfd: number, newname: Uint8Array, flags: number): number {
    return this.#ret(fsLib.syscall(
      BigInt(SYS_renameat2), BigInt(olddirfd), this.#cstr(oldname, 0), BigInt(newdirfd), this.#cstr(newname, 1), BigInt(flags), 0n,
    ));
  }

  /** getdents64 into `this.dirents` (at most `len` bytes); bytes filled. */
  getdents64(fd: number, len = DIRENT_BUF): number {
    return this.#ret(fsLib.getdents64(fd, this.dirents.addr, BigInt(Math.min(len, DIRENT_BUF))));
  }

  /** getxattr of what `fd` holds, into `this.data` (size 0: only the length). */
  getxattrFd(fd: number, name: Uint8Array, size: number): number {
    const path = this.procFdPath(fd);
    return this.#ret(fsLib.getxattr(path, this.#cstr(name), size ? this.data.addr : 0n, BigInt(Math.min(size, XATTR_SIZE_MAX))));
  }

  /** listxattr of what `fd` holds, into `this.data` (size 0: only the length). */
  listxattrFd(fd: number, size: number): number {
    const path = this.procFdPath(fd);
    return this.#ret(fsLib.listxattr(path, size ? this.data.addr : 0n, BigInt(Math.min(size, XATTR_SIZE_MAX))));
  }

  fallocate(fd: number, mode: number, offset: bigint, len: bigint): number {
    return this.#ret(fsLib.fallocate(fd, mode, offset, len));
  }

  /** lseek(2); the new offset as a bigint, or a negative errno as a bigint. */
  lseek(fd: number, offset: bigint, whence: number): bigint {
    const r = BigInt(fsLib.lseek(fd, offset, whence));
    return r < 0n ? BigInt(-errno()) : r;
  }

  fsync(fd: number, dataOnly: boolean): number {
    return this.#ret(dataOnly ? fsLib.fdatasync(fd) : fsLib.fsync(fd));
  }

  /** The effective uid of this process (0: vmm may give new files the guest caller's owner). */
  geteuid(): number {
    return Number(fsLib.geteuid());
  }

  /** Open a directory as O_PATH, for a share's root; throws SysError. */
  openRoot(path: string): number {
    const fd = this.openat(AT_FDCWD, enc.encode(path), O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) throw new SysError(`open ${path}`, -fd);
    return fd;
  }
}

/** access(2) modes. */
export const R_OK = 4, W_OK = 2, X_OK = 1;

/**
 * The real path of a host directory named on the command line, when this
 * process may use it as `mode` says: realpath(3), then stat(2) and
 * access(2) of the result. Returns the path, or `-errno` of the first call
 * that failed (`-ENOTDIR` for a path that is not a directory). What
 * node:fs's realpathSync, statSync and accessSync would do, kept here so
 * that no module a Worker imports names a `node:` module (ffi/libc.ts
 * readSmallFile says why).
 */
export function hostDirPath(path: string, mode = R_OK | X_OK): string | number {
  const name = NativeBuf.cstring(path);
  const resolved = NativeBuf.alloc(PATH_MAX);
  const st = new StatBuf();
  try {
    if (BigInt(fsLib.realpath(name.addr, resolved.addr)) === 0n) return -errno();
    if (fsLib.fstatat(AT_FDCWD, resolved.addr, st.buf.addr, 0) !== 0) return -errno();
    if ((st.mode & S_IFMT) !== S_IFDIR) return -E.ENOTDIR;
    if (fsLib.faccessat(AT_FDCWD, resolved.addr, mode, 0) !== 0) return -errno();
    return new TextDecoder().decode(resolved.bytes.subarray(0, resolved.bytes.indexOf(0)));
  } finally {
    name.free();
    resolved.free();
    st.buf.free();
  }
}
