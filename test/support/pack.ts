/**
 * The npm package as a user gets it: `npm pack`, then `bun add ./vmm-*.tgz`
 * into an empty directory, offline. Used by test/package_test.ts (starts it)
 * and test/e2e/dist_test.ts (boots it on real KVM).
 */
import { cpSync, existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const BIN = `${REPO}/node_modules/.bin`;

/** What `npm pack --json` says of the tarball, and where things went. */
export interface PackedInstall {
  /** The tarball. */
  tgz: string;
  /** Where it is installed: `<dir>/app/node_modules/vmm`, `<dir>/app/node_modules/.bin/vmm`. */
  app: string;
  size: number;
  unpackedSize: number;
  files: string[];
  /** postpack removed guest-image/ from the packed tree. */
  postpackCleaned: boolean;
  ms: { pack: number; install: number };
}

/**
 * Packs this checkout and installs the tarball into `<dir>/app`.
 *
 * It packs a copy (`<dir>/src`): prepack writes guest-image/ into the tree it
 * packs, and a run killed half-way must not leave one in the checkout, which
 * would then boot it instead of building its own guest.
 *
 * @example
 * ```ts
 * import { packAndInstall } from "./pack.ts";
 * const p = packAndInstall("/work/scratch/pkg");
 * console.log(p.tgz, p.size); // "/work/scratch/pkg/vmm-0.1.0.tgz" 12802777
 * ```
 */
export function packAndInstall(dir: string): PackedInstall {
  const t0 = Date.now();
  const src = join(dir, "src");
  // Entry by entry: `dir` may be inside the checkout (dist/), and cpSync
  // refuses to copy a directory into itself even when a filter skips it.
  for (const e of readdirSync(REPO)) {
    if (["node_modules", "dist", "guest-image", ".git"].includes(e)) continue;
    cpSync(join(REPO, e), join(src, e), { recursive: true });
  }
  // npm runs prepack (scripts/pack-guest.ts) and postpack around the pack;
  // they run `bun`, found on the PATH npm gives scripts (node_modules/.bin
  // of the packed tree, which the copy lacks), so ours goes on it.
  const out = execFileSync("npm", ["pack", "--json", "--pack-destination", dir], {
    cwd: src,
    env: { ...process.env, PATH: `${BIN}:${process.env.PATH}` },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const p = (JSON.parse(out.toString()) as { filename: string; size: number; unpackedSize: number; files: { path: string }[] }[])[0];
  const t1 = Date.now();
  const app = join(dir, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), '{ "name": "app", "private": true }\n');
  const tgz = join(dir, p.filename);
  execFileSync(`${BIN}/bun`, ["add", "--offline", tgz], { cwd: app, stdio: ["ignore", "pipe", "pipe"] });
  return {
    tgz,
    app,
    size: p.size,
    unpackedSize: p.unpackedSize,
    files: p.files.map((f) => f.path),
    postpackCleaned: !existsSync(join(src, "guest-image")),
    ms: { pack: t1 - t0, install: Date.now() - t1 },
  };
}
