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
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { gunzipSync, gzipSync } from "node:zlib";
import { type GuestImage, vmlinuxInProcess } from "./build.ts";
import { cacheRoots } from "../loop/cache_entries.ts";
import { writeSparseFileSync } from "../ffi/sys.ts";
import {
  findUnpacked,
  INITRD_NAME,
  KERNEL_NAME,
  PACKAGED_FORMAT,
  type PackagedFile,
  type PackagedManifest,
  readPackagedManifest,
  trusted,
  unpacked,
  unpackedName,
  type UnpackOptions,
  VMLINUX_NAME,
} from "./unpacked.ts";

// The manifest and the check for an unpacked copy live in unpacked.ts, which
// vmm runs on every start without this module's `node:` imports; the names
// stay importable from here.
export {
  findUnpacked,
  PACKAGED_FORMAT,
  type PackagedFile,
  type PackagedManifest,
  readPackagedManifest,
  unpackedName,
  type UnpackOptions,
} from "./unpacked.ts";

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
  const found = findUnpacked(m, roots);
  if (found) return found;
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
        if (elf) writeSparseFileSync(join(tmp, VMLINUX_NAME), elf); // zero pages as holes (ffi/libc.ts preadData)
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

/** Makes `root` if needed and checks it can be trusted with a kernel (unpacked.ts `trusted()` says why it may not be). */
function usableRoot(root: string): void {
  try {
    mkdirSync(root, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new Error(`${root}: ${(e as { code?: string }).code ?? (e as Error).message}`);
  }
  const why = trusted(root);
  if (why) throw new Error(`${root}: ${why}`);
}

/** node:crypto's, not ffi/sha256.ts's: these are megabytes of kernel, and this module loads node: modules anyway. */
function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}
