#!/usr/bin/env bun
/**
 * Network benchmark: vmm on Bun, vmm on Deno and QEMU microvm with a
 * virtio-net-device, each on a TAP in a network namespace of its own, run
 * with the same kernel, initramfs and guest command; the host measures:
 * - guest → host TCP throughput (the host reads N MiB of zeros the guest sends),
 * - host → guest TCP throughput (the host sends N MiB the guest discards),
 * - the ping round trip host → guest (busybox ping, 20 pings),
 * - the VMM process's host CPU time per GiB moved (user + system less the
 *   vCPU's time in guest mode, sampled around each transfer).
 * QEMU runs with `vhost=off`: vmm moves frames in user space too, and the
 * nested host has no vhost-net. scripts/bench/net_driver.ts does the
 * measuring; this prints the table: median (min–max) of each contender, the
 * ratios of the medians to QEMU's, and the machine it ran on. A failed run
 * (a transfer that came short or stalled) is listed with why: the VM still
 * ran, or its process had ended, with the last of what it printed.
 *
 * Where /dev/kvm is hardware KVM the driver runs here (as root: it makes
 * network namespaces); elsewhere (PVM) it runs inside the nested L1 host of
 * test/support/nested.ts: low absolute numbers, comparable between
 * contenders, and a run cut short by L1 still prints what it measured.
 *
 * Usage: bun scripts/bench-net.ts [--runs 3] [--warmup 1] [--size MiB] [--timeout 300] [--json FILE]
 * (--size defaults to 64 nested, 2048 on hardware KVM)
 * A benchmark, not a test: nothing here is asserted.
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { finishReport, markdownTable, median, stats } from "./bench/common.ts";
import { driverFiles, requireNested, runDriverNested } from "./bench/nested.ts";
import { kvmKind } from "../vm/host.ts";
import { DEFAULT_CMDLINE, shellQuote as q } from "../mod.ts";
import { ensureDefaultGuest } from "../guest/build.ts";
import { fromRecords, MEM_MIB, type NetRecord, type NetResult, type NetSample, qemuArgv, runNetBench } from "./bench/net_driver.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const USAGE = "Usage: bun scripts/bench-net.ts [--runs 3] [--warmup 1] [--size MiB] [--timeout SECONDS_PER_BOOT] [--json FILE]";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    runs: { type: "string", default: "3" },
    warmup: { type: "string", default: "1" },
    size: { type: "string" },
    timeout: { type: "string", default: "300" },
    json: { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const kind = kvmKind();
const nested = kind !== "hardware";
const runs = Number(values.runs);
const warmup = Number(values.warmup);
const sizeMiB = Number(values.size ?? (nested ? 64 : 2048));
const timeoutMs = Number(values.timeout) * 1000;
if (!(runs >= 1) || !(warmup >= 0) || !(sizeMiB >= 1) || !(timeoutMs > 0)) {
  console.error("bench-net: --runs, --warmup, --size and --timeout take whole numbers (runs and size ≥ 1)");
  process.exit(2);
}

const say = (s: string) => console.error(`bench-net: ${s}`);
const img = await ensureDefaultGuest({ log: say });
const started = Date.now();
let result: NetResult;
let where: string;
let partial = false;
const driverOpts = { kernel: img.kernel, initrd: img.initrd, cmdline: DEFAULT_CMDLINE, runs, warmup, timeoutMs, sizeMiB };

if (kind === "hardware") {
  where = "hardware KVM (this host's /dev/kvm)";
  result = await runNetBench({ ...driverOpts, repo: REPO, log: say });
} else {
  requireNested(kind, say);
  where = `nested: L1 = QEMU TCG -cpu max (AMD SVM), 2 vCPUs, 4 GiB; real KVM (kvm-amd) inside L1; this host's /dev/kvm is ${kind}`;
  const files = driverFiles("vmm-bench-net-");
  const script = [
    "bun scripts/bench/net_driver.ts",
    `--kernel ${q(img.kernel)} --initrd ${q(img.initrd)} --cmdline ${q(DEFAULT_CMDLINE)}`,
    `--runs ${runs} --warmup ${warmup} --timeout-ms ${timeoutMs} --size ${sizeMiB}`,
    `--json /dev/null --progress ${q(files.progress)} --records ${q(files.records)}`,
  ].join(" ");
  // Each boot: up to timeoutMs to its marker, 60 s of pings, two transfers of up to 300 s.
  const perRun = timeoutMs + 660_000;
  const run = await runDriverNested<NetRecord>(files, script, { say, budgetMs: 180_000 + (warmup + runs) * 3 * perRun, stallMs: perRun + 60_000 });
  if (run.where) where += `; ${run.where}`;
  partial = run.partial;
  result = fromRecords(run.records);
}

// ---------- the table ----------

const GiB = 2 ** 30;
const metrics: { label: string; unit: string; get: (s: NetSample) => number; digits: number }[] = [
  { label: "guest → host TCP", unit: "MiB/s", get: (s) => result.sizeMiB / s.g2hSec, digits: 1 },
  { label: "host → guest TCP", unit: "MiB/s", get: (s) => result.sizeMiB / s.h2gSec, digits: 1 },
  { label: "ping round trip, mean", unit: "ms", get: (s) => s.rttMs, digits: 2 },
  { label: "ping round trip, median of 20", unit: "ms", get: (s) => s.rttMedianMs ?? NaN, digits: 2 },
  { label: "VMM host CPU per GiB moved", unit: "s", get: (s) => (s.g2hCpuSec + s.h2gCpuSec) / ((2 * result.sizeMiB * 2 ** 20) / GiB), digits: 1 },
];
const names = ["vmm-bun", "vmm-deno", "qemu"];
const byName = new Map(result.contenders.map((c) => [c.name, c]));
const valuesOf = (get: (s: NetSample) => number, name: string) => (byName.get(name)?.runs ?? []).map(get).filter((v) => Number.isFinite(v));
const cell = (xs: number[], d: number) => {
  if (xs.length === 0) return "–";
  const s = stats(xs);
  return `${s.med.toFixed(d)} (${s.min.toFixed(d)}–${s.max.toFixed(d)})`;
};
const header = ["metric (median (min–max))", "unit", ...names, "bun/qemu", "deno/qemu"];
const rows = metrics.map((m) => {
  const [b, d, q] = names.map((n) => valuesOf(m.get, n));
  const ratio = (xs: number[]) => (xs.length && q.length ? `${(median(xs) / median(q)).toFixed(2)}×` : "–");
  return [m.label, m.unit, cell(b, m.digits), cell(d, m.digits), cell(q, m.digits), ratio(b), ratio(d)];
});

const out: string[] = [];
out.push(`Network benchmark (${new Date().toISOString().slice(0, 16)}Z), ${((Date.now() - started) / 60000).toFixed(1)} min`);
out.push(`where: ${where}`);
out.push(`KVM host kernel ${result.host.kernel}, ${result.host.cpus} CPUs`);
out.push(`guest: ${img.kernel} + ${img.initrd}; 1 vCPU, ${MEM_MIB} MiB; cmdline "${DEFAULT_CMDLINE}"`);
out.push(`workload: ${result.sizeMiB} MiB each way over TCP (busybox nc), 20 pings; the host side in the TAP's network namespace`);
out.push(`runs: ${names.map((x) => `${x} ${byName.get(x)?.runs.length ?? 0}`).join(", ")} measured (after ${warmup} warm-up each), contenders interleaved with rotating order`);
out.push(`vmm:  bun|deno bin/vmm.ts run --busybox --kernel K --initrd I --cpus 1 --memory ${MEM_MIB}M --net tap=tap0 -- sh -c GUEST`);
out.push(`qemu: ${qemuArgv({ kernel: "K", initrd: "I+run.sh", cmdline: "<cmdline>" }).join(" ")}`);
out.push("");
out.push(...markdownTable(header, rows));
out.push("");
out.push("Throughput: wall time of each transfer on the host; higher is better, and so are ratios above 1×.");
out.push("Host CPU: utime − guest_time + stime of the VMM process (all its threads, /proc/PID/stat) around both");
out.push(`transfers, per GiB moved; lower is better. CPU times come in clock ticks (1/${result.host.clkTck} s).`);
finishReport(out, { partial, contenders: result.contenders, json: values.json, payload: { where, result } });
