/**
 * vmm as a library: create a KVM virtual machine, boot a Linux kernel in it,
 * and learn how it ended.
 *
 * @example
 * ```ts
 * import { Machine } from "./mod.ts";
 * const m = await Machine.create({ kernel: "/path/bzImage", initrd: "/path/initrd", cpus: 2, memMiB: 512 });
 * const result = await m.run(); // blocks this thread until the guest ends; stop() works from other threads
 * console.log(result.code, result.reason);
 * ```
 */
import { readFileSync } from "node:fs";
import { buildMachine } from "./vm/machine.ts";
import { ConfigError, type Vm } from "./vm/vm.ts";
import { type ConsoleFds, runVm, type RunResult } from "./loop/control.ts";
import { writeCpio, S_IFDIR, S_IFREG } from "./guest/cpio.ts";
import { closeDisk, type Disk, type DriveSpec, openDisk, parseDriveSpec } from "./devices/disk.ts";
import { closeNet, type NetBackend, type NetSpec, openNet, parseNetSpec } from "./devices/tap.ts";
import { virtioCmdline, virtioSlot, type VirtioSpec } from "./devices/virtio/device.ts";
import { wireVirtio } from "./loop/virtio.ts";
import type { VirtioDeviceInit } from "./loop/messages.ts";
import { RawTerminal } from "./ffi/termios.ts";

export { ConfigError } from "./vm/vm.ts";
export { SysError } from "./ffi/errno.ts";
export { KernelImageError } from "./boot/bzimage.ts";
export { type DriveSpec, parseDriveSpec } from "./devices/disk.ts";
export { type NetSpec, parseNetSpec } from "./devices/tap.ts";
export { EXIT_PANIC, EXIT_VMM_ERROR, type RunResult } from "./loop/control.ts";

/** The command line vmm gives a kernel unless told otherwise. */
export const DEFAULT_CMDLINE = [
  "console=ttyS0",
  // Only critical kernel messages (panics, oopses) reach the console, so
  // `vmm run` prints what the command prints; --append loglevel=7 shows all.
  "loglevel=3",
  "reboot=k", // reboot through the i8042 reset line, which ends the VM
  "panic=-1", // reboot at once on panic: vmm reports it and exits
  "pci=off", // no PCI bus: skip probing it
].join(" ");

export interface MachineOptions {
  /** bzImage path or bytes. */
  kernel: string | Uint8Array;
  /** initramfs path or bytes. */
  initrd?: string | Uint8Array;
  /** Kernel command line; default DEFAULT_CMDLINE. */
  cmdline?: string;
  /** Appended to the command line. */
  append?: string;
  cpus?: number;
  memMiB?: number;
  /** Run this command in the default guest's init and exit with its status. */
  command?: string[];
  /** Console: guest output fd, input fd (null: none) and device. Default stdout/stdin on the UART. */
  console?: ConsoleFds;
  /** Raw disk images, as virtio-blk devices vda, vdb, … (strings in the `--drive` form). */
  drives?: (DriveSpec | string)[];
  /** TAP devices, as virtio-net cards eth0, eth1, … (strings in the `--net` form). */
  nets?: (NetSpec | string)[];
  /** Add a virtio-rng device. */
  rng?: boolean;
  /** Also list the virtio devices on the kernel command line (`virtio_mmio.device=`). */
  virtioCmdline?: boolean;
}

function load(what: string, v: string | Uint8Array): Uint8Array {
  if (typeof v !== "string") return v;
  try {
    return new Uint8Array(readFileSync(v));
  } catch (e) {
    const code = (e as { code?: string }).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "is a directory" : (e as Error).message;
    throw new ConfigError(`${what} ${v}: ${why}`);
  }
}

/** Quote one argument for sh. */
export function shellQuote(arg: string): string {
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** The extra initramfs archive that makes the default guest run `command`. */
export function runArchive(command: string[]): Uint8Array {
  const script = `${command.map(shellQuote).join(" ")}\n`;
  return writeCpio([
    { path: "vmm", mode: S_IFDIR | 0o755 },
    { path: "vmm/run.sh", mode: S_IFREG | 0o755, data: new TextEncoder().encode(script) },
  ]);
}

/** Concatenate initramfs archives (Linux unpacks them one after another). */
export function concatInitrd(a: Uint8Array, b: Uint8Array): Uint8Array {
  const pad = (4 - (a.length % 4)) % 4;
  const out = new Uint8Array(a.length + pad + b.length);
  out.set(a);
  out.set(b, a.length + pad);
  return out;
}

/** A virtual machine ready to run. */
export class Machine {
  readonly vm: Vm;
  readonly #console: ConsoleFds;
  readonly #startedAt: number;
  readonly #virtio: VirtioDeviceInit[];
  readonly #disks: Disk[];
  readonly #nets: NetBackend[];

  private constructor(
    vm: Vm,
    console_: ConsoleFds,
    startedAt: number,
    virtio: VirtioDeviceInit[],
    disks: Disk[],
    nets: NetBackend[],
  ) {
    this.vm = vm;
    this.#console = console_;
    this.#startedAt = startedAt;
    this.#virtio = virtio;
    this.#disks = disks;
    this.#nets = nets;
  }

  /** Check the options, create the VM and load the guest into it. */
  static create(o: MachineOptions): Promise<Machine> {
    const startedAt = Date.now();
    const kernel = load("--kernel", o.kernel);
    let initrd = o.initrd !== undefined ? load("--initrd", o.initrd) : undefined;
    if (o.command) {
      if (!initrd) throw new ConfigError("A command needs an initrd whose init runs /vmm/run.sh (the default guest's)");
      initrd = concatInitrd(initrd, runArchive(o.command));
    }
    const console_ = o.console ?? { outFd: 1, inFd: 0 };
    let cmdline = o.cmdline ?? DEFAULT_CMDLINE;
    if (console_.device === "hvc" && o.cmdline === undefined) cmdline = cmdline.replace("console=ttyS0", "console=hvc0");

    const disks: Disk[] = [];
    const nets: NetBackend[] = [];
    try {
      for (const d of o.drives ?? []) disks.push(openDisk(typeof d === "string" ? parseDriveSpec(d) : d));
      for (const n of o.nets ?? []) nets.push(openNet(typeof n === "string" ? parseNetSpec(n) : n));
      const specs: VirtioSpec[] = disks.map((disk) => ({ kind: "blk", disk }));
      for (const net of nets) specs.push({ kind: "net", net });
      if (o.rng) specs.push({ kind: "rng" });
      if (console_.device === "hvc") {
        const { inFd, outFd } = console_;
        specs.push({ kind: "console", inFd, outFd, escape: inFd !== null && RawTerminal.isTty(inFd) });
      }
      if (o.virtioCmdline) cmdline = [cmdline, ...specs.map((_, i) => virtioCmdline(i))].join(" ");
      cmdline = [cmdline, o.append ?? ""].join(" ").trim();
      const vm = buildMachine({
        kernel,
        initrd,
        cmdline,
        cpus: o.cpus ?? 1,
        memMiB: o.memMiB ?? 512,
        mmioDevices: specs.map((_, i) => virtioSlot(i)),
      });
      const virtio = wireVirtio(vm.vm.fd, specs);
      return Promise.resolve(new Machine(vm, console_, startedAt, virtio, disks, nets));
    } catch (e) {
      disks.forEach(closeDisk);
      nets.forEach(closeNet);
      throw e;
    }
  }

  /**
   * Run until the guest powers off, resets, panics, reports an exit status,
   * or a signal stops it. Every disk is flushed and closed (its lock released)
   * before this resolves.
   */
  async run(): Promise<RunResult> {
    try {
      return await runVm(this.vm, this.#console, this.#startedAt, this.#virtio);
    } finally {
      this.#disks.forEach(closeDisk);
      this.#nets.forEach(closeNet);
    }
  }
}
