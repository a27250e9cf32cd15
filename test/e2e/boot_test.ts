/**
 * End to end: vmm boots Debian's stock cloud kernel with the default guest
 * image and talks to it, on real KVM.
 *
 * Where /dev/kvm is hardware KVM the scenarios run directly; on a PVM host
 * (this project's machines) they run inside a nested KVM host under QEMU's
 * TCG (test/support/nested.ts). Either way one shell script runs every
 * scenario in turn, since a stock-kernel boot costs 15–30 s nested, and each
 * test below checks one scenario's result. The tier is printed; the tests
 * fail, not skip, when no tier can run.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { e2eTier } from "../support/tier.ts";
import { runNested } from "../support/nested.ts";
import { defaultCacheDir, ensureDefaultGuest } from "../../guest/build.ts";
import { isDeno } from "../../ffi/runtime.ts";
import { buildExe } from "../../scripts/build-exe.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const RUNTIME = isDeno ? "deno" : "bun";
/** vmm on this test's runtime. */
const VMM = isDeno ? "deno run -A --no-check bin/vmm.ts" : "bun bin/vmm.ts";
/** The compiled executable is a Bun build; it is checked once, from the Bun run. */
const WITH_EXE = !isDeno;

/** The whole tier's script: each scenario prints `@@e2e NAME rc=N` and its output lines. */
function scenarios(exe: string | null): string {
  return `
set -u
VMM="${VMM}"
say() { echo; echo "@@e2e $1 rc=$2"; { cat /tmp/e2e/$1.out; echo; } | tr -d '\\r' | sed "s/^/@@$1.out /"; { cat /tmp/e2e/$1.err; echo; } | sed "s/^/@@$1.err /"; }
mkdir -p /tmp/e2e
# wait_for TEXT FILE: until FILE holds TEXT, at most 180 s (wall time: each poll costs a fork in the nested host).
wait_for() { timeout 180 sh -c 'until grep -q "$1" "$2" 2>/dev/null; do sleep 0.2; done' sh "$1" "$2"; }
# send FIFO LINE: LINE into the FIFO a background vmm reads, at most 30 s. Opening a FIFO to
# write waits for a reader: a vmm that already died must fail its scenario, not hang the run.
send() { timeout 30 sh -c 'printf "%s\\n" "$2" >"$1"' sh "$1" "$2"; }
# wait_exit PID: its status; a watchdog kills it after 180 s (status 137), so a hang fails one scenario, not the run.
wait_exit() { ( sleep 180; kill -9 $1 2>/dev/null ) & wd=$!; wait $1; rc=$?; kill $wd 2>/dev/null; return $rc; }

# run: the command's status and output come back; --cpus 2 gives the guest 2 CPUs.
timeout -k 30 300 $VMM run --cpus 2 -- sh -c 'echo cpus=$(nproc); echo hello from the guest; exit 7' >/tmp/e2e/run.out 2>/tmp/e2e/run.err
say run $?

# boot: the init marker, then input through the console, then poweroff ends vmm with 0.
rm -f /tmp/e2e/in; mkfifo /tmp/e2e/in
$VMM boot -v <>/tmp/e2e/in >/tmp/e2e/boot.out 2>/tmp/e2e/boot.err &
pid=$!
wait_for 'vmm-guest: ready' /tmp/e2e/boot.out
sleep 1
send /tmp/e2e/in 'echo guest-says-$((6*7)); poweroff -f'
wait_exit $pid
say boot $?

# sigterm: a running guest stops cleanly with 128+15.
$VMM boot </dev/null >/tmp/e2e/sigterm.out 2>/tmp/e2e/sigterm.err &
pid=$!
wait_for 'vmm-guest: ready' /tmp/e2e/sigterm.out
kill -TERM $pid
wait_exit $pid
say sigterm $?

# panic: a kernel panic ends vmm promptly with 101 and names the panic.
timeout -k 30 300 $VMM run -- sh -c 'echo c >/proc/sysrq-trigger' >/tmp/e2e/panic.out 2>/tmp/e2e/panic.err
say panic $?
${exe ? `
# exe: the single executable boots the same guest.
timeout -k 30 300 ${exe} run -- sh -c 'echo from the executable; exit 3' >/tmp/e2e/exe.out 2>/tmp/e2e/exe.err
say exe $?` : ""}
exit 0
`;
}

interface Outcome {
  rc: number;
  out: string;
  err: string;
}

function parse(output: string): Map<string, Outcome> {
  const m = new Map<string, Outcome>();
  for (const line of output.split("\n")) {
    const head = /^@@e2e (\w+) rc=(\d+)$/.exec(line);
    if (head) m.set(head[1], { rc: Number(head[2]), out: "", err: "" });
    const body = /^@@(\w+)\.(out|err) (.*)$/.exec(line);
    if (body && m.has(body[1]) && body[3] !== "") m.get(body[1])![body[2] as "out" | "err"] += body[3] + "\n";
  }
  return m;
}

describe(`end to end on ${RUNTIME}: stock Debian kernel under vmm`, () => {
  const tier = e2eTier();
  console.log(`e2e tier: ${tier.tier} (${tier.why})`);
  let results = new Map<string, Outcome>();
  let raw = "";
  let dir = "";

  before(async () => {
    assert.notEqual(tier.tier, "none", `No end-to-end tier can run here: ${tier.why}`);
    await ensureDefaultGuest();
    const exe = WITH_EXE ? buildExe("dist/vmm-e2e") : null;
    const script = scenarios(exe ? "./dist/vmm-e2e" : null);
    if (tier.tier === "hardware") {
      dir = mkdtempSync(join(tmpdir(), "vmm-e2e-"));
      raw = execFileSync("sh", ["-c", script], {
        cwd: REPO,
        env: { ...process.env, PATH: `${REPO}/node_modules/.bin:${process.env.PATH}` },
        encoding: "utf8",
        timeout: 600_000,
      });
    } else {
      const r = await runNested(script, { cwd: REPO, timeoutMs: 900_000, env: { VMM_CACHE: defaultCacheDir() } });
      console.log(`nested: L1 boot ${r.ms.boot} ms, all scenarios ${r.ms.total} ms`);
      raw = r.output;
    }
    results = parse(raw);
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function outcome(name: string): Outcome {
    const o = results.get(name);
    assert.ok(o, `scenario ${name} did not run; output was:\n${raw.slice(-3000)}`);
    return o;
  }

  test("vmm run returns the command's exit status and output, with --cpus 2 giving 2 CPUs", () => {
    const o = outcome("run");
    assert.equal(o.rc, 7, o.err);
    assert.match(o.out, /hello from the guest/);
    assert.match(o.out, /cpus=2/);
    assert.equal(o.err, "");
  });

  test("vmm boot reaches the init marker, takes console input, and ends with 0 on poweroff", () => {
    const o = outcome("boot");
    assert.match(o.out, /vmm-guest: ready/);
    assert.match(o.out, /guest-says-42/);
    assert.match(o.err, /VM built after \d+ ms/);
    assert.match(o.err, /Workers started after \d+ ms/);
    assert.match(o.err, /guest init ready after \d+ ms/);
    assert.equal(o.rc, 0, o.err);
  });

  test("SIGTERM stops a running guest cleanly with status 143", () => {
    const o = outcome("sigterm");
    assert.equal(o.rc, 143, o.err);
    assert.equal(o.err, "");
  });

  test("a guest kernel panic ends vmm with 101 and a one-line reason", () => {
    const o = outcome("panic");
    assert.equal(o.rc, 101, o.err);
    assert.match(o.err, /^vmm: guest kernel panic: .*sysrq triggered crash/);
    assert.equal(o.err.trim().split("\n").length, 1);
  });

  if (WITH_EXE) {
    test("the single executable (bun build --compile) boots the default guest", () => {
      const o = outcome("exe");
      assert.equal(o.rc, 3, o.err);
      assert.match(o.out, /from the executable/);
    });
  }
});
