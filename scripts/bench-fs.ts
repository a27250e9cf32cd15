#!/usr/bin/env bun
/**
 * virtio-fs benchmark: the same commands natively on the host and in the
 * guest of `vmm run -- CMD` (the host's root read-only over virtio-fs, the
 * current directory, this checkout, read-write), side by side in one run:
 *   (a) `vmm run -- true` wall time over the host's root, against `true` and
 *       against `vmm run --busybox -- true` (no virtio-fs, no switch_root);
 *   (b) metadata: `find | wc -l` and a stat of every file, over this
 *       checkout's node_modules and over a tree of 10,000 small files;
 *   (c) bulk: `cat` of a 256 MiB file of random bytes;
 *   (d) real work: `git status` and `tar c` of the checkout;
 *   (e) the command's stdout: 64 MiB from `head -c` through `vmm run` to a
 *       file on the host, against the serial console (`vmm run --busybox`).
 * (b)–(e) are timed inside the guest around the command, so the boot is left
 * out; (b)–(d) run twice in one guest (pass 1 with its caches cold, pass 2
 * right after). Prints a table with the ratios vm/native.
 *
 * Where /dev/kvm is hardware KVM the driver (scripts/bench/fs_driver.ts) runs
 * here; elsewhere (PVM) it runs inside the nested L1 host of
 * test/support/nested.ts, and "the host" is L1: its root is this machine's
 * over 9p (cache=loose, read-only), so the fixtures live outside /tmp (L1 and
 * the guest each have their own /tmp).
 *
 * Usage: bun scripts/bench-fs.ts [--runs 3] [--big-mib 256] [--stdout-mib 64] [--serial-kib 64]
 *                                [--fixtures DIR] [--timeout 300] [--json FILE] [--prepare]
 * (--prepare: write the fixtures, if missing, and exit)
 * A benchmark, not a test: nothing here is asserted.
 */
import { parseArgs } from "node:util";
import { closeSync, existsSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import { execFileSync } from "node:child_process";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { markdownTable, median } from "./bench/common.ts";
import { driverFiles, requireNested, runDriverNested } from "./bench/nested.ts";
import { kvmKind } from "../vm/host.ts";
import { ensureDefaultGuest } from "../guest/build.ts";
import { shellQuote as q } from "../guest/command.ts";
import { type FsRecord, type FsResult, type FsSample, fromRecords, hostInfo, runFsBench, type Side, TREE_DIRS, TREE_FILES_PER_DIR, workloadSteps } from "./bench/fs_driver.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    runs: { type: "string", default: "3" },
    "big-mib": { type: "string", default: "256" },
    "stdout-mib": { type: "string", default: "64" },
    "serial-kib": { type: "string", default: "64" },
    fixtures: { type: "string" },
    timeout: { type: "string", default: "300" },
    json: { type: "string" },
    prepare: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  },
});
const USAGE = "Usage: bun scripts/bench-fs.ts [--runs 3] [--big-mib 256] [--stdout-mib 64] [--serial-kib 64] [--fixtures DIR] [--timeout SECONDS_PER_COMMAND] [--json FILE] [--prepare]";
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const runs = Number(values.runs);
const bigMiB = Number(values["big-mib"]);
const stdoutMiB = Number(values["stdout-mib"]);
const serialKiB = Number(values["serial-kib"]);
const timeoutMs = Number(values.timeout) * 1000;
for (const [k, v] of [["runs", runs], ["big-mib", bigMiB], ["stdout-mib", stdoutMiB], ["serial-kib", serialKiB], ["timeout", timeoutMs]] as const) {
  if (!(Number.isInteger(v) && v >= 1)) {
    console.error(`bench-fs: --${k} takes a whole number ≥ 1\n${USAGE}`);
    process.exit(2);
  }
}
// Outside /tmp and /run: the guest (and L1) mount their own there.
const fixtures = resolve(values.fixtures ?? (existsSync("/work/scratch") ? "/work/scratch/benchfs" : join(REPO, "dist", "benchfs")));
if (/^\/(tmp|run)(\/|$)/.test(fixtures)) {
  console.error(`bench-fs: --fixtures ${fixtures}: the guest has its own /tmp and /run and would not see it; choose a directory elsewhere`);
  process.exit(2);
}

const say = (s: string) => console.error(`bench-fs: ${s}`);
const img = await ensureDefaultGuest({ log: say });
const { big, tree } = ensureFixtures(fixtures, bigMiB, say);
if (values.prepare) {
  say(`fixtures ready: ${big}, ${tree}`);
  process.exit(0);
}
const kind = kvmKind();
const started = Date.now();
const outer = hostInfo(REPO, big);
const outerCache = residency(big);
let result: FsResult;
let where: string;
let partial = false;
const driverArgs = { big, tree, runs, stdoutMiB, serialKiB, timeoutMs, warm: [img.kernel, img.initrd] };

if (kind === "hardware") {
  where = "hardware KVM (this host's /dev/kvm); native = this host";
  result = await runFsBench({ ...driverArgs, repo: REPO, log: say });
} else {
  requireNested(kind, say);
  where = `nested: L1 = QEMU TCG -cpu max (AMD SVM), 2 vCPUs, 4 GiB, real KVM (kvm-amd) inside L1; native = L1; this host's /dev/kvm is ${kind}`;
  const files = driverFiles("vmm-bench-fs-");
  const script = [
    "bun scripts/bench/fs_driver.ts",
    `--big ${q(big)} --tree ${q(tree)} --runs ${runs} --stdout-mib ${stdoutMiB} --serial-kib ${serialKiB} --timeout-ms ${timeoutMs}`,
    `--warm ${q(img.kernel)} --warm ${q(img.initrd)}`,
    `--json /dev/null --progress ${q(files.progress)} --records ${q(files.records)}`,
  ].join(" ");
  // Progress and records come through the shared directory while L1 runs (scripts/bench/nested.ts).
  const run = await runDriverNested<FsRecord>(files, script, { say, budgetMs: 300_000 + runs * 6 * 60_000, stallMs: timeoutMs + 60_000 });
  if (run.where) where += `; ${run.where}`;
  partial = run.partial;
  const recs = run.records;
  result = fromRecords(recs);
}

/** The large file of random bytes and the tree of small files, made once. */
function ensureFixtures(dir: string, mib: number, log: (s: string) => void): { big: string; tree: string } {
  mkdirSync(dir, { recursive: true });
  const big = join(dir, `big-${mib}M.bin`);
  if (!existsSync(big) || statSync(big).size !== mib * 2 ** 20) {
    log(`writing ${mib} MiB of random bytes to ${big}`);
    const part = big + ".part";
    const fd = openSync(part, "w");
    const buf = new Uint8Array(2 ** 20);
    for (let i = 0; i < mib; i++) writeSync(fd, randomFillSync(buf));
    closeSync(fd);
    renameSync(part, big);
  }
  const tree = join(dir, "tree");
  const done = join(dir, "tree.complete");
  if (!existsSync(done)) {
    log(`writing ${TREE_DIRS * TREE_FILES_PER_DIR} small files under ${tree}`);
    rmSync(tree, { recursive: true, force: true });
    for (let d = 0; d < TREE_DIRS; d++) {
      const sub = join(tree, `d${String(d).padStart(3, "0")}`);
      mkdirSync(sub, { recursive: true });
      for (let f = 0; f < TREE_FILES_PER_DIR; f++) {
        writeFileSync(join(sub, `f${String(f).padStart(3, "0")}.txt`), "x".repeat((d * 131 + f * 17) % 2048) + "\n");
      }
    }
    writeFileSync(done, "");
  }
  return { big, tree };
}

/** Bytes of `file` in this host's page cache (fincore), or undefined. */
function residency(file: string): number | undefined {
  try {
    return Number(execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES", file], { encoding: "utf8" }).trim());
  } catch {
    return undefined;
  }
}

// ---------- the table ----------

/** A number with about three significant digits, no exponent. */
const num = (v: number) => {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : a >= 0.01 ? v.toFixed(3) : v.toPrecision(2);
};
const cell = (xs: number[]) => (xs.length === 0 ? "–" : xs.length === 1 ? num(xs[0]) : `${num(median(xs))} (${num(Math.min(...xs))}–${num(Math.max(...xs))})`);
const ratio = (a: number[], b: number[]) => (a.length && b.length ? `${num(median(a) / median(b))}×` : "–");

const MiB = 2 ** 20;
type Pick = { side: Side; metric: string; pass?: number };
/** Values of the samples that match, as ms or as MiB/s. */
function vals(p: Pick, unit: "ms" | "MiB/s"): number[] {
  return result.samples
    .filter((s: FsSample) => s.side === p.side && s.metric === p.metric && (p.pass === undefined || s.pass === p.pass))
    .map((s) => (unit === "ms" ? s.us / 1000 : (s.bytes ?? NaN) / MiB / (s.us / 1e6)))
    .filter((v) => Number.isFinite(v));
}
const firstOut = (metric: string) => result.samples.find((s) => s.metric === metric && s.out)?.out ?? "?";

const steps = workloadSteps("BIG", "TREE");
const stepUnit = (name: string): "ms" | "MiB/s" => (name === "big_cat" ? "MiB/s" : "ms");
const header = ["what (median (min–max))", "unit", "native", "vmm run", "vm/native", "vmm run, 2nd pass", "vm/native"];
const rows: string[][] = [];
const section = (title: string) => rows.push([title, "", "", "", "", "", ""]);
section("(a) start-up");
{
  const nat = vals({ side: "native", metric: "true" }, "ms");
  const vm = vals({ side: "vm", metric: "true" }, "ms");
  const bb = vals({ side: "busybox", metric: "true" }, "ms");
  rows.push(["  `true`, wall time (spawn → exit); vmm run -- true", "ms", cell(nat), cell(vm), ratio(vm, nat), "", ""]);
  rows.push(["  reference: vmm run --busybox -- true", "ms", cell(nat), cell(bb), ratio(bb, nat), "", ""]);
}
const groups: [string, string[]][] = [
  ["(b) metadata, timed in the guest", ["nm_find", "nm_stat", "tree_find", "tree_stat"]],
  ["(c) bulk, timed in the guest", ["big_cat"]],
  ["(d) real work, timed in the guest", ["git_status", "tar"]],
];
for (const [title, names] of groups) {
  section(title);
  for (const name of names) {
    const st = steps.find((s) => s.name === name)!;
    const unit = stepUnit(name);
    const nat = vals({ side: "native", metric: name }, unit); // both passes: the host's caches are warm in each
    const v1 = vals({ side: "vm", metric: name, pass: 1 }, unit);
    const v2 = vals({ side: "vm", metric: name, pass: 2 }, unit);
    rows.push([`  ${st.label}`, unit, cell(nat), cell(v1), ratio(v1, nat), cell(v2), ratio(v2, nat)]);
  }
}
section("(e) the command's stdout to a file on the host, timed in the guest");
{
  const nat = vals({ side: "native", metric: "stdout" }, "MiB/s");
  const vm = vals({ side: "vm", metric: "stdout" }, "MiB/s");
  const ser = vals({ side: "busybox", metric: "serial" }, "MiB/s");
  rows.push([`  head -c ${result.stdoutMiB}M /dev/zero: vmm run (virtio-serial port)`, "MiB/s", cell(nat), cell(vm), ratio(vm, nat), "", ""]);
  rows.push([`  ${result.serialKiB} KiB of 64-byte lines: vmm run --busybox (serial console)`, "MiB/s", cell(nat), cell(ser), ratio(ser, nat), "", ""]);
}


const h = result.host;
const pct = (res: number | undefined, size: number) => (res === undefined || !size ? "?" : `${((100 * res) / size).toFixed(0)}%`);
const out: string[] = [];
out.push(`virtio-fs benchmark (${new Date().toISOString().slice(0, 16)}Z), ${((Date.now() - started) / 60000).toFixed(1)} min, ${runs} run(s)`);
out.push(`machine: ${outer.cpuModel}, ${outer.cpus} CPUs, ${outer.memMiB} MiB, kernel ${outer.kernel}; /dev/kvm: ${kind}`);
out.push(`where: ${where}`);
if (h) {
  out.push(`native host: kernel ${h.kernel}, ${h.cpus} CPUs (${h.cpuModel}), ${h.memMiB} MiB, nested ${h.nested ? "yes" : "no"}; ` +
    `checkout on ${h.repoFs}, fixtures on ${h.bigFs}; Bun ${h.bun}`);
}
out.push(`guest: vmm on Bun, the default guest (${img.kernel.split("/").pop()}), 1 vCPU, 512 MiB (vmm run's defaults); ` +
  `the host's root read-only (tag vmm.root), the checkout ${REPO} read-write as the working directory (tag vmm.cwd)`);
out.push(`fixtures: ${fixtures}: BIG = ${big.split("/").pop()} (${result.bigBytes / MiB} MiB of random bytes), ` +
  `TREE = tree/ (${TREE_DIRS} directories of ${TREE_FILES_PER_DIR} files, 0–2 KiB each)`);
out.push(`entries: node_modules ${firstOut("nm_find")} (${firstOut("nm_stat")} files), TREE ${firstOut("tree_find")} (${firstOut("tree_stat")} files); ` +
  `tar wrote ${(Number(firstOut("tar")) / MiB).toFixed(1)} MiB`);
const cacheRuns = result.cache.map((c) => pct(c.residentBytes, c.sizeBytes)).join(", ");
out.push(`host page cache: BIG was ${pct(outerCache, result.bigBytes)} resident on this machine before the start` +
  (cacheRuns ? `; ${cacheRuns} resident in the native host before each run (after the warm-up pass)` : "") +
  "; nothing is dropped anywhere");
out.push("");
out.push(...markdownTable(header, rows));
out.push("");
out.push("Each run: the workload natively (bash, both passes), then in one `vmm run -- bash -c SCRIPT` guest, both passes;");
out.push("then `true` natively and the two vmm `true`s (rotating order); then stdout natively, through vmm run, and through the");
out.push("serial console. (b)–(d) are timed by bash ($EPOCHREALTIME) around each command in the guest, so the boot is outside;");
out.push("pass 1 finds the guest's page cache and dentries cold (a fresh VM), pass 2 runs right after it in the same guest.");
out.push("The native column pools both native passes (the host's caches are warm in both, after an unmeasured warm-up pass).");
out.push("ms: lower is better, so a vm/native ratio above 1× is a slowdown; MiB/s: higher is better, a ratio below 1× is a slowdown.");
out.push("(e) stdout: head's time in the guest to write the bytes into the port (more than the port's buffers hold), the file");
out.push("written by vmm; serial: /proc/uptime (10 ms) around `yes LINE | head -c N` on the busybox guest's console, which vmm");
out.push("writes to its stdout, a file. Native for both: the same head into a file on the host.");
{
  const vm = median(vals({ side: "vm", metric: "stdout" }, "MiB/s"));
  const ser = median(vals({ side: "busybox", metric: "serial" }, "MiB/s"));
  if (Number.isFinite(vm) && Number.isFinite(ser)) out.push(`virtio-serial stdout / serial console: ${num(vm / ser)}× (median ${num(vm)} MiB/s vs ${num(ser * 1024)} KiB/s).`);
}
out.push("QEMU with virtio-9p as a peer: not run. vmm boots Debian's cloud kernel, which has no 9p; QEMU would need another");
out.push("kernel (the generic one, which L1 itself boots with 9p), so it would not be the same guest.");
let failed = partial;
if (partial) out.push("PARTIAL: L1 failed or stalled before the end (see above); these are the runs finished before that.");
for (const f of result.failures) {
  failed = true;
  out.push(`FAILED run ${f.run} ${f.what}: ${f.msg.split("\n").slice(0, 12).join("\n  ")}`);
}
console.log(out.join("\n"));
if (values.json) writeFileSync(values.json, JSON.stringify({ where, result }, null, 2));
process.exit(failed ? 1 : 0);
