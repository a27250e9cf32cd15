#!/usr/bin/env bun
/**
 * `vmm run` benchmark: a cold boot against a start from the run snapshot
 * (loop/run_cache.ts), on Bun and on Deno, beside QEMU microvm's cold boot
 * of the same guest (kernel, initramfs, 1 vCPU, 512 MiB) running the same
 * command. For each: time from process start to the command's first line
 * of output and to exit, and peak RSS; for the snapshot runs, vmm's own
 * figure for the restore alone (state file read, devices opened, RAM
 * mapped, vCPUs and devices set: process start and Worker start-up
 * excluded), and what the first run, which writes the snapshot, costs.
 *
 * vmm boots the image's ELF vmlinux when it has one (boot/vmlinux.ts: no
 * decompressor in the guest). QEMU runs twice: with the bzImage (the guest
 * decompresses itself, as the issue 12 baseline did) and, where there is a
 * vmlinux, with it through PVH (QEMU's own way to skip the decompressor), so
 * each ratio is against QEMU given the same head start.
 *
 * The command is `echo ready`. vmm runs it over the host's root (`vmm run --
 * echo ready`, the default guest's virtio-fs mode); QEMU, which has no
 * virtio-fs server here, runs it in the initramfs (the init's busybox mode,
 * as `vmm run --busybox`), and ends through isa-debug-exit on the init's
 * exit port. So QEMU's guest does less: no shares mounted.
 *
 * Where /dev/kvm is hardware KVM the runs happen here; elsewhere inside the
 * nested L1 host (test/support/nested.ts), where every figure is nested KVM
 * under TCG. Contenders take turns, the first one moving along each round.
 *
 * Usage: bun scripts/bench-run.ts [--rounds 3]
 * A benchmark, not a test: nothing here is asserted.
 */
import { parseArgs } from "node:util";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { stats } from "./bench/common.ts";
import { requireNested } from "./bench/nested.ts";
import { qemuArgv } from "./bench/boot_driver.ts";
import { runNested } from "../test/support/nested.ts";
import { kvmKind } from "../vm/host.ts";
import { DEFAULT_CMDLINE, shellQuote as q } from "../mod.ts";
import { defaultCacheDir, ensureDefaultGuest } from "../guest/build.ts";
import { concatInitrd, runArchive } from "../guest/command.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const { values } = parseArgs({ args: process.argv.slice(2), options: { rounds: { type: "string", default: "3" }, help: { type: "boolean", short: "h" } } });
if (values.help) {
  console.log("Usage: bun scripts/bench-run.ts [--rounds 3]");
  process.exit(0);
}
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) {
  console.error("bench-run: --rounds takes a whole number ≥ 1");
  process.exit(2);
}
const say = (s: string) => console.error(`bench-run: ${s}`);

const img = await ensureDefaultGuest({ log: say });
const kind = kvmKind();
if (kind !== "hardware") requireNested(kind, say);
const started = Date.now();
// QEMU's initramfs: the image's, with the command as the busybox mode's /vmm/run.sh.
mkdirSync(join(REPO, "dist"), { recursive: true });
const work = mkdtempSync(join(REPO, "dist", "bench-run-"));
const qemuInitrd = join(work, "initrd-echo.cpio");
writeFileSync(qemuInitrd, concatInitrd(new Uint8Array(readFileSync(img.initrd)), runArchive(["echo", "ready"])));
const qemuOf = (kernel: string) => [...qemuArgv({ kernel, initrd: qemuInitrd, cmdline: DEFAULT_CMDLINE }), "-device", "isa-debug-exit,iobase=0xf4,iosize=1"];
const qemu = qemuOf(img.kernel);
const qemuPvh = img.vmlinux ? qemuOf(img.vmlinux) : undefined;

/** Name, command line, and the exit status of a good run: QEMU's isa-debug-exit makes status 0 into (0 << 1) | 1. */
const CONTENDERS: [string, string, number][] = [
  ["bun cold", `bun ${REPO}/bin/vmm.ts run -v --cold -- echo ready`, 0],
  ["bun snapshot", `bun ${REPO}/bin/vmm.ts run -v -- echo ready`, 0],
  ["deno cold", `deno run -A --no-check ${REPO}/bin/vmm.ts run -v --cold -- echo ready`, 0],
  ["deno snapshot", `deno run -A --no-check ${REPO}/bin/vmm.ts run -v -- echo ready`, 0],
  ["qemu cold", qemu.map(q).join(" "), 1],
  ...(qemuPvh ? [["qemu pvh", qemuPvh.map(q).join(" "), 1] as [string, string, number]] : []),
];

// One run: spawn → first "ready" line on stdout → exit, peak RSS by GNU time.
const script = `
cd ${q(REPO)}
export VMM_SNAPSHOT_CACHE=$(mktemp -d /tmp/bench-run-snapshots.XXXXXX)
one() {
  name=$1 good=$2; shift 2
  rm -f /tmp/b.first /tmp/b.rc
  t0=$(date +%s%N)
  { /usr/bin/time -f %M -o /tmp/b.rss sh -c "$1" </dev/null 2>/tmp/b.err; echo $? >/tmp/b.rc; } |
    { while IFS= read -r l; do case $l in *ready*) date +%s%N >/tmp/b.first; break ;; esac; done; cat >/dev/null; }
  t1=$(date +%s%N)
  first=-1; [ -f /tmp/b.first ] && first=$(( ($(cat /tmp/b.first) - t0) / 1000000 ))
  restore=$(sed -n 's/.*restored the waiting guest from .* in \\([0-9]*\\) ms.*/\\1/p' /tmp/b.err)
  written=$(sed -n 's/.*snapshot of the waiting guest written to .* in \\([0-9]*\\) ms.*/\\1/p' /tmp/b.err)
  rc=$(cat /tmp/b.rc); [ "$rc" = "$good" ] && rc=0
  echo "@@sample $name|first=$first|exit=$(( (t1 - t0) / 1000000 ))|rss=$(tail -n 1 /tmp/b.rss)|restore=$restore|written=$written|rc=$rc"
  [ "$rc" = 0 ] || { echo "@@failed $name (status $(cat /tmp/b.rc)): $(tail -n 3 /tmp/b.err | tr '\n' ' ')"; }
}
${CONTENDERS.map(([n, c, good], i) => `c${i}() { one ${q(n)} ${good} ${q(c)}; }`).join("\n")}
# Warm-up: each once (page cache, runtime caches); the snapshot contenders' first run writes the snapshot.
${CONTENDERS.map((_, i) => `c${i} | sed 's/^@@sample /@@warmup /'`).join("\n")}
r=0
while [ $r -lt ${rounds} ]; do
  i=0
  while [ $i -lt ${CONTENDERS.length} ]; do c$(( (i + r) % ${CONTENDERS.length} )); i=$((i + 1)); done
  r=$((r + 1))
done
rm -rf "$VMM_SNAPSHOT_CACHE"
`;

let output: string;
let where: string;
try {
  if (kind === "hardware") {
    where = "hardware KVM (this host's /dev/kvm)";
    output = execFileSync("sh", ["-c", script], { encoding: "utf8", env: { ...process.env, PATH: `${REPO}/node_modules/.bin:${process.env.PATH}` } });
  } else {
    say(`running in the nested KVM host; ${rounds} rounds of ${CONTENDERS.length} contenders after a warm-up`);
    const r = await runNested(script, { cwd: REPO, timeoutMs: 600_000 + rounds * 600_000, env: { VMM_CACHE: defaultCacheDir() }, kvmRecorder: false });
    output = r.output;
    where = `nested: L1 = QEMU TCG -cpu max (AMD SVM), 2 vCPUs, 4 GiB; real KVM (kvm-amd) inside L1; L1 boot ${(r.ms.boot / 1000).toFixed(1)} s`;
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

type Sample = Record<string, number>;
const samples = new Map<string, Sample[]>(), warm = new Map<string, Sample>();
for (const line of output.split("\n")) {
  const m = /^@@(sample|warmup) (.*)$/.exec(line.trim());
  if (!m) continue;
  const [name, ...kv] = m[2].split("|");
  const s = Object.fromEntries(kv.map((x) => x.split("=")).map(([k, v]) => [k, v === "" ? NaN : Number(v)]));
  if (m[1] === "warmup") warm.set(name, s);
  else if (s.rc === 0) samples.set(name, [...(samples.get(name) ?? []), s]);
}
const failed = output.split("\n").filter((l) => l.startsWith("@@failed"));

const col = (name: string, key: string, scale = 1) => (samples.get(name) ?? []).map((s) => s[key] * scale).filter((v) => Number.isFinite(v) && v >= 0);
const cell = (xs: number[], digits = 0) => {
  if (!xs.length) return "–";
  const s = stats(xs);
  return `${s.med.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`;
};
const med = (xs: number[]) => (xs.length ? stats(xs).med : NaN);
const ratio = (a: number[], b: number[]) => (a.length && b.length ? `${(med(a) / med(b)).toFixed(2)}×` : "–");
const names = CONTENDERS.map(([n]) => n);
const header = ["median (min–max)", ...names];
const rows = [
  ["start → first output, ms", ...names.map((n) => cell(col(n, "first")))],
  ["start → exit, ms", ...names.map((n) => cell(col(n, "exit")))],
  ["peak RSS, MiB", ...names.map((n) => cell(col(n, "rss", 1 / 1024), 1))],
  ["restore alone (vmm -v), ms", ...names.map((n) => (n.endsWith("snapshot") ? cell(col(n, "restore")) : ""))],
  ["first run: snapshot written in, ms", ...names.map((n) => (n.endsWith("snapshot") ? String(warm.get(n)?.written ?? "–") : ""))],
  ["first run: start → exit, ms", ...names.map((n) => (n.endsWith("snapshot") ? String(warm.get(n)?.exit ?? "–") : ""))],
];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
const out = [
  `vmm run benchmark (${new Date().toISOString().slice(0, 16)}Z), ${((Date.now() - started) / 60000).toFixed(1)} min; ${where}`,
  `guest: ${img.vmlinux ?? img.kernel} (vmm) + ${img.initrd}; 1 vCPU, 512 MiB; command: echo ready; ${rounds} rounds, contenders rotating, after one warm-up run each`,
  "",
  line(header),
  line(header.map((_, i) => "-".repeat(widths[i]))),
  ...rows.map(line),
  "",
  `cold / snapshot, start → exit: bun ${ratio(col("bun cold", "exit"), col("bun snapshot", "exit"))}, deno ${ratio(col("deno cold", "exit"), col("deno snapshot", "exit"))}`,
  ...["qemu cold", ...(qemuPvh ? ["qemu pvh"] : [])].map((qn) =>
    `start → first output against ${qn}: bun snapshot ${ratio(col("bun snapshot", "first"), col(qn, "first"))}, deno snapshot ${ratio(col("deno snapshot", "first"), col(qn, "first"))}, ` +
    `bun cold ${ratio(col("bun cold", "first"), col(qn, "first"))}, deno cold ${ratio(col("deno cold", "first"), col(qn, "first"))}`
  ),
  `vmm: ${CONTENDERS[1][1].replace(REPO + "/", "")} (and deno run -A --no-check …; --cold for the cold runs)`,
  `qemu: ${qemu.join(" ").replaceAll(work, "<dir>")}`,
  ...(qemuPvh ? [`qemu pvh: the same with -kernel ${img.vmlinux}`] : []),
  ...failed.map((f) => `FAILED ${f.slice(9)}`),
];
console.log(out.join("\n"));
process.exit(failed.length ? 1 : 0);
