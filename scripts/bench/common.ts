/**
 * What every benchmark shares: the contenders' rotation, medians, a
 * process's CPU times, the machine a run ran on, and the indentation of a
 * failed run's output. The drivers (boot, blk, fs, net) and the front ends
 * (scripts/bench-*.ts) take these from here; scripts/bench/nested.ts runs a
 * driver in the nested host.
 */
import { execFileSync } from "node:child_process";
import { appendFileSync, readFileSync, writeFileSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";

/** The repository, two levels above this file. */
const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");

/** A contender's measured runs and failures, as a driver reports them. */
export interface Tally<S> {
  runs: S[];
  failures: string[];
}

/** What one contender's run reports to the driver's log and records. */
export interface Rotation<C, S> {
  warmup: number;
  runs: number;
  log: (line: string) => void;
  /** Runs contender `c` once; `say` prefixes its lines with the run and the contender. */
  run: (c: C, say: (line: string) => void) => Promise<S>;
  /** One line for the log about a finished run. */
  describe: (s: S, c: C, measured: boolean) => string;
  /** A measured sample or a failure, for the records. */
  onSample: (c: C, s: S) => void;
  onFailure: (c: C, msg: string) => void;
}

/**
 * Runs `warmup` unmeasured rounds, then `runs` measured ones. Each round runs
 * every contender once, the first in the round moving along by one each time
 * (so none always goes first into a cold or a warm machine). A contender that
 * fails its warm-up, or twice in all, is dropped from the remaining rounds.
 * Returns the indices of the dropped ones.
 */
export async function rotateContenders<C extends { name: string }, S>(
  list: readonly C[],
  results: readonly Tally<S>[],
  o: Rotation<C, S>,
): Promise<Set<number>> {
  const dead = new Set<number>();
  for (let i = 0; i < o.warmup + o.runs; i++) {
    const measured = i >= o.warmup;
    const label = measured ? `run ${i - o.warmup + 1}/${o.runs}` : `warm-up ${i + 1}/${o.warmup}`;
    for (let k = 0; k < list.length; k++) {
      const idx = (i + k) % list.length;
      if (dead.has(idx)) continue;
      const c = list[idx];
      try {
        const s = await o.run(c, (l) => o.log(`${label} ${c.name}: ${l}`));
        o.log(`${label} ${c.name}: ${o.describe(s, c, measured)}`);
        if (measured) {
          results[idx].runs.push(s);
          o.onSample(c, s);
        }
      } catch (e) {
        const msg = (e as Error).message;
        o.log(`${label} ${c.name}: FAILED: ${msg}`);
        results[idx].failures.push(`${label}: ${msg}`);
        o.onFailure(c, `${label}: ${msg}`);
        if (!measured || results[idx].failures.length >= 2) {
          dead.add(idx);
          o.log(`${c.name}: dropped from the remaining runs`);
        }
      }
    }
  }
  return dead;
}

/** The median of `xs`; NaN when there are none. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** Median, least, most and count of `xs`. */
export function stats(xs: readonly number[]): { med: number; min: number; max: number; n: number } {
  return { med: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

/** utime, stime and guest_time of a process (all its threads), in clock ticks (proc(5): fields 14, 15, 43). */
export function cpuTicks(pid: number): { utime: number; stime: number; gtime: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // f[0] is field 3
  return { utime: Number(f[11]), stime: Number(f[12]), gtime: Number(f[40]) };
}

/** Clock ticks per second, the unit of cpuTicks (`getconf CLK_TCK`). */
export function clockTicksPerSecond(): number {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
  } catch {
    return 100; // Linux's USER_HZ is 100 everywhere that matters
  }
}

/** A text file's contents, trimmed; "?" where it cannot be read (a /proc or /sys file another kernel lacks). */
export function readText(path: string): string {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return "?";
  }
}

/** The machine a run ran on, as every benchmark reports it: its kernel, its CPUs, and whether it is the nested host. */
export interface HostBasics {
  kernel: string;
  cpus: number;
  nested: boolean;
}

/** This machine's HostBasics (inside the nested host, L1's). */
export function hostBasics(): HostBasics {
  const cpus = (readText("/proc/cpuinfo").match(/^processor\s*:/gm) ?? []).length;
  return { kernel: readText("/proc/sys/kernel/osrelease"), cpus, nested: !!process.env.VMM_NESTED };
}

/** A failed command's output, indented under the line that names it. */
export function indent(s: string): string {
  return s.replace(/\r/g, "").split("\n").map((l) => "  | " + l).join("\n");
}

/**
 * Where a driver's output goes, from its `--records`, `--progress` and
 * `--json` options: each record a JSON line in the records file, each
 * progress line printed and appended to the progress file (both read by
 * scripts/bench/nested.ts as they grow), and the whole result in the JSON
 * file, or printed after `@@bench-json`.
 */
export function driverOutput(o: { records?: string; progress?: string; json?: string }): {
  onRecord: (r: unknown) => void;
  log: (line: string) => void;
  result: (r: unknown) => void;
} {
  return {
    onRecord: (r) => {
      if (o.records) appendFileSync(o.records, JSON.stringify(r) + "\n");
    },
    log: (l) => {
      console.log(l);
      if (o.progress) appendFileSync(o.progress, l + "\n");
    },
    result: (r) => {
      const json = JSON.stringify(r);
      if (o.json) writeFileSync(o.json, json);
      else console.log(`@@bench-json ${json}`);
    },
  };
}

/** What every guest-booting bench (boot, blk, net) is given; each driver's options add their own. */
export interface GuestBenchOptions<R> {
  kernel: string;
  /** The default guest's initramfs (its init runs /vmm/run.sh). */
  initrd: string;
  /** Kernel command line given to QEMU; vmm is left on its default, which must be the same. */
  cmdline: string;
  /** Measured runs per contender. */
  runs: number;
  /** Unmeasured runs per contender first (page cache, Deno's and Bun's caches). */
  warmup?: number;
  /** Per-run limit, ms. */
  timeoutMs?: number;
  /** Repository root (cwd of the vmm contenders). */
  repo: string;
  /** Progress lines. */
  log?: (line: string) => void;
  /** Each result as it comes (so a run cut short still leaves its numbers). */
  onRecord?: (r: R) => void;
}

/**
 * The command-line options every guest-booting driver (boot, blk, net)
 * takes, for its `parseArgs` beside its own: the guest, the warm-up, and the
 * sinks `driverOutput` writes. `runs` and `timeout-ms` differ in their
 * defaults, so each driver names them itself.
 */
export const GUEST_DRIVER_OPTIONS = {
  kernel: { type: "string" },
  initrd: { type: "string" },
  cmdline: { type: "string" },
  warmup: { type: "string", default: "1" },
  json: { type: "string" },
  progress: { type: "string" },
  records: { type: "string" },
} as const;

/**
 * What every guest-booting driver passes its bench from its parsed
 * options, and its outputs (`driverOutput`). Without --kernel, --initrd or
 * --cmdline it prints `usage` and exits with status 2.
 */
export function guestDriverArgs(
  values: { kernel?: string; initrd?: string; cmdline?: string; runs?: string; warmup?: string; "timeout-ms"?: string; json?: string; progress?: string; records?: string },
  usage: string,
): {
  kernel: string; initrd: string; cmdline: string; runs: number; warmup: number; timeoutMs: number; repo: string;
  onRecord: (r: unknown) => void; log: (line: string) => void; result: (r: unknown) => void;
} {
  if (!values.kernel || !values.initrd || values.cmdline === undefined) {
    console.error(usage);
    process.exit(2);
  }
  const { onRecord, log, result } = driverOutput(values);
  return {
    kernel: values.kernel,
    initrd: values.initrd,
    cmdline: values.cmdline,
    runs: Number(values.runs),
    warmup: Number(values.warmup),
    timeoutMs: Number(values["timeout-ms"]),
    repo: REPO,
    onRecord,
    log,
    result,
  };
}

/**
 * A markdown table, its cells padded so that it reads as text too: the
 * first column left-aligned, the others right-aligned. A pipe inside a cell
 * (a shell pipeline) is escaped, as GitHub's tables want.
 */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const esc = (r: readonly string[]) => r.map((c) => c.replaceAll("|", "\\|"));
  const body = rows.map(esc);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (r: readonly string[]) => "| " + r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ") + " |";
  const rule = "|" + widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : "-".repeat(w + 1) + ":")).join("|") + "|";
  return [line(esc(header)), rule, ...body.map(line)];
}

/**
 * A front end's last lines: PARTIAL when L1 cut the run short, each failed
 * run of each contender; then the report is printed, the JSON written, and
 * the process exits 1 if anything failed (or `failed` says so), else 0.
 */
export function finishReport(
  out: string[],
  o: { partial: boolean; contenders: readonly { name: string; failures: readonly string[] }[]; json?: string; payload: unknown; failed?: boolean },
): never {
  let failed = o.partial || !!o.failed;
  if (o.partial) out.push("PARTIAL: L1 failed or stalled before the end (see above); these are the runs finished before that.");
  for (const c of o.contenders) {
    for (const f of c.failures) {
      failed = true;
      out.push(`FAILED ${c.name} ${f}`);
    }
  }
  console.log(out.join("\n"));
  if (o.json) writeFileSync(o.json, JSON.stringify(o.payload, null, 2));
  process.exit(failed ? 1 : 0);
}
