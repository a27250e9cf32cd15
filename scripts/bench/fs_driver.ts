/**
 * The measuring half of `scripts/bench-fs.ts`: the same commands run natively
 * on the host and in the guest of `vmm run -- CMD` (the host's root read-only
 * over virtio-fs, the checkout, as the working directory, read-write), run by
 * run in turn, on real KVM.
 *
 * It runs where /dev/kvm is real: directly on a hardware-KVM host, or inside
 * the nested L1 host of `test/support/nested.ts` (bench-fs.ts decides), where
 * "the host" is L1. It works on Bun and on Deno (node: built-ins only); vmm
 * itself runs on Bun (`bun bin/vmm.ts`).
 *
 * One run is, in this order:
 *   workload  the script of `workloadScript()` under bash, natively, then as
 *             `vmm run -- bash -c SCRIPT`: metadata (`find | wc -l` and a
 *             stat of every file, over node_modules and over a tree of 10,000
 *             small files), bulk (`cat` of a large file of random bytes), and
 *             real work (`git status`, `tar c` of the checkout). Each step is
 *             timed by bash itself ($EPOCHREALTIME, µs) around the command, so
 *             the VM's boot is outside it; the script runs its steps twice in
 *             a row (pass 1 with the guest's page cache and dentries cold,
 *             pass 2 in the same guest after pass 1).
 *   true      wall time from spawn() to exit of `true`, `vmm run -- true` and
 *             `vmm run --busybox -- true` (the last two in rotating order).
 *   stdout    `head -c N /dev/zero` to a file: natively, and through `vmm run`
 *             (the command's stdout is a virtio-serial port, vmm writes it to
 *             the file), timed by bash in the guest around `head`.
 *   serial    `yes LINE | head -c N` in the busybox guest (`vmm run
 *             --busybox`): the command's output goes through the emulated
 *             16550 UART to vmm's stdout (a file). Timed by the guest from
 *             /proc/uptime (10 ms) around the command.
 *
 * Before the runs, one unmeasured native pass of the workload reads every
 * fixture once (in L1 the root is 9p with cache=loose: after that read, it is
 * in L1's page cache), and `vmm --version` loads Bun and vmm's modules once.
 * Before each run, fincore(1) tells how much of the large file is in the
 * host's page cache.
 */
import { execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { driverOutput, hostBasics, indent, readText } from "./common.ts";
import { shellQuote as q } from "../../guest/command.ts";
import { exitOf } from "../../test/support/vmm_cli.ts";

/** Files in the synthetic metadata tree: TREE_DIRS directories of TREE_FILES_PER_DIR files. */
export const TREE_DIRS = 100;
export const TREE_FILES_PER_DIR = 100;

export interface FsBenchOptions {
  /** Repository root: the working directory of every command, and where bin/vmm.ts is. */
  repo: string;
  /** The large file read by `cat`. */
  big: string;
  /** The synthetic tree of small files. */
  tree: string;
  runs: number;
  /** MiB written to stdout through virtio-serial (and natively). */
  stdoutMiB: number;
  /** KiB written through the serial console. */
  serialKiB: number;
  /** Per-command limit, ms. */
  timeoutMs: number;
  /** Files read once before the runs (the guest's kernel and initramfs). */
  warm?: string[];
  log?: (line: string) => void;
  onRecord?: (r: FsRecord) => void;
}

export type Side = "native" | "vm" | "busybox";

/** One timed step. */
export interface FsSample {
  run: number;
  side: Side;
  /** Step name: a workload step, `true`, `stdout` or `serial`. */
  metric: string;
  /** 1 or 2 for workload steps (the pass within one script), else 1. */
  pass: number;
  /** Elapsed microseconds. */
  us: number;
  /** Bytes moved, where the step moves a known amount. */
  bytes?: number;
  /** What the step printed (an entry count, tar's byte count), trimmed. */
  out?: string;
}

export interface FsHost {
  kernel: string;
  cpus: number;
  cpuModel: string;
  memMiB: number;
  nested: boolean;
  /** Filesystem type (stat -f) of the checkout and of the large file. */
  repoFs: string;
  bigFs: string;
  bun: string;
}

export type FsRecord =
  | { type: "host"; host: FsHost; bigBytes: number; treeEntries: number; stdoutMiB: number; serialKiB: number }
  | { type: "sample"; sample: FsSample }
  | { type: "cache"; run: number; residentBytes: number; sizeBytes: number }
  | { type: "failure"; run: number; what: string; msg: string };

export interface FsResult {
  host?: FsHost;
  bigBytes: number;
  treeEntries: number;
  stdoutMiB: number;
  serialKiB: number;
  samples: FsSample[];
  cache: { run: number; residentBytes: number; sizeBytes: number }[];
  failures: { run: number; what: string; msg: string }[];
}

/** The results again from the records a driver emitted (in L1, through a shared file). */
export function fromRecords(records: FsRecord[]): FsResult {
  const r: FsResult = { bigBytes: 0, treeEntries: 0, stdoutMiB: 0, serialKiB: 0, samples: [], cache: [], failures: [] };
  for (const x of records) {
    if (x.type === "host") Object.assign(r, { host: x.host, bigBytes: x.bigBytes, treeEntries: x.treeEntries, stdoutMiB: x.stdoutMiB, serialKiB: x.serialKiB });
    else if (x.type === "sample") r.samples.push(x.sample);
    else if (x.type === "cache") r.cache.push({ run: x.run, residentBytes: x.residentBytes, sizeBytes: x.sizeBytes });
    else r.failures.push({ run: x.run, what: x.what, msg: x.msg });
  }
  return r;
}

/** The workload steps: name, what they do (for the table), and the bash command. */
export function workloadSteps(big: string, tree: string): { name: string; label: string; cmd: string }[] {
  return [
    { name: "nm_find", label: "find node_modules | wc -l", cmd: "find node_modules | wc -l" },
    { name: "nm_stat", label: "find node_modules -type f -printf '%s\\n' (stat each file)", cmd: "find node_modules -type f -printf '%s\\n' | wc -l" },
    { name: "tree_find", label: "find TREE | wc -l", cmd: `find ${q(tree)} | wc -l` },
    { name: "tree_stat", label: "find TREE -type f -printf '%s\\n' (stat each file)", cmd: `find ${q(tree)} -type f -printf '%s\\n' | wc -l` },
    { name: "big_cat", label: "cat BIG >/dev/null", cmd: `cat ${q(big)} >/dev/null` },
    { name: "git_status", label: "git status >/dev/null", cmd: "git status >/dev/null" },
    // tar's output is piped: GNU tar writing to /dev/null itself skips reading the files.
    { name: "tar", label: "tar c --exclude=./node_modules --exclude=./dist . | wc -c", cmd: "tar c --exclude=./node_modules --exclude=./dist . | wc -c" },
  ];
}

/**
 * The workload as one bash script: each step twice (pass 1, pass 2), each
 * printing `@@t NAME PASS MICROSECONDS STATUS OUTPUT`.
 */
export function workloadScript(repo: string, big: string, tree: string): string {
  const steps = workloadSteps(big, tree);
  return [
    "set -u -o pipefail",
    "export LC_ALL=C",
    `cd ${q(repo)} || exit 125`,
    // A step: its command's output captured (a subshell, alike in both places), timed by bash.
    String.raw`step() { local a b out rc; a=${"$"}{EPOCHREALTIME//[.,]/}; out=$(eval "$2"); rc=$?; b=${"$"}{EPOCHREALTIME//[.,]/}; echo "@@t $1 $pass $((b - a)) $rc ${"$"}{out//$'\n'/ }"; }`,
    "for pass in 1 2; do",
    ...steps.map((s) => `  step ${s.name} ${q(s.cmd)}`),
    "done",
  ].join("\n");
}

/** `head -c N /dev/zero` to stdout, timed by bash, `@@t stdout 1 MICROSECONDS 0` on stderr. */
export function stdoutScript(mib: number): string {
  return `a=\${EPOCHREALTIME//[.,]/}; head -c ${mib}M /dev/zero; b=\${EPOCHREALTIME//[.,]/}; echo "@@t stdout 1 $((b - a)) 0" >&2`;
}

/** 64-byte lines (with their LF) to `kib` KiB on the busybox guest's console, timed from /proc/uptime. */
export function serialScript(kib: number): string {
  const line = "0123456789abcdef".repeat(4).slice(0, 63);
  return `read a x </proc/uptime; yes ${line} | head -c ${kib * 1024}; read b x </proc/uptime; echo; echo "@@serial $a $b"`;
}

/** Runs the whole benchmark. */
export async function runFsBench(o: FsBenchOptions): Promise<FsResult> {
  const log = o.log ?? (() => {});
  const records: FsRecord[] = [];
  const emit = (r: FsRecord) => {
    records.push(r);
    o.onRecord?.(r);
  };
  for (const f of [o.big, o.tree, join(o.repo, "node_modules")]) if (!existsSync(f)) throw new Error(`No such file: ${f}`);
  const bigBytes = statSync(o.big).size;
  const treeEntries = 1 + TREE_DIRS * (1 + TREE_FILES_PER_DIR);
  emit({ type: "host", host: hostInfo(o.repo, o.big), bigBytes, treeEntries, stdoutMiB: o.stdoutMiB, serialKiB: o.serialKiB });

  const vmm = ["bun", join(o.repo, "bin/vmm.ts")];
  const script = workloadScript(o.repo, o.big, o.tree);
  const tmp = mkdtempSync(join(tmpdir(), "vmm-bench-fs-"));
  const outFile = join(tmp, "stdout.bin");
  const run1 = (argv: string[], stdoutFile?: string) => runProc(argv, { cwd: o.repo, timeoutMs: o.timeoutMs, stdoutFile });
  try {
    log("warm-up: one native pass of the workload, vmm --version, the guest's kernel and initramfs");
    const t0 = performance.now();
    await run1(["bash", "-c", script]);
    await run1([...vmm, "--version"]);
    for (const f of o.warm ?? []) await run1(["cat", f], "/dev/null");
    log(`warm-up done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    for (let run = 1; run <= o.runs; run++) {
      const label = `run ${run}/${o.runs}`;
      const attempt = async (what: string, fn: () => Promise<void>) => {
        try {
          await fn();
        } catch (e) {
          const msg = (e as Error).message;
          log(`${label} ${what}: FAILED: ${msg}`);
          emit({ type: "failure", run, what, msg });
        }
      };
      const res = residency(o.big);
      if (res) {
        emit({ type: "cache", run, ...res });
        log(`${label}: ${(100 * res.residentBytes / res.sizeBytes).toFixed(0)}% of ${o.big} in the host's page cache`);
      }

      // The workload: natively, then in the guest.
      for (const side of ["native", "vm"] as const) {
        await attempt(`workload ${side}`, async () => {
          const argv = side === "native" ? ["bash", "-c", script] : [...vmm, "run", "--", "bash", "-c", script];
          const r = await run1(argv);
          if (r.code !== 0) throw new Error(`status ${r.code}${tail(r)}`);
          const steps = parseSteps(r.stdout);
          if (steps.length === 0) throw new Error(`no timings printed${tail(r)}`);
          for (const s of steps) {
            if (s.rc !== 0) throw new Error(`step ${s.name} (pass ${s.pass}) exited with ${s.rc}${tail(r)}`);
            const bytes = s.name === "big_cat" ? bigBytes : s.name === "tar" ? Number(s.out) : undefined;
            emit({ type: "sample", sample: { run, side, metric: s.name, pass: s.pass, us: s.us, ...(bytes !== undefined ? { bytes } : {}), ...(s.out ? { out: s.out } : {}) } });
          }
          const short = steps.filter((s) => s.pass === 1).map((s) => `${s.name} ${(s.us / 1000).toFixed(0)}`).join(", ");
          log(`${label} workload ${side}: ${(r.us / 1e6).toFixed(1)} s in all; pass 1 ms: ${short}`);
        });
      }

      // `true`: natively, then the two guests in turn.
      await attempt("true native", async () => {
        const r = await run1(["true"]);
        if (r.code !== 0) throw new Error(`status ${r.code}`);
        emit({ type: "sample", sample: { run, side: "native", metric: "true", pass: 1, us: r.us } });
      });
      const guests: [Side, string[]][] = [["vm", ["run", "--", "true"]], ["busybox", ["run", "--busybox", "--", "true"]]];
      if (run % 2 === 0) guests.reverse();
      for (const [side, args] of guests) {
        await attempt(`true ${side}`, async () => {
          const r = await run1([...vmm, ...args]);
          if (r.code !== 0) throw new Error(`status ${r.code}${tail(r)}`);
          emit({ type: "sample", sample: { run, side, metric: "true", pass: 1, us: r.us } });
          log(`${label} vmm ${args.join(" ")}: ${(r.us / 1000).toFixed(0)} ms`);
        });
      }

      // stdout: natively and through virtio-serial, to a file.
      const bytes = o.stdoutMiB * 1024 * 1024;
      for (const side of ["native", "vm"] as const) {
        await attempt(`stdout ${side}`, async () => {
          const inner = ["bash", "-c", stdoutScript(o.stdoutMiB)];
          const r = await run1(side === "native" ? inner : [...vmm, "run", "--", ...inner], outFile);
          const got = statSync(outFile).size;
          rmSync(outFile, { force: true });
          if (r.code !== 0) throw new Error(`status ${r.code}${tail(r)}`);
          if (got !== bytes) throw new Error(`${got} bytes arrived in the file, not ${bytes}${tail(r)}`);
          const s = parseSteps(r.stderr).find((x) => x.name === "stdout");
          if (!s) throw new Error(`no timing printed${tail(r)}`);
          emit({ type: "sample", sample: { run, side, metric: "stdout", pass: 1, us: s.us, bytes } });
          log(`${label} stdout ${side}: ${o.stdoutMiB} MiB in ${(s.us / 1000).toFixed(0)} ms = ${(bytes / 2 ** 20 / (s.us / 1e6)).toFixed(1)} MiB/s`);
        });
      }

      // serial: the busybox guest's console.
      await attempt("serial busybox", async () => {
        const r = await run1([...vmm, "run", "--busybox", "--", "sh", "-c", serialScript(o.serialKiB)], outFile);
        const text = readFileSync(outFile, "latin1");
        rmSync(outFile, { force: true });
        if (r.code !== 0) throw new Error(`status ${r.code}${tail(r)}`);
        const m = /@@serial ([\d.]+) ([\d.]+)/.exec(text);
        if (!m) throw new Error(`no timing printed; stdout ends ${JSON.stringify(text.slice(-300))}${tail(r)}`);
        const sBytes = o.serialKiB * 1024;
        const us = (Number(m[2]) - Number(m[1])) * 1e6;
        emit({ type: "sample", sample: { run, side: "busybox", metric: "serial", pass: 1, us, bytes: sBytes } });
        log(`${label} serial: ${o.serialKiB} KiB in ${(us / 1000).toFixed(0)} ms = ${(sBytes / 1024 / (us / 1e6)).toFixed(1)} KiB/s`);
      });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return fromRecords(records);
}

interface Step {
  name: string;
  pass: number;
  us: number;
  rc: number;
  out: string;
}

/** The `@@t NAME PASS US RC OUT` lines of a script's output. */
function parseSteps(text: string): Step[] {
  const out: Step[] = [];
  for (const m of text.matchAll(/^@@t (\S+) (\d+) (\d+) (\d+) ?(.*)$/gm)) {
    out.push({ name: m[1], pass: Number(m[2]), us: Number(m[3]), rc: Number(m[4]), out: m[5].trim() });
  }
  return out;
}

interface ProcResult {
  code: number | null;
  /** Wall time from just before spawn() to the exit, µs. */
  us: number;
  stdout: string;
  stderr: string;
}

/** Runs argv to its end (killed with its process group after timeoutMs). stdout to a file when given. */
async function runProc(argv: string[], o: { cwd: string; timeoutMs: number; stdoutFile?: string }): Promise<ProcResult> {
  const outFd = o.stdoutFile ? openSync(o.stdoutFile, "w") : undefined;
  try {
    const t0 = performance.now();
    const child = spawn(argv[0], argv.slice(1), {
      cwd: o.cwd,
      stdio: ["ignore", outFd ?? "pipe", "pipe"],
      detached: true, // own process group: a straggler is killed with all it started
    });
    let stdout = "";
    let stderr = "";
    const dec = new TextDecoder();
    child.stdout?.on("data", (b: Uint8Array) => {
      stdout += dec.decode(b, { stream: true });
      if (stdout.length > 1 << 20) stdout = stdout.slice(-(1 << 19));
    });
    child.stderr!.on("data", (b: Uint8Array) => {
      stderr = (stderr + new TextDecoder().decode(b)).slice(-65536);
    });
    const closed = new Promise<void>((r) => child.on("close", () => r()));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch { /* gone */ }
    }, o.timeoutMs);
    const failed = new Promise<never>((_, reject) => child.on("error", (e) => reject(new Error(`${argv[0]}: ${e.message}`))));
    const code = await Promise.race([exitOf(child), failed]);
    const us = (performance.now() - t0) * 1000;
    clearTimeout(timer);
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
    if (timedOut) throw new Error(`timed out after ${o.timeoutMs} ms: ${argv.slice(0, 6).join(" ")}…\n${indent(stderr.slice(-1500))}`);
    return { code, us, stdout, stderr };
  } finally {
    if (outFd !== undefined) closeSync(outFd);
  }
}

function tail(r: ProcResult): string {
  return `\n  --- stderr tail ---\n${indent(r.stderr.slice(-1500))}\n  --- stdout tail ---\n${indent(r.stdout.slice(-800))}`;
}

/** Bytes of `file` in the page cache (fincore), or undefined without fincore. */
function residency(file: string): { residentBytes: number; sizeBytes: number } | undefined {
  try {
    const out = execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES,SIZE", file], { encoding: "utf8" }).trim().split(/\s+/);
    return { residentBytes: Number(out[0]), sizeBytes: Number(out[1]) };
  } catch {
    return undefined;
  }
}

export function hostInfo(repo: string, big: string): FsHost {
  const sh = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    } catch {
      return "?";
    }
  };
  return {
    ...hostBasics(),
    cpuModel: /^model name\s*:\s*(.*)$/m.exec(readText("/proc/cpuinfo"))?.[1] ?? "?",
    memMiB: Math.round(Number(/^MemTotal:\s+(\d+)/m.exec(readText("/proc/meminfo"))?.[1] ?? 0) / 1024),
    repoFs: sh("stat", ["-f", "-c", "%T", repo]),
    bigFs: sh("stat", ["-f", "-c", "%T", big]),
    bun: sh("bun", ["--version"]),
  };
}

/** CLI: `bun scripts/bench/fs_driver.ts --big FILE --tree DIR [--runs N] [--records FILE] [--progress FILE]`. */
if (import.meta.main) {
  const { parseArgs } = await import("node:util");
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      big: { type: "string" },
      tree: { type: "string" },
      runs: { type: "string", default: "3" },
      "stdout-mib": { type: "string", default: "64" },
      "serial-kib": { type: "string", default: "64" },
      "timeout-ms": { type: "string", default: "300000" },
      warm: { type: "string", multiple: true },
      json: { type: "string" },
      progress: { type: "string" },
      records: { type: "string" },
    },
  });
  if (!values.big || !values.tree) {
    console.error("usage: fs_driver.ts --big FILE --tree DIR [--runs N] [--stdout-mib N] [--serial-kib N] [--warm FILE]... [--json FILE] [--progress FILE] [--records FILE]");
    process.exit(2);
  }
  const output = driverOutput(values);
  const repo = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
  const r = await runFsBench({
    repo,
    big: values.big,
    tree: values.tree,
    runs: Number(values.runs),
    stdoutMiB: Number(values["stdout-mib"]),
    serialKiB: Number(values["serial-kib"]),
    timeoutMs: Number(values["timeout-ms"]),
    warm: values.warm ?? [],
    onRecord: output.onRecord,
    log: output.log,
  });
  output.result(r);
}
