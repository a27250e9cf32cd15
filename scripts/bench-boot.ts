#!/usr/bin/env bun
/**
 * Boot benchmark: vmm on Bun, vmm on Deno and QEMU microvm boot the same
 * kernel and initramfs (the default guest image) with 1 vCPU and 512 MiB;
 * for each, the time from process start to the guest init's
 * `vmm-guest: ready` line, the time to process exit after `poweroff -f` is
 * typed at that moment, and peak RSS. Prints a table with the ratios to QEMU.
 *
 * Where /dev/kvm is hardware KVM the driver (scripts/bench/boot_driver.ts)
 * runs here; elsewhere (PVM) it runs inside the nested L1 host of
 * test/support/nested.ts, and the numbers are those of nested KVM.
 *
 * With --idle SECONDS, each run also leaves the guest idle at its shell
 * (10 s to settle, then SECONDS) and reports the monitor's host CPU over
 * that time, as a percentage of one core.
 *
 * Usage: bun scripts/bench-boot.ts [--runs 5] [--warmup 1] [--timeout 120] [--startup-runs 5] [--idle 60] [--json FILE]
 * A benchmark, not a test: nothing here is asserted.
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { finishReport, median, stats } from "./bench/common.ts";
import { driverFiles, requireNested, runDriverNested } from "./bench/nested.ts";
import { kvmKind } from "../vm/host.ts";
import { DEFAULT_CMDLINE, shellQuote as q } from "../mod.ts";
import { ensureDefaultGuest } from "../guest/build.ts";
import { type BenchRecord, type BenchResult, CPUS, fromRecords, GIVE_UP_MS, IDLE_SETTLE_MS, MEM_MIB, qemuArgv, runBench, type RunSample } from "./bench/boot_driver.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    runs: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    timeout: { type: "string", default: "120" },
    "startup-runs": { type: "string", default: "5" },
    idle: { type: "string", default: "0" },
    json: { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log("Usage: bun scripts/bench-boot.ts [--runs 5] [--warmup 1] [--timeout SECONDS_PER_RUN] [--startup-runs 5] [--idle SECONDS] [--json FILE]");
  process.exit(0);
}
const runs = Number(values.runs);
const warmup = Number(values.warmup);
const timeoutMs = Number(values.timeout) * 1000;
const startupRuns = Number(values["startup-runs"]);
const idleMs = Number(values.idle) * 1000;
if (!(runs >= 1) || !(warmup >= 0) || !(timeoutMs > 0) || !(startupRuns >= 0) || !(idleMs >= 0)) {
  console.error("bench-boot: --runs, --warmup, --timeout, --startup-runs and --idle take whole numbers (runs ≥ 1)");
  process.exit(2);
}

const say = (s: string) => console.error(`bench-boot: ${s}`);
const img = await ensureDefaultGuest({ log: (s) => console.error(`bench-boot: ${s}`) });
const kind = kvmKind();
const started = Date.now();
let result: BenchResult;
let where: string;
let partial = false;
const driverOpts = { kernel: img.kernel, initrd: img.initrd, cmdline: DEFAULT_CMDLINE, runs, warmup, timeoutMs, startupRuns, idleMs };

if (kind === "hardware") {
  where = "hardware KVM (this host's /dev/kvm)";
  result = await runBench({ ...driverOpts, repo: REPO, log: (l) => console.error(`bench-boot: ${l}`) });
} else {
  requireNested(kind, say);
  where = `nested: L1 = QEMU TCG -cpu max (AMD SVM), 2 vCPUs, 4 GiB; real KVM (kvm-amd) inside L1; this host's /dev/kvm is ${kind}`;
  const files = driverFiles("vmm-bench-");
  const script = [
    "bun scripts/bench/boot_driver.ts",
    `--kernel ${q(img.kernel)} --initrd ${q(img.initrd)} --cmdline ${q(DEFAULT_CMDLINE)}`,
    `--runs ${runs} --warmup ${warmup} --timeout-ms ${timeoutMs} --startup-runs ${startupRuns} --idle-ms ${idleMs}`,
    `--json /dev/null --progress ${q(files.progress)} --records ${q(files.records)}`,
  ].join(" ");
  // Progress and records come through the shared directory while L1 runs (scripts/bench/nested.ts).
  const run = await runDriverNested<BenchRecord>(files, script, { say, budgetMs: 120_000 + (warmup + runs) * 3 * (timeoutMs + idleMs + IDLE_SETTLE_MS) + startupRuns * 2 * 60_000, stallMs: timeoutMs + 60_000 });
  if (run.where) where += `; ${run.where}`;
  partial = run.partial;
  const recs = run.records;
  result = fromRecords(recs);
}

// ---------- the table ----------


interface Metric {
  label: string;
  unit: string;
  get: (s: RunSample) => number | undefined;
  scale: number;
}
const MiB = 1 / 1024;
const metrics: Metric[] = [
  { label: "start → 'vmm-guest: ready'", unit: "ms", get: (s) => s.readyMs, scale: 1 },
  { label: "start → exit (poweroff -f)", unit: "ms", get: (s) => s.exitMs, scale: 1 },
  { label: "  of which poweroff → exit", unit: "ms", get: (s) => s.poweroffMs, scale: 1 },
  { label: "peak RSS (incl. guest RAM)", unit: "MiB", get: (s) => s.peakKiB, scale: MiB },
  { label: "RSS at ready", unit: "MiB", get: (s) => s.rssReadyKiB, scale: MiB },
  { label: "  guest RAM resident", unit: "MiB", get: (s) => s.guestKiB, scale: MiB },
  { label: "  RSS less guest RAM", unit: "MiB", get: (s) => (s.rssReadyKiB !== undefined && s.guestKiB !== undefined ? s.rssReadyKiB - s.guestKiB : undefined), scale: MiB },
  ...(idleMs > 0 ? [{ label: `idle at the shell, host CPU over ${idleMs / 1000} s`, unit: "%", get: (s: RunSample) => s.idlePct, scale: 1 }] : []),
];

const byName = new Map(result.contenders.map((c) => [c.name, c]));
const names = ["vmm-bun", "vmm-deno", "qemu"];
const fmt = (v: number, unit: string) => (!Number.isFinite(v) ? "–" : unit === "ms" ? v.toFixed(0) : unit === "%" ? v.toFixed(2) : v.toFixed(1));
const cell = (xs: number[], unit: string) => {
  if (xs.length === 0) return "–";
  const s = stats(xs);
  return `${fmt(s.med, unit)} (${fmt(s.min, unit)}–${fmt(s.max, unit)})`;
};
const values3 = (m: Metric, name: string) =>
  (byName.get(name)?.runs ?? []).map(m.get).filter((v): v is number => v !== undefined && Number.isFinite(v)).map((v) => v * m.scale);

const header = ["metric (median (min–max))", "unit", ...names, "bun/qemu", "deno/qemu"];
const rows: string[][] = [];
for (const m of metrics) {
  const [b, d, q] = names.map((n) => values3(m, n));
  const ratio = (xs: number[]) => (xs.length && q.length ? (median(xs) / median(q)).toFixed(2) + "×" : "–");
  rows.push([m.label, m.unit, cell(b, m.unit), cell(d, m.unit), cell(q, m.unit), ratio(b), ratio(d)]);
}
// vmm's own split, and runtime start-up alone.
const vmmInit = (n: string) => (byName.get(n)?.runs ?? []).map((s) => s.vmmInitReadyMs).filter((v): v is number => v !== undefined);
const preCreate = (n: string) =>
  (byName.get(n)?.runs ?? []).filter((s) => s.vmmInitReadyMs !== undefined).map((s) => s.readyMs - s.vmmInitReadyMs!);
rows.push(["vmm -v: Machine.create → init up", "ms", cell(vmmInit("vmm-bun"), "ms"), cell(vmmInit("vmm-deno"), "ms"), "", "", ""]);
const vmmBuilt = (n: string) => (byName.get(n)?.runs ?? []).map((s) => s.vmmBuiltMs).filter((v): v is number => v !== undefined);
rows.push(["  of which Machine.create → VM built", "ms", cell(vmmBuilt("vmm-bun"), "ms"), cell(vmmBuilt("vmm-deno"), "ms"), "", "", ""]);
rows.push(["  so start → Machine.create ≈", "ms", cell(preCreate("vmm-bun"), "ms"), cell(preCreate("vmm-deno"), "ms"), "", "", ""]);
const startup = (n: string) => byName.get(n)?.startupMs ?? [];
if (startupRuns > 0) {
  rows.push(["`vmm --version` wall time", "ms", cell(startup("vmm-bun"), "ms"), cell(startup("vmm-deno"), "ms"), "", "", ""]);
}

const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");

const n = names.map((x) => `${x} ${byName.get(x)?.runs.length ?? 0}`).join(", ");
const out: string[] = [];
out.push(`Boot benchmark (${new Date().toISOString().slice(0, 16)}Z), ${((Date.now() - started) / 60000).toFixed(1)} min`);
out.push(`where: ${where}`);
out.push(`KVM host kernel ${result.host.kernel}, ${result.host.cpus} CPUs, THP ${result.host.thp}`);
out.push(`guest: ${img.kernel} + ${img.initrd}; ${CPUS} vCPU, ${MEM_MIB} MiB; cmdline "${DEFAULT_CMDLINE}"`);
out.push(`runs: ${n} measured (after ${warmup} warm-up each), contenders interleaved with rotating order`);
out.push(`vmm-bun:  bun bin/vmm.ts boot -v --kernel K --initrd I --cpus ${CPUS} --memory ${MEM_MIB}M`);
out.push(`vmm-deno: deno run -A --no-check bin/vmm.ts boot -v --kernel K --initrd I --cpus ${CPUS} --memory ${MEM_MIB}M`);
out.push(`qemu:     ${qemuArgv({ kernel: "K", initrd: "I", cmdline: "<cmdline>" }).join(" ")}`);
out.push("vmm boots the ELF kernel inside the bzImage K, unpacked into its cache once, on vmm's first run");
out.push("(a warm-up run unless --warmup 0; loop/kernel_cache.ts); QEMU's guest decompresses K itself on every boot.");
out.push("");
out.push(line(header));
out.push(line(header.map((_, i) => "-".repeat(widths[i]))));
for (const r of rows) out.push(line(r));
out.push("");
out.push("Times: from just before spawn() to the marker on stdout / to the process's exit; `poweroff -f\\n` is written to");
out.push("stdin as soon as the marker arrives. Peak RSS: ru_maxrss of the process (/usr/bin/time %M), which counts every");
out.push("resident page, guest RAM included (QEMU and vmm alike: private anonymous, THP where it gets huge pages).");
out.push("'at ready' rows: /proc/PID/status VmRSS and the smaps Rss of the 512 MiB guest RAM mapping, read");
out.push("when the marker arrives. 'vmm -v' rows: vmm's own report, from Machine.create (after runtime start-up, module");
out.push("loading and argument parsing) to the init's port write just before it prints the marker; start → Machine.create");
out.push("is the first row less that; 'VM built' is the part before any Worker runs the guest: RAM mapped, the kernel");
out.push("and initrd read into it, ACPI tables, devices wired. `vmm --version`: runtime start-up plus loading vmm's modules.");
if (idleMs > 0) {
  out.push(`Idle: ${IDLE_SETTLE_MS / 1000} s after the marker, the process's utime + stime (all threads, guest time included) over`);
  out.push(`${idleMs / 1000} s as a percentage of one core; 'poweroff -f' is written after that, so there is no start → exit time.`);
}
for (const c of result.contenders) {
  const ign = c.runs.filter((s) => s.poweroffIgnored);
  if (ign.length) {
    out.push(`PROBLEM ${c.name}: in ${ign.length} of ${c.runs.length} runs it reached the marker but ignored 'poweroff -f' on its console,`);
    out.push(`  so it has no exit time there (stopped with SIGTERM after ${GIVE_UP_MS / 1000} s; ready time and peak RSS still count). First case:`);
    out.push(`  ${ign[0].note}`);
  }
}
const resent = result.contenders.flatMap((c) => c.runs.filter((s) => s.resent).map(() => c.name));
if (resent.length) out.push(`Note: poweroff had to be re-sent (5 s later) in runs of: ${resent.join(", ")} — their exit times include that wait.`);
const huge = names.map((nm) => `${nm} ${median(values3({ ...metrics[0], get: (s) => s.guestHugeKiB }, nm).map((v) => v / 1024)).toFixed(0)}`).join(", ");
out.push(`Guest RAM in huge pages at ready (MiB, median): ${huge}.`);
finishReport(out, {
  partial,
  contenders: result.contenders,
  json: values.json,
  payload: { where, result },
  failed: result.contenders.some((c) => c.runs.some((s) => s.poweroffIgnored)),
});
