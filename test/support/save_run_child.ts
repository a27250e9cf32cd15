/**
 * One of several processes racing to publish a run snapshot into the same
 * cache entry (loop/run_cache_test.ts): waits until START (epoch ms), then
 * saveRun()s a fake snapshot whose two files both say LABEL, and prints
 * `published LABEL` or `kept LABEL`.
 *
 * Usage: <runtime> test/support/save_run_child.ts DIR LABEL START [replace]
 */
import process from "node:process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { saveRun } from "../../loop/run_cache.ts";

const [dir, label, start, replace] = process.argv.slice(2);
while (Date.now() < Number(start)) { /* line up with the others */ }
const mine = saveRun(dir, (to) => {
  mkdirSync(to, { recursive: true });
  writeFileSync(join(to, "memory"), label.repeat(1 << 18)); // big enough to take a moment
  writeFileSync(join(to, "state"), label);
}, replace === "replace");
console.log(`${mine ? "published" : "kept"} ${label}`);
