/**
 * Writes the default guest, prebuilt and compressed, into `guest-image/` at
 * the repository root (format: guest/packaged.ts), so that it ships inside
 * the npm package and a user of `bunx vmm` needs no apt, root or network.
 *
 * npm runs it around `npm pack` / `npm publish` (package.json):
 *   prepack   bun scripts/pack-guest.ts          build (or find) and write it
 *   postpack  bun scripts/pack-guest.ts --clean  remove it again, so that a
 *             checkout keeps building its own guest from its own sources
 *             (guest/default_guest.ts prefers a `guest-image/` it finds)
 *
 * The image comes from guest/build.ts, as for `vmm` in a checkout: built from
 * Debian's packages on the first run, from the cache afterwards.
 *
 *   bun scripts/pack-guest.ts [--out DIR] [--clean]
 */
import { rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import process from "node:process";
import { ensureDefaultGuest } from "../guest/build.ts";
import { type PackagedManifest, writePackagedGuest } from "../guest/packaged.ts";

const root = fileURLToPath(new URL("..", import.meta.url));

/** Builds (or finds) the default guest and writes it packaged into `out`. */
export async function packGuest(out = `${root}guest-image`, log?: (s: string) => void): Promise<PackagedManifest> {
  const img = await ensureDefaultGuest({ log });
  return writePackagedGuest(img, out);
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { out: { type: "string" }, clean: { type: "boolean", default: false } } });
  const out = values.out ?? `${root}guest-image`;
  if (values.clean) {
    rmSync(out, { recursive: true, force: true });
  } else {
    try {
      const m = await packGuest(out, (s) => console.error(`pack-guest: ${s}`));
      console.error(`pack-guest: ${out}: Linux ${m.kernelVersion}, kernel ${m.kernel.size} B, initrd ${m.initrd.size} B (uncompressed)`);
    } catch (e) {
      console.error(`pack-guest: ${(e as Error).message.split("\n")[0]}`);
      process.exit(1);
    }
  }
}
