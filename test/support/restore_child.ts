/**
 * The other process of loop/snapshot_kvm_test.ts: restore the counting
 * guest's snapshot from DIR, print the count it comes back with (paused),
 * resume it, print the count once it moved, then snapshot it again into
 * the same DIR while its RAM is still mapped from there (the old memory file
 * must live on under it), resume, and stop.
 *
 * Usage: <runtime> test/support/restore_child.ts DIR COUNTER_GPA
 * Prints `restored N`, `later N`, `again N`, `stopped KIND`, one per line.
 *
 * With a third argument `run`: `Machine.fromSnapshot(DIR)`, then `run()`
 * on this thread, the CLI's way, until the guest ends; prints `ran CODE N`
 * with the exit status and the count it ended with.
 */
import process from "node:process";
import { Machine } from "../../mod.ts";

const [dir, counterArg, mode] = process.argv.slice(2);
const counter = Number(counterArg);
if (mode === "run") {
  await using r = await Machine.fromSnapshot(dir, { console: { outFd: 2, inFd: null } });
  const ended = await r.run();
  console.log(`ran ${ended.code} ${r.vm.mem.readU32(counter)}`);
  process.exit(0);
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const m = await Machine.restore(dir, { console: { outFd: 2, inFd: null } });
const count = () => m.vm.mem.readU32(counter);
async function moved(from: number): Promise<number> {
  for (const end = Date.now() + 60_000; Date.now() < end; await sleep(10)) if (count() !== from) return count();
  throw new Error(`the count stayed at ${from}`);
}
try {
  const restored = count();
  console.log(`restored ${restored} ${m.state}`);
  await m.resume();
  const later = await moved(restored);
  console.log(`later ${later}`);
  await m.pause();
  await m.snapshot(dir);
  await m.resume();
  console.log(`again ${await moved(count())}`);
  console.log(`stopped ${(await m.stop()).kind}`);
} finally {
  await m.close();
}
