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
 * Run it to see which guest vmm would use: `bun guest/default_guest.ts`.
 */
import { fileURLToPath } from "node:url";
import process from "node:process";
import { builtImage, defaultCacheDir, ensureDefaultGuest, type GuestImage } from "./build.ts";
import { readPackagedManifest, unpackGuest, type UnpackOptions } from "./packaged.ts";

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
  /** Builds or finds the checkout's image; `ensureDefaultGuest` by default. */
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
    if (!readPackagedManifest(dir)) continue;
    return { ...unpackGuest(dir, opts), source };
  }
  if (!isCompiled(url)) {
    const build = opts.build ?? ((log) => ensureDefaultGuest({ log }));
    return { ...(await build(opts.log)), source: "checkout" };
  }
  const img = builtImage("guest");
  if (img) return { ...img, source: "checkout" };
  throw new Error(
    `This executable carries no default guest and none is built in ${defaultCacheDir()}: ` +
      "pass --kernel (and --initrd), or rebuild it with bun scripts/build-exe.ts",
  );
}

if (import.meta.main) {
  // `bun guest/default_guest.ts`: which guest vmm would boot, as JSON.
  try {
    const g = await findDefaultGuest({ onUnpack: (line) => void process.stderr.write(`vmm: ${line}\n`) });
    console.log(JSON.stringify(g));
  } catch (e) {
    process.stderr.write(`vmm: ${(e as Error).message.split("\n")[0]}\n`);
    process.exit(1);
  }
}
