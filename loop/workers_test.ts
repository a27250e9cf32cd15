/**
 * What every Worker loads (loop/workers.ts WORKER_ENTRIES): the static
 * module graph of each entry, read from the sources.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { prestart, SpareWorkers, startWorker, WORKER_ENTRIES } from "./workers.ts";
import { graph, staticImports } from "../test/support/module_graph.ts";

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

test("prestart(): the next machine's SpareWorkers take the Workers it began first, then make their own", () => {
  const [early] = prestart("queue");
  const spares = new SpareWorkers();
  const added = spares.add("queue", 2);
  assert.equal(added.length, 2);
  assert.equal(added[0], early, "add() reports the prestarted Worker it took");
  assert.equal(spares.take("queue")?.worker, early, "the prestarted Worker comes first");
  assert.notEqual(spares.take("queue")?.worker, early);
  assert.equal(spares.take("queue"), undefined, "two spares, both taken");
  const other = new SpareWorkers();
  const [fresh] = other.add("queue", 1);
  assert.notEqual(other.take("queue")?.worker, early, "a prestarted Worker is taken once");
  // Taken spares are the taker's to end.
  for (const w of [...added, fresh]) w.terminate();
});
