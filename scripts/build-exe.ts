/**
 * Build vmm as one executable with `bun build --compile`, carrying its
 * default guest.
 *
 * Workers must be listed as entry points, or the executable fails at run
 * time with ModuleNotFound (PLATFORM.md); loop/workers.ts lists them and
 * finds them by their path from the repository root inside the bundle.
 *
 * The default guest (kernel + initramfs, gzip-compressed, guest/packaged.ts)
 * goes in with `--asset DIR/guest-image`: Bun stores an asset directory under
 * its own name beside the bundle, `/$bunfs/root/guest-image/`, where
 * guest/default_guest.ts looks first. On first use it is unpacked into the
 * cache, so the executable alone boots on any machine with /dev/kvm.
 *
 * Usage: bun scripts/build-exe.ts [--outfile dist/vmm] [--no-guest]
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import process from "node:process";
import { workerScripts } from "../devices/registry.ts";
import { builtImage, ensureDefaultGuest } from "../guest/build.ts";
import { writePackagedGuest } from "../guest/packaged.ts";
const root = fileURLToPath(new URL("..", import.meta.url));

export interface BuildExeOptions {
  /** Embed the default guest (default true); without it the executable needs one built in its cache. */
  guest?: boolean;
  /** The entry point, from the repository root (default bin/vmm.ts); tests compile another. */
  entry?: string;
}

/**
 * Build the executable; returns its path. It embeds the default guest last
 * built in the cache (`ensureDefaultGuest()` first to bring it up to date;
 * this script's command line does).
 */
export function buildExe(outfile = "dist/vmm", opts: BuildExeOptions = {}): string {
  const bun = process.env.BUN ?? `${root}node_modules/.bin/bun`;
  const entry = opts.entry ?? "bin/vmm.ts";
  const stage = mkdtempSync(join(tmpdir(), "vmm-exe-"));
  try {
    const assets: string[] = [];
    if (opts.guest ?? true) {
      const img = builtImage("guest");
      if (!img) throw new Error("The default guest is not built: run bash scripts/setup.sh");
      writePackagedGuest(img, join(stage, "guest-image"));
      assets.push("--asset", join(stage, "guest-image"));
    }
    execFileSync(bun, ["build", "--compile", entry, ...workerScripts(), ...assets, "--outfile", outfile], {
      cwd: root,
      stdio: ["ignore", "ignore", "inherit"],
    });
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
  return outfile.startsWith("/") ? outfile : `${root}${outfile}`;
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: { outfile: { type: "string", default: "dist/vmm" }, "no-guest": { type: "boolean", default: false } },
  });
  if (!values["no-guest"]) await ensureDefaultGuest({ log: (s) => console.error(`build-exe: ${s}`) });
  console.log(buildExe(values.outfile, { guest: !values["no-guest"] }));
}
