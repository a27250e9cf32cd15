/**
 * Host disk images for virtio-blk: the `--drive` option, and opening an
 * image so that the guest's disk is exactly the file.
 *
 * The image is a raw file (or a block device) whose byte N is the guest's
 * byte N: no format, no header. Opening it follows QEMU's rules for sharing
 * an image between VMs: a writable drive takes an exclusive lock and a
 * read-only drive a shared one, so two VMs can read one image together but
 * never write it together (two writers, or a writer under a reader's page
 * cache, would corrupt the filesystem inside). The lock is flock(2), which
 * belongs to the open file description: it lasts until the fd is closed, and
 * every thread that is handed the fd number shares it.
 *
 * Every way the user can get a drive wrong becomes one ConfigError line
 * naming the drive; nothing here throws SysError at the user.
 *
 * @example
 * ```ts
 * import { closeDisk, openDisk, parseDriveSpec } from "./disk.ts";
 *
 * const disk = openDisk(parseDriveSpec("rootfs.img,readonly,id=root"));
 * console.log(disk.sizeBytes / 512, "sectors");
 * closeDisk(disk);
 * ```
 */

import { close, errno, libc, LOCK_EX, LOCK_NB, NativeBuf, O_NONBLOCK, O_RDONLY, O_RDWR, open } from "../../ffi/libc.ts";
import { E, errnoName, SysError } from "../../ffi/errno.ts";
import { ConfigError } from "../../vm/errors.ts";
import { VIRTIO_MAX_QUEUES } from "../../loop/shared.ts";

/** The virtio-blk serial (GET_ID answer) is at most 20 bytes (virtio 1.2 §5.2.6). */
export const DRIVE_ID_MAX_BYTES = 20;
/** virtio-blk counts in 512-byte sectors whatever the host's block size (virtio 1.2 §5.2.4). */
const SECTOR = 512;

/** One `--drive` option, parsed but not yet opened. */
export interface DriveSpec {
  path: string;
  readOnly: boolean;
  /** The serial the guest sees (`/dev/disk/by-id/virtio-ID`); default in `openDisk`. */
  id?: string;
  /** Request queues asked for (`queues=N`); the device gets at most one per vCPU (devices/blk/mod.ts). */
  queues?: number;
}

/** The most request queues one drive may ask for: as many as a device's shared block has room for. */
export const DRIVE_MAX_QUEUES = VIRTIO_MAX_QUEUES;
/** What a queue count out of range is told, from `queues=N` or a DriveSpec object alike. */
export const QUEUES_RANGE = `queues takes a whole number from 1 to ${DRIVE_MAX_QUEUES} (queues=N)`;

/** Whether `n` can be a drive's queue count: a whole number from 1 to DRIVE_MAX_QUEUES. */
export function validQueues(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= DRIVE_MAX_QUEUES;
}

/** An open disk image, locked for this VM. Plain data: a queue Worker receives it as is. */
export interface Disk {
  fd: number;
  path: string;
  /** A whole number of 512-byte sectors, never 0. */
  sizeBytes: number;
  readOnly: boolean;
  /** At most 20 bytes of UTF-8. */
  id: string;
}

/**
 * Parse `PATH[,readonly][,id=NAME][,queues=N]` (`ro` is short for
 * `readonly`). A path cannot contain a comma. Throws ConfigError naming the
 * whole option.
 */
export function parseDriveSpec(s: string): DriveSpec {
  const fail = (why: string) => new ConfigError(`--drive ${s}: ${why}`);
  const [path, ...opts] = s.split(",");
  if (path === "") throw fail("empty path");
  const spec: DriveSpec = { path, readOnly: false };
  const seen = new Set<string>();
  for (const opt of opts) {
    const eq = opt.indexOf("=");
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const name = key === "ro" ? "readonly" : key; // synonyms count as one key
    if (opt === "") throw fail("empty option (a stray comma?)");
    if (name !== "readonly" && name !== "id" && name !== "queues") throw fail(`unknown option "${key}"`);
    if (seen.has(name)) throw fail(`option "${name}" given twice`);
    seen.add(name);
    if (name === "readonly") {
      if (eq >= 0) throw fail(`option "${key}" takes no value`);
      spec.readOnly = true;
    } else if (name === "queues") {
      const v = opt.slice(eq + 1);
      if (eq < 0 || !/^[0-9]+$/.test(v) || !validQueues(Number(v))) throw fail(QUEUES_RANGE);
      spec.queues = Number(v);
    } else {
      if (eq < 0) throw fail(`option "id" needs a value (id=NAME)`);
      const id = opt.slice(eq + 1);
      if (id === "") throw fail("empty id");
      const n = utf8.encode(id).length;
      if (n > DRIVE_ID_MAX_BYTES) throw fail(`id is ${n} bytes, virtio-blk allows at most ${DRIVE_ID_MAX_BYTES}`);
      spec.id = id;
    }
  }
  return spec;
}

const utf8 = new TextEncoder();

/**
 * The default id: the file's basename cut to 20 bytes at a character
 * boundary. Stable from run to run, and it tells the guest which image is
 * which (`disk.img` shows up as `/dev/disk/by-id/virtio-disk.img`).
 */
export function defaultDriveId(path: string): string {
  const base = path.replace(/\/+$/, "").split("/").pop() || "disk";
  let id = "";
  for (const ch of base) {
    if (utf8.encode(id + ch).length > DRIVE_ID_MAX_BYTES) break;
    id += ch;
  }
  return id;
}

// x86-64 struct stat as the fstat system call fills it (arch/x86/include/uapi/asm/stat.h).
const STAT_SIZE = 144;
const STAT_MODE = 24;
const S_IFMT = 0o170000, S_IFDIR = 0o040000, S_IFREG = 0o100000, S_IFBLK = 0o060000;
// fstat goes through syscall(2): glibc exports `fstat` only since 2.33, and one
// missing symbol would make dlopen of the whole libc table fail on older hosts.
const SYS_fstat = 5;
const SEEK_END = 2;
const F_GETFL = 3, F_SETFL = 4;
const O_NOCTTY = 0o400;
const LOCK_SH = 1;
const { ENOENT, EACCES, EPERM, EISDIR, EROFS, EAGAIN: EWOULDBLOCK } = E;

/**
 * Open and lock the image of `spec`. Refuses, with a ConfigError naming the
 * drive: a missing or unreadable file, a directory or anything that is not a
 * regular file or block device, an image locked by another process, an empty
 * image, and a size that is not a whole number of sectors (rather than hide
 * the tail from the guest, we ask the user to resize the file).
 */
export function openDisk(spec: DriveSpec): Disk {
  const { path, readOnly } = spec;
  const fail = (why: string) => new ConfigError(`--drive ${path}: ${why}`);
  const hint = readOnly ? "" : " (add ,readonly to use it read-only)";
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer before we could refuse it. O_NOCTTY: a terminal given by mistake
    // must not become our controlling terminal. open() adds O_CLOEXEC.
    fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_NONBLOCK | O_NOCTTY, 0, "open");
  } catch (e) {
    if (!(e instanceof SysError)) throw e;
    if (e.errno === ENOENT) throw fail("no such file");
    if (e.errno === EACCES || e.errno === EPERM) throw fail(`permission denied${hint}`);
    if (e.errno === EISDIR) throw fail("is a directory, not a disk image");
    if (e.errno === EROFS) throw fail(`is on a read-only file system${hint}`);
    throw fail(e.message);
  }
  try {
    const kind = fileType(fd);
    if (kind === S_IFDIR) throw fail("is a directory, not a disk image");
    if (kind !== S_IFREG && kind !== S_IFBLK) throw fail("is not a regular file or block device");
    clearNonBlock(fd);

    if (Number(libc.flock(fd, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB)) < 0) {
      const e = errno();
      if (e === EWOULDBLOCK) {
        throw fail(readOnly ? "is open for writing by another process (another VM?)" : "is in use by another process (another VM?)");
      }
      throw fail(`flock: ${errnoName(e)}`);
    }

    // lseek to the end gives the size of a block device too (st_size is 0 there).
    const size = Number(libc.lseek(fd, 0n, SEEK_END));
    if (size < 0) throw fail(`lseek: ${errnoName(errno())}`);
    if (size === 0) throw fail("image is empty");
    if (size % SECTOR !== 0) {
      throw fail(`size ${size} bytes is not a multiple of ${SECTOR}; resize it (truncate -s ${Math.ceil(size / SECTOR) * SECTOR})`);
    }
    return { fd, path, sizeBytes: size, readOnly, id: spec.id ?? defaultDriveId(path) };
  } catch (e) {
    close(fd); // also drops any lock we took
    throw e instanceof SysError ? fail(e.message) : e;
  }
}

/** Close the image; its lock goes with the last fd of the open file description. */
export function closeDisk(disk: Disk): void {
  close(disk.fd);
}

let statBuf: NativeBuf | null = null;

/** The S_IFMT bits of an open fd. */
function fileType(fd: number): number {
  const st = statBuf ??= NativeBuf.alloc(STAT_SIZE);
  const r = Number(libc.syscall(BigInt(SYS_fstat), BigInt(fd), st.addr, 0n));
  if (r < 0) throw new SysError("fstat", errno());
  return st.view.getUint32(STAT_MODE, true) & S_IFMT;
}

function clearNonBlock(fd: number): void {
  const fl = Number(libc.fcntl(fd, F_GETFL, 0n));
  if (fl < 0 || Number(libc.fcntl(fd, F_SETFL, BigInt(fl & ~O_NONBLOCK))) < 0) throw new SysError("fcntl", errno());
}
