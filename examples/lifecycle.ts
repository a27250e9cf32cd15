/**
 * vmm as a library: start a guest, pause it, resume it, stop it, while this
 * program's own event loop keeps running. The README shows this file.
 *
 * Usage: bun examples/lifecycle.ts BZIMAGE [INITRD]
 *        deno run -A examples/lifecycle.ts BZIMAGE [INITRD]
 */
import process from "node:process";
import { Machine } from "../mod.ts";

const [kernel, initrd] = process.argv.slice(2);
if (!kernel) throw new Error("usage: examples/lifecycle.ts BZIMAGE [INITRD]");

await using m = await Machine.create({ kernel, initrd, cpus: 1, memMiB: 256, console: { outFd: 2, inFd: null } });
let ticks = 0;
const timer = setInterval(() => ticks++, 10); // this thread stays free while the guest runs
m.start(); // returns at once; the guest runs
await new Promise((r) => setTimeout(r, 500));
await m.pause(); // every vCPU out of KVM_RUN and parked, every queue quiesced, disks flushed
console.log(`paused: ${m.state}`);
await m.resume();
const result = await m.stop(); // or: await m.wait() for a guest that ends by itself
clearInterval(timer);
console.log(`${result.kind} (status ${result.code}): ${result.reason}; timers fired ${ticks > 0 ? "all along" : "never"}`);
// `await using` closes the machine here: every fd, mapping and Worker is released.
