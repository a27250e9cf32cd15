/**
 * What every Worker loads (loop/workers.ts WORKER_ENTRIES): the static
 * module graph of each entry, read from the sources.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { SpareWorkers, startWorker, WORKER_ENTRIES } from "./workers.ts";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** The specifiers `src` loads when it is evaluated: static imports and re-exports, not `import type`. */
export function staticImports(src: string): string[] {
  const out: string[] = [];
  // Top-level statements start a line: `import x from "m"`, `import { a,\n b } from "m"`, `import "m"`, `export * from "m"`.
  const re = /^(import|export)\s+(type\s)?(?:(?:[\w*\s,]*\{[^}]*\}|[\w*\s,]+?)\s*from\s*)?["']([^"']+)["']/gm;
  for (const m of src.matchAll(re)) if (!m[2]) out.push(m[3]);
  return out;
}

/** Every module `entry` loads, by path from the repository root, with the bare specifiers each names. */
function graph(entry: string): Map<string, string[]> {
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

test("staticImports() finds imports and re-exports that load, not type-only ones", () => {
  const src = [
    `import { a } from "./a.ts";`,
    `import type { B } from "./b.ts";`,
    `import {\n  c,\n  type D,\n} from "./c.ts";`,
    `export { e } from "./e.ts";`,
    `export type { F } from "./f.ts";`,
    `import "./g.ts";`,
    `import h from "node:fs";`,
    ` * import { x } from "./in-a-comment.ts";`,
  ].join("\n");
  assert.deepEqual(staticImports(src), ["./a.ts", "./c.ts", "./e.ts", "./g.ts", "node:fs"]);
});

// A Worker whose module graph names a `node:` module makes Deno load its
// whole Node compatibility layer into that Worker before it runs: about 1 s
// a Worker in the nested test host, for each of `vmm run`'s dozen Workers,
// and a restored guest waits for them (ffi/libc.ts readSmallFile).
test("no module a Worker loads imports a node: module (or any package)", () => {
  for (const entry of Object.values(WORKER_ENTRIES)) {
    const g = graph(entry);
    assert.ok(g.size > 3, `${entry}: its graph was read (${g.size} modules)`);
    const bare = [...g].flatMap(([file, specs]) => specs.map((s) => `${file} imports ${s}`));
    assert.deepEqual(bare, [], `${entry} loads modules from outside the repository`);
  }
});

test("SpareWorkers: startWorker() hands its init to a spare already loading; close() ends the spares never taken", async () => {
  const spares = new SpareWorkers();
  spares.add("queue", 2);
  // A spare gets the init and answers as any Worker: here a queue Worker's setup refusing an init with no queues.
  await assert.rejects(startWorker("queue", { queues: "none" }, undefined, spares), /queues\.map is not a function|not a function/);
  const left = spares.take("queue");
  assert.ok(left, "the second spare is still there");
  assert.equal(spares.take("queue"), undefined, "two spares were made, both taken");
  left.worker.terminate();
  spares.add("vcpu", 1);
  spares.close();
  assert.equal(spares.take("vcpu"), undefined, "close() took every spare");
});
