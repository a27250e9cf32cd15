/**
 * The measuring half of `scripts/bench-boot.ts`: boots the same kernel and
 * initramfs under each contender (vmm on Bun, vmm on Deno, QEMU microvm) on
 * real KVM, run by run in turn, and returns the raw numbers.
 *
 * It runs where /dev/kvm is real: directly on a hardware-KVM host, or inside
 * the nested L1 host of `test/support/nested.ts` (bench-boot.ts decides).
 * It works on Bun and on Deno (node:child_process, node:fs only).
 *
 * One run of one contender:
 *   - t0 = performance.now() just before spawn(); the contender runs under
 *     `/usr/bin/time -f %M -o FILE` in its own process group, stdin/stdout/
 *     stderr are pipes.
 *   - ready: the first stdout chunk that completes the line `vmm-guest: ready`
 *     (printed by the guest init on the serial console). At that moment the
 *     driver writes `poweroff -f\n` to stdin, then reads /proc/PID/smaps and
 *     /proc/PID/status of the contender (the child of time).
 *   - exit: the `exit` event of the time process, which exits right after
 *     reaping the contender.
 *   - peak RSS: time's %M, i.e. ru_maxrss of the contender from wait4(): the
 *     kernel's high-water mark of RssAnon + RssFile + RssShmem. It includes
 *     guest RAM that the guest touched, for QEMU (private anonymous memory,
 *     THP-backed where madvise(MADV_HUGEPAGE) gets huge pages) for QEMU and
 *     vmm (ffi/libc.ts mmapGuestRam) alike.
 *   - guest RAM at ready: Rss of the guest RAM mapping in smaps (the vma of
 *     exactly the guest's RAM size; the most resident one if several),
 *     and VmRSS minus that: what the monitor itself holds.
 *   - idle (with `idleMs`): the guest is left at its shell IDLE_SETTLE_MS
 *     after the marker, then the contender's utime + stime over `idleMs`
 *     (/proc/PID/stat, every thread, the vCPUs' guest time included), as a
 *     percentage of one core; `poweroff -f` is written after that.
 *
 * @example
 * ```ts
 * import { runBench } from "./boot_driver.ts";
 * const r = await runBench({ kernel: "/path/vmlinuz", initrd: "/path/initrd.cpio", cmdline: "console=ttyS0", runs: 5, repo: "/work/main" });
 * console.log(r.contenders[0].runs);
 * ```
 */
import { execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { clockTicksPerSecond, cpuTicks, GUEST_DRIVER_OPTIONS, type GuestBenchOptions, guestDriverArgs, hostBasics, indent, readText, rotateContenders } from "./common.ts";

export const MARKER = "vmm-guest: ready";
export const MEM_MIB = 512;
export const CPUS = 1;

export interface BenchOptions extends GuestBenchOptions<BenchRecord> {
  /** Also time `vmm --version` on each runtime (start-up and module loading alone). */
  startupRuns?: number;
  /** Also measure host CPU over this long with the guest idle at its shell, ms (0: not). */
  idleMs?: number;
}

/** One result of a benchmark, as streamed by `onRecord`; `fromRecords` rebuilds a BenchResult. */
export type BenchRecord =
  | { type: "host"; host: BenchResult["host"]; contenders: { name: string; argv: string[] }[] }
  | { type: "sample"; name: string; sample: RunSample }
  | { type: "failure"; name: string; msg: string }
  | { type: "startup"; name: string; ms: number };

/** A BenchResult from streamed records (all of them, or those a broken run left). */
export function fromRecords(records: BenchRecord[]): BenchResult {
  const head = records.find((r) => r.type === "host");
  const host = head?.type === "host" ? head.host : { kernel: "?", cpus: 0, thp: "?", nested: false };
  const list = head?.type === "host" ? head.contenders : [];
  const res: ContenderResult[] = list.map((c) => ({ name: c.name, argv: c.argv, runs: [], failures: [] }));
  const by = new Map(res.map((c) => [c.name, c]));
  for (const r of records) {
    const c = r.type === "host" ? undefined : by.get(r.name);
    if (!c) continue;
    if (r.type === "sample") c.runs.push(r.sample);
    else if (r.type === "failure") c.failures.push(r.msg);
    else if (r.type === "startup") (c.startupMs ??= []).push(r.ms);
  }
  return { host, contenders: res };
}

export interface Contender {
  name: string;
  argv: string[];
}

export interface RunSample {
  /** ms from spawn to the marker line on stdout. */
  readyMs: number;
  /** ms from spawn to process exit (absent when poweroff was ignored, or after an idle measurement). */
  exitMs?: number;
  /** ms from writing `poweroff -f` to process exit. */
  poweroffMs?: number;
  /** The contender reached the marker but did not take `poweroff -f` (stopped with SIGTERM). */
  poweroffIgnored?: boolean;
  /** What went wrong, with the stderr tail, when poweroffIgnored. */
  note?: string;
  /** Peak RSS, KiB (ru_maxrss via /usr/bin/time %M). */
  peakKiB: number;
  /** VmRSS at ready, KiB. */
  rssReadyKiB?: number;
  /** Resident part of the guest RAM mapping at ready, KiB. */
  guestKiB?: number;
  /** AnonHugePages of the guest RAM mapping at ready, KiB. */
  guestHugeKiB?: number;
  /** vmm -v: "guest init ready after N ms" (from Machine.create to the init's port write). */
  vmmInitReadyMs?: number;
  /** vmm -v: "VM built after N ms" (from Machine.create to the guest in RAM, before any Worker runs it). */
  vmmBuiltMs?: number;
  /** `poweroff -f` had to be written again (the first one was lost). */
  resent?: number;
  /** Host CPU (utime + stime, all threads) while the guest sat idle, % of one core. */
  idlePct?: number;
}

export interface ContenderResult {
  name: string;
  argv: string[];
  runs: RunSample[];
  failures: string[];
  /** `--version` start-up times, ms (vmm contenders only). */
  startupMs?: number[];
}

export interface BenchResult {
  host: { kernel: string; cpus: number; thp: string; nested: boolean };
  contenders: ContenderResult[];
}

/** The three contenders' command lines. */
export function contenders(o: { kernel: string; initrd: string; cmdline: string }): Contender[] {
  const vmmArgs = ["boot", "-v", "--kernel", o.kernel, "--initrd", o.initrd, "--cpus", String(CPUS), "--memory", `${MEM_MIB}M`];
  return [
    { name: "vmm-bun", argv: ["bun", "bin/vmm.ts", ...vmmArgs] },
    { name: "vmm-deno", argv: ["deno", "run", "-A", "--no-check", "bin/vmm.ts", ...vmmArgs] },
    { name: "qemu", argv: qemuArgv(o) },
  ];
}

/**
 * QEMU's microvm as asked: everything at its defaults except what a serial
 * console boot needs. In QEMU 7.2 microvm defaults to acpi=auto (on: RSDP,
 * hardware-reduced FADT, DSDT with COM1 and a GED whose sleep registers make
 * `poweroff -f` end QEMU) and isa-serial=on; -nodefaults drops the default
 * chardevs, so `-serial stdio` connects COM1 to the pipes. Firmware is the
 * default qboot (bios-microvm.bin), which boots the bzImage.
 */
export function qemuArgv(o: { kernel: string; initrd: string; cmdline: string }): string[] {
  return [
    "qemu-system-x86_64",
    "-M", "microvm",
    "-accel", "kvm",
    "-cpu", "host",
    "-m", String(MEM_MIB),
    "-smp", String(CPUS),
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
    "-serial", "stdio",
    "-kernel", o.kernel,
    "-initrd", o.initrd,
    "-append", o.cmdline,
  ];
}

/** Runs the whole benchmark: contenders interleaved run by run, rotating the order. */
export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const log = o.log ?? (() => {});
  const warmup = o.warmup ?? 1;
  const timeoutMs = o.timeoutMs ?? 120_000;
  for (const f of [o.kernel, o.initrd]) if (!existsSync(f)) throw new Error(`No such file: ${f}`);
  if (!existsSync("/usr/bin/time")) throw new Error("/usr/bin/time is missing (Debian package 'time')");
  const list = contenders(o);
  const results: ContenderResult[] = list.map((c) => ({ name: c.name, argv: c.argv, runs: [], failures: [] }));
  const emit = o.onRecord ?? (() => {});
  emit({ type: "host", host: hostInfo(), contenders: list });
  const tmp = mkdtempSync(join(tmpdir(), "vmm-bench-"));
  try {
    const dead = await rotateContenders(list, results, {
      warmup,
      runs: o.runs,
      log,
      run: (c, say) => runOnce(c, o.repo, timeoutMs, tmp, say, o.idleMs ?? 0),
      describe: (s, c, measured) =>
        `ready ${s.readyMs.toFixed(0)} ms, ` +
        (s.poweroffIgnored ? "exit – (poweroff -f ignored, stopped with SIGTERM)" : s.exitMs !== undefined ? `exit ${s.exitMs.toFixed(0)} ms` : `exit ${s.poweroffMs?.toFixed(0)} ms after poweroff -f`) +
        `, peak ${(s.peakKiB / 1024).toFixed(1)} MiB` + (s.idlePct !== undefined ? `, idle ${s.idlePct.toFixed(2)}% of a core` : "") + (s.resent ? ` (poweroff re-sent ${s.resent}x)` : "") +
        (s.note && !measured ? `\n${c.name}: ${s.note}` : ""),
      onSample: (c, s) => emit({ type: "sample", name: c.name, sample: s }),
      onFailure: (c, msg) => emit({ type: "failure", name: c.name, msg }),
    });
    const startupRuns = o.startupRuns ?? 0;
    for (let i = 0; i < startupRuns; i++) {
      for (const [idx, c] of list.entries()) {
        if (c.name === "qemu" || dead.has(idx)) continue;
        const argv = [...c.argv.slice(0, c.argv.indexOf("boot")), "--version"];
        try {
          const ms = await timeCommand(argv, o.repo, 60_000);
          (results[idx].startupMs ??= []).push(ms);
          emit({ type: "startup", name: c.name, ms });
        } catch (e) {
          results[idx].failures.push(`startup ${i + 1}: ${(e as Error).message}`);
          emit({ type: "failure", name: c.name, msg: `startup ${i + 1}: ${(e as Error).message}` });
        }
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return { host: hostInfo(), contenders: results };
}

function hostInfo(): BenchResult["host"] {
  const thp = /\[(\w+)\]/.exec(readText("/sys/kernel/mm/transparent_hugepage/enabled"))?.[1] ?? "?";
  return { ...hostBasics(), thp };
}

/** After the marker: `poweroff -f` is written again every RESEND_MS, and the run given up as "ignored" after GIVE_UP_MS. */
const RESEND_MS = 5000;
export const GIVE_UP_MS = 15000;
/** With idleMs: how long after the marker the idle measurement starts (the init's last work and the shell's start are over). */
export const IDLE_SETTLE_MS = 10_000;

/**
 * One boot of one contender, measured. Throws with the stderr tail when the
 * contender fails (no marker, bad exit status, timeout). A contender that
 * reaches the marker but does not take `poweroff -f` from its console is
 * stopped with SIGTERM and its sample has no exit time (`poweroffIgnored`).
 */
function runOnce(c: Contender, cwd: string, timeoutMs: number, tmp: string, log: (l: string) => void, idleMs: number): Promise<RunSample> {
  const timeFile = join(tmp, "time.out");
  const fifo = join(tmp, "stdin.fifo");
  rmSync(timeFile, { force: true });
  rmSync(fifo, { force: true });
  // stdin is a FIFO opened read-write (a shell's `<>fifo`): a real pipe
  // whichever runtime runs this driver (Bun's spawn would hand out a socket),
  // which never reads as EOF while the driver holds it.
  execFileSync("mkfifo", [fifo]);
  const inFd = openSync(fifo, "r+");
  return new Promise<RunSample>((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn("/usr/bin/time", ["-f", "%M", "-o", timeFile, ...c.argv], {
      cwd,
      stdio: [inFd, "pipe", "pipe"],
      detached: true, // own process group: a straggler is killed with all it started
    });
    let out = "";
    let err = "";
    let tReady = 0;
    let tPoweroff = 0;
    let sample: Partial<RunSample> = {};
    let resent = 0;
    let failure = "";
    let ignored = false;
    let pid: number | undefined;
    const timers: ReturnType<typeof setTimeout>[] = [];
    const say = () => {
      try {
        writeSync(inFd, "poweroff -f\n");
      } catch (e) {
        log(`cannot write 'poweroff -f' to the contender's stdin: ${(e as Error).message}`);
      }
    };
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, "SIGKILL");
      } catch { /* already gone */ }
    };
    const powerOff = () => {
      tPoweroff = performance.now();
      say();
      // Should the shell not take the line, say it again, then give up
      // and stop the contender with SIGTERM (its peak RSS still counts).
      timers.push(setInterval(() => {
        resent++;
        say();
      }, RESEND_MS));
      timers.push(setTimeout(() => {
        ignored = true;
        try {
          if (pid) process.kill(pid, "SIGTERM");
        } catch { /* gone */ }
        timers.push(setTimeout(killGroup, 5000));
      }, GIVE_UP_MS));
    };
    const fail = (why: string) => {
      if (!failure) failure = why;
      killGroup();
    };
    // A sign of life every 30 s, so a stall can be told from a slow boot.
    timers.push(setInterval(() => {
      const last = out.replace(/\r/g, "").trimEnd().split("\n").pop()?.slice(-80) ?? "";
      log(`still running after ${((performance.now() - t0) / 1000).toFixed(0)} s, ${tReady ? "after" : "before"} the marker; ` +
        `console's last line: ${JSON.stringify(last)}`);
    }, 30_000));
    const limitMs = timeoutMs + (idleMs > 0 ? IDLE_SETTLE_MS + idleMs : 0);
    timers.push(setTimeout(() => fail(`timed out after ${limitMs} ms (${tReady ? "after" : "before"} the ready marker)`), limitMs));
    child.stdout!.on("data", (b: Uint8Array) => {
      out += new TextDecoder().decode(b);
      if (out.length > 65536) out = out.slice(-32768);
      if (!tReady && out.includes(MARKER)) {
        tReady = performance.now();
        if (idleMs === 0) powerOff();
        pid = childOf(child.pid!);
        sample = memoryAtReady(pid);
        if (idleMs > 0 && !pid) powerOff(); // no process to measure
        if (idleMs > 0 && pid) {
          const p = pid;
          timers.push(setTimeout(() => {
            try {
              const a = cpuTicks(p), ta = performance.now();
              timers.push(setTimeout(() => {
                try {
                  const b = cpuTicks(p), ms = performance.now() - ta;
                  const cpuMs = (b.utime + b.stime - a.utime - a.stime) * 1000 / clockTicksPerSecond();
                  sample.idlePct = cpuMs / ms * 100;
                } catch { /* gone: no figure */ }
                powerOff();
              }, idleMs));
            } catch {
              powerOff(); // gone already: its exit says why
            }
          }, IDLE_SETTLE_MS));
        }
      }
    });
    child.stderr!.on("data", (b: Uint8Array) => {
      err += new TextDecoder().decode(b);
      if (err.length > 65536) err = err.slice(-32768);
    });
    child.on("error", (e) => fail(`cannot start: ${e.message}`));
    child.on("exit", (code, signal) => {
      const tExit = performance.now();
      for (const t of timers) {
        clearTimeout(t);
        clearInterval(t);
      }
      killGroup(); // stragglers of the group, if any
      const tail = () =>
        `\n  --- stderr tail ---\n${indent(err.slice(-1500))}\n  --- stdout tail ---\n${indent(out.slice(-800))}`;
      let peak = NaN;
      try {
        // time puts "Command exited with non-zero status N" (or "terminated by signal") before %M.
        const lines = readFileSync(timeFile, "utf8").trim().split("\n");
        peak = Number(lines[lines.length - 1]);
      } catch { /* no file: time itself was killed */ }
      if (failure) return reject(new Error(failure + tail()));
      if (!tReady) return reject(new Error(`exited (status ${code ?? signal}) before printing '${MARKER}'` + tail()));
      const m = /guest init ready after (\d+) ms/.exec(err);
      const built = /VM built after (\d+) ms/.exec(err);
      const base = {
        readyMs: tReady - t0,
        peakKiB: peak,
        ...sample,
        ...(m ? { vmmInitReadyMs: Number(m[1]) } : {}),
        ...(built ? { vmmBuiltMs: Number(built[1]) } : {}),
      };
      if (ignored) {
        return resolve({ ...base, poweroffIgnored: true, note: `ignored 'poweroff -f' on its console for ${GIVE_UP_MS} ms; stopped with SIGTERM` + tail() });
      }
      if (code !== 0) return reject(new Error(`exited with status ${code ?? signal} after poweroff` + tail()));
      if (!tPoweroff) return reject(new Error(`exited (status ${code ?? signal}) while idle, before 'poweroff -f' was written` + tail()));
      // After an idle measurement the exit comes that much later, so it has no start → exit time.
      const exitMs = idleMs > 0 ? {} : { exitMs: tExit - t0 };
      resolve({ ...base, ...exitMs, poweroffMs: tExit - tPoweroff, ...(resent ? { resent } : {}) });
    });
  }).finally(() => {
    closeSync(inFd);
    rmSync(fifo, { force: true });
  });
}

/** Wall time of a command that exits by itself (status 0), ms. */
function timeCommand(argv: string[], cwd: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(argv[0], argv.slice(1), { cwd, stdio: ["ignore", "ignore", "pipe"], detached: true });
    let err = "";
    child.stderr!.on("data", (b: Uint8Array) => {
      err = (err + new TextDecoder().decode(b)).slice(-2000);
    });
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch { /* gone */ }
    }, timeoutMs);
    child.on("error", (e) => reject(e));
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(performance.now() - t0);
      else reject(new Error(`${argv.join(" ")}: status ${code}: ${err.slice(-500)}`));
    });
  });
}

/** The contender's own pid: the child of /usr/bin/time. */
function childOf(pid: number): number | undefined {
  try {
    const c = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/)[0];
    if (c) return Number(c);
  } catch { /* no CONFIG_PROC_CHILDREN: scan */ }
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) return Number(d);
    } catch { /* gone */ }
  }
  return undefined;
}

/** VmRSS and the guest RAM mapping's residency, from /proc. */
function memoryAtReady(pid: number | undefined): Partial<RunSample> {
  if (!pid) return {};
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]);
    const smaps = readFileSync(`/proc/${pid}/smaps`, "utf8");
    const want = MEM_MIB * 1024;
    let best: { rss: number; huge: number } | undefined;
    for (const vma of smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
      const size = Number(/^Size:\s+(\d+) kB/m.exec(vma)?.[1]);
      if (size !== want) continue;
      const r = Number(/^Rss:\s+(\d+) kB/m.exec(vma)?.[1]);
      const huge = Number(/^AnonHugePages:\s+(\d+) kB/m.exec(vma)?.[1] ?? 0) +
        Number(/^ShmemPmdMapped:\s+(\d+) kB/m.exec(vma)?.[1] ?? 0);
      if (!best || r > best.rss) best = { rss: r, huge };
    }
    return { rssReadyKiB: rss, guestKiB: best?.rss, guestHugeKiB: best?.huge };
  } catch {
    return {};
  }
}

/** CLI: `bun scripts/bench/boot_driver.ts --kernel K --initrd I --cmdline C [--runs N] [--json FILE]`. */
if (import.meta.main) {
  const { parseArgs } = await import("node:util");
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      ...GUEST_DRIVER_OPTIONS,
      runs: { type: "string", default: "5" },
      "timeout-ms": { type: "string", default: "120000" },
      "startup-runs": { type: "string", default: "0" },
      "idle-ms": { type: "string", default: "0" },
    },
  });
  const { result, ...args } = guestDriverArgs(values, "usage: boot_driver.ts --kernel K --initrd I --cmdline C [--runs N] [--warmup N] [--idle-ms MS] [--json FILE] [--progress FILE] [--records FILE]");
  result(await runBench({ ...args, startupRuns: Number(values["startup-runs"]), idleMs: Number(values["idle-ms"]) }));
}
