/**
 * End to end: vmm as it is distributed boots its default guest on real KVM
 * with nothing from this checkout.
 *
 * - On Bun: the single executable (scripts/build-exe.ts, guest embedded),
 *   copied alone into an empty directory and run with `env -i` (no HOME, so
 *   the guest unpacks into the temporary directory); and the npm package,
 *   packed and installed offline with `bun add ./vmm-*.tgz`, run as
 *   `bunx vmm` with a fresh HOME.
 * - On Deno: the same tarball unpacked and run with `deno run -A` (Deno does
 *   not strip types under node_modules).
 *
 * Each runs `vmm run --busybox -- sh -c '…; exit N'` (the default guest's
 * initramfs, no host files) and must return N, show the command's output,
 * and say "first use: unpacking" once on stderr (each has its own HOME and
 * TMPDIR, or one would find the guest another unpacked). Fixtures live in the
 * checkout's dist/ (not /tmp, which the nested host replaces with its own).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { e2eTier } from "../support/tier.ts";
import { runNested } from "../support/nested.ts";
import { parseScenarios, type Outcome, showOutcome } from "../support/scenarios.ts";
import { packAndInstall } from "../support/pack.ts";
import { ensureDefaultGuest } from "../../guest/build.ts";
import { isDeno } from "../../ffi/runtime.ts";
import { buildExe } from "../../scripts/build-exe.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const RUNTIME = isDeno ? "deno" : "bun";
const WORK = `${REPO}/dist/e2e-dist-${RUNTIME}`;
const BIN = `${REPO}/node_modules/.bin`;

/**
 * One scenario: run CMD in DIR with a clean environment, time it to the end
 * (the command's only output comes at its end), print `@@dist NAME rc=N`.
 */
function scenario(name: string, dir: string, env: string, cmd: string): string {
  return `
cd ${dir} || exit 125
t0=$(date +%s%N)
env -i ${env} timeout -k 30 300 ${cmd} >/tmp/dist/${name}.out 2>/tmp/dist/${name}.err
rc=$?
t1=$(date +%s%N)
echo; echo "@@dist ${name} rc=$rc"
echo "ms=$(( (t1 - t0) / 1000000 ))" | sed "s/^/@@${name}.host /"
tr -d '\\r' </tmp/dist/${name}.out | sed "s/^/@@${name}.out /"; echo
sed "s/^/@@${name}.err /" /tmp/dist/${name}.err; echo
`;
}

describe(`end to end on ${RUNTIME}: vmm as distributed boots its own guest`, () => {
  const tier = e2eTier();
  console.log(`e2e tier: ${tier.tier} (${tier.why})`);
  let results = new Map<string, Outcome>();
  let raw = "";

  before(async () => {
    assert.notEqual(tier.tier, "none", `No end-to-end tier can run here: ${tier.why}`);
    await ensureDefaultGuest();
    rmSync(WORK, { recursive: true, force: true });
    mkdirSync(WORK, { recursive: true });
    const pkg = packAndInstall(WORK);
    const path = `PATH=${BIN}:/usr/bin:/bin`;
    let script = "set -u\nmkdir -p /tmp/dist /tmp/alone /tmp/home-bunx /tmp/home-deno /tmp/tmp-bunx /tmp/tmp-deno\n";
    if (isDeno) {
      mkdirSync(`${WORK}/deno`);
      execFileSync("tar", ["xzf", pkg.tgz, "-C", `${WORK}/deno`, "--strip-components=1"]);
      script += scenario("deno", `${WORK}/deno`, `${path} HOME=/tmp/home-deno TMPDIR=/tmp/tmp-deno`, "deno run -A bin/vmm.ts run --busybox -- sh -c 'echo from the tarball on deno; exit 5'");
    } else {
      const exe = buildExe(`${WORK}/vmm`);
      // The executable alone, in an empty directory; no HOME, no PATH.
      script += `cp ${exe} /tmp/alone/vmm\n`;
      script += scenario("exe", "/tmp/alone", "", "./vmm run --busybox -- sh -c 'echo from the executable; exit 3'");
      script += scenario("bunx", pkg.app, `${path} HOME=/tmp/home-bunx TMPDIR=/tmp/tmp-bunx`, "bunx vmm run --busybox -- sh -c 'echo from bunx; exit 4'");
    }
    script += "exit 0\n";
    if (tier.tier === "hardware") {
      raw = execFileSync("sh", ["-c", script.replaceAll("/tmp/", `${WORK}/tmp/`)], { encoding: "utf8", timeout: 900_000 });
    } else {
      const r = await runNested(script, { cwd: REPO, timeoutMs: 900_000 });
      console.log(`nested: L1 boot ${r.ms.boot} ms, all scenarios ${r.ms.total} ms`);
      raw = r.output;
    }
    results = parseScenarios(raw, "dist");
    for (const [name, o] of results) console.log(`${name}: status ${o.rc}, ${o.host.trim()}`);
  });
  after(() => {
    rmSync(WORK, { recursive: true, force: true });
  });

  function outcome(name: string): Outcome {
    const o = results.get(name);
    assert.ok(o, `scenario ${name} did not run; output was:\n${raw.slice(-3000)}`);
    return o;
  }

  /** The status and output came back, and the first use said so in one line. */
  function check(name: string, rc: number, out: RegExp): void {
    const o = outcome(name);
    assert.equal(o.rc, rc, showOutcome(o));
    assert.match(o.out, out, showOutcome(o));
    assert.match(o.err, /^vmm: first use: unpacking the default guest \(Linux [^)]*\) into \S+$/m, showOutcome(o));
    assert.doesNotMatch(o.err, /\x1b\[/, "colour escapes in a file");
  }

  if (isDeno) {
    test("the unpacked npm tarball on Deno boots its packaged guest and returns the status", () => {
      check("deno", 5, /from the tarball on deno/);
    });
  } else {
    test("the single executable alone in an empty directory, under env -i, boots its embedded guest", () => {
      check("exe", 3, /from the executable/);
    });
    test("bunx vmm from the installed tarball boots its packaged guest and returns the status", () => {
      check("bunx", 4, /from bunx/);
    });
  }
});
