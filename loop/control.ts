/**
 * The control loop: the one place that owns a running machine's lifecycle.
 *
 * It blocks in poll(2) on the signal pipe (when the machine takes signals),
 * the control eventfd the Workers write when something ended, the command
 * eventfd behind the mailbox (loop/shared.ts CMD) through which `Machine`
 * asks for pause, resume and stop — the one door a future API server will
 * also come in by — and stdin when it feeds the serial console
 * (loop/console_input.ts says why no Worker does). It is never on a guest's
 * data path: a vCPU's exit or a queue kick never wakes it; disks, network
 * and virtio-console are served by Workers.
 *
 * It is plain synchronous code over plain data (`ControlInit`), so the same
 * loop runs on the CLI's main thread and, for a library, on a control
 * Worker that leaves the embedder's event loop free.
 *
 * Pause is a drain (QEMU's dataplane lesson): every vCPU is kicked out of
 * KVM_RUN and parked, then every queue Worker finishes the request in hand,
 * flushes and parks with its ring position kept. Stopping is ordered the
 * same way: STOP is raised and every vCPU kicked until all have left their
 * loops, then each queue Worker serves what the guest made available,
 * flushes its disk and ends.
 */
import { eventfdRead, eventfdSignal, hostView, libc, NativeBuf, Poller, SIGINT, SIGTERM, SIGUSR1, SIGUSR2, writeAll } from "../ffi/libc.ts";
import { RUN as KVM_RUN_PAGE } from "../ffi/structs.ts";
import {
  CMD, CTL, CTL_READY_TIME, CTL_TIDS, EXIT_KIND, exitReason, recordExit, RUN, SHARED_BYTES, sharedViews, type SharedViews, VCPU,
  VCPU_STATE_WORD,
} from "./shared.ts";
import type { ControlEvent, ControlInit } from "./messages.ts";
import { ConsoleInput } from "./console_input.ts";
import { pauseQueues, resumeQueues, stopQueues } from "./virtio.ts";

/** One line on stderr from the control loop, which has no other channel on either thread. */
function say(line: string): void {
  try {
    writeAll(2, new TextEncoder().encode(`vmm: ${line}\n`));
  } catch { /* stderr is gone */ }
}

/** How a run ended. */
export interface RunResult {
  /** vmm's exit status. */
  code: number;
  kind: keyof typeof EXIT_KIND;
  reason: string;
  /** Milliseconds from `startedAt` to the guest init's ready report, if it came. */
  readyMs?: number;
  /**
   * Milliseconds from `startedAt` until the VM was built: RAM mapped, the
   * kernel and initrd (or the snapshot) in it, the devices wired; no Worker
   * has run it yet.
   */
  builtMs?: number;
  /** Milliseconds from `startedAt` until every Worker had reported ready (a vCPU may already be running the guest by then). */
  workersMs?: number;
  /** Present, true, when the machine was made from a snapshot (Machine.fromSnapshot, restore). */
  restored?: true;
}

/** Exit status when the guest kernel panicked. */
export const EXIT_PANIC = 101;
/** Exit status when the guest triple-faulted (KVM_EXIT_SHUTDOWN): it crashed without a panic message. */
export const EXIT_TRIPLE_FAULT = 102;
/** Exit status when vmm or KVM failed while the guest ran. */
export const EXIT_VMM_ERROR = 1;

const KIND_NAMES = Object.fromEntries(Object.entries(EXIT_KIND).map(([k, v]) => [v, k])) as Record<number, keyof typeof EXIT_KIND>;
/** How long a stop or pause waits for the vCPUs to leave KVM_RUN. */
const VCPU_TIMEOUT_MS = 3000;
/** How long a stop or pause waits for queue Workers to finish their requests and flush. */
export const DRAIN_TIMEOUT_MS = 30_000;

/** What the loop may call back into on its own thread (the CLI's run(): the Machine is there). */
export interface ControlHooks {
  /** Write a snapshot of the paused machine; returns where it went. SIGUSR2 asks for it. */
  snapshot?: () => string;
  /**
   * The guest's init reported ready, and the machine is paused right there
   * (CTL.HOLD_AT_READY): do what must see that moment (`vmm run` snapshots
   * it, loop/run_cache.ts); the machine resumes when this returns or throws.
   */
  atReady?: () => void;
}

export class Controller {
  readonly #init: ControlInit;
  readonly #hooks: ControlHooks;
  readonly #s: SharedViews;
  readonly #runs: Uint8Array[];
  readonly #poller: Poller;
  /** #poller's fds and the console's input, polled while it listens; its revents for stdin come last. */
  readonly #inputPoller?: Poller;
  readonly #input?: ConsoleInput;
  readonly #kickPoller: Poller;
  readonly #sigBuf = NativeBuf.alloc(16);
  #signalled = 0;
  #readySeen = false;

  constructor(init: ControlInit, hooks: ControlHooks = {}) {
    this.#init = init;
    this.#hooks = hooks;
    this.#s = sharedViews(hostView(init.shared, SHARED_BYTES));
    this.#runs = init.runAddrs.map((a) => hostView(a, init.runSize));
    const fds = [init.ctlFd, init.cmdFd, ...(init.sigFd >= 0 ? [init.sigFd] : [])];
    this.#poller = new Poller(fds);
    if (init.consoleInFd >= 0) {
      this.#input = new ConsoleInput(init.vmFd, init.consoleInFd, this.#s.bytes);
      this.#inputPoller = new Poller([...fds, init.consoleInFd]);
    }
    this.#kickPoller = new Poller([init.ctlFd]);
  }

  /** Free what the loop allocated (on the main thread; a Worker frees everything as it ends). */
  close(): void {
    this.#poller.close();
    this.#inputPoller?.close();
    this.#input?.close();
    this.#kickPoller.close();
    this.#sigBuf.free();
  }

  /** Run until the guest, a signal or a stop command ends the VM; `report` hears each event. */
  run(report: (ev: ControlEvent) => void): void {
    const { ctl, bytes } = this.#s;
    const { ctlFd, cmdFd, sigFd } = this.#init;
    let drainError = "";
    try {
      if (this.#init.resumeFirst) this.#resume();
      while (Atomics.load(ctl, CTL.EXIT_KIND) === EXIT_KIND.NONE) {
        // A paused machine takes no console input: a snapshot sees the UART as the guest left it.
        const input = Atomics.load(ctl, CTL.RUN) === RUN.GO ? this.#input : undefined;
        const listening = input?.listening ?? false;
        const revents = (listening ? this.#inputPoller! : this.#poller).wait(input?.timeoutMs ?? -1);
        const [ev, cmd] = revents;
        const sig = sigFd >= 0 && revents[2] !== 0;
        if (input) this.#consoleInput(input, listening && revents[revents.length - 1] !== 0);
        if (sig) this.#signals();
        if (ev) {
          eventfdRead(ctlFd);
          if (!this.#readySeen && Atomics.load(ctl, CTL.READY) === 1) {
            this.#readySeen = true;
            if (Atomics.load(ctl, CTL.HOLD_AT_READY) === 1) this.#atReady();
          }
        }
        if (cmd) {
          eventfdRead(cmdFd);
          this.#command(report);
        }
        if (this.#allVcpus(VCPU.STOPPED) && Atomics.load(ctl, CTL.EXIT_KIND) === EXIT_KIND.NONE) {
          recordExit(ctl, bytes, EXIT_KIND.ERROR, EXIT_VMM_ERROR, "every vCPU stopped");
        }
      }
    } catch (e) {
      recordExit(ctl, bytes, EXIT_KIND.ERROR, EXIT_VMM_ERROR, `control loop: ${(e as Error).message}`);
    } finally {
      drainError = this.#stop();
    }
    report({ type: "ended", signalled: this.#signalled, drainError });
  }

  /** Read stdin when it polled ready, and offer the UART what it had no room for. */
  #consoleInput(input: ConsoleInput, ready: boolean): void {
    const { ctl, bytes } = this.#s;
    try {
      if (ready && input.read()) recordExit(ctl, bytes, EXIT_KIND.QUIT, 0, "console escape Ctrl-A x");
      else input.feed();
    } catch (e) {
      // The guest keeps running without console input; say why once.
      input.stop();
      say(`console input stopped: ${(e as Error).message}`);
    }
  }

  #signals(): void {
    const { ctl, bytes } = this.#s;
    const n = Number(libc.read(this.#init.sigFd, this.#sigBuf.addr, 16n));
    for (let i = 0; i < n; i++) {
      const s = this.#sigBuf.bytes[i];
      if (s === SIGINT || s === SIGTERM) {
        this.#signalled = s;
        recordExit(ctl, bytes, EXIT_KIND.QUIT, 128 + s, `stopped by ${s === SIGINT ? "SIGINT" : "SIGTERM"}`);
      } else if (s === SIGUSR2 && Atomics.load(ctl, CTL.EXIT_KIND) === EXIT_KIND.NONE) {
        this.#snapshot();
      }
    }
  }

  /**
   * SIGUSR2: pause (the same drain as a pause command), let the hook write
   * the snapshot, and go on; one line on stderr says where it went or why
   * not. A machine already paused through the mailbox stays paused.
   */
  #snapshot(): void {
    const hook = this.#hooks.snapshot;
    if (!hook) return say("SIGUSR2: this machine was not given a snapshot directory");
    const wasPaused = Atomics.load(this.#s.ctl, CTL.RUN) === RUN.PAUSE;
    if (!wasPaused) {
      const err = this.#pause();
      if (err) return say(`snapshot: ${err}`);
    }
    try {
      say(`snapshot written to ${hook()}`);
    } catch (e) {
      say(`snapshot failed: ${(e as Error).message}`);
    } finally {
      if (!wasPaused) this.#resume();
    }
  }

  /**
   * The ready report held the machine (CTL.HOLD_AT_READY): the vCPU that
   * heard it is parking; park the rest and the queues as a pause does, run
   * the hook, and go on. A failed pause or hook costs the hook's work only.
   */
  #atReady(): void {
    const err = this.#pause();
    if (err) return say(`at the guest's ready report: ${err}`); // #pause resumed what it paused
    try {
      this.#hooks.atReady?.();
    } catch (e) {
      say(`at the guest's ready report: ${(e as Error).message}`);
    } finally {
      this.#resume();
    }
  }

  /** Carry out the mailbox's command and say it is done. */
  #command(report: (ev: ControlEvent) => void): void {
    const { ctl, bytes } = this.#s;
    const seq = Atomics.load(ctl, CTL.CMD_SEQ);
    if (seq === Atomics.load(ctl, CTL.CMD_DONE)) return; // already answered
    let error: string | undefined;
    switch (Atomics.load(ctl, CTL.CMD)) {
      case CMD.PAUSE:
        error = this.#pause();
        break;
      case CMD.RESUME:
        this.#resume();
        break;
      case CMD.STOP:
        recordExit(ctl, bytes, EXIT_KIND.STOPPED, 0, "stopped by stop()");
        break;
      default:
        error = `unknown command ${Atomics.load(ctl, CTL.CMD)}`;
    }
    Atomics.store(ctl, CTL.CMD_DONE, seq);
    report({ type: "done", seq, ok: error === undefined, error });
  }

  /** Park every vCPU, then every queue. Returns an error text when something did not answer. */
  #pause(): string | undefined {
    const { ctl } = this.#s;
    Atomics.store(ctl, CTL.RUN, RUN.PAUSE);
    const parked = (i: number) => {
      const s = Atomics.load(ctl, VCPU_STATE_WORD + i);
      return s === VCPU.PAUSED || s === VCPU.STOPPED;
    };
    if (!this.#kickUntil(parked)) {
      this.#resume();
      return `a vCPU did not pause within ${VCPU_TIMEOUT_MS / 1000} s`;
    }
    const late = pauseQueues(ctl, this.#init.virtio, DRAIN_TIMEOUT_MS);
    if (late.length) {
      this.#resume();
      return `${late.join(", ")} did not pause within ${DRAIN_TIMEOUT_MS / 1000} s`;
    }
    return undefined;
  }

  /** Queues first, so the first thing a vCPU does finds its devices served. */
  #resume(): void {
    const { ctl } = this.#s;
    resumeQueues(ctl, this.#init.virtio);
    Atomics.store(ctl, CTL.RUN, RUN.GO);
    this.#init.vcpuWakeFds.forEach(eventfdSignal);
  }

  /** Raise STOP, stop the vCPUs, drain the queues. Returns a drain error, or "". */
  #stop(): string {
    const { ctl } = this.#s;
    Atomics.store(ctl, CTL.STOP, 1);
    this.#init.vcpuWakeFds.forEach(eventfdSignal); // a parked vCPU wakes and leaves
    this.#kickUntil((i) => Atomics.load(ctl, VCPU_STATE_WORD + i) === VCPU.STOPPED);
    // Drain: no vCPU runs now, so no new requests come; let every queue
    // Worker finish what the guest made available and flush its disk.
    const late = stopQueues(ctl, this.#init.virtio, "exit", DRAIN_TIMEOUT_MS);
    return late.length ? `${late.join(", ")} did not finish its requests within ${DRAIN_TIMEOUT_MS / 1000} s` : "";
  }

  #allVcpus(state: number): boolean {
    const { ctl } = this.#s;
    for (let i = 0; i < this.#runs.length; i++) if (Atomics.load(ctl, VCPU_STATE_WORD + i) !== state) return false;
    return true;
  }

  /** Kick every vCPU not yet `done` out of KVM_RUN until all are; false on timeout. */
  #kickUntil(done: (i: number) => boolean): boolean {
    const { ctl, view } = this.#s;
    const deadline = Date.now() + VCPU_TIMEOUT_MS;
    for (;;) {
      let all = true;
      this.#runs.forEach((run, i) => {
        if (done(i)) return;
        all = false;
        if (Atomics.load(ctl, VCPU_STATE_WORD + i) !== VCPU.RUNNING) return;
        // immediate_exit first: a signal that lands while the Worker runs JS
        // would be lost, but the flag makes its next KVM_RUN return at once.
        Atomics.store(run, KVM_RUN_PAGE.IMMEDIATE_EXIT, 1);
        const tid = view.getBigUint64(CTL_TIDS + i * 8, true);
        if (tid !== 0n) libc.pthread_kill(tid, SIGUSR1);
      });
      if (all) return true;
      if (Date.now() >= deadline) return false;
      if (this.#kickPoller.wait(20)[0]) eventfdRead(this.#init.ctlFd);
    }
  }
}

/** How the machine ended, from the shared block once the loop is over. */
export function runResult(
  shared: SharedViews,
  startedAt: number,
  ended: { signalled: number; drainError: string },
): RunResult {
  const { ctl, bytes, view } = shared;
  const kind = KIND_NAMES[Atomics.load(ctl, CTL.EXIT_KIND)] ?? "ERROR";
  const reason = exitReason(bytes);
  const readyMs = Atomics.load(ctl, CTL.READY) ? view.getFloat64(CTL_READY_TIME, true) - startedAt : undefined;
  let code = 0;
  if (kind === "EXIT_CODE" || kind === "QUIT") code = Atomics.load(ctl, CTL.EXIT_CODE);
  else if (kind === "PANIC") code = EXIT_PANIC;
  else if (kind === "TRIPLE_FAULT") code = EXIT_TRIPLE_FAULT;
  else if (kind === "ERROR") code = EXIT_VMM_ERROR;
  if (ended.signalled) code = 128 + ended.signalled;
  if (ended.drainError) return { code: code || EXIT_VMM_ERROR, kind: "ERROR", reason: `${reason}; then ${ended.drainError}`, readyMs };
  return { code, kind, reason, readyMs };
}
