/**
 * The FUSE wire protocol as Linux 6.1 speaks it over virtio-fs (virtio 1.2
 * §5.11.6: each request is a FUSE message, the driver-readable part starting
 * with struct fuse_in_header, the device-writable part with struct
 * fuse_out_header). Every layout is from include/uapi/linux/fuse.h, protocol
 * 7.38, defined once here as byte offsets plus its SIZE, little-endian on
 * the wire (virtio-fs is always little-endian: virtio 1.2 §5.11.6.1).
 */

/** FUSE_KERNEL_VERSION: the major version we speak. */
export const FUSE_KERNEL_VERSION = 7;
/** FUSE_KERNEL_MINOR_VERSION of include/uapi/linux/fuse.h in Linux 6.1 stable: our max minor. */
export const FUSE_KERNEL_MINOR_VERSION = 38;
/**
 * Oldest minor we accept: 7.31, Linux 5.4, the first kernel with virtio-fs.
 * Older minors use shorter replies (FUSE_COMPAT_*_SIZE) we never write.
 */
export const FUSE_MIN_MINOR_VERSION = 31;
/** The node ID of the root inode (FUSE_ROOT_ID). */
export const FUSE_ROOT_ID = 1n;

// enum fuse_opcode.
export const FUSE_LOOKUP = 1;
export const FUSE_FORGET = 2; // no reply
export const FUSE_GETATTR = 3;
export const FUSE_SETATTR = 4;
export const FUSE_READLINK = 5;
export const FUSE_SYMLINK = 6;
export const FUSE_MKNOD = 8;
export const FUSE_MKDIR = 9;
export const FUSE_UNLINK = 10;
export const FUSE_RMDIR = 11;
export const FUSE_RENAME = 12;
export const FUSE_LINK = 13;
export const FUSE_OPEN = 14;
export const FUSE_READ = 15;
export const FUSE_WRITE = 16;
export const FUSE_STATFS = 17;
export const FUSE_RELEASE = 18;
export const FUSE_FSYNC = 20;
export const FUSE_SETXATTR = 21;
export const FUSE_GETXATTR = 22;
export const FUSE_LISTXATTR = 23;
export const FUSE_REMOVEXATTR = 24;
export const FUSE_FLUSH = 25;
export const FUSE_INIT = 26;
export const FUSE_OPENDIR = 27;
export const FUSE_READDIR = 28;
export const FUSE_RELEASEDIR = 29;
export const FUSE_FSYNCDIR = 30;
export const FUSE_GETLK = 31;
export const FUSE_SETLK = 32;
export const FUSE_SETLKW = 33;
export const FUSE_ACCESS = 34;
export const FUSE_CREATE = 35;
export const FUSE_INTERRUPT = 36; // no reply
export const FUSE_BMAP = 37;
export const FUSE_DESTROY = 38;
export const FUSE_IOCTL = 39;
export const FUSE_POLL = 40;
export const FUSE_NOTIFY_REPLY = 41;
export const FUSE_BATCH_FORGET = 42; // no reply
export const FUSE_FALLOCATE = 43;
export const FUSE_READDIRPLUS = 44;
export const FUSE_RENAME2 = 45;
export const FUSE_LSEEK = 46;
export const FUSE_COPY_FILE_RANGE = 47;
export const FUSE_SETUPMAPPING = 48;
export const FUSE_REMOVEMAPPING = 49;
export const FUSE_SYNCFS = 50;
export const FUSE_TMPFILE = 51;

/** Opcode names, for log lines. */
export const FUSE_OPCODE_NAMES: Readonly<Record<number, string>> = {
  1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK", 8: "MKNOD", 9: "MKDIR",
  10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK", 14: "OPEN", 15: "READ", 16: "WRITE", 17: "STATFS",
  18: "RELEASE", 20: "FSYNC", 21: "SETXATTR", 22: "GETXATTR", 23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH",
  26: "INIT", 27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 30: "FSYNCDIR", 31: "GETLK", 32: "SETLK",
  33: "SETLKW", 34: "ACCESS", 35: "CREATE", 36: "INTERRUPT", 37: "BMAP", 38: "DESTROY", 39: "IOCTL", 40: "POLL",
  41: "NOTIFY_REPLY", 42: "BATCH_FORGET", 43: "FALLOCATE", 44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK",
  47: "COPY_FILE_RANGE", 48: "SETUPMAPPING", 49: "REMOVEMAPPING", 50: "SYNCFS", 51: "TMPFILE",
};

// INIT flags (fuse_init_in.flags / fuse_init_out.flags). Only the ones we may answer are named.
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_ATOMIC_O_TRUNC = 1 << 3;
export const FUSE_EXPORT_SUPPORT = 1 << 4;
export const FUSE_BIG_WRITES = 1 << 5;
export const FUSE_DONT_MASK = 1 << 6;
export const FUSE_AUTO_INVAL_DATA = 1 << 12;
export const FUSE_DO_READDIRPLUS = 1 << 13;
export const FUSE_READDIRPLUS_AUTO = 1 << 14;
export const FUSE_ASYNC_DIO = 1 << 15;
export const FUSE_WRITEBACK_CACHE = 1 << 16;
export const FUSE_PARALLEL_DIROPS = 1 << 18;
export const FUSE_MAX_PAGES = 1 << 22;
export const FUSE_CACHE_SYMLINKS = 1 << 23;
export const FUSE_INIT_EXT = 1 << 30;

// fuse_open_out.open_flags.
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_CACHE_DIR = 1 << 3;

// fuse_setattr_in.valid.
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;
export const FATTR_LOCKOWNER = 1 << 9;
export const FATTR_CTIME = 1 << 10;
export const FATTR_KILL_SUIDGID = 1 << 11;

/** fuse_getattr_in.getattr_flags: `fh` is valid. */
export const FUSE_GETATTR_FH = 1 << 0;
/** fuse_fsync_in.fsync_flags: data only (fdatasync). */
export const FUSE_FSYNC_FDATASYNC = 1 << 0;

// ---- layouts: byte offsets and SIZE of each struct ----

/** struct fuse_in_header: first in every request. */
export const IN_HEADER = {
  LEN: 0, OPCODE: 4, UNIQUE: 8, NODEID: 16, UID: 24, GID: 28, PID: 32, TOTAL_EXTLEN: 36, PADDING: 38, SIZE: 40,
} as const;
/** struct fuse_out_header: first in every reply; `error` is 0 or a negative errno. */
export const OUT_HEADER = { LEN: 0, ERROR: 4, UNIQUE: 8, SIZE: 16 } as const;

/** struct fuse_attr. */
export const ATTR = {
  INO: 0, SIZE_: 8, BLOCKS: 16, ATIME: 24, MTIME: 32, CTIME: 40, ATIMENSEC: 48, MTIMENSEC: 52, CTIMENSEC: 56,
  MODE: 60, NLINK: 64, UID: 68, GID: 72, RDEV: 76, BLKSIZE: 80, FLAGS: 84, SIZE: 88,
} as const;
/** struct fuse_entry_out: nodeid, generation, timeouts, then a fuse_attr. */
export const ENTRY_OUT = {
  NODEID: 0, GENERATION: 8, ENTRY_VALID: 16, ATTR_VALID: 24, ENTRY_VALID_NSEC: 32, ATTR_VALID_NSEC: 36, ATTR: 40,
  SIZE: 128,
} as const;
/** struct fuse_attr_out. */
export const ATTR_OUT = { ATTR_VALID: 0, ATTR_VALID_NSEC: 8, DUMMY: 12, ATTR: 16, SIZE: 104 } as const;
/** struct fuse_kstatfs (= struct fuse_statfs_out). */
export const KSTATFS = {
  BLOCKS: 0, BFREE: 8, BAVAIL: 16, FILES: 24, FFREE: 32, BSIZE: 40, NAMELEN: 44, FRSIZE: 48, PADDING: 52, SPARE: 56,
  SIZE: 80,
} as const;

/** struct fuse_init_in (7.36+; a 7.35 kernel sends only the first 16 bytes). */
export const INIT_IN = { MAJOR: 0, MINOR: 4, MAX_READAHEAD: 8, FLAGS: 12, FLAGS2: 16, UNUSED: 20, SIZE: 64, COMPAT_SIZE: 16 } as const;
/** struct fuse_init_out. */
export const INIT_OUT = {
  MAJOR: 0, MINOR: 4, MAX_READAHEAD: 8, FLAGS: 12, MAX_BACKGROUND: 16, CONGESTION_THRESHOLD: 18, MAX_WRITE: 20,
  TIME_GRAN: 24, MAX_PAGES: 28, MAP_ALIGNMENT: 30, FLAGS2: 32, UNUSED: 36, SIZE: 64,
} as const;

/** struct fuse_forget_in. */
export const FORGET_IN = { NLOOKUP: 0, SIZE: 8 } as const;
/** struct fuse_batch_forget_in, followed by `count` fuse_forget_one. */
export const BATCH_FORGET_IN = { COUNT: 0, DUMMY: 4, SIZE: 8 } as const;
/** struct fuse_forget_one. */
export const FORGET_ONE = { NODEID: 0, NLOOKUP: 8, SIZE: 16 } as const;
/** struct fuse_getattr_in. */
export const GETATTR_IN = { GETATTR_FLAGS: 0, DUMMY: 4, FH: 8, SIZE: 16 } as const;
/** struct fuse_setattr_in. */
export const SETATTR_IN = {
  VALID: 0, PADDING: 4, FH: 8, SIZE_: 16, LOCK_OWNER: 24, ATIME: 32, MTIME: 40, CTIME: 48, ATIMENSEC: 56,
  MTIMENSEC: 60, CTIMENSEC: 64, MODE: 68, UNUSED4: 72, UID: 76, GID: 80, UNUSED5: 84, SIZE: 88,
} as const;
/** struct fuse_mknod_in, then the name. */
export const MKNOD_IN = { MODE: 0, RDEV: 4, UMASK: 8, PADDING: 12, SIZE: 16 } as const;
/** struct fuse_mkdir_in, then the name. */
export const MKDIR_IN = { MODE: 0, UMASK: 4, SIZE: 8 } as const;
/** struct fuse_rename_in, then the old and new names. */
export const RENAME_IN = { NEWDIR: 0, SIZE: 8 } as const;
/** struct fuse_rename2_in, then the old and new names. */
export const RENAME2_IN = { NEWDIR: 0, FLAGS: 8, PADDING: 12, SIZE: 16 } as const;
/** struct fuse_link_in, then the new name. */
export const LINK_IN = { OLDNODEID: 0, SIZE: 8 } as const;
/** struct fuse_open_in (OPEN and OPENDIR). */
export const OPEN_IN = { FLAGS: 0, OPEN_FLAGS: 4, SIZE: 8 } as const;
/** struct fuse_create_in, then the name. */
export const CREATE_IN = { FLAGS: 0, MODE: 4, UMASK: 8, OPEN_FLAGS: 12, SIZE: 16 } as const;
/** struct fuse_open_out. */
export const OPEN_OUT = { FH: 0, OPEN_FLAGS: 8, PADDING: 12, SIZE: 16 } as const;
/** struct fuse_release_in (RELEASE and RELEASEDIR). */
export const RELEASE_IN = { FH: 0, FLAGS: 8, RELEASE_FLAGS: 12, LOCK_OWNER: 16, SIZE: 24 } as const;
/** struct fuse_flush_in. */
export const FLUSH_IN = { FH: 0, UNUSED: 8, PADDING: 12, LOCK_OWNER: 16, SIZE: 24 } as const;
/** struct fuse_read_in (READ, READDIR, READDIRPLUS). */
export const READ_IN = {
  FH: 0, OFFSET: 8, SIZE_: 16, READ_FLAGS: 20, LOCK_OWNER: 24, FLAGS: 32, PADDING: 36, SIZE: 40,
} as const;
/** struct fuse_write_in, then the data. */
export const WRITE_IN = {
  FH: 0, OFFSET: 8, SIZE_: 16, WRITE_FLAGS: 20, LOCK_OWNER: 24, FLAGS: 32, PADDING: 36, SIZE: 40,
} as const;
/** struct fuse_write_out. */
export const WRITE_OUT = { SIZE_: 0, PADDING: 4, SIZE: 8 } as const;
/** struct fuse_fsync_in (FSYNC and FSYNCDIR). */
export const FSYNC_IN = { FH: 0, FSYNC_FLAGS: 8, PADDING: 12, SIZE: 16 } as const;
/** struct fuse_getxattr_in (GETXATTR and LISTXATTR), then the name for GETXATTR. */
export const GETXATTR_IN = { SIZE_: 0, PADDING: 4, SIZE: 8 } as const;
/** struct fuse_getxattr_out: the value's size, when asked with size 0. */
export const GETXATTR_OUT = { SIZE_: 0, PADDING: 4, SIZE: 8 } as const;
/** struct fuse_interrupt_in. */
export const INTERRUPT_IN = { UNIQUE: 0, SIZE: 8 } as const;
/** struct fuse_fallocate_in. */
export const FALLOCATE_IN = { FH: 0, OFFSET: 8, LENGTH: 16, MODE: 24, PADDING: 28, SIZE: 32 } as const;
/** struct fuse_lseek_in. */
export const LSEEK_IN = { FH: 0, OFFSET: 8, WHENCE: 16, PADDING: 20, SIZE: 24 } as const;
/** struct fuse_lseek_out. */
export const LSEEK_OUT = { OFFSET: 0, SIZE: 8 } as const;
/** struct fuse_dirent: its fixed part (FUSE_NAME_OFFSET); the name follows, the record padded to 8. */
export const DIRENT = { INO: 0, OFF: 8, NAMELEN: 16, TYPE: 20, NAME: 24, SIZE: 24 } as const;
/** struct fuse_direntplus: an entry_out, then a fuse_dirent (FUSE_NAME_OFFSET_DIRENTPLUS = 152). */
export const DIRENTPLUS = { ENTRY_OUT: 0, DIRENT: 128, NAME: 152, SIZE: 152 } as const;

/** FUSE_DIRENT_ALIGN: records are padded to 8 bytes. */
export function direntAlign(n: number): number {
  return (n + 7) & ~7;
}
/** FUSE_DIRENT_SIZE for a name of `namelen` bytes. */
export function direntSize(namelen: number): number {
  return direntAlign(DIRENT.NAME + namelen);
}
/** FUSE_DIRENTPLUS_SIZE for a name of `namelen` bytes. */
export function direntplusSize(namelen: number): number {
  return direntAlign(DIRENTPLUS.NAME + namelen);
}

// errno values a FUSE reply carries (negated), x86-64 (asm-generic/errno-base.h, errno.h).
export const EPERM = 1, ENOENT = 2, EIO = 5, EBADF = 9, EACCES = 13, EEXIST = 17, EXDEV = 18, ENOTDIR = 20;
export const EISDIR = 21, EINVAL = 22, EFBIG = 27, EROFS = 30, ERANGE = 34, ENAMETOOLONG = 36, ENOSYS = 38;
export const ELOOP = 40, ENODATA = 61, EPROTO = 71, EOPNOTSUPP = 95;
