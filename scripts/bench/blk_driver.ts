/**
 * The measuring half of `scripts/bench-blk.ts`: block I/O inside the guest
 * under each contender (vmm on Bun, vmm on Deno, QEMU microvm with a
 * virtio-blk-device), run by run in turn, on real KVM.
 *
 * Every contender boots the same kernel and initramfs (the default guest, plus
 * a small archive with `/bench/randread`) with 1 vCPU and 512 MiB and one raw
 * image as its only drive, and runs the same guest script, which is the
 * default guest's "run" command (`/vmm/run.sh`): vmm gets it as
 * `vmm run -- sh -c SCRIPT`, QEMU as the same archive vmm would append. The
 * script runs these phases on /dev/vda, each bracketed by console lines:
 *
 *   seqwrite  dd if=/dev/zero of=/dev/vda bs=1M count=N oflag=direct
 *   seqread   dd if=/dev/vda of=/dev/null bs=1M count=N iflag=direct
 *   randread  /bench/randread /dev/vda OPS: OPS reads of 4 KiB at random
 *             4 KiB-aligned offsets, O_DIRECT, one at a time (queue depth 1)
 *   seqwrite2, seqread2
 *             seqwrite and seqread again, in the same VM: the first pass
 *             also pays whatever each VMM does once (vmm's JIT compiling its
 *             data path in every Worker, first touches of pages), the second
 *             is the steady state, the part that grows with the bytes
 *   parread   with `cpus` > 1 only: one randread per vCPU at once, each
 *             pinned to its vCPU (taskset): as many requests in flight as
 *             vCPUs, which vmm serves on one queue per vCPU (VIRTIO_BLK_F_MQ)
 *             and QEMU on its thread pool
 *
 * Before a phase the guest prints `@@go NAME` and waits (`read -t`) for a line
 * on its console; the driver answers once it has read the contender's CPU
 * times. After the phase the guest prints `@@done NAME T0 T1` (its
 * /proc/uptime around the phase, 10 ms resolution) and the driver reads the
 * CPU times again. So a phase's host CPU is the contender's
 * utime − guest_time + stime from /proc/PID/stat (all threads, the vCPU's
 * time in guest mode taken out) between the two lines: the VMM's own work
 * (device emulation, exits, copies, syscalls), not the guest's.
 *
 * The image is a file in a temporary directory (tmpfs inside the nested host):
 * both VMMs go through the host page cache, so the numbers are the VMMs'
 * overhead, not a disk's.
 *
 * It works on Bun and on Deno (node: built-ins only).
 */
import { execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { clockTicksPerSecond, cpuTicks, GUEST_DRIVER_OPTIONS, type GuestBenchOptions, guestDriverArgs, hostBasics, indent, rotateContenders } from "./common.ts";
import { concatInitrd, runArchive } from "../../mod.ts";
import { S_IFDIR, S_IFREG, writeCpio } from "../../guest/cpio.ts";
import { randreadElf } from "./randread_elf.ts";

export const MEM_MIB = 512;
/** vCPUs unless `cpus` says otherwise. */
export const CPUS = 1;
export const PHASES = ["seqwrite", "seqread", "randread", "seqwrite2", "seqread2"] as const;
/** The phase that runs only with more than one vCPU. */
export const PAR_PHASE = "parread";
export type Phase = (typeof PHASES)[number] | typeof PAR_PHASE;

/** Phases of 4 KiB random reads, counted in IOPS; the others move 1 MiB blocks. */
function randomReads(p: Phase): boolean {
  return p === "randread" || p === PAR_PHASE;
}

/** The phases a run with `cpus` vCPUs has. */
export function phasesFor(cpus: number): Phase[] {
  return cpus > 1 ? [...PHASES, PAR_PHASE] : [...PHASES];
}

export interface BlkBenchOptions extends GuestBenchOptions<BlkRecord> {
  /** MiB written and read sequentially; also the image's size. */
  sizeMiB?: number;
  /** 4 KiB random reads per run (per reader in parread). */
  randOps?: number;
  /** vCPUs of every contender; above 1 adds the parread phase. */
  cpus?: number;
  /** Where the image and initramfs go; default a new directory under the OS temp dir. */
  dir?: string;
}

/** One phase of one run. */
export interface PhaseSample {
  /** Bytes moved and requests made by the guest. */
  bytes: number;
  ops: number;
  /** Guest-measured seconds (/proc/uptime deltas). */
  guestSec: number;
  /** Host wall seconds from the answer to `@@go` to `@@done` (includes two console round trips). */
  wallSec: number;
  /** The contender's own CPU seconds in the phase: utime − guest_time + stime. */
  cpuSec: number;
  /** The vCPU's seconds in guest mode in the phase (guest_time). */
  guestCpuSec: number;
}

export type RunSample = Record<(typeof PHASES)[number], PhaseSample> & { parread?: PhaseSample };

export type BlkRecord =
  | { type: "host"; host: BlkResult["host"]; contenders: Contender[]; sizeMiB: number; randOps: number; cpus?: number }
  | { type: "sample"; name: string; sample: RunSample }
  | { type: "failure"; name: string; msg: string };

export interface Contender {
  name: string;
  argv: string[];
}

export interface ContenderResult {
  name: string;
  argv: string[];
  runs: RunSample[];
  failures: string[];
}

export interface BlkResult {
  host: { kernel: string; cpus: number; nested: boolean; clkTck: number };
  sizeMiB: number;
  randOps: number;
  cpus: number;
  contenders: ContenderResult[];
}

/** A BlkResult from streamed records (all of them, or those a broken run left). */
export function fromRecords(records: BlkRecord[]): BlkResult {
  const head = records.find((r) => r.type === "host");
  const h = head?.type === "host" ? head : undefined;
  const res: ContenderResult[] = (h?.contenders ?? []).map((c) => ({ ...c, runs: [], failures: [] }));
  const by = new Map(res.map((c) => [c.name, c]));
  for (const r of records) {
    const c = r.type === "host" ? undefined : by.get(r.name);
    if (!c) continue;
    if (r.type === "sample") c.runs.push(r.sample);
    else if (r.type === "failure") c.failures.push(r.msg);
  }
  return {
    host: h?.host ?? { kernel: "?", cpus: 0, nested: false, clkTck: 100 },
    sizeMiB: h?.sizeMiB ?? 0,
    randOps: h?.randOps ?? 0,
    cpus: h?.cpus ?? CPUS,
    contenders: res,
  };
}

/**
 * The guest's part: its phases on /dev/vda, each announced, timed and
 * closed on the console. Output is a few short lines: console bytes are slow
 * under nested KVM and would be counted in the phase.
 */
export function guestScript(sizeMiB: number, randOps: number, cpus = CPUS): string {
  // parread: a pinned reader per vCPU, each waited for, so any one failing fails the phase.
  const par = cpus > 1
    ? [`go parread; pids=""; for c in $(seq 0 ${cpus - 1}); do taskset -c $c /bench/randread /dev/vda ${randOps} & pids="$pids $!"; done; ` +
      'for p in $pids; do wait $p || echo "@@fail parread"; done; done_ parread']
    : [];
  return [
    "set -u",
    "up() { cut -d' ' -f1 /proc/uptime; }",
    // The driver samples the contender's CPU, then answers; 10 s without an answer and the phase starts anyway.
    'go() { echo "@@go $1"; read -t 10 _ack || echo "@@noack $1"; t0=$(up); }',
    'done_() { t1=$(up); echo "@@done $1 $t0 $t1"; }',
    'seqwrite() { go $1; dd if=/dev/zero of=/dev/vda bs=1M count=' + sizeMiB + ' oflag=direct 2>/dev/null || echo "@@fail $1"; done_ $1; }',
    'seqread() { go $1; dd if=/dev/vda of=/dev/null bs=1M count=' + sizeMiB + ' iflag=direct 2>/dev/null || echo "@@fail $1"; done_ $1; }',
    "seqwrite seqwrite",
    "seqread seqread",
    `go randread; /bench/randread /dev/vda ${randOps} || echo "@@fail randread"; done_ randread`,
    "seqwrite seqwrite2",
    "seqread seqread2",
    ...par,
    'echo "@@end"',
  ].join("\n");
}

/** The three contenders' command lines; `initrd` already holds /bench/randread, `qemuInitrd` also /vmm/run.sh. */
export function contenders(o: { kernel: string; initrd: string; qemuInitrd: string; cmdline: string; image: string; script: string; cpus?: number }): Contender[] {
  const vmmArgs = [
    "run", "--busybox", "--kernel", o.kernel, "--initrd", o.initrd, "--cpus", String(o.cpus ?? CPUS), "--memory", `${MEM_MIB}M`,
    "--drive", o.image, "--", "sh", "-c", o.script,
  ];
  return [
    { name: "vmm-bun", argv: ["bun", "bin/vmm.ts", ...vmmArgs] },
    { name: "vmm-deno", argv: ["deno", "run", "-A", "--no-check", "bin/vmm.ts", ...vmmArgs] },
    { name: "qemu", argv: qemuArgv({ kernel: o.kernel, initrd: o.qemuInitrd, cmdline: o.cmdline, image: o.image, cpus: o.cpus }) },
  ];
}

/**
 * QEMU's microvm as bench-boot runs it, plus the drive: `-drive if=none` with
 * QEMU's defaults (cache=writeback, aio=threads: the host page cache, as vmm)
 * and a virtio-blk-device on microvm's virtio-mmio transport, which its ACPI
 * DSDT lists for the guest. A virtio-blk-device has one queue unless
 * num-queues says more (only virtio-blk-pci defaults to one per vCPU); QEMU
 * keeps several requests of one queue in flight on its thread pool.
 */
export function qemuArgv(o: { kernel: string; initrd: string; cmdline: string; image: string; cpus?: number }): string[] {
  return [
    "qemu-system-x86_64",
    "-M", "microvm",
    "-accel", "kvm",
    "-cpu", "host",
    "-m", String(MEM_MIB),
    "-smp", String(o.cpus ?? CPUS),
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
    "-serial", "stdio",
    "-kernel", o.kernel,
    "-initrd", o.initrd,
    "-append", o.cmdline,
    "-drive", `if=none,id=d0,file=${o.image},format=raw`,
    "-device", "virtio-blk-device,drive=d0",
  ];
}

/** Runs the whole benchmark: contenders interleaved run by run, rotating the order. */
export async function runBlkBench(o: BlkBenchOptions): Promise<BlkResult> {
  const log = o.log ?? (() => {});
  const warmup = o.warmup ?? 1;
  const timeoutMs = o.timeoutMs ?? 300_000;
  const sizeMiB = o.sizeMiB ?? 256;
  const randOps = o.randOps ?? 20_000;
  const cpus = o.cpus ?? CPUS;
  const emit = o.onRecord ?? (() => {});
  for (const f of [o.kernel, o.initrd]) if (!existsSync(f)) throw new Error(`No such file: ${f}`);
  const tmp = o.dir ?? mkdtempSync(join(tmpdir(), "vmm-bench-blk-"));
  try {
    const script = guestScript(sizeMiB, randOps, cpus);
    const base = new Uint8Array(readFileSync(o.initrd));
    const withTools = concatInitrd(base, benchArchive());
    const initrd = join(tmp, "initrd-bench.cpio");
    const qemuInitrd = join(tmp, "initrd-bench-run.cpio");
    writeFileSync(initrd, withTools);
    writeFileSync(qemuInitrd, concatInitrd(withTools, runArchive(["sh", "-c", script])));
    const image = join(tmp, "disk.raw");
    writeImage(image, sizeMiB);
    const list = contenders({ kernel: o.kernel, initrd, qemuInitrd, cmdline: o.cmdline, image, script, cpus });
    const results: ContenderResult[] = list.map((c) => ({ ...c, runs: [], failures: [] }));
    emit({ type: "host", host: hostInfo(), contenders: list, sizeMiB, randOps, cpus });
    await rotateContenders(list, results, {
      warmup,
      runs: o.runs,
      log,
      run: (c, say) => runOnce(c, o.repo, timeoutMs, tmp, { sizeMiB, randOps, cpus }, say),
      describe: (s) =>
        phasesFor(cpus).map((p) => {
          const x = s[p]!;
          return `${p} ${rate(p, x)}, cpu ${x.cpuSec.toFixed(2)} s (+ ${x.guestCpuSec.toFixed(2)} s in guest mode)`;
        }).join("; "),
      onSample: (c, s) => emit({ type: "sample", name: c.name, sample: s }),
      onFailure: (c, msg) => emit({ type: "failure", name: c.name, msg }),
    });
    return { host: hostInfo(), sizeMiB, randOps, cpus, contenders: results };
  } finally {
    if (!o.dir) rmSync(tmp, { recursive: true, force: true });
  }
}

/** One phase's headline number: MiB/s, or IOPS for randread. */
export function rate(p: Phase, s: PhaseSample): string {
  return randomReads(p) ? `${(s.ops / s.guestSec).toFixed(0)} IOPS` : `${(s.bytes / 2 ** 20 / s.guestSec).toFixed(1)} MiB/s`;
}

/** The raw image: every block allocated (written, not sparse), so reads are of real pages. */
function writeImage(path: string, sizeMiB: number): void {
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 2654435761) >>> 24; // any non-zero pattern
  const fd = openSync(path, "w");
  try {
    for (let i = 0; i < sizeMiB; i++) writeSync(fd, chunk);
  } finally {
    closeSync(fd);
  }
}

function hostInfo(): BlkResult["host"] {
  return { ...hostBasics(), clkTck: clockTicksPerSecond() };
}

/**
 * One boot of one contender, measured. Throws with the console tail when the
 * contender fails (a phase fails, no `@@end`, a bad exit status, timeout).
 */
function runOnce(
  c: Contender,
  cwd: string,
  timeoutMs: number,
  tmp: string,
  w: { sizeMiB: number; randOps: number; cpus: number },
  log: (l: string) => void,
): Promise<RunSample> {
  const fifo = join(tmp, "stdin.fifo");
  rmSync(fifo, { force: true });
  // stdin is a FIFO opened read-write: a real pipe whichever runtime runs this
  // driver (Bun's spawn would hand out a socket), never EOF while we hold it.
  execFileSync("mkfifo", [fifo]);
  const inFd = openSync(fifo, "r+");
  const tck = hostInfo().clkTck;
  return new Promise<RunSample>((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(c.argv[0], c.argv.slice(1), { cwd, stdio: [inFd, "pipe", "pipe"], detached: true });
    let out = "";
    let err = "";
    let scanned = 0;
    let failure = "";
    let ended = false;
    const at = new Map<Phase, { ticks: ReturnType<typeof cpuTicks>; wall: number }>();
    const sample: Partial<RunSample> = {};
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, "SIGKILL");
      } catch { /* already gone */ }
    };
    const fail = (why: string) => {
      if (!failure) failure = why;
      killGroup();
    };
    const timers: ReturnType<typeof setTimeout>[] = [];
    timers.push(setInterval(() => {
      const last = out.replace(/\r/g, "").trimEnd().split("\n").pop()?.slice(-80) ?? "";
      log(`still running after ${((performance.now() - t0) / 1000).toFixed(0)} s; console's last line: ${JSON.stringify(last)}`);
    }, 30_000));
    timers.push(setTimeout(() => fail(`timed out after ${timeoutMs} ms`), timeoutMs));
    const onLine = (raw: string) => {
      // A marker can follow firmware noise on its line: QEMU 10's SeaBIOS
      // leaves escape sequences ("\x1bc\x1b[?7l\x1b[2J") right before the first.
      const line = raw.includes("@@") ? raw.slice(raw.indexOf("@@")) : raw;
      let m: RegExpExecArray | null;
      if ((m = /^@@go (\w+)$/.exec(line))) {
        const p = m[1] as Phase;
        try {
          at.set(p, { ticks: cpuTicks(child.pid!), wall: 0 });
        } catch (e) {
          return fail(`cannot read /proc/${child.pid}/stat: ${(e as Error).message}`);
        }
        writeSync(inFd, "\n");
        at.get(p)!.wall = performance.now();
      } else if ((m = /^@@done (\w+) ([\d.]+) ([\d.]+)$/.exec(line))) {
        const p = m[1] as Phase;
        const start = at.get(p);
        if (!start) return fail(`${p}: @@done without @@go`);
        const now = cpuTicks(child.pid!);
        const wall = (performance.now() - start.wall) / 1000;
        const d = (k: "utime" | "stime" | "gtime") => (now[k] - start.ticks[k]) / tck;
        const ops = p === "randread" ? w.randOps : p === PAR_PHASE ? w.randOps * w.cpus : w.sizeMiB;
        const bytes = randomReads(p) ? ops * 4096 : ops * 2 ** 20;
        sample[p] = {
          bytes,
          ops,
          guestSec: Number(m[3]) - Number(m[2]),
          wallSec: wall,
          cpuSec: d("utime") - d("gtime") + d("stime"),
          guestCpuSec: d("gtime"),
        };
      } else if ((m = /^@@(fail|noack) (\w+)$/.exec(line))) {
        if (m[1] === "fail") fail(`the guest's ${m[2]} phase failed`);
        else log(`${m[2]}: the guest got no answer to @@go within 10 s (its console input is not wired?); phase ran anyway`);
      } else if (line === "@@end") {
        ended = true;
      }
    };
    child.stdout!.on("data", (b: Uint8Array) => {
      out += new TextDecoder().decode(b);
      // Whole lines only; the tty may add \r.
      let nl: number;
      while ((nl = out.indexOf("\n", scanned)) >= 0) {
        onLine(out.slice(scanned, nl).replace(/\r/g, "").trim());
        scanned = nl + 1;
      }
      if (out.length > 65536) {
        out = out.slice(-32768);
        scanned = Math.max(0, out.lastIndexOf("\n") + 1);
      }
    });
    child.stderr!.on("data", (b: Uint8Array) => {
      err = (err + new TextDecoder().decode(b)).slice(-32768);
    });
    child.on("error", (e) => fail(`cannot start: ${e.message}`));
    child.on("exit", (code, signal) => {
      for (const t of timers) {
        clearTimeout(t);
        clearInterval(t);
      }
      killGroup();
      const tail = () =>
        `\n  --- stderr tail ---\n${indent(err.slice(-1500))}\n  --- console tail ---\n${indent(out.slice(-1500))}`;
      if (failure) return reject(new Error(failure + tail()));
      const missing = phasesFor(w.cpus).filter((p) => !sample[p]);
      if (!ended || missing.length) return reject(new Error(`exited (status ${code ?? signal}) before the end; phases missing: ${missing.join(", ") || "none"}` + tail()));
      if (code !== 0) return reject(new Error(`exited with status ${code ?? signal}` + tail()));
      resolve(sample as RunSample);
    });
  }).finally(() => {
    closeSync(inFd);
    rmSync(fifo, { force: true });
  });
}

/** The archive appended to the default guest's initramfs for the benchmark: `/bench/randread`. */
export function benchArchive(): Uint8Array {
  return writeCpio([
    { path: "bench", mode: S_IFDIR | 0o755 },
    { path: "bench/randread", mode: S_IFREG | 0o755, data: randreadElf() },
  ]);
}

/** CLI: `bun scripts/bench/blk_driver.ts --kernel K --initrd I --cmdline C [--runs N] ...`. */
if (import.meta.main) {
  const { parseArgs } = await import("node:util");
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      ...GUEST_DRIVER_OPTIONS,
      runs: { type: "string", default: "3" },
      "timeout-ms": { type: "string", default: "300000" },
      size: { type: "string", default: "256" },
      "rand-ops": { type: "string", default: "20000" },
      cpus: { type: "string", default: String(CPUS) },
      dir: { type: "string" },
      json: { type: "string" },
      progress: { type: "string" },
      records: { type: "string" },
      "randread-elf": { type: "string" },
    },
  });
  if (values["randread-elf"]) {
    // For checking the program on a host: write it out and stop.
    writeFileSync(values["randread-elf"], randreadElf(), { mode: 0o755 });
    process.exit(0);
  }
  const { result, ...args } = guestDriverArgs(values, "usage: blk_driver.ts --kernel K --initrd I --cmdline C [--runs N] [--warmup N] [--size MiB] [--rand-ops N] [--cpus N] [--dir DIR] [--json FILE] [--progress FILE] [--records FILE]");
  result(await runBlkBench({
    ...args,
    sizeMiB: Number(values.size),
    randOps: Number(values["rand-ops"]),
    cpus: Number(values.cpus),
    dir: values.dir,
  }));
}
