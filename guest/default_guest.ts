/**
 * Where vmm finds its default guest (kernel + initramfs), in this order:
 *
 * 1. **embedded**: a single executable (`bun build --compile`,
 *    scripts/build-exe.ts) carries `guest-image/` inside it, in Bun's
 *    embedded file system beside the bundled code (`/$bunfs/root/`);
 * 2. **package**: an installed npm package carries `guest-image/` at its
 *    root, written at `npm pack` time (scripts/pack-guest.ts); so does a
 *    `deno compile` binary built with `--include guest-image`;
 * 3. **checkout**: a source checkout builds the image from Debian's packages
 *    into its cache (guest/build.ts `ensureDefaultGuest`); an executable,
 *    which has no build sources, can only use an image already built there;
 * 4. otherwise an error that says what to do.
 *
 * The first two are compressed and unpacked on first use into the cache,
 * keyed by their hash (guest/packaged.ts): after that, finding the guest
 * costs two `stat` calls.
 *
 * This runs on every `vmm boot` and `vmm run` without `--kernel`, so what
 * it does every time loads no `node:` module (on Deno the first one starts
 * the whole Node layer: ffi/sys.ts): finding an unpacked guest
 * (guest/unpacked.ts) or a current built one (guest/image_cache.ts). The
 * modules that unpack or build, which do load them, are imported only when
 * there is that work to do.
 *
 * Run it to see which guest vmm would use: `bun guest/default_guest.ts`.
 */
import { exit, fileURLToPath, writeSync } from "../ffi/sys.ts";
import { builtImage, currentImage, defaultCacheDir, GUEST, type GuestImage } from "./image_cache.ts";
import { findUnpacked, readPackagedManifest, type UnpackOptions } from "./unpacked.ts";

/** Where a default guest came from. */
export type GuestSource = "embedded" | "package" | "checkout";

/** A default guest and where it was found. */
export interface DefaultGuest extends GuestImage {
  source: GuestSource;
}

export interface FindOptions extends UnpackOptions {
  /** The URL this module is loaded from; tests pass another place. */
  moduleUrl?: string;
  /** Progress lines of a checkout build (apt, initramfs); silent by default. */
  log?: (s: string) => void;
  /** Builds or finds the checkout's image; `checkoutGuest` by default. */
  build?: (log?: (s: string) => void) => Promise<GuestImage>;
}

/**
 * A `bun build --compile` executable runs its bundle from `/$bunfs/root/`,
 * where `--asset` files keep their relative paths; the same test finds
 * Worker entries in loop/workers.ts.
 */
function isCompiled(url: string): boolean {
  return url.includes("/$bunfs/");
}

/**
 * The `guest-image/` directories to look in, with what each one is. In a
 * compiled executable every module is bundled into the entry file at the
 * root of its file system, so the directory is beside it; from sources (an
 * installed package, a checkout) it is at the package root, one level up.
 */
export function guestImageDirs(moduleUrl: string): { dir: string; source: GuestSource }[] {
  if (isCompiled(moduleUrl)) return [{ dir: fileURLToPath(new URL("./guest-image", moduleUrl)), source: "embedded" }];
  return [{ dir: fileURLToPath(new URL("../guest-image", moduleUrl)), source: "package" }];
}

/**
 * Returns the default guest, unpacking or building it on first use.
 *
 * @example
 * ```ts
 * import { findDefaultGuest } from "./default_guest.ts";
 * const g = await findDefaultGuest({ onUnpack: (line) => console.error(`vmm: ${line}`) });
 * console.log(g.source, g.kernel); // "package" "/home/me/.cache/vmm/guest-1f0c…/vmlinuz"
 * ```
 */
export async function findDefaultGuest(opts: FindOptions = {}): Promise<DefaultGuest> {
  const url = opts.moduleUrl ?? import.meta.url;
  for (const { dir, source } of guestImageDirs(url)) {
    const m = readPackagedManifest(dir);
    if (!m) continue;
    // Unpacked before: found by name and sizes. Else the first use unpacks
    // it, with packaged.ts's node:zlib, once.
    const img = findUnpacked(m, opts.roots);
    if (img) return { ...img, source };
    const { unpackGuest } = await import("./packaged.ts");
    return { ...unpackGuest(dir, opts), source };
  }
  if (!isCompiled(url)) {
    const build = opts.build ?? checkoutGuest;
    return { ...(await build(opts.log)), source: "checkout" };
  }
  const img = builtImage("guest");
  if (img) return { ...img, source: "checkout" };
  throw new Error(
    `This executable carries no default guest and none is built in ${defaultCacheDir()}: ` +
      "pass --kernel (and --initrd), or rebuild it with bun scripts/build-exe.ts",
  );
}

/**
 * A source checkout's default guest: the one built in the cache while it is
 * current, else what `ensureDefaultGuest()` builds (log: its progress). The
 * same answer either way; the first costs no `node:` module.
 */
export async function checkoutGuest(log?: (s: string) => void): Promise<GuestImage> {
  const img = await currentImage(GUEST);
  if (img) return img;
  const { ensureDefaultGuest } = await import("./build.ts");
  return ensureDefaultGuest({ log });
}

if (import.meta.main) {
  // `bun guest/default_guest.ts`: which guest vmm would boot, as JSON.
  try {
    const g = await findDefaultGuest({ onUnpack: (line) => writeSync(2, `vmm: ${line}\n`) });
    console.log(JSON.stringify(g));
  } catch (e) {
    writeSync(2, `vmm: ${(e as Error).message.split("\n")[0]}\n`);
    exit(1);
  }
}
