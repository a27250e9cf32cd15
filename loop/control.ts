/**
 * The control loop: the main thread's whole job once the guest runs.
 *
 * It starts one Worker per vCPU (and one for stdin), then blocks in poll(2)
 * on two fds: the signal pipe (SIGINT, SIGTERM) and the control eventfd the
 * Workers write when something ends the VM. It is never on a data path: the
 * guest's console, disks and network are served by Workers.
 *
 * Stopping is ordered: STOP is raised, every running vCPU is kicked out of
 * KVM_RUN (immediate_exit, then SIGUSR1), the main thread waits for each to
 * say it stopped, and only then is the terminal restored and vmm exits.
 */
import {
  eventfd, eventfdRead, hostView, libc, mmapAnon, mmapFd, Poller, SIGINT, SIGTERM, SIGUSR1, NativeBuf,
  EFD_CLOEXEC, EFD_NONBLOCK,
} from "../ffi/libc.ts";
import { defaultSignal, interruptingSignal, signalPipe } from "../ffi/signals.ts";
import { RawTerminal } from "../ffi/termios.ts";
import { RUN } from "../ffi/structs.ts";
import type { Vm } from "../vm/vm.ts";
import { CTL, CTL_READY_TIME, CTL_TIDS, EXIT_KIND, exitReason, recordExit, SHARED_BYTES } from "./shared.ts";
import type { QueueInit, StdinInit, VcpuInit, VirtioDeviceInit, WorkerReady } from "./messages.ts";
import { stopQueues } from "./virtio.ts";

/** How a run ended. */
export interface RunResult {
  /** vmm's exit status. */
  code: number;
  kind: keyof typeof EXIT_KIND;
  reason: string;
  /** Milliseconds from `startedAt` to the guest init's ready report, if it came. */
  readyMs?: number;
}

/** Exit status when the guest kernel panicked. */
export const EXIT_PANIC = 101;
/** Exit status when vmm or KVM failed while the guest ran. */
export const EXIT_VMM_ERROR = 1;

export interface ConsoleFds {
  outFd: number;
  /** Host fd the guest console reads; null for none. */
  inFd: number | null;
  /** Which device is the guest's console: the UART (default) or virtio-console's hvc0. */
  device?: "serial" | "hvc";
}

const KIND_NAMES = Object.fromEntries(Object.entries(EXIT_KIND).map(([k, v]) => [v, k])) as Record<number, keyof typeof EXIT_KIND>;
const STOP_TIMEOUT_MS = 3000;
/** How long the VM's stop waits for queue Workers to finish their requests and flush. */
const DRAIN_TIMEOUT_MS = 30_000;

/** Start the Worker at `url` with `init`; resolves once it reports ready. */
export function startWorker(url: URL, init: unknown): Promise<Worker> {
  const w = new Worker(url.href, { type: "module" });
  return new Promise((resolve, reject) => {
    w.onmessage = (ev: MessageEvent<WorkerReady>) => {
      w.onmessage = null;
      if (ev.data.ok) resolve(w);
      else reject(new Error(ev.data.error ?? "Worker failed to start"));
    };
    w.onerror = (ev) => {
      ev.preventDefault?.();
      reject(new Error(`Worker ${url.pathname.split("/").pop()} failed: ${ev.message}`));
    };
    w.postMessage(init);
  });
}

/**
 * Where the Worker scripts are. In a `bun build --compile` executable every
 * module is bundled into the entry file at the root of Bun's embedded file
 * system, and each Worker entry point keeps its path from the repository
 * root (scripts/build-exe.ts lists them).
 */
const compiled = import.meta.url.includes("/$bunfs/");
export const workerUrls = {
  vcpu: new URL(compiled ? "./loop/vcpu_worker.ts" : "./vcpu_worker.ts", import.meta.url),
  stdin: new URL(compiled ? "./loop/stdin_worker.ts" : "./stdin_worker.ts", import.meta.url),
  queue: new URL(compiled ? "./loop/queue_worker.ts" : "./queue_worker.ts", import.meta.url),
};

/**
 * Run `vm` until the guest or a signal ends it. `virtio`: its devices,
 * wired by loop/virtio.ts `wireVirtio`; each queue gets its Worker here.
 */
export async function runVm(
  vm: Vm,
  console_: ConsoleFds,
  startedAt = Date.now(),
  virtio: VirtioDeviceInit[] = [],
): Promise<RunResult> {
  const sigFd = signalPipe([SIGINT, SIGTERM]);
  interruptingSignal(SIGUSR1);
  const sharedAddr = mmapAnon(SHARED_BYTES);
  const sharedBytes = hostView(sharedAddr, SHARED_BYTES);
  const ctl = new Int32Array(sharedBytes.buffer, sharedBytes.byteOffset, SHARED_BYTES / 4);
  const sharedView = new DataView(sharedBytes.buffer, sharedBytes.byteOffset, SHARED_BYTES);
  const ctlFd = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
  const runs = vm.vcpuFds.map((fd, i) => mmapFd(fd, vm.runSize, `mmap kvm_run of vCPU ${i}`));
  const runBytes = runs.map((a) => hostView(a, vm.runSize));

  const term = console_.inFd !== null && RawTerminal.isTty(console_.inFd) ? new RawTerminal(console_.inFd) : null;
  const workers: Worker[] = [];
  let signalled = 0;
  let drainError = "";
  try {
    term?.enter();
    const mem = { memAddr: vm.memAddr, memSize: vm.memSize, regions: vm.regions };
    // Queue Workers first, all started together: they park until their
    // driver is ready, and the guest needs a second or more to get there.
    const starting: Promise<Worker>[] = [];
    for (const device of virtio) {
      device.ioFds.forEach((_, queue) => {
        const init: QueueInit = { kind: "queue", device, queue, shared: sharedAddr, ctlFd, ...mem };
        starting.push(startWorker(workerUrls.queue, init));
      });
    }
    for (let id = 0; id < vm.vcpuFds.length; id++) {
      const init: VcpuInit = {
        kind: "vcpu", id, vcpuFd: vm.vcpuFds[id], vmFd: vm.vm.fd, runAddr: runs[id], runSize: vm.runSize,
        shared: sharedAddr, ctlFd, outFd: console_.outFd, ...mem, virtio,
      };
      starting.push(startWorker(workerUrls.vcpu, init));
    }
    if (console_.inFd !== null && console_.device !== "hvc") {
      const init: StdinInit = { kind: "stdin", vmFd: vm.vm.fd, shared: sharedAddr, ctlFd, inFd: console_.inFd };
      starting.push(startWorker(workerUrls.stdin, init));
    }
    const started = await Promise.allSettled(starting);
    for (const r of started) if (r.status === "fulfilled") workers.push(r.value);
    const failed = started.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;

    // The loop: sleep until a signal or a Worker has news.
    const poller = new Poller([sigFd, ctlFd]);
    const sigBuf = NativeBuf.alloc(16);
    while (Atomics.load(ctl, CTL.EXIT_KIND) === EXIT_KIND.NONE) {
      const [sig, ev] = poller.wait(-1);
      if (sig) {
        const n = Number(libc.read(sigFd, sigBuf.addr, 16n));
        for (let i = 0; i < n; i++) {
          const s = sigBuf.bytes[i];
          if (s === SIGINT || s === SIGTERM) {
            signalled = s;
            recordExit(ctl, sharedBytes, EXIT_KIND.QUIT, 128 + s, `stopped by ${s === SIGINT ? "SIGINT" : "SIGTERM"}`);
          }
        }
      }
      if (ev) eventfdRead(ctlFd);
      if (allStopped(ctl, vm.vcpuFds.length) && Atomics.load(ctl, CTL.EXIT_KIND) === EXIT_KIND.NONE) {
        recordExit(ctl, sharedBytes, EXIT_KIND.ERROR, EXIT_VMM_ERROR, "every vCPU stopped");
      }
    }
  } finally {
    stopVcpus(ctl, sharedView, runBytes, ctlFd);
    // Drain: no vCPU runs now, so no new requests come; let every queue
    // Worker finish what the guest made available and flush its disk.
    const late = stopQueues(ctl, virtio, "exit", DRAIN_TIMEOUT_MS);
    if (late.length) drainError = `${late.join(", ")} did not finish its requests within ${DRAIN_TIMEOUT_MS / 1000} s`;
    for (const w of workers) w.terminate();
    term?.restore();
    // Give SIGINT/SIGTERM back: after the run nothing reads the signal pipe.
    defaultSignal(SIGINT);
    defaultSignal(SIGTERM);
  }

  const kind = KIND_NAMES[Atomics.load(ctl, CTL.EXIT_KIND)] ?? "ERROR";
  const reason = exitReason(sharedBytes);
  const ready = Atomics.load(ctl, CTL.READY) ? sharedView.getFloat64(CTL_READY_TIME, true) - startedAt : undefined;
  let code = 0;
  if (kind === "EXIT_CODE" || kind === "QUIT") code = Atomics.load(ctl, CTL.EXIT_CODE);
  else if (kind === "PANIC") code = EXIT_PANIC;
  else if (kind === "ERROR") code = EXIT_VMM_ERROR;
  if (signalled) code = 128 + signalled;
  if (drainError) return { code: code || EXIT_VMM_ERROR, kind: "ERROR", reason: `${reason}; then ${drainError}`, readyMs: ready };
  return { code, kind, reason, readyMs: ready };
}

function allStopped(ctl: Int32Array, n: number): boolean {
  for (let i = 0; i < n; i++) if (Atomics.load(ctl, CTL.VCPU_STATE + i) !== 2) return false;
  return true;
}

/** Raise STOP and kick every running vCPU until all have left KVM_RUN. */
function stopVcpus(ctl: Int32Array, shared: DataView, runs: Uint8Array[], ctlFd: number): void {
  Atomics.store(ctl, CTL.STOP, 1);
  const poller = new Poller([ctlFd]);
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (!allStopped(ctl, runs.length) && Date.now() < deadline) {
    runs.forEach((run, i) => {
      if (Atomics.load(ctl, CTL.VCPU_STATE + i) !== 1) return;
      // immediate_exit first: a signal that lands while the Worker runs JS
      // would be lost, but the flag makes its next KVM_RUN return at once.
      Atomics.store(run, RUN.IMMEDIATE_EXIT, 1);
      const tid = shared.getBigUint64(CTL_TIDS + i * 8, true);
      if (tid !== 0n) libc.pthread_kill(tid, SIGUSR1);
    });
    if (poller.wait(20)[0]) eventfdRead(ctlFd);
  }
}
