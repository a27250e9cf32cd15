/**
 * The measuring half of `scripts/bench-net.ts`: network throughput, round
 * trip and CPU under each contender (vmm on Bun, vmm on Deno, QEMU microvm
 * with a virtio-net-device), run by run in turn, on real KVM. It needs root:
 * each run gets a network namespace of its own with a TAP in it.
 *
 * Every contender boots the same kernel and initramfs (the default guest)
 * with 1 vCPU and 512 MiB and the TAP as its one network card, and runs the
 * same guest script (GUEST: an address, two TCP servers, a marker). vmm gets
 * it as `vmm run --busybox -- sh -c GUEST`, QEMU as the archive vmm would
 * append. Once the marker is on the console the host, inside the namespace:
 *
 *   ping   20 busybox pings of the guest, 0.2 s apart: the mean round trip,
 *          and the median of the 20 (the mean of so few moves with one slow
 *          reply: a JIT compile or another thread on the host's CPU)
 *   g2h    reads SIZE bytes of zeros the guest sends (busybox nc)
 *   h2g    sends SIZE bytes the guest discards
 *
 * and reads the contender's CPU times (/proc/PID/stat: utime − guest_time +
 * stime, all threads) around each transfer: what the VMM itself spent per
 * GiB moved, not its vCPU's time in guest mode.
 *
 * A transfer that comes short or meets its bound fails the run, and the
 * failure says why: the VM still ran (the transfer stalled), or its process
 * had ended, with the last of what it printed (a triple fault, a panic).
 * Each step watches the VM while it runs: a VM that dies mid-transfer fails
 * the run at once, not when the transfer's bound runs out.
 *
 * It works on Bun and on Deno (node: built-ins only).
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { clockTicksPerSecond, cpuTicks, GUEST_DRIVER_OPTIONS, type GuestBenchOptions, guestDriverArgs, hostBasics, type HostBasics, indent, median, rotateContenders } from "./common.ts";
import { concatInitrd, runArchive } from "../../mod.ts";

export const MEM_MIB = 512;
/** The host's and the guest's addresses on the TAP's link. */
const HOST_IP = "10.0.2.1", GUEST_IP = "10.0.2.2";
/** Bound of each transfer, s; of the ping, s. */
const TRANSFER_S = 300, PING_S = 60;

/** The guest: an address, then two servers and a marker; the host drives everything. */
export const GUEST = [
  `ip link set eth0 up && ip addr add ${GUEST_IP}/24 dev eth0 || exit 1`,
  // guest → host: send zeros until the host hangs up.
  "(while true; do nc -l -p 5000 </dev/zero >/dev/null 2>&1; done) &",
  // host → guest: a sink whose stdin never ends (busybox nc hangs up when its stdin does).
  "mkfifo /tmp/p && exec 3<>/tmp/p",
  "(while true; do nc -l -p 5001 </tmp/p >/dev/null 2>&1; done) &",
  "echo @@net-ready",
  "sleep 100000",
].join("\n");

export interface NetBenchOptions extends GuestBenchOptions<NetRecord> {
  /** Per-run limit, ms (boot to ready; each transfer has its own 300 s bound). */
  timeoutMs?: number;
  /** MiB each way. */
  sizeMiB: number;
  /** Where the initramfs and the console logs go; default a new directory under the OS temp dir. */
  dir?: string;
}

/** One run: the round trip, and each transfer's wall seconds and the VMM's own CPU seconds. */
export interface NetSample {
  /** The mean round trip, as ping reports it. */
  rttMs: number;
  /** The median of the replies' round trips (absent in records from before it was measured). */
  rttMedianMs?: number;
  g2hSec: number;
  g2hCpuSec: number;
  h2gSec: number;
  h2gCpuSec: number;
}

export interface Contender {
  name: string;
  argv: string[];
}

export interface ContenderResult extends Contender {
  runs: NetSample[];
  failures: string[];
}

export interface NetResult {
  host: HostBasics & { clkTck: number };
  sizeMiB: number;
  contenders: ContenderResult[];
}

export type NetRecord =
  | { type: "host"; host: NetResult["host"]; contenders: Contender[]; sizeMiB: number }
  | { type: "sample"; name: string; sample: NetSample }
  | { type: "failure"; name: string; msg: string };

/** A NetResult from streamed records (all of them, or those a broken run left). */
export function fromRecords(records: NetRecord[]): NetResult {
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
  return { host: h?.host ?? { kernel: "?", cpus: 0, nested: false, clkTck: 100 }, sizeMiB: h?.sizeMiB ?? 0, contenders: res };
}

/** The three contenders' command lines; `qemuInitrd` holds GUEST as /vmm/run.sh. */
export function contenders(o: { kernel: string; initrd: string; qemuInitrd: string; cmdline: string }): Contender[] {
  const vmmArgs = ["run", "--busybox", "--kernel", o.kernel, "--initrd", o.initrd, "--cpus", "1", "--memory", `${MEM_MIB}M`, "--net", "tap=tap0", "--", "sh", "-c", GUEST];
  return [
    { name: "vmm-bun", argv: ["bun", "bin/vmm.ts", ...vmmArgs] },
    { name: "vmm-deno", argv: ["deno", "run", "-A", "--no-check", "bin/vmm.ts", ...vmmArgs] },
    { name: "qemu", argv: qemuArgv({ kernel: o.kernel, initrd: o.qemuInitrd, cmdline: o.cmdline }) },
  ];
}

/** QEMU's microvm as bench-boot runs it, plus a virtio-net-device on the TAP; no vhost: vmm moves frames in user space too. */
export function qemuArgv(o: { kernel: string; initrd: string; cmdline: string }): string[] {
  return [
    "qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", String(MEM_MIB), "-smp", "1",
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
    "-kernel", o.kernel, "-initrd", o.initrd, "-append", o.cmdline,
    "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off", "-device", "virtio-net-device,netdev=n0",
  ];
}

/** Runs the whole benchmark: contenders interleaved run by run, rotating the order. */
export async function runNetBench(o: NetBenchOptions): Promise<NetResult> {
  const log = o.log ?? (() => {});
  const emit = o.onRecord ?? (() => {});
  for (const f of [o.kernel, o.initrd]) if (!existsSync(f)) throw new Error(`No such file: ${f}`);
  const tmp = o.dir ?? mkdtempSync(join(tmpdir(), "vmm-bench-net-"));
  const host = { ...hostBasics(), clkTck: clockTicksPerSecond() };
  try {
    const qemuInitrd = join(tmp, "initrd-net-run.cpio");
    writeFileSync(qemuInitrd, concatInitrd(new Uint8Array(readFileSync(o.initrd)), runArchive(["sh", "-c", GUEST])));
    const list = contenders({ kernel: o.kernel, initrd: o.initrd, qemuInitrd, cmdline: o.cmdline });
    const results: ContenderResult[] = list.map((c) => ({ ...c, runs: [], failures: [] }));
    emit({ type: "host", host, contenders: list, sizeMiB: o.sizeMiB });
    await rotateContenders(list, results, {
      warmup: o.warmup ?? 1,
      runs: o.runs,
      log,
      run: (c) => runOnce(c, { repo: o.repo, tmp, sizeMiB: o.sizeMiB, timeoutMs: o.timeoutMs ?? 300_000, tck: host.clkTck }),
      describe: (s) =>
        `ping ${s.rttMs.toFixed(2)} ms (median ${s.rttMedianMs?.toFixed(2)}); g2h ${(o.sizeMiB / s.g2hSec).toFixed(1)} MiB/s, cpu ${s.g2hCpuSec.toFixed(2)} s; ` +
        `h2g ${(o.sizeMiB / s.h2gSec).toFixed(1)} MiB/s, cpu ${s.h2gCpuSec.toFixed(2)} s`,
      onSample: (c, s) => emit({ type: "sample", name: c.name, sample: s }),
      onFailure: (c, msg) => emit({ type: "failure", name: c.name, msg }),
    });
    return { host, sizeMiB: o.sizeMiB, contenders: results };
  } finally {
    if (!o.dir) rmSync(tmp, { recursive: true, force: true });
  }
}

/** What one host-side step printed and how it ended; `vmEnded` when the VM's exit cut it short. */
interface StepResult {
  out: string;
  status: number;
  vmEnded: boolean;
}

/** How long a step may still finish after the VM's exit: a guest can power off before the host's side of a transfer has returned. */
const STEP_GRACE_MS = 5000;

/**
 * `sh -c SCRIPT` in a process group of its own, its stdout and status, while
 * the VM runs: if `vmExit` settles first and the step does not end within
 * STEP_GRACE_MS, the step's group is killed and the result says `vmEnded`.
 * `stdin` is an fd or "ignore". The scripts bound their commands with
 * `timeout --foreground`, which keeps them in that group (plain `timeout`
 * makes a group of its own, which the kill would miss).
 */
async function step(script: string, vmExit: Promise<void>, stdin: number | "ignore" = "ignore"): Promise<StepResult> {
  const child = spawn("sh", ["-c", script], { stdio: [stdin, "pipe", "ignore"], detached: true });
  let out = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (d: string) => {
    if (out.length < 1 << 20) out += d;
  });
  const done = new Promise<number>((res) => {
    child.on("close", (code, signal) => res(code ?? (signal ? 128 : -1)));
    child.on("error", () => res(-1));
  });
  const first = await Promise.race([done.then(() => "step" as const), vmExit.then(() => "vm" as const)]);
  if (first === "vm" && await Promise.race([done.then(() => false), sleep(STEP_GRACE_MS).then(() => true)])) {
    try {
      if (child.pid) process.kill(-child.pid, "SIGKILL");
    } catch { /* already gone */ }
    return { out, status: await done, vmEnded: true };
  }
  return { out, status: await done, vmEnded: false };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * One boot of one contender in a namespace of its own, measured. Throws when
 * it fails: no marker in time, a bad ping, a short or stalled transfer. The
 * message says whether the VM was still running and ends with its console.
 */
async function runOnce(c: Contender, o: { repo: string; tmp: string; sizeMiB: number; timeoutMs: number; tck: number }): Promise<NetSample> {
  const ns = `vmm-bench-${process.pid}`;
  const size = o.sizeMiB * 2 ** 20;
  const ip = (...a: string[]) => execFileSync("ip", a, { stdio: ["ignore", "ignore", "pipe"] });
  spawnSync("ip", ["netns", "del", ns], { stdio: "ignore" });
  ip("netns", "add", ns);
  const outFile = join(o.tmp, "console.log");
  const hold = join(o.tmp, "hold.fifo");
  let outFd = -1, holdFd = -1;
  let pid = 0;
  let ended: string | null = null;
  /** performance.now() when the VM's exit was heard. */
  let endedAt = 0;
  let exited: Promise<void> = Promise.resolve();
  const consoleTail = () => {
    try {
      return readFileSync(outFile, "latin1").replace(/\r/g, "").slice(-1500);
    } catch {
      return "";
    }
  };
  /**
   * Why a step failed: whether the VM is still there, and what it printed
   * last. An exit that came with the failure may take a moment to be heard:
   * give it a second to arrive.
   */
  const why = async (step: string) => {
    await Promise.race([exited, sleep(1000)]);
    const state = ended === null ? "the VM still ran" : `the VM's process had ended (${ended})`;
    return new Error(`${step}; ${state}\n  --- console and stderr tail ---\n${indent(consoleTail())}`);
  };
  try {
    ip("-n", ns, "link", "set", "lo", "up");
    ip("-n", ns, "tuntap", "add", "tap0", "mode", "tap");
    ip("-n", ns, "addr", "add", `${HOST_IP}/24`, "dev", "tap0");
    ip("-n", ns, "link", "set", "tap0", "up");
    rmSync(hold, { force: true });
    execFileSync("mkfifo", [hold]);
    // Held open read-write: the host's receiving nc never sees its stdin end (busybox nc hangs up when it does).
    holdFd = openSync(hold, "r+");
    outFd = openSync(outFile, "w");
    // `ip netns exec` execs the contender: the child's pid is the VMM's own.
    const child = spawn("ip", ["netns", "exec", ns, ...c.argv], { cwd: o.repo, stdio: ["ignore", outFd, outFd], detached: true });
    pid = child.pid ?? 0;
    exited = new Promise<void>((res) => {
      child.on("exit", (code, signal) => {
        ended = `status ${code ?? signal}`;
        endedAt = performance.now();
        res();
      });
      child.on("error", (e) => {
        ended = `could not start: ${e.message}`;
        endedAt = performance.now();
        res();
      });
    });
    const t0 = performance.now();
    while (!consoleTail().includes("@@net-ready")) {
      if (ended !== null) throw await why("no @@net-ready");
      if (performance.now() - t0 > o.timeoutMs) throw await why(`no @@net-ready within ${o.timeoutMs} ms`);
      await sleep(200);
    }
    const inNs = `ip netns exec ${ns}`;
    const ping = await step(`timeout --foreground ${PING_S} ${inNs} busybox ping -c 20 -i 0.2 ${GUEST_IP} 2>&1`, exited);
    if (ping.vmEnded) throw await why("the VM ended during the pings");
    const rtt = /= [\d.]+\/([\d.]+)\//.exec(ping.out);
    if (!rtt) throw await why(`ping gave no round trip: ${ping.out.trim().split("\n").pop()}`);
    const replies = [...ping.out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
    const cpu = () => {
      const t = cpuTicks(pid);
      return (t.utime - t.gtime + t.stime) / o.tck;
    };
    const c0 = cpu(), w0 = performance.now();
    const g2h = await step(`timeout --foreground ${TRANSFER_S} ${inNs} busybox nc ${GUEST_IP} 5000 | head -c ${size} | wc -c`, exited, holdFd);
    const w1 = performance.now();
    if (g2h.vmEnded) throw await why(`the VM ended ${((endedAt - w0) / 1000).toFixed(0)} s into guest → host`);
    const c1 = cpu();
    const got = Number(g2h.out.trim());
    if (got !== size) throw await why(`guest → host moved ${got} of ${size} bytes in ${((w1 - w0) / 1000).toFixed(0)} s`);
    const sent = await step(`head -c ${size} /dev/zero | timeout --foreground ${TRANSFER_S} ${inNs} busybox nc ${GUEST_IP} 5001 >/dev/null 2>&1`, exited);
    const w2 = performance.now();
    if (sent.vmEnded) throw await why(`the VM ended ${((endedAt - w1) / 1000).toFixed(0)} s into host → guest`);
    const c2 = cpu();
    if (sent.status !== 0) throw await why(`host → guest ended with status ${sent.status}${sent.status === 124 ? ` (its ${TRANSFER_S} s bound)` : ""}`);
    return { rttMs: Number(rtt[1]), rttMedianMs: median(replies), g2hSec: (w1 - w0) / 1000, g2hCpuSec: c1 - c0, h2gSec: (w2 - w1) / 1000, h2gCpuSec: c2 - c1 };
  } finally {
    try {
      if (pid) process.kill(-pid, "SIGKILL");
    } catch { /* already gone */ }
    await Promise.race([exited, sleep(5000)]);
    for (const fd of [outFd, holdFd]) if (fd >= 0) closeSync(fd);
    spawnSync("ip", ["netns", "del", ns], { stdio: "ignore" });
  }
}

/** CLI: `bun scripts/bench/net_driver.ts --kernel K --initrd I --cmdline C [--runs N] ...`. */
if (import.meta.main) {
  const { parseArgs } = await import("node:util");
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      ...GUEST_DRIVER_OPTIONS,
      runs: { type: "string", default: "3" },
      "timeout-ms": { type: "string", default: "300000" },
      size: { type: "string", default: "64" },
      dir: { type: "string" },
    },
  });
  const { result, ...args } = guestDriverArgs(values, "usage: net_driver.ts --kernel K --initrd I --cmdline C [--runs N] [--warmup N] [--size MiB] [--timeout-ms MS] [--dir DIR] [--json FILE] [--progress FILE] [--records FILE]");
  result(await runNetBench({ ...args, sizeMiB: Number(values.size), dir: values.dir }));
}
