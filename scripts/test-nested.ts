/**
 * Run test files where KVM is: inside the nested host (test/support/nested.ts)
 * when this machine has no usable /dev/kvm. One L1 boot runs them on both
 * runtimes; their output comes back on stdout and the status is theirs.
 *
 * Usage: bun scripts/test-nested.ts deno|bun FILE...
 */
import process from "node:process";
import { runNested } from "../test/support/nested.ts";
import { shellQuote as q } from "../guest/command.ts";

const [runtime, ...files] = process.argv.slice(2);
if ((runtime !== "deno" && runtime !== "bun") || files.length === 0) {
  console.error("usage: bun scripts/test-nested.ts deno|bun FILE...");
  process.exit(2);
}
const cmd = runtime === "deno"
  ? `deno test -A --no-check ${files.map(q).join(" ")}`
  : `bun test --timeout 1200000 ${files.map((f) => q(f.startsWith(".") || f.startsWith("/") ? f : `./${f}`)).join(" ")}`;
const t0 = Date.now();
// VMM_* settings (VMM_SOAK_VMS, …) reach the tests in L1 as they would here.
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("VMM_")) as [string, string][]);
// Under TCG a tiny machine takes seconds to make, run and close (Worker
// start-up dominates), so the soak runs a tenth of its count here; a host
// with /dev/kvm runs all of it (loop/machine_test.ts).
env.VMM_SOAK_VMS ??= "20";
// The hang watcher looks at a vmm 45 s old, not 200: these files' vmm
// processes live seconds, and bound them at 90 to 180 s. A guest whose state
// L1 lost (test/support/nested.ts LOST) must be found, and L1 given up,
// before that bound fails its test as a hang: it struck
// loop/console_input_kvm_test.ts's 3 KiB echo in about 2 of 100 runs here.
const hangS = Number(process.env.VMM_NESTED_HANG_S || 45);
const r = await runNested(`${cmd} 2>&1`, { timeoutMs: Number(process.env.VMM_NESTED_TEST_TIMEOUT_MS ?? 1_500_000), env, hangS });
process.stdout.write(r.output);
console.log(`nested ${runtime}: status ${r.code}, L1 boot ${(r.ms.boot / 1000).toFixed(1)} s, total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
process.exit(r.code);
