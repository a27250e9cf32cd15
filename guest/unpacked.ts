/**
 * A packaged guest (`guest-image/`, guest/packaged.ts) as vmm meets it on
 * every start once it has been unpacked: its manifest, and its copy in a
 * cache root, found by name and checked with a few `stat` calls.
 *
 * Why apart from packaged.ts: this runs on every `vmm boot` and `vmm run`
 * without `--kernel`, and must load no `node:` module (ffi/sys.ts says what
 * the first one costs on Deno). Writing and unpacking a guest (node:zlib,
 * and node:crypto to check megabytes) stay in packaged.ts, which
 * guest/default_guest.ts imports only for a first use.
 */
import type { GuestImage } from "./image_cache.ts";
import { existsSync, join, lstatSync, readTextFileSync, statSync, uid } from "../ffi/sys.ts";
import { sha256Hex } from "../ffi/sha256.ts";
import { cacheRoots } from "../loop/cache_entries.ts";

/** Bump when the layout of `guest-image/` changes; an older vmm then refuses it by name. */
export const PACKAGED_FORMAT = 1;

/** One file of a packaged guest. */
export interface PackagedFile {
  /** Its name in `guest-image/`, compressed. */
  file: string;
  /** SHA-256 of the uncompressed bytes, hex. */
  sha256: string;
  /** Uncompressed size in bytes. */
  size: number;
}

/** `guest-image/guest.json`. */
export interface PackagedManifest {
  format: number;
  kernelVersion: string;
  kernel: PackagedFile;
  initrd: PackagedFile;
}

export interface UnpackOptions {
  /** Cache directories to try in order (`cacheRoots()` by default). */
  roots?: string[];
  /** Called before the first-use unpack with a line to show; vmm prints it on stderr. */
  onUnpack?: (line: string) => (() => void) | void;
}

/** The names of the unpacked files in their cache directory. */
export const KERNEL_NAME = "vmlinuz", INITRD_NAME = "initrd.cpio", VMLINUX_NAME = "vmlinux";

/**
 * The manifest of the packaged guest in `dir`; undefined when there is none.
 * A manifest that is there but unreadable is an error naming the file.
 */
export function readPackagedManifest(dir: string): PackagedManifest | undefined {
  const path = join(dir, "guest.json");
  if (!exists(path)) return undefined;
  let m: PackagedManifest;
  try {
    m = JSON.parse(readTextFileSync(path));
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
  if (m.format !== PACKAGED_FORMAT) throw new Error(`${path}: format ${m.format}, this vmm reads format ${PACKAGED_FORMAT}`);
  for (const f of [m.kernel, m.initrd]) {
    if (!f || typeof f.file !== "string" || !/^[0-9a-f]{64}$/.test(f.sha256) || !Number.isSafeInteger(f.size)) {
      throw new Error(`${path}: a file entry lacks its file, sha256 or size`);
    }
  }
  return m;
}

/** The cache directory name of a packaged guest: its two hashes, shortened. */
export function unpackedName(m: PackagedManifest): string {
  return `guest-${sha256Hex(m.kernel.sha256 + m.initrd.sha256).slice(0, 16)}`;
}

/**
 * The packaged guest `m` as unpacked before into one of `roots` that can
 * still be trusted (the first, in order); undefined when it must be
 * unpacked. Reads no byte of the image: the name is its hash, and the
 * sizes say the files are whole.
 */
export function findUnpacked(m: PackagedManifest, roots: string[] = cacheRoots()): GuestImage | undefined {
  const name = unpackedName(m);
  for (const root of roots) {
    const img = unpacked(join(root, name), m);
    if (img && trusted(root) === undefined) return img;
  }
  return undefined;
}

/** The unpacked image in `dir` if both files are there at their sizes. */
export function unpacked(dir: string, m: PackagedManifest): GuestImage | undefined {
  const kernel = join(dir, KERNEL_NAME);
  const initrd = join(dir, INITRD_NAME);
  try {
    if (statSync(kernel).size !== m.kernel.size || statSync(initrd).size !== m.initrd.size) return undefined;
  } catch {
    return undefined;
  }
  // Written before the rename like the others, so present here means whole.
  const vmlinux = join(dir, VMLINUX_NAME);
  return { kernel, initrd, kernelVersion: m.kernelVersion, ...(existsSync(vmlinux) ? { vmlinux } : {}) };
}

/**
 * Whether `path` exists, by stat(2) through the runtime: an executable's
 * `guest-image/` is in Bun's embedded file system (`/$bunfs/`), which Bun's
 * own calls see and libc's access(2), sys.ts's existsSync(), does not.
 */
function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Why `root` cannot be trusted with a kernel; undefined when it can. The
 * temporary directory is shared by every user: another one could have made
 * `/tmp/vmm-0` first, or a symlink by that name, and planted a kernel there.
 * So a root must be a real directory owned by this user that no one else can
 * write to; the home cache passes this as well.
 */
export function trusted(root: string): string | undefined {
  let st;
  try {
    st = lstatSync(root);
  } catch (e) {
    return (e as { code?: string }).code ?? (e as Error).message;
  }
  if (!st.isDirectory) return "not a directory";
  const me = uid();
  if (st.uid !== me) return `owned by uid ${st.uid}, not this user`;
  if (st.mode & 0o022) return "writable by others";
  return undefined;
}
