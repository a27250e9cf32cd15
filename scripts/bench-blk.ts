#!/usr/bin/env bun
/**
 * Block I/O benchmark: vmm on Bun, vmm on Deno and QEMU microvm with a
 * virtio-blk-device, each with the same raw image as its one drive, run the
 * same guest workload on /dev/vda: sequential write and read with 1 MiB
 * direct I/O (busybox dd), and 4 KiB random reads with direct I/O at queue
 * depth 1 (a small static reader; see scripts/bench/blk_driver.ts). For each:
 * MiB/s or IOPS as the guest measures them, and the VMM process's own host CPU
 * time (user + system, less the vCPU's time in guest mode) per GiB moved.
 * The sequential write and read then run a second time in the same VM: the
 * first pass includes what a VMM pays once per process (vmm's JIT compiling
 * its data path), the second is the steady state.
 * Prints a table with the ratios to QEMU.
 *
 * Where /dev/kvm is hardware KVM the driver runs here; elsewhere (PVM) it runs
 * inside the nested L1 host of test/support/nested.ts, and the numbers are
 * those of nested KVM: low in absolute terms, comparable between contenders.
 *
 * With --cpus N (N > 1) every contender has N vCPUs and a last phase runs
 * N random readers at once, one pinned to each vCPU: several requests in flight.
 *
 * Usage: bun scripts/bench-blk.ts [--runs 3] [--warmup 1] [--size MiB] [--rand-ops N] [--cpus 1] [--timeout 300] [--json FILE]
 * (--size and --rand-ops default to 128 and 3000 nested, 2048 and 200000 on hardware KVM)
 * A benchmark, not a test: nothing here is asserted.
 */
import { parseArgs } from "node:util";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { finishReport, markdownTable, median } from "./bench/common.ts";
import { driverFiles, requireNested, runDriverNested } from "./bench/nested.ts";
import { kvmKind } from "../vm/host.ts";
import { DEFAULT_CMDLINE, shellQuote as q } from "../mod.ts";
import { ensureDefaultGuest } from "../guest/build.ts";
import { type BlkRecord, type BlkResult, CPUS, fromRecords, MEM_MIB, type Phase, type PhaseSample, PAR_PHASE, phasesFor, qemuArgv, runBlkBench } from "./bench/blk_driver.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    runs: { type: "string", default: "3" },
    warmup: { type: "string", default: "1" },
    size: { type: "string" },
    "rand-ops": { type: "string" },
    cpus: { type: "string", default: String(CPUS) },
    timeout: { type: "string", default: "300" },
    json: { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log("Usage: bun scripts/bench-blk.ts [--runs 3] [--warmup 1] [--size MiB] [--rand-ops N] [--cpus N] [--timeout SECONDS_PER_RUN] [--json FILE]");
  process.exit(0);
}
const kind = kvmKind();
// Phases of several seconds each: nested KVM moves about 50 MiB/s and 300 4 KiB reads/s, hardware 50–100× that.
const nested = kind !== "hardware";
const runs = Number(values.runs);
const warmup = Number(values.warmup);
const sizeMiB = Number(values.size ?? (nested ? 128 : 2048));
const randOps = Number(values["rand-ops"] ?? (nested ? 3000 : 200_000));
const timeoutMs = Number(values.timeout) * 1000;
const cpus = Number(values.cpus);
if (!(runs >= 1) || !(warmup >= 0) || !(sizeMiB >= 1) || !(randOps >= 1) || !(timeoutMs > 0) || !(Number.isInteger(cpus) && cpus >= 1)) {
  console.error("bench-blk: --runs, --warmup, --size, --rand-ops, --cpus and --timeout take whole numbers (runs, size, rand-ops, cpus ≥ 1)");
  process.exit(2);
}

const say = (s: string) => console.error(`bench-blk: ${s}`);
const img = await ensureDefaultGuest({ log: (s) => console.error(`bench-blk: ${s}`) });
const started = Date.now();
let result: BlkResult;
let where: string;
let partial = false;
const driverOpts = { kernel: img.kernel, initrd: img.initrd, cmdline: DEFAULT_CMDLINE, runs, warmup, timeoutMs, sizeMiB, randOps, cpus };

if (kind === "hardware") {
  where = "hardware KVM (this host's /dev/kvm); image in " + tmpdir();
  result = await runBlkBench({ ...driverOpts, repo: REPO, log: (l) => console.error(`bench-blk: ${l}`) });
} else {
  requireNested(kind, say);
  where = `nested: L1 = QEMU TCG -cpu max (AMD SVM), 2 vCPUs, 4 GiB; real KVM (kvm-amd) inside L1; image on L1's tmpfs; this host's /dev/kvm is ${kind}`;
  const files = driverFiles("vmm-bench-blk-");
  const script = [
    "bun scripts/bench/blk_driver.ts",
    `--kernel ${q(img.kernel)} --initrd ${q(img.initrd)} --cmdline ${q(DEFAULT_CMDLINE)}`,
    `--runs ${runs} --warmup ${warmup} --timeout-ms ${timeoutMs} --size ${sizeMiB} --rand-ops ${randOps} --cpus ${cpus}`,
    `--json /dev/null --progress ${q(files.progress)} --records ${q(files.records)}`,
  ].join(" ");
  // Progress and records come through the shared directory while L1 runs (scripts/bench/nested.ts).
  const run = await runDriverNested<BlkRecord>(files, script, { say, budgetMs: 180_000 + (warmup + runs) * 3 * timeoutMs, stallMs: timeoutMs + 60_000 });
  if (run.where) where += `; ${run.where}`;
  partial = run.partial;
  const recs = run.records;
  result = fromRecords(recs);
}

// ---------- the table ----------


interface Metric {
  label: string;
  unit: string;
  phase: Phase;
  get: (s: PhaseSample) => number;
  digits: number;
}
const GiB = 2 ** 30;
const MiB = 2 ** 20;
// What each row computes from a phase: its rate, and the VMM's CPU per GiB or per request.
const mibPerSec = (s: PhaseSample) => s.bytes / MiB / s.guestSec;
const iops = (s: PhaseSample) => s.ops / s.guestSec;
const cpuPerGiB = (s: PhaseSample) => s.cpuSec / (s.bytes / GiB);
const cpuPerOpUs = (s: PhaseSample) => (s.cpuSec / s.ops) * 1e6;
const metrics: Metric[] = [
  { label: "seq write 1 MiB direct", unit: "MiB/s", phase: "seqwrite", get: mibPerSec, digits: 1 },
  { label: "seq read 1 MiB direct", unit: "MiB/s", phase: "seqread", get: mibPerSec, digits: 1 },
  { label: "rand read 4 KiB direct, QD1", unit: "IOPS", phase: "randread", get: iops, digits: 0 },
  { label: "host CPU, seq write", unit: "s/GiB", phase: "seqwrite", get: cpuPerGiB, digits: 2 },
  { label: "host CPU, seq read", unit: "s/GiB", phase: "seqread", get: cpuPerGiB, digits: 2 },
  { label: "host CPU, rand read", unit: "s/GiB", phase: "randread", get: cpuPerGiB, digits: 1 },
  { label: "  = per 4 KiB read", unit: "µs", phase: "randread", get: cpuPerOpUs, digits: 0 },
  // The same transfers again in the same VM: steady state, without what each VMM pays once.
  { label: "seq write 1 MiB, second pass", unit: "MiB/s", phase: "seqwrite2", get: mibPerSec, digits: 1 },
  { label: "seq read 1 MiB, second pass", unit: "MiB/s", phase: "seqread2", get: mibPerSec, digits: 1 },
  { label: "host CPU, seq write, second pass", unit: "s/GiB", phase: "seqwrite2", get: cpuPerGiB, digits: 2 },
  { label: "host CPU, seq read, second pass", unit: "s/GiB", phase: "seqread2", get: cpuPerGiB, digits: 2 },
  ...(cpus > 1
    ? <Metric[]> [
      { label: `rand read 4 KiB, ${cpus} readers at once`, unit: "IOPS", phase: PAR_PHASE, get: iops, digits: 0 },
      { label: "  host CPU per 4 KiB read", unit: "µs", phase: PAR_PHASE, get: cpuPerOpUs, digits: 0 },
    ]
    : []),
];

const byName = new Map(result.contenders.map((c) => [c.name, c]));
const names = ["vmm-bun", "vmm-deno", "qemu"];
const valuesOf = (m: Metric, name: string) =>
  (byName.get(name)?.runs ?? []).flatMap((r) => (r[m.phase] ? [m.get(r[m.phase]!)] : [])).filter((v) => Number.isFinite(v));
const fmt = (v: number, d: number) => (Number.isFinite(v) ? v.toFixed(d) : "–");
const cell = (xs: number[], d: number) =>
  xs.length === 0 ? "–" : `${fmt(median(xs), d)} (${fmt(Math.min(...xs), d)}–${fmt(Math.max(...xs), d)})`;

const header = ["metric (median (min–max))", "unit", ...names, "bun/qemu", "deno/qemu"];
const rows: string[][] = [];
for (const m of metrics) {
  const [b, d, q] = names.map((n) => valuesOf(m, n));
  const ratio = (xs: number[]) => (xs.length && q.length ? (median(xs) / median(q)).toFixed(2) + "×" : "–");
  rows.push([m.label, m.unit, cell(b, m.digits), cell(d, m.digits), cell(q, m.digits), ratio(b), ratio(d)]);
}


const n = names.map((x) => `${x} ${byName.get(x)?.runs.length ?? 0}`).join(", ");
const out: string[] = [];
out.push(`Block I/O benchmark (${new Date().toISOString().slice(0, 16)}Z), ${((Date.now() - started) / 60000).toFixed(1)} min`);
out.push(`where: ${where}`);
out.push(`KVM host kernel ${result.host.kernel}, ${result.host.cpus} CPUs`);
out.push(`guest: ${img.kernel} + ${img.initrd} (+ /bench/randread); ${cpus} vCPU${cpus > 1 ? "s" : ""}, ${MEM_MIB} MiB; cmdline "${DEFAULT_CMDLINE}"`);
out.push(`workload: ${result.sizeMiB} MiB raw image as /dev/vda; seq write then seq read of all of it, then ${result.randOps} random 4 KiB reads, ` +
  `then the seq write and read again (second pass)` + (cpus > 1 ? `, then ${cpus} readers of ${result.randOps} at once, one pinned to each vCPU` : ""));
out.push(`runs: ${n} measured (after ${warmup} warm-up each), contenders interleaved with rotating order`);
out.push(`vmm-bun:  bun bin/vmm.ts run --busybox --kernel K --initrd I --cpus ${cpus} --memory ${MEM_MIB}M --drive IMG -- sh -c SCRIPT`);
out.push(`vmm-deno: deno run -A --no-check bin/vmm.ts run … (the same)`);
out.push(`qemu:     ${qemuArgv({ kernel: "K", initrd: "I+run.sh", cmdline: "<cmdline>", image: "IMG", cpus }).join(" ")}`);
out.push("");
out.push(...markdownTable(header, rows));
out.push("");
out.push("MiB/s and IOPS: the guest's own clock (/proc/uptime, 10 ms) around each phase; higher is better, and so are ratios above 1×.");
out.push("Host CPU: utime − guest_time + stime of the VMM process (all its threads, /proc/PID/stat) between the guest's");
out.push("console lines before and after the phase, divided by the bytes moved: what the VMM itself spent (exits, device");
out.push("emulation, copies, syscalls), not the guest's time on its vCPU; lower is better, and so are ratios below 1×.");
out.push(`CPU times come in clock ticks (1/${result.host.clkTck} s): short phases carry that granularity.`);
const wallVsGuest = names.flatMap((nm) =>
  (byName.get(nm)?.runs ?? []).flatMap((r) => phasesFor(cpus).flatMap((p) => (r[p] ? [r[p]!.wallSec - r[p]!.guestSec] : [])))
);
if (wallVsGuest.length) {
  out.push(`Host wall time per phase exceeded the guest's by ${fmt(median(wallVsGuest) * 1000, 0)} ms (median): the console round trips around it.`);
}
finishReport(out, { partial, contenders: result.contenders, json: values.json, payload: { where, result } });
