/**
 * Build vmm as one executable with `deno compile`, carrying its default guest.
 *
 * `deno compile` needs no bundler: it embeds the TypeScript module graph of
 * bin/vmm.ts as it is. What it cannot see from imports is listed with
 * `--include`: the Worker entry points (loop/workers.ts starts them by URL)
 * and `guest-image/`, the packaged default guest (guest/packaged.ts), which
 * guest/default_guest.ts finds at `../guest-image` from its own module as it
 * does in the npm package. The sources are staged in a temporary directory
 * with that guest beside them, so the checkout is never written to.
 *
 * The one step that needs the network: `deno compile` writes `denort` (Deno's
 * runtime without its tooling, about 40 MB) into the executable, and fetches
 * it from https://dl.deno.land/release/v<version>/denort-<target>.zip unless
 * `DENORT_BIN` names a local copy. No npm package ships denort, and the full
 * `deno` binary cannot stand in for it. Fetch it once where there is network,
 * for the Deno of package.json (`deno --version`):
 *
 *     curl -fLO https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip
 *     unzip denort-x86_64-unknown-linux-gnu.zip   # gives ./denort
 *     DENORT_BIN=$PWD/denort bun scripts/deno-compile.ts
 *
 * Without DENORT_BIN this script says so and exits 0 without building: on
 * machines without network (this project's), that is the expected outcome.
 *
 * Usage: [DENORT_BIN=PATH] bun scripts/deno-compile.ts [--outfile dist/vmm-deno]
 */
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import process from "node:process";
import { workerScripts } from "../devices/registry.ts";
import { builtImage, ensureDefaultGuest } from "../guest/build.ts";
import { writePackagedGuest } from "../guest/packaged.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
/** What vmm runs from: the package's runtime directories (package.json "files"). */
const SOURCES = ["bin", "boot", "cli", "devices", "ffi", "guest", "loop", "vm", "mod.ts"];

/** Why the compile cannot run here; undefined when it can. */
export function denortMissing(env: Record<string, string | undefined> = process.env): string | undefined {
  const bin = env.DENORT_BIN;
  if (!bin) {
    return "DENORT_BIN is not set: deno compile would download denort from dl.deno.land " +
      "(see scripts/deno-compile.ts for fetching it once)";
  }
  if (!existsSync(bin)) return `DENORT_BIN ${bin}: no such file`;
  return undefined;
}

/** Compile with deno; returns the executable's path. Throws when DENORT_BIN is missing. */
export function denoCompile(outfile = "dist/vmm-deno"): string {
  const why = denortMissing();
  if (why) throw new Error(why);
  const img = builtImage("guest");
  if (!img) throw new Error("The default guest is not built: run bash scripts/setup.sh");
  const out = isAbsolute(outfile) ? outfile : resolve(root, outfile);
  const stage = mkdtempSync(join(tmpdir(), "vmm-deno-compile-"));
  try {
    const skip = /(_test\.ts|\/node_modules)$/;
    for (const s of SOURCES) cpSync(join(root, s), join(stage, s), { recursive: true, filter: (p) => !skip.test(p) });
    writePackagedGuest(img, join(stage, "guest-image"));
    const deno = process.env.DENO ?? `${root}node_modules/.bin/deno`;
    const include = [...workerScripts(), "guest-image"].flatMap((p) => ["--include", p]);
    execFileSync(deno, ["compile", "-A", "--no-check", "--no-config", ...include, "--output", out, "bin/vmm.ts"], {
      cwd: stage,
      stdio: ["ignore", "inherit", "inherit"],
    });
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
  return out;
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { outfile: { type: "string", default: "dist/vmm-deno" } } });
  const why = denortMissing();
  if (why) {
    console.error(`deno-compile: skipped: ${why}`);
    process.exit(0);
  }
  try {
    await ensureDefaultGuest({ log: (s) => console.error(`deno-compile: ${s}`) });
    console.log(denoCompile(values.outfile));
  } catch (e) {
    console.error(`deno-compile: ${(e as Error).message.split("\n")[0]}`);
    process.exit(1);
  }
}
