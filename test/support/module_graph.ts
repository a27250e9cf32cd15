/**
 * What a module loads before any of its code runs, read from the sources:
 * its static imports and re-exports, followed through the repository.
 * `import type` and `export type` load nothing; a dynamic `import()` loads
 * only when it runs. The tests that keep `node:` modules out of the Workers
 * (loop/workers_test.ts) and out of a boot's path (ffi/sys_test.ts) use it.
 */
import { readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The specifiers `src` loads when it is evaluated: static imports and re-exports, not `import type`. */
export function staticImports(src: string): string[] {
  const out: string[] = [];
  // Top-level statements start a line: `import x from "m"`, `import { a,\n b } from "m"`, `import "m"`, `export * from "m"`.
  const re = /^(import|export)\s+(type\s)?(?:(?:[\w*\s,]*\{[^}]*\}|[\w*\s,]+?)\s*from\s*)?["']([^"']+)["']/gm;
  for (const m of src.matchAll(re)) if (!m[2]) out.push(m[3]);
  return out;
}

/** Every module `entry` (a path from the repository root) loads, by path from the root, with the bare specifiers each names. */
export function graph(entry: string): Map<string, string[]> {
  const seen = new Map<string, string[]>();
  const walk = (file: string) => {
    const rel = relative(REPO, file);
    if (seen.has(rel)) return;
    const bare: string[] = [];
    seen.set(rel, bare);
    for (const spec of staticImports(readFileSync(file, "utf8"))) {
      if (spec.startsWith(".")) walk(resolve(dirname(file), spec));
      else bare.push(spec);
    }
  };
  walk(join(REPO, entry));
  return seen;
}
