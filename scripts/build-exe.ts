/**
 * Build vmm as one executable with `bun build --compile`.
 *
 * Workers must be listed as entry points, or the executable fails at run
 * time with ModuleNotFound (PLATFORM.md); loop/workers.ts lists them and
 * finds them by their path from the repository root inside the bundle.
 *
 * Usage: bun scripts/build-exe.ts [--outfile dist/vmm]
 */
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import process from "node:process";
import { WORKER_ENTRIES } from "../loop/workers.ts";
const root = fileURLToPath(new URL("..", import.meta.url));

/** Build the executable; returns its path. */
export function buildExe(outfile = "dist/vmm"): string {
  const bun = process.env.BUN ?? `${root}node_modules/.bin/bun`;
  execFileSync(bun, ["build", "--compile", "bin/vmm.ts", ...Object.values(WORKER_ENTRIES), "--outfile", outfile], {
    cwd: root,
    stdio: ["ignore", "ignore", "inherit"],
  });
  return `${root}${outfile}`;
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { outfile: { type: "string", default: "dist/vmm" } } });
  console.log(buildExe(values.outfile));
}
