/**
 * devices/kinds.ts, the table a Worker loads its kinds from, agrees with
 * devices/registry.ts, the main thread's list: a kind added to one and not
 * the other would only fail once a Worker served it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEVICE_KINDS } from "./registry.ts";
import { kindOf, loadKinds, LOADERS } from "./kinds.ts";

test("every kind in the registry has a loader, and each loader gives the registry's kind", async () => {
  assert.deepEqual(Object.keys(LOADERS).sort(), DEVICE_KINDS.map((k) => k.kind).sort());
  for (const k of DEVICE_KINDS) assert.equal(await LOADERS[k.kind](), k, k.kind);
});

test("loadKinds() and kindOf() refuse a kind this build does not have, naming it", async () => {
  await assert.rejects(loadKinds(["blk", "floppy"]), /Unknown virtio device kind 'floppy'/);
  assert.throws(() => kindOf({ kind: "floppy" }), /Unknown virtio device kind 'floppy'/);
  await loadKinds(["blk", "blk"]);
  assert.equal(kindOf({ kind: "blk" }).kind, "blk");
});
