/**
 * A writer for the "newc" cpio format that Linux unpacks as its initramfs.
 *
 * The format is specified in the kernel's
 * `Documentation/driver-api/early-userspace/buffer-format.rst`: each member is
 * a 110-byte ASCII header (magic `070701`, then thirteen 8-digit hex fields),
 * the NUL-terminated path padded so header + name is a multiple of 4 bytes,
 * then the data padded to a multiple of 4. The archive ends with a member named
 * `TRAILER!!!`.
 *
 * Linux unpacks several archives laid end to end (`init/initramfs.c` skips the
 * zero padding between them), and a later member replaces an earlier one of
 * the same path. That is how vmm adds per-run files, such as `/vmm/run.sh`, to
 * the prebuilt guest image without rewriting it. So the archive we write is
 * itself padded to 4 bytes: concatenation needs nothing more.
 */

/** One member of the archive. */
export interface CpioEntry {
  /** Path inside the archive; a leading `/` or `./` is dropped. */
  path: string;
  /** Full `st_mode`: file type bits (`S_IFREG`, `S_IFDIR`…) and permissions. */
  mode: number;
  /** Contents of a regular file. */
  data?: Uint8Array;
  /** Target of a symbolic link. */
  target?: string;
  /** Device number of a character or block device node. */
  rdevMajor?: number;
  rdevMinor?: number;
}

/** File type bits of `st_mode` (`include/uapi/linux/stat.h`). */
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

const MAGIC = "070701"; // newc: no checksum (070702 would be "crc")
const HEADER_LEN = 110; // 6 magic + 13 fields × 8 hex digits
const TRAILER = "TRAILER!!!";
const U32_MAX = 0xffff_ffff;

const enc = new TextEncoder();

/**
 * Writes `entries` as one newc archive, ending with `TRAILER!!!` and padded to
 * a multiple of 4 bytes.
 *
 * Parent directories that no entry names are added (mode 0755) before their
 * first child, because the kernel's unpacker does not create them. Members get
 * owner root, mtime 0 and distinct inode numbers, with one link each, so the
 * kernel never treats two of them as hard links (it only links regular files
 * whose nlink is 2 or more).
 *
 * @example
 * ```ts
 * import { S_IFDIR, S_IFREG, writeCpio } from "./cpio.ts";
 * const archive = writeCpio([
 *   { path: "vmm", mode: S_IFDIR | 0o755 },
 *   { path: "vmm/run.sh", mode: S_IFREG | 0o755, data: new TextEncoder().encode("echo hi\n") },
 * ]);
 * console.log(archive.length % 4); // 0
 * ```
 */
export function writeCpio(entries: CpioEntry[]): Uint8Array {
  const members = withParents(entries.map(normalize));
  const chunks: Uint8Array[] = [];
  let ino = 1;
  for (const m of members) {
    chunks.push(member(m, ino++));
  }
  chunks.push(member({ path: TRAILER, mode: 0, data: new Uint8Array(0) }, 0));
  let total = 0;
  for (const c of chunks) total += c.length;
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

interface Member {
  path: string;
  mode: number;
  data: Uint8Array;
  rdevMajor?: number;
  rdevMinor?: number;
}

/** Checks one entry and turns it into the bytes it will carry. */
function normalize(e: CpioEntry): Member {
  let path = e.path;
  while (path.startsWith("/") || path.startsWith("./")) {
    path = path.startsWith("/") ? path.slice(1) : path.slice(2);
  }
  path = path.replace(/\/+$/, "");
  if (path === "" || path === ".") {
    throw new RangeError(`Cpio entry path is empty: "${e.path}"`);
  }
  if (path.split("/").some((c) => c === "" || c === "." || c === "..")) {
    throw new RangeError(`Cpio entry path is not canonical: "${e.path}"`);
  }
  if (path.includes("\0")) throw new RangeError(`Cpio entry path holds a NUL byte: "${e.path}"`);
  if (!Number.isInteger(e.mode) || e.mode < 0 || e.mode > 0o177777) {
    throw new RangeError(`Cpio entry mode is out of range: ${e.path}: ${e.mode}`);
  }
  const type = e.mode & S_IFMT;
  let data: Uint8Array = new Uint8Array(0);
  switch (type) {
    case S_IFREG:
      data = e.data ?? data;
      break;
    case S_IFLNK:
      if (!e.target) throw new TypeError(`Cpio symlink has no target: ${e.path}`);
      data = enc.encode(e.target);
      break;
    case S_IFDIR:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFIFO:
    case S_IFSOCK:
      break;
    default:
      throw new RangeError(`Cpio entry mode has no file type bits: ${e.path}: 0o${e.mode.toString(8)}`);
  }
  if (type !== S_IFREG && e.data && e.data.length) {
    throw new TypeError(`Cpio entry carries data but is not a regular file: ${e.path}`);
  }
  if (data.length > U32_MAX) throw new RangeError(`Cpio entry is larger than 4 GiB: ${e.path}`);
  return { path, mode: e.mode, data, rdevMajor: e.rdevMajor, rdevMinor: e.rdevMinor };
}

/** Inserts a directory member before the first child of each unnamed parent. */
function withParents(members: Member[]): Member[] {
  const named = new Set(members.filter((m) => (m.mode & S_IFMT) === S_IFDIR).map((m) => m.path));
  const out: Member[] = [];
  for (const m of members) {
    const parts = m.path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join("/");
      if (!named.has(dir)) {
        named.add(dir);
        out.push({ path: dir, mode: S_IFDIR | 0o755, data: new Uint8Array(0) });
      }
    }
    out.push(m);
  }
  return out;
}

/** Header, name and data of one member, each part padded to 4 bytes. */
function member(m: Member, ino: number): Uint8Array {
  const name = enc.encode(m.path + "\0");
  const isDir = (m.mode & S_IFMT) === S_IFDIR;
  const fields = [
    ino, // c_ino
    m.mode, // c_mode
    0, // c_uid
    0, // c_gid
    isDir ? 2 : 1, // c_nlink
    0, // c_mtime
    m.data.length, // c_filesize
    0, // c_maj: device holding the file, only used to pair hard links
    0, // c_min
    checkDev(m.rdevMajor, m.path), // c_rmaj
    checkDev(m.rdevMinor, m.path), // c_rmin
    name.length, // c_namesize, counting the NUL
    0, // c_chksum: unused by newc
  ];
  const header = MAGIC + fields.map((f) => f.toString(16).padStart(8, "0")).join("");
  const nameEnd = pad4(HEADER_LEN + name.length);
  const out = new Uint8Array(nameEnd + pad4(m.data.length)); // zero-filled padding
  out.set(enc.encode(header), 0);
  out.set(name, HEADER_LEN);
  out.set(m.data, nameEnd);
  return out;
}

function checkDev(n: number | undefined, path: string): number {
  if (n === undefined) return 0;
  if (!Number.isInteger(n) || n < 0 || n > U32_MAX) {
    throw new RangeError(`Cpio device number is out of range: ${path}: ${n}`);
  }
  return n;
}

function pad4(n: number): number {
  return n + ((4 - (n % 4)) % 4);
}
