/**
 * The guest images a checkout builds (guest/build.ts), as its cache holds
 * them: where the cache is, which image was built last, and whether that
 * image is still current, all without building anything.
 *
 * Why apart from build.ts: `vmm boot` and `vmm run` without `--kernel` ask
 * this on every start, and the answer must load no `node:` module (on Deno
 * the first one starts its whole Node layer: ffi/sys.ts says what that
 * costs). build.ts, with apt, dpkg and node:zlib, is imported only when the
 * answer is "build it".
 *
 * An image is current when its directory's `stamp` is the hash of what it
 * was built from: the flavour below, this module, build.ts, the cpio and ELF
 * writers and init.sh. The flavours live here, not in build.ts, because the
 * stamp is computed here; and this module's source is in the stamp because
 * the flavours are.
 */
import { dirname, env, existsSync, fileURLToPath, join, readFileSync, readTextFileSync, uid } from "../ffi/sys.ts";
import { sha256Hex, sha256HexAsync } from "../ffi/sha256.ts";

/** A bootable kernel and initramfs. */
export interface GuestImage {
  /** The bzImage, as Debian ships it. */
  kernel: string;
  initrd: string;
  kernelVersion: string;
  /**
   * The same kernel uncompressed: an ELF with a PVH entry note, which QEMU
   * boots without running the decompressor (3 s of the L1 boot under TCG).
   * Absent when the payload's decompressor (xz, zstd, lz4) is not installed.
   */
  vmlinux?: string;
}

/** What distinguishes one image from the other. */
export interface Flavour {
  /** Cache name: `<name>-<kernel version>/` and `<name>.json`. */
  name: "guest" | "nested";
  /** Debian metapackage whose dependency names the current kernel. */
  meta: string;
  /** Modules wanted, by name; those that are built in or absent are skipped. */
  modules: string[];
}

/** The default guest: Debian's cloud kernel, virtio, and what `vmm run` mounts with. */
export const GUEST: Flavour = {
  name: "guest",
  meta: "linux-image-cloud-amd64",
  modules: [
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    // vmm run over the host: the root and the working directory come over
    // virtio-fs, with tmpfs overlays where a system must write.
    "fuse",
    "virtiofs",
    "overlay",
  ],
};

/** The nested host (L1): Debian's generic kernel, which has kvm-amd and 9p. */
export const NESTED: Flavour = {
  name: "nested",
  meta: "linux-image-amd64",
  modules: [
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_pci",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "kvm",
    "kvm_amd",
    // What end-to-end tests may need inside L1: TAP devices, netns pairs, loop.
    "tun",
    "veth",
    "loop",
  ],
};

/** Bump to rebuild every image after a change that the stamp cannot see. */
const BUILD_VERSION = "1";

/** The files an image is built from, beside this module; a change to any of them rebuilds it. */
const STAMP_SOURCES = ["./build.ts", "./image_cache.ts", "./cpio.ts", "./elf.ts", "./init.sh"];

/** Where a kernel comes from: a Debian package or the running host. */
export type Source = { kind: "deb"; version: string; pkg: string } | { kind: "host"; version: string };

/** `<cache>/<name>.json`: the image last built and the kernel it came from. */
export interface Manifest {
  img: GuestImage;
  source: Source;
}

/** The cache directory images are built into: `$VMM_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/vmm`. */
export function defaultCacheDir(e: Record<string, string | undefined> = env()): string {
  if (e.VMM_CACHE) return e.VMM_CACHE;
  return join(e.XDG_CACHE_HOME || join(e.HOME || passwdHome(), ".cache"), "vmm");
}

/**
 * Node's `os.homedir()` without `node:os`, for a process without $HOME
 * (`env -i`): this user's home in /etc/passwd. getpwuid(3) would also ask
 * NSS (LDAP, systemd's dynamic users); such a user needs HOME or VMM_CACHE,
 * and is told so, where Node would throw ENOENT.
 */
function passwdHome(): string {
  const me = String(uid());
  try {
    for (const line of readTextFileSync("/etc/passwd").split("\n")) {
      const f = line.split(":");
      if (f[2] === me && f[5]) return f[5];
    }
  } catch { /* no /etc/passwd: a minimal container */ }
  throw new Error(`No home directory: HOME is not set and uid ${me} is not in /etc/passwd; set HOME or VMM_CACHE`);
}

/** The image last built of a kind, without building anything; undefined if none. */
export function builtImage(kind: Flavour["name"], cacheDir = defaultCacheDir()): GuestImage | undefined {
  const img = readManifest(cacheDir, kind)?.img;
  return img && existsSync(img.kernel) && existsSync(img.initrd) ? img : undefined;
}

/**
 * The image last built of `fl` if it is current (its files there, its stamp
 * what `imageStamp(fl)` is now); undefined when guest/build.ts must build
 * it, or cannot tell: a source it cannot read here is for build.ts to report.
 * What `ensureDefaultGuest()` returns without building, for a few reads, a
 * hash of ~50 KB and no child process. The hash is Web Crypto's here, which
 * is native on both runtimes; `imageStamp()`'s plain TypeScript would cost
 * this path 2–20 ms on a laptop-class host, JIT still cold, and many times
 * that in the nested test host.
 */
export async function currentImage(fl: Flavour, cacheDir = defaultCacheDir()): Promise<GuestImage | undefined> {
  const img = readManifest(cacheDir, fl.name)?.img;
  if (!img) return undefined;
  let stamp: string;
  try {
    stamp = await sha256HexAsync(...stampParts(fl));
  } catch {
    return undefined;
  }
  return isCurrent(img, stamp) ? img : undefined;
}

/** The hash of everything an image of `fl` is built from, but the Debian package (its version names the directory). */
export function imageStamp(fl: Flavour): string {
  return sha256Hex(...stampParts(fl));
}

/** What the stamp hashes, in order. */
function stampParts(fl: Flavour): Uint8Array[] {
  const enc = new TextEncoder();
  const sources = STAMP_SOURCES.map((rel) => readFileSync(fileURLToPath(new URL(rel, import.meta.url))));
  return [enc.encode(BUILD_VERSION), ...sources, enc.encode(JSON.stringify(fl))];
}

/** Whether `img`'s files are there and its directory's `stamp` says `stamp`. */
export function isCurrent(img: GuestImage, stamp: string): boolean {
  return existsSync(img.kernel) && existsSync(img.initrd) && readIf(join(dirname(img.initrd), "stamp")) === stamp;
}

export function readManifest(cache: string, name: string): Manifest | undefined {
  try {
    const m = JSON.parse(readTextFileSync(join(cache, `${name}.json`))) as Manifest;
    return m.img && m.source ? m : undefined;
  } catch {
    return undefined;
  }
}

export function readIf(path: string): string | undefined {
  try {
    return readTextFileSync(path);
  } catch {
    return undefined;
  }
}
