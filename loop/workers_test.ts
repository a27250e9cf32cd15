/**
 * What every Worker loads (devices/registry.ts workerScripts()): the static
 * module graph of each entry, read from the sources.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { prestart, queueWorker, SpareWorkers, startWorker } from "./workers.ts";
import { DEVICE_KINDS, workerScripts } from "../devices/registry.ts";
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
  for (const entry of workerScripts()) {
    const g = graph(entry);
    assert.ok(g.size > 3, `${entry}: its graph was read (${g.size} modules)`);
    const bare = [...g].flatMap(([file, specs]) => specs.map((s) => `${file} imports ${s}`));
    assert.deepEqual(bare, [], `${entry} loads modules from outside the repository`);
  }
});

// A queue Worker's script loads its own kind and no other: each kind's
// modules cost every Worker that loads them (19 to 32 modules a kind, 55
// when every queue Worker loaded every kind).
test("each device kind's queue Worker script loads that kind's modules and no other kind's", () => {
  const kinds = DEVICE_KINDS.map((k) => k.kind);
  assert.ok(kinds.length >= 6);
  for (const kind of kinds) {
    const entry = `devices/${kind}/queue_worker.ts`;
    assert.ok(workerScripts().includes(entry), `${entry} is a Worker script the executables carry`);
    const g = graph(entry);
    assert.ok(g.has(`devices/${kind}/mod.ts`) && g.has("loop/queue_worker.ts"), `${entry} loads its kind and the queue loop`);
    // Another kind's mod.ts is that kind (its handlers and what they load);
    // shared pieces of a folder (stdio's use of console/console.ts) are not.
    const others = [...g.keys()].filter((f) => f === "devices/registry.ts" || kinds.some((k) => k !== kind && f === `devices/${k}/mod.ts`));
    assert.deepEqual(others, [], `${entry} loads modules of other kinds`);
  }
});

test("a queue Worker refuses a device of another kind", async () => {
  const init = { kind: "queue", device: { spec: { kind: "blk" } }, queues: [0] };
  await assert.rejects(startWorker(queueWorker("rng"), init), /a rng queue Worker was given a blk device/);
});

test("SpareWorkers: startWorker() hands its init to a spare already loading; close() ends the spares never taken", async () => {
  const spares = new SpareWorkers();
  spares.add("queue-rng", 2);
  // A spare gets the init and answers as any Worker: here a queue Worker's setup refusing an init with no queues.
  await assert.rejects(startWorker("queue-rng", { device: { spec: { kind: "rng" } }, queues: "none" }, undefined, spares), /queues\.map is not a function|not a function/);
  const left = spares.take("queue-rng");
  assert.ok(left, "the second spare is still there");
  assert.equal(spares.take("queue-rng"), undefined, "two spares were made, both taken");
  left.worker.terminate();
  spares.add("vcpu", 1);
  spares.close();
  assert.equal(spares.take("vcpu"), undefined, "close() took every spare");
});

test("prestart(): the next machine's SpareWorkers take the Workers it began first, then make their own", () => {
  const [early] = prestart("queue-rng");
  const spares = new SpareWorkers();
  const added = spares.add("queue-rng", 2);
  assert.equal(added.length, 2);
  assert.equal(added[0], early, "add() reports the prestarted Worker it took");
  assert.equal(spares.take("queue-rng")?.worker, early, "the prestarted Worker comes first");
  assert.notEqual(spares.take("queue-rng")?.worker, early);
  assert.equal(spares.take("queue-rng"), undefined, "two spares, both taken");
  const other = new SpareWorkers();
  const [fresh] = other.add("queue-rng", 1);
  assert.notEqual(other.take("queue-rng")?.worker, early, "a prestarted Worker is taken once");
  // Taken spares are the taker's to end.
  for (const w of [...added, fresh]) w.terminate();
});
