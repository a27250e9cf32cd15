/**
 * A benchmark driver run inside the nested KVM host, for the front ends
 * (bench-boot.ts, bench-blk.ts, bench-fs.ts, bench-net.ts) on a machine
 * whose /dev/kvm cannot boot a stock kernel (test/support/nested.ts says how
 * L1 works).
 *
 * The driver (scripts/bench/*_driver.ts) runs in L1 with `--progress FILE
 * --records FILE` in a directory shared read-write with this host: it appends
 * a line of progress as it goes and a JSON record per sample. This side shows
 * the progress as it arrives and reads the records at the end, so a run cut
 * short still gives the table of what was measured before.
 *
 * Silence in the progress file for longer than `stallMs` means a vmm or a
 * guest in L1 is wedged (L1 itself still beats, or runNested would have
 * said): its QEMU is killed and the partial table printed. An L1 that froze
 * is run again by runNested; the files are emptied first, so no sample counts
 * twice.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { nestedAvailable, runNested } from "../../test/support/nested.ts";
import { defaultCacheDir } from "../../guest/build.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");

/** The shared directory and the two files a driver writes into it. */
export interface DriverFiles {
  dir: string;
  progress: string;
  records: string;
}

export interface NestedDriverOptions {
  /** Prints one line (the front end's prefix included). */
  say: (line: string) => void;
  /** The whole run, L1's boot included. */
  budgetMs: number;
  /** Longest silence of the progress file before the run counts as wedged. */
  stallMs: number;
}

export interface NestedDriverResult<R> {
  /** Every record the driver wrote, parsed. */
  records: R[];
  /** How L1 went, for the table's "where" line: its boot time, or that it had to run again. */
  where: string;
  /** The run ended early (a failure or a stall), and `records` are what came before. */
  partial: boolean;
}

/** Whether the nested host can run here; exits with the reason when it cannot (`kind` is this host's /dev/kvm). */
export function requireNested(kind: string, say: (line: string) => void): void {
  const ok = nestedAvailable();
  if (ok.ok) return;
  say(`/dev/kvm here is ${kind}, and the nested KVM host cannot run: ${ok.why}`);
  process.exit(1);
}

/** A fresh shared directory with the driver's empty progress and records files. */
export function driverFiles(prefix: string): DriverFiles {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const files = { dir, progress: join(dir, "progress.log"), records: join(dir, "records.jsonl") };
  writeFileSync(files.progress, "");
  writeFileSync(files.records, "");
  return files;
}

/**
 * Run `script` (the driver's command line, in the checkout) in L1 with
 * `files.dir` shared, and return its records. Exits with status 1 when the
 * run failed before its first sample; a later failure gives `partial`.
 */
export async function runDriverNested<R extends { type: string }>(
  files: DriverFiles,
  script: string,
  o: NestedDriverOptions,
): Promise<NestedDriverResult<R>> {
  let shown = 0;
  let lastNews = Date.now();
  let stalled = false;
  const tick = setInterval(() => {
    try {
      const text = readFileSync(files.progress, "utf8");
      const lines = text.slice(shown).split("\n").slice(0, -1);
      for (const l of lines) o.say(l);
      shown = text.lastIndexOf("\n") + 1;
      if (lines.length) lastNews = Date.now();
    } catch { /* not yet */ }
    if (shown > 0 && Date.now() - lastNews > o.stallMs && !stalled) {
      stalled = true;
      const pid = nestedQemuPid();
      o.say(`no news from L1 for ${o.stallMs / 1000} s: ending its QEMU (pid ${pid ?? "?"})`);
      if (pid) process.kill(pid, "SIGKILL");
    }
  }, 2000);
  o.say(`running in the nested KVM host (L1 boots first, ~10 s); limit ${Math.round(o.budgetMs / 60000)} min`);
  let problem = "";
  let where = "";
  try {
    const r = await runNested(script, {
      cwd: REPO,
      timeoutMs: o.budgetMs,
      env: { VMM_CACHE: defaultCacheDir() },
      shareRw: [files.dir],
      kvmRecorder: false, // tracing every exit would tax each contender by its exit count
      onRetry: () => {
        // A frozen L1's samples are dropped: the run starts over.
        writeFileSync(files.progress, "");
        writeFileSync(files.records, "");
        shown = 0;
        lastNews = Date.now();
      },
    });
    if (r.code !== 0) problem = `the driver failed in L1 (status ${r.code}); its output ends:\n${r.output.slice(-4000)}`;
    where = `L1 boot ${(r.ms.boot / 1000).toFixed(1)} s${r.retried ? `; run again in a fresh L1 after: ${r.retried}` : ""}`;
  } catch (e) {
    problem = (stalled ? "L1 stalled and was ended. " : "") + (e as Error).message.slice(-3000);
  } finally {
    clearInterval(tick);
  }
  const records = readFileSync(files.records, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as R);
  rmSync(files.dir, { recursive: true, force: true });
  if (!problem) return { records, where, partial: false };
  o.say(problem);
  if (!records.some((r) => r.type === "sample")) process.exit(1);
  o.say("the table below holds only what was measured before that");
  return { records, where, partial: true };
}

/** The pid of the nested host's QEMU: this process's qemu-system-x86_64 child. */
function nestedQemuPid(): number | undefined {
  const me = process.pid;
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === me && comm.startsWith("qemu-system")) return Number(d);
    } catch { /* gone */ }
  }
  return undefined;
}
