/**
 * A prebuilt default guest that travels with vmm: `guest-image/`.
 *
 * The npm package carries this directory (written by `npm pack`'s prepack
 * script) and the single executable embeds it (`bun build --compile
 * --asset`). It holds the kernel and the initramfs gzip-compressed, and
 * `guest.json`, which names them with the SHA-256 and size of their
 * uncompressed bytes:
 *
 *     guest-image/guest.json       { format, kernelVersion, kernel, initrd }
 *     guest-image/vmlinuz.gz       the bzImage (its payload is already lz4:
 *                                  gzip still takes 14 MB to 11)
 *     guest-image/initrd.cpio.gz   the initramfs (3.5 MB to 1.4)
 *
 * Unpacking also takes the ELF kernel out of the bzImage (`vmlinux`, in
 * this process: guest/lz4.ts), which boots without the guest decompressing
 * itself (boot/vmlinux.ts); a bzImage whose payload it cannot decompress
 * gets none, and boots as it is.
 *
 * vmm hands the kernel files by path to the loader, so on first use they are
 * unpacked into the cache, in a directory named by their hashes: a new build
 * of the image gets a new directory, and an unchanged one is found again
 * without reading it. Unpacking writes a private temporary directory, checks
 * both hashes, and renames it into place: a reader never sees a half-written
 * image, and two vmm processes unpacking at once both end up with the one
 * that won the rename.
 */
import { createHash } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { gunzipSync, gzipSync } from "node:zlib";
import { type GuestImage, vmlinuxInProcess } from "./build.ts";
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

const KERNEL_NAME = "vmlinuz";
const INITRD_NAME = "initrd.cpio";
const VMLINUX_NAME = "vmlinux";

/**
 * Writes `img` (kernel and initramfs) as a packaged guest into `dir`;
 * returns its manifest. `dir` is replaced.
 *
 * @example
 * ```ts
 * import { ensureDefaultGuest } from "./build.ts";
 * import { writePackagedGuest } from "./packaged.ts";
 * const m = writePackagedGuest(await ensureDefaultGuest(), "guest-image");
 * console.log(m.kernelVersion, m.kernel.size);
 * ```
 */
export function writePackagedGuest(img: Pick<GuestImage, "kernel" | "initrd" | "kernelVersion">, dir: string): PackagedManifest {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const pack = (src: string, name: string): PackagedFile => {
    const data = readFileSync(src);
    writeFileSync(join(dir, `${name}.gz`), gzipSync(data, { level: 9 }));
    return { file: `${name}.gz`, sha256: sha256(data), size: data.length };
  };
  const m: PackagedManifest = {
    format: PACKAGED_FORMAT,
    kernelVersion: img.kernelVersion,
    kernel: pack(img.kernel, KERNEL_NAME),
    initrd: pack(img.initrd, INITRD_NAME),
  };
  writeFileSync(join(dir, "guest.json"), JSON.stringify(m, null, 2) + "\n");
  return m;
}

/**
 * The manifest of the packaged guest in `dir`; undefined when there is none.
 * A manifest that is there but unreadable is an error naming the file.
 */
export function readPackagedManifest(dir: string): PackagedManifest | undefined {
  const path = join(dir, "guest.json");
  if (!existsSync(path)) return undefined;
  let m: PackagedManifest;
  try {
    m = JSON.parse(readFileSync(path, "utf8"));
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
  return `guest-${sha256(new TextEncoder().encode(m.kernel.sha256 + m.initrd.sha256)).slice(0, 16)}`;
}

export interface UnpackOptions {
  /** Cache directories to try in order (`cacheRoots()` by default). */
  roots?: string[];
  /** Called before the first-use unpack with a line to show; vmm prints it on stderr. */
  onUnpack?: (line: string) => (() => void) | void;
}

/**
 * The packaged guest in `dir` as files vmm can boot, unpacking it on first
 * use into the first cache root where that works.
 *
 * @example
 * ```ts
 * import { unpackGuest } from "./packaged.ts";
 * const img = unpackGuest("guest-image", { onUnpack: (l) => console.error(l) });
 * console.log(img.kernel); // ~/.cache/vmm/guest-1f0c…/vmlinuz
 * ```
 */
export function unpackGuest(dir: string, opts: UnpackOptions = {}): GuestImage {
  const m = readPackagedManifest(dir);
  if (!m) throw new Error(`${dir}: no packaged guest (guest.json is missing)`);
  const name = unpackedName(m);
  const roots = opts.roots ?? cacheRoots();
  // Already unpacked in one of the roots: the fast path reads no image byte.
  for (const root of roots) {
    const img = unpacked(join(root, name), m);
    if (img && trusted(root) === undefined) return img;
  }
  const why: string[] = [];
  for (const root of roots) {
    try {
      usableRoot(root);
    } catch (e) {
      why.push((e as Error).message);
      continue;
    }
    const final = join(root, name);
    const mb = ((m.kernel.size + m.initrd.size) / 1e6).toFixed(0);
    const done = opts.onUnpack?.(`first use: unpacking the default guest (Linux ${m.kernelVersion}, ${mb} MB) into ${final}`);
    const tmp = join(root, `.${name}.tmp-${process.pid}`);
    try {
      rmSync(tmp, { recursive: true, force: true });
      mkdirSync(tmp, { mode: 0o755 });
      for (const [f, out] of [[m.kernel, KERNEL_NAME], [m.initrd, INITRD_NAME]] as const) {
        const data = gunzipSync(readFileSync(join(dir, f.file)));
        if (data.length !== f.size || sha256(data) !== f.sha256) {
          throw new Error(`${join(dir, f.file)}: content does not match guest.json (a damaged package or executable)`);
        }
        writeFileSync(join(tmp, out), data);
        const elf = out === KERNEL_NAME ? vmlinuxOf(data) : undefined;
        if (elf) writeFileSync(join(tmp, VMLINUX_NAME), elf);
      }
      try {
        renameSync(tmp, final);
      } catch (e) {
        // Another vmm renamed its copy first: the same bytes, so use it.
        if (!unpacked(final, m)) throw e;
      }
    } catch (e) {
      removeQuietly(tmp);
      if ((e as Error).message.includes("does not match")) throw e;
      why.push(`${root}: ${(e as { code?: string }).code ?? (e as Error).message}`);
      continue;
    }
    rmSync(tmp, { recursive: true, force: true });
    if (typeof done === "function") done();
    const img = unpacked(final, m);
    if (img) return img;
    why.push(`${final}: incomplete after unpacking`);
  }
  throw new Error(`Cannot unpack the default guest: ${why.join("; ")}`);
}

/** The vmlinux inside `kernel`, or undefined where there is none to take: the bzImage then boots as it is. */
function vmlinuxOf(kernel: Uint8Array): Uint8Array | undefined {
  try {
    return vmlinuxInProcess(kernel);
  } catch {
    return undefined; // not a bzImage, or a payload that does not decode: the loader says what is wrong when it boots
  }
}

/**
 * Remove a temporary directory that may not exist, on a file system that may
 * be read-only (Bun's rmSync reports EROFS there even with `force`): the
 * root is then skipped, not the whole search ended.
 */
function removeQuietly(path: string): void {
  try {
    rmSync(path, { recursive: true, force: true });
  } catch { /* nothing of ours is there to remove */ }
}

/** The unpacked image in `dir` if both files are there at their sizes. */
function unpacked(dir: string, m: PackagedManifest): GuestImage | undefined {
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
 * Makes `root` if needed and checks it can be trusted with a kernel. The
 * temporary directory is shared by every user: another one could have made
 * `/tmp/vmm-0` first, or a symlink by that name, and planted a kernel there.
 * So a root must be a real directory owned by this user that no one else can
 * write to; the home cache passes this as well.
 */
function usableRoot(root: string): void {
  try {
    mkdirSync(root, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new Error(`${root}: ${(e as { code?: string }).code ?? (e as Error).message}`);
  }
  const why = trusted(root);
  if (why) throw new Error(`${root}: ${why}`);
}

/** Why `root` cannot be trusted with a kernel; undefined when it can. */
function trusted(root: string): string | undefined {
  let st;
  try {
    st = lstatSync(root);
  } catch (e) {
    return (e as { code?: string }).code ?? (e as Error).message;
  }
  const uid = process.getuid?.();
  if (!st.isDirectory()) return "not a directory";
  if (uid !== undefined && st.uid !== uid) return `owned by uid ${st.uid}, not this user`;
  if (st.mode & 0o022) return "writable by others";
  return undefined;
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}
