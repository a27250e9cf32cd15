/**
 * The vmm command line: `vmm boot`, `vmm run -- CMD...`, `vmm --help`.
 * Every error is one line on stderr and a non-zero exit; no stack traces.
 * bin/vmm.ts, the executable's entry, starts a vCPU Worker loading and then
 * loads this module.
 */
// What `vmm boot` runs is imported here; what only `vmm run` or `vmm restore`
// needs (the root's plan, the run cache, snapshots) and the default guest's
// search are imported where they are used, so that a boot does not load
// them. None of them loads a `node:` module on its way (ffi/sys_test.ts
// checks), which on Deno would start its Node layer (ffi/sys.ts).
import { parseArgs } from "../cli/args.ts";
import { env, exit } from "../ffi/sys.ts";
import { Machine, type MachineOptions } from "../loop/machine.ts";
import type { RunResult } from "../loop/control.ts";
import { ConfigError } from "../vm/vm.ts";
import { DEVICE_KINDS } from "../devices/registry.ts";
import { kvmKind } from "../vm/host.ts";
import { printError, printNote, progress } from "../cli/stderr.ts";
import { O_CLOEXEC, O_CREAT, O_TRUNC, O_WRONLY, open } from "../ffi/libc.ts";

/**
 * The default guest: embedded in a single executable, prebuilt in the npm
 * package, or built on demand in a checkout (guest/default_guest.ts). First
 * use of a packaged one unpacks it and says so in one line on stderr.
 */
async function defaultGuest(log?: (s: string) => void) {
  const { findDefaultGuest } = await import("../guest/default_guest.ts");
  return findDefaultGuest({ log, onUnpack: (line) => progress(line) });
}

const HELP = `vmm: a KVM virtual machine monitor for Deno and Bun

Usage:
  vmm boot [options]            boot a guest with its console on this terminal
  vmm run [options] -- CMD...   run CMD in a VM over this host's files, exit with CMD's status
  vmm restore DIR [options]     go on with a guest snapshotted into DIR (its console here);
                                device options give its disks, TAPs and shares again
  vmm --help | --version

vmm run: CMD sees the host's root read-only (writes to /etc, /var and the
home directory land in a tmpfs), the current directory read-write at the same
path, and runs there with this environment, uid and gid. Its stdin, stdout and
stderr are vmm's own; kernel messages are not shown (-v shows them on stderr).
  --console-log FILE  write the kernel's messages to FILE instead (for a run
                    that hangs or fails: what the guest said last)
  --root DIR        use DIR as the root instead (an unpacked image, a debootstrap tree)
  --rw DIR          also share DIR read-write at the same path (repeatable)
  --busybox         run CMD in the default guest's busybox initramfs instead,
                    with the console as its terminal (no host files)
  --cold            boot the guest even when a snapshot of it is cached (see below)

Options:
  --kernel PATH     bzImage or ELF vmlinux to boot (default: the default guest's Debian kernel)
  --kernel-as-is    boot --kernel's bzImage as it is (its own decompressor, KASLR);
                    by default vmm boots the ELF kernel inside it, unpacked once
                    into $VMM_KERNEL_CACHE (default ~/.cache/vmm/kernels)
  --initrd PATH     initramfs (default: the default guest's, when --kernel is not given)
  --cmdline TEXT    kernel command line (replaces the default)
  --append TEXT     added to the kernel command line
  --cpus N          vCPUs (default 1)
  --memory SIZE     guest RAM: MiB, or with a suffix M or G (default 512M)
${DEVICE_KINDS.flatMap((k) => (k.cli ? [`  ${k.cli.help}`] : [])).join("\n")}
  --console DEV     the guest console: serial (ttyS0, default) or hvc (virtio-console hvc0)
  --snapshot-dir DIR  vmm boot and vmm restore: on SIGUSR2, pause the guest, snapshot
                    it into DIR (memory and state files) and let it go on
  --virtio-cmdline  also list the virtio devices on the kernel command line
                    (kernels with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES and no ACPI)
  -v, --verbose     report boot timing and why the VM ended

A run over host files starts from a snapshot: the first one with a given
guest (kernel, initramfs, memory, CPUs, devices) boots it and snapshots it
once its init waits for its command; later ones restore that snapshot and
hand it their command. Snapshots live in $VMM_SNAPSHOT_CACHE (default
~/.cache/vmm/snapshots); runs with --drive or --net always boot.

Exit status: 0 when the guest powers off or reboots; CMD's status for vmm run
(128+N when a signal N ended it; 125 when the guest could not start it);
101 when the guest kernel panics; 102 when it triple-faults; 130/143 on
SIGINT/SIGTERM; 1 on errors; 2 on bad usage.
Console: Ctrl-A x quits.`;

const EXIT_USAGE = 2;

class UsageError extends Error {}

/** Parse `--memory`: plain MiB, or with an M/G suffix. */
export function parseMemory(s: string): number {
  const m = /^(\d+)([MmGg]i?[Bb]?)?$/.exec(s.trim());
  if (!m) throw new UsageError(`--memory ${s}: expected a size such as 512, 512M or 2G`);
  const n = Number(m[1]) * (m[2] && /^[Gg]/.test(m[2]) ? 1024 : 1);
  return n;
}

function parseCpus(s: string): number {
  if (!/^\d+$/.test(s)) throw new UsageError(`--cpus ${s}: expected a whole number`);
  return Number(s);
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs(argv, {
    kernel: { type: "string" },
    "kernel-as-is": { type: "boolean" },
    initrd: { type: "string" },
    cmdline: { type: "string" },
    append: { type: "string" },
    cpus: { type: "string" },
    memory: { type: "string" },
    ...Object.fromEntries(DEVICE_KINDS.flatMap((k) => (k.cli ? [[k.cli.flag, { type: k.cli.type, multiple: k.cli.multiple ?? false }]] : []))),
    console: { type: "string" },
    "console-log": { type: "string" },
    "snapshot-dir": { type: "string" },
    root: { type: "string" },
    rw: { type: "string", multiple: true },
    busybox: { type: "boolean" },
    cold: { type: "boolean" },
    "virtio-cmdline": { type: "boolean" },
    verbose: { type: "boolean", short: "v" },
    help: { type: "boolean", short: "h" },
    version: { type: "boolean" },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.version) {
    console.log("vmm 0.1.0");
    return 0;
  }
  const [cmd, ...rest] = positionals;
  if (cmd !== "boot" && cmd !== "run" && cmd !== "restore") {
    throw new UsageError(cmd ? `Unknown command '${cmd}' (try vmm --help)` : "No command given (try vmm --help)");
  }
  if (cmd === "boot" && rest.length > 0) throw new UsageError(`vmm boot takes no arguments, got '${rest[0]}'`);
  if (cmd === "restore" && rest.length !== 1) throw new UsageError("vmm restore takes one argument, the snapshot's directory: vmm restore DIR");
  if (values["snapshot-dir"] !== undefined && cmd === "run") throw new UsageError("--snapshot-dir is an option of vmm boot and vmm restore");
  if (cmd === "restore") {
    for (const o of ["kernel", "kernel-as-is", "initrd", "cmdline", "append", "virtio-cmdline", "busybox", "root", "rw", "cold", "console-log"] as const) {
      if (values[o] !== undefined) throw new UsageError(`--${o} is not an option of vmm restore: the guest it goes on with has its own`);
    }
  }
  if (cmd === "run" && rest.length === 0) throw new UsageError("vmm run needs a command: vmm run -- CMD...");

  const overRoot = values.root !== undefined || values.rw !== undefined;
  if (cmd !== "run" && (overRoot || values.busybox)) throw new UsageError("--root, --rw and --busybox are options of vmm run");
  if (values["console-log"] !== undefined && !(cmd === "run" && !values.busybox)) {
    throw new UsageError("--console-log is an option of vmm run over host files (elsewhere the console is the terminal)");
  }
  if (values.busybox && overRoot) throw new UsageError("--busybox runs CMD in the initramfs: it takes no --root or --rw");
  if (values.cold && !(cmd === "run" && !values.busybox)) throw new UsageError("--cold is an option of vmm run over host files (the only runs that start from a snapshot)");
  const cpus = values.cpus !== undefined ? parseCpus(values.cpus) : cmd === "restore" ? undefined : 1;
  const memMiB = values.memory !== undefined ? parseMemory(values.memory) : cmd === "restore" ? undefined : 512;
  const consoleDev = values.console ?? "serial";
  if (consoleDev !== "serial" && consoleDev !== "hvc") throw new UsageError(`--console ${consoleDev}: expected serial or hvc`);
  // Each device kind parses its own option (devices/registry.ts): bad values fail here, before KVM checks.
  const deviceOpts: Record<string, unknown> = {};
  for (const k of DEVICE_KINDS) {
    const v = k.cli && (values as Record<string, string[] | string | boolean | undefined>)[k.cli.flag];
    if (k.cli && v !== undefined) k.cli.apply(v, deviceOpts);
  }
  // Over a root: check it, the working directory and every --rw now, before KVM.
  const hostRun = cmd === "run" && !values.busybox
    ? (await import("../guest/root.ts")).planHostRun({ argv: rest, root: values.root, rw: values.rw })
    : undefined;
  // Opened (and emptied) now, so a path that cannot be written fails before KVM does.
  const log = values["console-log"];
  const consoleLog = log !== undefined ? open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644, `--console-log ${log}`) : undefined;
  const kind = kvmKind();
  if (kind === "none") throw new ConfigError("/dev/kvm: not found (is KVM enabled on this host?)");
  if (kind === "pvm" && !env().VMM_ALLOW_PVM) {
    throw new ConfigError(
      "/dev/kvm is PVM (kvm_pvm), which emulates guest kernel code and cannot boot a stock Linux kernel; use a host with hardware KVM",
    );
  }

  const opts: MachineOptions = {
    kernel: values.kernel ?? "",
    kernelAsIs: values["kernel-as-is"],
    log: values.verbose ? printNote : undefined,
    initrd: values.initrd,
    cmdline: values.cmdline,
    append: values.append,
    cpus,
    memMiB,
    command: cmd === "run" && !hostRun ? rest : undefined,
    hostRun,
    ...deviceOpts,
    console: { outFd: 1, inFd: 0, device: consoleDev },
    virtioCmdline: values["virtio-cmdline"] ?? false,
    signals: true,
    snapshotDir: values["snapshot-dir"],
  };
  const verbose = values.verbose ?? false;
  if (cmd === "restore") {
    const { restoreOptionsOf } = await import("../loop/snapshot.ts");
    await using restored = await Machine.fromSnapshot(rest[0], restoreOptionsOf(opts));
    return report(await restored.run(), verbose);
  }
  if (hostRun) {
    // stdout and stderr are the command's alone: the kernel's console goes to
    // /dev/null (the panic watch still reads it), to --console-log's file,
    // or to stderr with -v.
    const out = consoleLog ?? (values.verbose ? 2 : open("/dev/null", O_WRONLY | O_CLOEXEC));
    opts.console = { outFd: out, inFd: null, device: consoleDev };
    opts.stdio = { inFd: 0, outFd: 1, errFd: 2 };
  }
  if (!values.kernel) {
    const img = await defaultGuest(values.verbose ? printNote : undefined);
    opts.kernel = img.vmlinux ?? img.kernel; // the ELF kernel skips the decompressor (boot/vmlinux.ts)
    opts.initrd ??= img.initrd;
  } else if (cmd === "run" && !values.initrd) {
    opts.initrd = (await defaultGuest()).initrd;
  }
  await using machine = await makeMachine(opts, !values.cold, verbose);
  return report(await machine.run(), verbose);
}

/**
 * The machine of a run: restored from the run cache when it holds this
 * guest (loop/run_cache.ts), else booted, and then snapshotted into the
 * cache when its init is ready. A snapshot that cannot be restored costs one
 * line and a cold boot, which replaces it.
 */
async function makeMachine(opts: MachineOptions, useCache: boolean, verbose: boolean): Promise<Machine> {
  // Only a run over host files can start from a snapshot: a boot loads none of the run cache's modules.
  if (!useCache || !opts.hostRun) return await Machine.create(opts);
  const { cachedRun, cacheWritable, runCacheDir, runCacheKey, saveRun, touchRun } = await import("../loop/run_cache.ts");
  const { restoreOptionsOf } = await import("../loop/snapshot.ts");
  const key = runCacheKey(opts);
  if (key === null) return await Machine.create(opts);
  const { dir, present } = cachedRun(key);
  let replace = false;
  if (present) {
    const t0 = Date.now();
    try {
      const m = await Machine.fromSnapshot(dir, restoreOptionsOf(opts));
      touchRun(dir);
      if (verbose) printNote(`restored the waiting guest from ${dir} in ${Date.now() - t0} ms`);
      return m;
    } catch (e) {
      if (e instanceof ConfigError) throw e; // the options' fault (a command too big to send): a boot would fail the same way
      printNote(`cannot start from the snapshot in ${dir} (${(e as Error).message}); booting the guest instead`);
      replace = true; // this run's cold boot writes a new one in its place
    }
  }
  if (!cacheWritable()) {
    // Not a failure: this run boots, as every run will until the cache is writable.
    if (verbose) printNote(`cannot write snapshots to ${runCacheDir()}: booting every run`);
    return await Machine.create(opts);
  }
  return await Machine.create({
    ...opts,
    atReady: (snapshot) => {
      const t0 = Date.now();
      const mine = saveRun(dir, snapshot, replace);
      if (!verbose) return;
      printNote(mine ? `snapshot of the waiting guest written to ${dir} in ${Date.now() - t0} ms` : `another run wrote the snapshot in ${dir} first: kept that one`);
    },
  });
}

/** Say how the guest ended (one line, when it matters or with -v); returns vmm's exit status. */
function report(r: RunResult, verbose: boolean): number {
  if (verbose) {
    // The start-up breakdown matters where there is an init to wait for (vmm run); a bare `vmm boot -v` says only how it ended.
    if (r.readyMs !== undefined || r.restored) {
      if (r.builtMs !== undefined) printNote(`VM built after ${r.builtMs} ms`);
      if (r.workersMs !== undefined) printNote(`Workers started after ${r.workersMs} ms`);
    }
    if (r.readyMs !== undefined) printNote(`guest init ready after ${r.readyMs} ms`);
    printNote(`${r.reason || r.kind.toLowerCase()} (exit ${r.code})`);
  } else if (r.kind === "PANIC") {
    printError(`guest kernel panic: ${r.reason}`);
  } else if (r.kind === "ERROR" || r.kind === "TRIPLE_FAULT") {
    printError(r.reason);
  }
  return r.code;
}

/** Run the command line `argv` (the arguments after the script's name) and end the process with its status. */
export async function runCli(argv: string[]): Promise<never> {
  let code: number;
  try {
    code = await main(argv);
  } catch (e) {
    const err = e as Error;
    // parseArgs reports unknown or malformed options as TypeErrors.
    const usage = err instanceof UsageError || (err.name === "TypeError" && /option|argument/i.test(err.message));
    printError(err.message);
    code = usage ? EXIT_USAGE : 1;
  }
  exit(code);
}
