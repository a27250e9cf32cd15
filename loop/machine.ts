/**
 * A machine with a lifecycle: create → start → (pause ⇄ resume) → stop or
 * the guest's own end → close. The states live in loop/lifecycle.ts; this
 * file owns what each step makes and releases.
 *
 * `create()` builds everything that does not run: the VM, guest RAM with the
 * kernel in it, the devices' host side (disk images, TAPs), the shared block,
 * the kvm_run mappings and every eventfd. `start()` starts the Workers — one
 * per vCPU, one per virtqueue — and the control loop on a Worker of its own
 * (it also feeds stdin to the serial console), then returns. Commands reach
 * the loop through the mailbox in the shared block plus an eventfd; the loop
 * answers with messages. `run()` is the CLI's form: the same loop, on the
 * calling thread.
 *
 * Everything made is recorded in an `Owner` as it is made, so a failed
 * `create()` and `close()` release exactly what exists, in reverse order.
 */
import { fstatSync } from "../ffi/sys.ts";
import {
  close as closeFd, EFD_CLOEXEC, EFD_NONBLOCK, eventfd, eventfdSignal, hostView, libc, mmapAnon, mmapFd, NativeBuf, O_RDONLY, open, preadData, preadFile, SIGINT,
  SIGTERM, SIGUSR1, SIGUSR2,
} from "../ffi/libc.ts";
import { acquireKickSignal, releaseKickSignal, signalPipe } from "../ffi/signals.ts";
import { RawTerminal } from "../ffi/termios.ts";
import { CAP } from "../ffi/kvm.ts";
import { buildMachine } from "../vm/machine.ts";
import { ConfigError, type Vm } from "../vm/vm.ts";
import type { ImageSource } from "../boot/image.ts";
import { type HostRun, hostRunArchive, runArchive, withHostRun } from "../guest/command.ts";
import { DEVICE_KINDS, describeAll, type DeviceOptions, kindOf, type VirtioSpec } from "../devices/registry.ts";
import type { ConsoleOptions } from "../devices/virtio/kind.ts";
import { virtioCmdline, virtioSlot } from "../devices/virtio/device.ts";
import { CMD, CTL, EXIT_KIND, recordExit, SHARED_BYTES, sharedViews, type SharedViews } from "./shared.ts";
import { Controller, type RunResult, runResult } from "./control.ts";
import { Lifecycle, type MachineState, StateError } from "./lifecycle.ts";
import { joinWorkers, queueWorker, SpareWorkers, startWorker, type WorkerHandle } from "./workers.ts";
import { syncPages, unwireVirtio, wireVirtio } from "./virtio.ts";
import type { ControlEvent, ControlInit, QueueInit, VcpuInit, VirtioDeviceInit } from "./messages.ts";
import type { RestoreOptions, SnapshotSource } from "./snapshot.ts";
import { unpackedKernel } from "./kernel_cache.ts";

/** The command line vmm gives a kernel unless told otherwise. */
export const DEFAULT_CMDLINE = [
  "console=ttyS0",
  // Only critical kernel messages (panics, oopses) reach the console, so
  // `vmm run` prints what the command prints; --append loglevel=7 shows all.
  "loglevel=3",
  "reboot=k", // reboot through the i8042 reset line, which ends the VM
  "panic=-1", // reboot at once on panic: vmm reports it and exits
  "pci=off", // no PCI bus: skip probing it
  // An idle guest should cost nothing. A trace of an idle guest's timers
  // (30 s at its shell) showed 9 wake-ups a second, 4 of them from the two
  // below; without them vmm's host CPU for a guest idle at its shell falls
  // from 0.8% of a core to 0.2% (`scripts/bench-boot.ts --idle 60`).
  // - The clocksource watchdog (2 a second) checks the TSC against
  //   another clock because the TSC might drift; a KVM guest's clock is
  //   kvm-clock, and KVM keeps the TSC in step. Kata Containers passes it too.
  "tsc=reliable",
  // - kcompactd wakes twice a second to compact memory ahead of need
  //   (proactive compaction); a throwaway VM's memory is never fragmented
  //   enough to repay it. With 0 it sleeps until an allocation asks for it.
  "sysctl.vm.compaction_proactiveness=0",
].join(" ");

export interface MachineOptions extends DeviceOptions {
  /**
   * Kernel path or bytes: a bzImage, or an ELF vmlinux (boot/vmlinux.ts),
   * which boots without decompressing itself. A bzImage given by path boots
   * as the vmlinux inside it, unpacked once into vmm's cache
   * (loop/kernel_cache.ts), unless `kernelAsIs`.
   */
  kernel: string | Uint8Array;
  /** Boot a bzImage as it is: its own decompressor, KASLR and all (`--kernel-as-is`). */
  kernelAsIs?: boolean;
  /** vmm's own notes on what it did, one line each (`vmm -v` prints them): a kernel unpacked, say. */
  log?: (line: string) => void;
  /** initramfs path or bytes. */
  initrd?: string | Uint8Array;
  /** Kernel command line; default DEFAULT_CMDLINE. */
  cmdline?: string;
  /** Appended to the command line. */
  append?: string;
  cpus?: number;
  memMiB?: number;
  /** Run this command in the default guest's busybox initramfs and exit with its status (`vmm run --busybox`). */
  command?: string[];
  /**
   * Run a command over a root shared with virtio-fs and exit with its status
   * (`vmm run`; the plan comes from guest/root.ts `planHostRun`). The shares it
   * needs are added to `shares`; give `stdio` too, for the command's stdin,
   * stdout and stderr.
   */
  hostRun?: HostRun;
  /** Console: guest output fd, input fd (null: none) and device. Default stdout/stdin on the UART. */
  console?: ConsoleOptions;
  /** Also list the virtio devices on the kernel command line (`virtio_mmio.device=`). */
  virtioCmdline?: boolean;
  /** Take SIGINT and SIGTERM while running: the machine stops with status 130 or 143 (the CLI does). */
  signals?: boolean;
  /**
   * With `signals`, SIGUSR2 pauses the machine, snapshots it into this
   * directory (loop/snapshot.ts) and lets it go on: `vmm boot
   * --snapshot-dir`. Only under run(), whose thread can reach the machine.
   */
  snapshotDir?: string;
  /**
   * Called when the guest's init reports ready (port 0xF5), with the machine
   * paused at that very instruction; `snapshot(dir)` writes it as
   * `Machine.snapshot()` would. The guest resumes when this returns. `vmm
   * run` snapshots its waiting guest this way (loop/run_cache.ts). Only under
   * run(), whose thread can reach the machine.
   */
  atReady?: (snapshot: (dir: string) => void) => void;
}

/** How long `wait()` gives the Workers to leave their loops once the control loop ended. */
const JOIN_TIMEOUT_MS = 10_000;

/** Releases, in reverse order, what was recorded as it was made. */
class Owner {
  readonly #undo: (() => void)[] = [];
  add(undo: () => void): void {
    this.#undo.push(undo);
  }
  release(): void {
    while (this.#undo.length) {
      try {
        this.#undo.pop()!();
      } catch { /* keep releasing the rest */ }
    }
  }
}

/**
 * loop/snapshot.ts, loaded by the first machine that saves or restores one:
 * it reads and writes files through `node:` modules, which a plain boot does
 * without (ffi/sys.ts says what they cost Deno).
 */
const snapshots = () => import("./snapshot.ts");

/**
 * A kernel or initrd given by path: checked now (it exists, is a file, can
 * be read), then read by the loader piece by piece, straight into guest RAM
 * (boot/image.ts).
 */
function load(what: string, v: string | Uint8Array): ImageSource {
  if (typeof v !== "string") return v;
  let size: number;
  try {
    const fd = open(v, O_RDONLY); // that it can be read, now
    try {
      const st = fstatSync(fd);
      if (st.isDirectory) throw Object.assign(new Error("is a directory"), { code: "EISDIR" });
      size = st.size;
    } finally {
      closeFd(fd);
    }
  } catch (e) {
    const code = (e as { code?: string }).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "is a directory" : (e as Error).message;
    throw new ConfigError(`${what} ${v}: ${why}`);
  }
  const name = `${what} ${v}`;
  return {
    size,
    read(offset, len) {
      const n = Math.max(0, Math.min(len, size - offset));
      const buf = NativeBuf.alloc(n);
      try {
        preadFile(v, buf.addr, n, offset, name);
        return buf.bytes.slice(0, n);
      } finally {
        buf.free();
      }
    },
    // Into a new VM's RAM, all zeros still: the file's holes need no reading.
    readInto(mem, gpa, len, offset) {
      preadData(v, mem.hostAddress(gpa, len), len, offset, name);
    },
  };
}

/** What a machine holds between create() and close(). */
interface Parts {
  vm: Vm;
  console: ConsoleOptions;
  specs: VirtioSpec[];
  virtio: VirtioDeviceInit[];
  sharedAddr: bigint;
  shared: SharedViews;
  runAddrs: bigint[];
  ctlFd: number;
  cmdFd: number;
  vcpuWakeFds: number[];
  /** The Workers of #launch, made early (loop/workers.ts SpareWorkers). */
  spares: SpareWorkers;
  signals: boolean;
  snapshotDir?: string;
  atReady?: (snapshot: (dir: string) => void) => void;
  /** Made from a snapshot to go on at once (Machine.fromSnapshot): its vCPUs and queues come up parked. */
  resumeFirst: boolean;
  /** Made from a snapshot at all. */
  restored: boolean;
}

/**
 * A virtual machine. Make one with `Machine.create()`, then either `start()`
 * it and `wait()` (or `stop()`) without blocking this thread, or `run()` it
 * on this thread.
 */
export class Machine {
  readonly #life = new Lifecycle();
  readonly #own: Owner;
  readonly #p: Parts;
  readonly #startedAt: number;
  #workersMs: number | undefined;
  readonly #builtMs: number;
  #workers: WorkerHandle[] = [];
  /** Set once start() or run() began launching. */
  #launched: Promise<void> | null = null;
  /** Per run: released when it ends (signal handlers, the terminal). */
  readonly #runOwn = new Owner();
  readonly #ended: Promise<RunResult>;
  #resolveEnded!: (r: RunResult) => void;
  #result: RunResult | null = null;
  #pending = new Map<number, { op: "pause" | "resume" | "stop"; resolve: () => void; reject: (e: Error) => void }>();
  /** A Worker outlived the drain: its memory must stay mapped. */
  #unsafeToUnmap = false;

  /** The VM (fds, guest memory) while the machine is open. */
  get vm(): Vm {
    return this.#p.vm;
  }

  /** created, running, paused, stopped or closed. */
  get state(): MachineState {
    return this.#life.state;
  }

  private constructor(parts: Parts, own: Owner, startedAt: number) {
    this.#p = parts;
    this.#startedAt = startedAt;
    this.#builtMs = Date.now() - startedAt; // made right after build()
    this.#own = own;
    this.#ended = new Promise((r) => (this.#resolveEnded = r));
  }

  /** Check the options, create the VM and load the guest into it. Errors reject the promise. */
  static async create(o: MachineOptions): Promise<Machine> {
    const startedAt = Date.now();
    const own = new Owner();
    try {
      return new Machine(await build(o, own), own, startedAt);
    } catch (e) {
      own.release();
      throw e;
    }
  }

  /**
   * Bring back a snapshot `snapshot(dir)` wrote, in this process
   * (loop/snapshot.ts): devices from `o` (disks and TAPs may have other
   * paths, not other sizes), RAM mapped from the snapshot's memory file, each
   * vCPU and device as it was. Resolves with the machine paused: `resume()`
   * continues the guest. A snapshot this vmm or this host cannot continue is
   * refused with a SnapshotError naming what does not match.
   */
  static async restore(dir: string, o: RestoreOptions = {}): Promise<Machine> {
    const m = await Machine.#fromDir(dir, o, false);
    // Its vCPUs and queues come up parked (loop/snapshot.ts); a pause
    // through the control loop returns once every one of them is.
    m.start();
    try {
      await m.pause();
    } catch (e) {
      await m.close();
      throw e;
    }
    return m;
  }

  /**
   * A machine made from a snapshot that goes on where it was when started:
   * `run()` or `start()` continue the guest, as they would start a new one.
   * Devices come from `o` as for `restore()`, which is the form that stays
   * paused. `vmm run` takes this road from its snapshot cache.
   */
  static fromSnapshot(dir: string, o: RestoreOptions = {}): Promise<Machine> {
    return Machine.#fromDir(dir, o, true);
  }

  /** What restore() and fromSnapshot() share: the snapshot read and checked, the machine built from it, not started. */
  static async #fromDir(dir: string, o: RestoreOptions, resumeFirst: boolean): Promise<Machine> {
    const startedAt = Date.now();
    const own = new Owner();
    try {
      const from = await (await snapshots()).SnapshotSource.open(dir);
      own.add(() => from.close());
      const parts = await build(from.options(o), own, from);
      from.close(); // RAM is mapped: the files are not needed any more
      return new Machine({ ...parts, resumeFirst }, own, startedAt);
    } catch (e) {
      own.release();
      throw e;
    }
  }

  /**
   * Save this paused machine into `dir` (made if missing): guest RAM as the
   * sparse file `memory`, everything else in `state` (loop/snapshot.ts). The
   * machine stays paused; resume() or stop() it afterwards.
   */
  async snapshot(dir: string): Promise<void> {
    this.#life.check("snapshot");
    await this.#launched;
    (await snapshots()).writeSnapshot(dir, this.#p);
  }

  /** Start the guest and return at once; the control loop runs on a Worker. */
  start(): void {
    this.#life.done("start");
    this.#launched = this.#launch(false);
  }

  /**
   * Start the guest and run the control loop on this thread until the guest
   * ends: this thread's event loop stops meanwhile (the CLI's way; an
   * application wants `start()` and `wait()`).
   */
  async run(): Promise<RunResult> {
    this.#life.done("start");
    this.#launched = this.#launch(true);
    await this.#launched;
    return await this.#ended;
  }

  /** Every vCPU out of KVM_RUN and parked, every queue quiesced and flushed. */
  async pause(): Promise<void> {
    this.#life.check("pause");
    await this.#command(CMD.PAUSE, "pause");
    this.#life.done("pause");
  }

  /** Continue exactly where pause() stopped. */
  async resume(): Promise<void> {
    this.#life.check("resume");
    await this.#command(CMD.RESUME, "resume");
    this.#life.done("resume");
  }

  /** How the guest ended, once it has; disks are flushed and closed by then. */
  wait(): Promise<RunResult> {
    this.#life.check("wait");
    return this.#ended;
  }

  /** Stop the guest in order (vCPUs, then queues drained and disks flushed); resolves with how it ended. */
  async stop(): Promise<RunResult> {
    this.#life.check("stop");
    if (this.#life.state !== "stopped") {
      try {
        await this.#command(CMD.STOP, "stop");
      } catch (e) {
        if (!(e instanceof StateError)) throw e; // the guest ended first: that is a stop too
      }
    }
    const r = await this.#ended;
    this.#life.done("stop");
    return r;
  }

  /** Release everything: stops a running machine first. */
  async close(): Promise<void> {
    if (this.#life.state === "closed") return;
    if (this.#life.state === "running" || this.#life.state === "paused") await this.stop();
    else if (this.#launched) await this.#ended;
    this.#life.done("close");
    if (this.#unsafeToUnmap) {
      // A Worker would touch these after munmap: keep them mapped (a leak, not a crash).
      console.error("vmm: a Worker did not end; guest memory stays mapped");
      return;
    }
    this.#own.release();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Put a command in the mailbox, wake the loop, and wait for its answer. */
  async #command(cmd: number, op: "pause" | "resume" | "stop"): Promise<void> {
    await this.#launched;
    if (this.#result) throw new StateError(op, "stopped");
    const { ctl } = this.#p.shared;
    const seq = Atomics.load(ctl, CTL.CMD_SEQ) + 1;
    const done = new Promise<void>((resolve, reject) => this.#pending.set(seq, { op, resolve, reject }));
    Atomics.store(ctl, CTL.CMD, cmd);
    Atomics.store(ctl, CTL.CMD_SEQ, seq);
    eventfdSignal(this.#p.cmdFd);
    await done;
  }

  #onEvent = (ev: ControlEvent): void => {
    if (ev.type === "done") {
      const p = this.#pending.get(ev.seq);
      this.#pending.delete(ev.seq);
      if (ev.ok) p?.resolve();
      else p?.reject(new Error(ev.error ?? "command failed"));
      return;
    }
    void this.#finish(ev);
  };

  /** Start the Workers and the control loop (`inline`: on this thread, blocking it). */
  async #launch(inline: boolean): Promise<void> {
    const p = this.#p, vm = p.vm;
    let sigFd = -1;
    if (p.signals) {
      const pipe = signalPipe(p.snapshotDir !== undefined ? [SIGINT, SIGTERM, SIGUSR2] : [SIGINT, SIGTERM]);
      this.#runOwn.add(pipe.close);
      sigFd = pipe.fd;
    }
    acquireKickSignal(SIGUSR1);
    this.#runOwn.add(releaseKickSignal);
    const inFd = p.console.inFd;
    if (inFd !== null && RawTerminal.isTty(inFd)) {
      const term = new RawTerminal(inFd);
      term.enter();
      this.#runOwn.add(() => term.restore());
    }

    // A ready hook needs this thread (the control loop runs here): only run() holds the guest for it.
    if (inline && p.atReady) Atomics.store(p.shared.ctl, CTL.HOLD_AT_READY, 1);
    const mem = { memAddr: vm.memAddr, memSize: vm.memSize, regions: vm.regions };
    const ctlFd = p.ctlFd, shared = p.sharedAddr;
    // Queue Workers first, all started together: they park until their
    // driver is ready, and the guest needs a second or more to get there.
    const starting: Promise<WorkerHandle>[] = [];
    for (const device of p.virtio) {
      for (const group of queueGroups(device.spec, device.ioFds.length)) {
        const init: QueueInit = { kind: "queue", device, queues: group, shared, ctlFd, ...mem };
        starting.push(startWorker(queueWorker(device.spec.kind), init, undefined, p.spares));
      }
    }
    vm.vcpuFds.forEach((vcpuFd, id) => {
      const init: VcpuInit = {
        kind: "vcpu", id, vcpuFd, vmFd: vm.vm.fd, runAddr: p.runAddrs[id], runSize: vm.runSize, shared, ctlFd,
        wakeFd: p.vcpuWakeFds[id], outFd: p.console.outFd, ...mem, virtio: p.virtio,
      };
      starting.push(startWorker("vcpu", init, undefined, p.spares));
    });
    p.spares.close(); // none should be left
    const started = await Promise.allSettled(starting);
    this.#workersMs = Date.now() - this.#startedAt;
    for (const r of started) if (r.status === "fulfilled") this.#workers.push(r.value);
    const failed = started.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failed) {
      // End at once: the loop below sees the exit and stops what did start.
      recordExit(p.shared.ctl, p.shared.bytes, EXIT_KIND.ERROR, 1, (failed.reason as Error).message);
      inline = true;
    }

    const init: ControlInit = {
      kind: "control", shared, runAddrs: p.runAddrs, runSize: vm.runSize, vcpuWakeFds: p.vcpuWakeFds, ctlFd, cmdFd: p.cmdFd,
      sigFd, consoleInFd: serialInput(p.console), vmFd: vm.vm.fd, virtio: p.virtio,
      resumeFirst: p.resumeFirst,
    };
    if (!inline) {
      try {
        this.#workers.push(await startWorker("control", init, (d) => this.#onEvent(d as ControlEvent)));
        return;
      } catch (e) {
        recordExit(p.shared.ctl, p.shared.bytes, EXIT_KIND.ERROR, 1, (e as Error).message);
      }
    }
    const dir = p.snapshotDir, atReady = p.atReady;
    const writeSnapshot = dir !== undefined || atReady ? (await snapshots()).writeSnapshot : () => {};
    const c = new Controller(init, {
      ...(dir !== undefined ? { snapshot: () => (writeSnapshot(dir, p), dir) } : {}),
      ...(atReady ? { atReady: () => atReady((to) => writeSnapshot(to, p)) } : {}),
    });
    try {
      c.run(this.#onEvent);
    } finally {
      c.close();
    }
  }

  /** The loop ended: join the Workers, close the devices' host side, then resolve wait(). */
  async #finish(ev: { signalled: number; drainError: string }): Promise<void> {
    const late = await joinWorkers(this.#workers, JOIN_TIMEOUT_MS);
    this.#workers = [];
    if (late) this.#unsafeToUnmap = true;
    for (const spec of this.#p.specs) {
      try {
        kindOf(spec).close(spec);
      } catch { /* closing is best effort; the fds go with the process */ }
    }
    this.#p.specs.length = 0;
    this.#runOwn.release();
    let r: RunResult = { ...runResult(this.#p.shared, this.#startedAt, ev), builtMs: this.#builtMs, workersMs: this.#workersMs, ...(this.#p.restored ? { restored: true } : {}) };
    if (late) r = { ...r, code: r.code || 1, kind: "ERROR", reason: `${r.reason}; then ${late} Worker(s) did not end` };
    this.#result = r;
    this.#life.ended();
    for (const [, p] of this.#pending) p.reject(new StateError(p.op, "stopped"));
    this.#pending.clear();
    this.#resolveEnded(r);
  }
}

/**
 * The queue Workers of a device with `queues` queues, each as the queues it
 * serves: one Worker a queue, or one for all where the kind says oneWorker.
 */
function queueGroups(spec: VirtioSpec, queues: number): number[][] {
  const all = Array.from({ length: queues }, (_, q) => q);
  return kindOf(spec).oneWorker ? [all] : all.map((q) => [q]);
}

/** The fd the control loop feeds to the serial console, or -1 (none, or hvc's, which comes through a queue). */
function serialInput(c: ConsoleOptions): number {
  return c.inFd !== null && c.device !== "hvc" ? c.inFd : -1;
}

/** Everything create() makes, each piece recorded in `own` as it is made. */
async function build(o: MachineOptions, own: Owner, from?: SnapshotSource): Promise<Parts> {
  let kernel = load("--kernel", o.kernel);
  if (typeof o.kernel === "string" && !o.kernelAsIs && !from) {
    const unpacked = await unpackedKernel(o.kernel);
    if (unpacked) {
      o.log?.(unpacked.fresh
        ? `unpacked the ELF kernel inside ${o.kernel} into ${unpacked.path}`
        : `booting the ELF kernel inside ${o.kernel} from ${unpacked.path}`);
      kernel = load("--kernel", unpacked.path);
    }
  }
  const initrd = o.initrd !== undefined ? load("--initrd", o.initrd) : undefined;
  let initrdExtra: Uint8Array | undefined;
  if (o.command || o.hostRun) {
    if (!initrd) throw new ConfigError("A command needs an initrd whose init runs it (the default guest's)");
    initrdExtra = o.hostRun ? hostRunArchive() : runArchive(o.command!);
  }
  try {
    // The run's own shares join any the caller gave (tags vmm.root, vmm.cwd,
    // vmm.rwN), and its command goes ahead of stdin (guest/command.ts).
    o = withHostRun(o);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  const console_ = o.console ?? { outFd: 1, inFd: 0 };
  let cmdline = o.cmdline ?? DEFAULT_CMDLINE;
  if (console_.device === "hvc" && o.cmdline === undefined) cmdline = cmdline.replace("console=ttyS0", "console=hvc0");

  const specs: VirtioSpec[] = [];
  own.add(() => specs.forEach((s) => kindOf(s).close(s)));
  for (const kind of DEVICE_KINDS) specs.push(...kind.open(o, console_));
  const devices = describeAll(specs); // each one's model, worked out once
  // The Workers #launch will start begin loading their scripts now, while
  // this thread still makes the VM and loads the guest or the snapshot.
  const spares = new SpareWorkers();
  own.add(() => spares.close());
  const cpus = o.cpus ?? 1;
  for (const d of devices) spares.add(queueWorker(d.spec.kind), queueGroups(d.spec, d.model.queueSizes.length).length);
  spares.add("vcpu", cpus);
  if (o.virtioCmdline) cmdline = [cmdline, ...specs.map((_, i) => virtioCmdline(i))].join(" ");
  cmdline = [cmdline, o.append ?? ""].join(" ").trim();

  const vm = from ? from.vm(specs) : buildMachine({
    kernel, initrd, initrdExtra, cmdline, cpus, memMiB: o.memMiB ?? 512, mmioDevices: specs.map((_, i) => virtioSlot(i)),
  });
  own.add(() => vm.close());

  const sharedAddr = mmapAnon(SHARED_BYTES, undefined, undefined, "mmap shared block");
  own.add(() => libc.munmap(sharedAddr, BigInt(SHARED_BYTES)));
  const shared = sharedViews(hostView(sharedAddr, SHARED_BYTES));
  const runAddrs = vm.vcpuFds.map((fd, i) => {
    const a = mmapFd(fd, vm.runSize, `mmap kvm_run of vCPU ${i}`);
    own.add(() => libc.munmap(a, BigInt(vm.runSize)));
    return a;
  });
  const fd = () => {
    const f = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
    own.add(() => closeFd(f));
    return f;
  };
  const ctlFd = fd(), cmdFd = fd();
  const vcpuWakeFds = vm.vcpuFds.map(() => fd());
  // Register pages where KVM maps memory read-only (loop/virtio.ts); the slots after RAM's.
  const pages = vm.vm.checkExtension(CAP.READONLY_MEM) > 0 ? { sharedAddr, firstSlot: vm.regions.length } : undefined;
  const virtio = wireVirtio(vm.vm.fd, devices, shared.bytes, pages);
  own.add(() => unwireVirtio(virtio));
  from?.apply({ vm, specs, shared }); // it starts the guest's clock
  syncPages(virtio, shared.bytes); // the registers as they are now, fresh or restored
  return {
    vm, console: console_, specs, virtio, sharedAddr, shared, runAddrs, ctlFd, cmdFd, vcpuWakeFds, spares, signals: o.signals ?? false,
    snapshotDir: o.snapshotDir, atReady: o.atReady, resumeFirst: false, restored: from !== undefined,
  };
}
