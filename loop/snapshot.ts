/**
 * Snapshot and restore of a machine: what `Machine.snapshot()` writes and
 * what `Machine.restore()` puts back (Firecracker's `persist.rs`, with the
 * file format in vm/snapshot_file.ts).
 *
 * A snapshot is a directory of two files:
 * - `memory`: guest RAM, byte for byte at its mapping's offsets, sparse:
 *   every all-zero page is a hole (never written, never read back from
 *   disk), so a 512 MiB guest that touched 40 MiB costs 40 MiB;
 * - `state`: the rest (vm/snapshot_file.ts), written last, so a directory
 *   with a `state` has the `memory` that goes with it.
 * Each is written to a temporary name and renamed into place: a reader never
 * sees half a file, and a machine restored from this very directory keeps
 * its mapping of the old `memory` (a rename leaves the old inode alive; a
 * truncate would turn its untouched pages into SIGBUS).
 *
 * It is taken from a paused machine: every vCPU parked out of KVM_RUN with
 * its in-flight I/O completed, every queue Worker parked after the request
 * in hand with its ring position published in the shared block (QPOS) and
 * its disk flushed (loop/control.ts). So the state read here is at rest:
 * KVM's registers, the shared block's device regions and the UART words.
 *
 * Restore runs in the order KVM needs (vm/vcpu_state.ts, vm/vm_state.ts):
 * devices are opened from the restoring process's options and checked
 * against the snapshot's list, the VM is made with RAM mapped MAP_PRIVATE
 * from `memory` (vm/vm.ts), each vCPU's state is set, the shared block gets
 * the device regions and UART back, and the VM state goes last, kvmclock
 * with it, so the guest's clock starts again as late as possible. The
 * machine comes back paused: its vCPUs park before their first KVM_RUN and
 * each queue that was running starts from its saved ring position, paused
 * (loop/queue_worker.ts), until `resume()`.
 */
import { join, mkdirSync, pid, readFileSync, readTextFileSync, renameSync, rmSync, statSync, truncateSync } from "../ffi/sys.ts";
import { check, close, errno, fileIdOf, hostView, libc, NativeBuf, O_CLOEXEC, O_CREAT, O_RDONLY, O_WRONLY, open, writeAll } from "../ffi/libc.ts";
import { E, SysError } from "../ffi/errno.ts";
import { VcpuFd } from "../ffi/kvm.ts";
import { msrsToSave, restoreVcpu, saveVcpu, vcpuStateCaps } from "../vm/vcpu_state.ts";
import { restoreVmState, saveVmState } from "../vm/vm_state.ts";
import {
  cpuidMismatch, decodeSnapshot, devicesMismatch, encodeSnapshot, SnapshotError, type SnapshotDevice, type SnapshotState,
} from "../vm/snapshot_file.ts";
import { describe, type VirtioSpec } from "../devices/registry.ts";
import { parseNetSpec } from "../devices/net/tap.ts";
import { withHostRun } from "../guest/command.ts";
import { ConfigError, Vm } from "../vm/vm.ts";
import { withSpinLock } from "../devices/spinlock.ts";
import {
  CTL, DEV, DEVICE_LAYOUT, Q, queueRunWord, RUN, SERIAL_BYTES, SERIAL_OFFSET, type SharedViews, VIRTIO_BLOCK_BYTES, virtioBlock,
} from "./shared.ts";
import type { MachineOptions } from "./machine.ts";

export const MEMORY_FILE = "memory", STATE_FILE = "state";
const PAGE = 4096;
const MiB = 1024 * 1024;

/**
 * The options of `Machine.restore()`: those of `Machine.create()` that say
 * where the guest's devices are on this host (disks, TAPs, shares, the
 * console's fds). What the guest already holds (kernel, initrd, command
 * line) comes from the snapshot; `cpus` and `memMiB`, if given, must match it.
 */
export type RestoreOptions = Omit<Partial<MachineOptions>, "kernel" | "kernelAsIs" | "initrd" | "cmdline" | "append" | "command" | "virtioCmdline">;

/** The options of `Machine.create()` a restore takes: those that do not say what to boot. */
export function restoreOptionsOf(o: MachineOptions): RestoreOptions {
  const { kernel: _k, kernelAsIs: _ka, initrd: _i, cmdline: _c, append: _a, command: _cmd, virtioCmdline: _v, ...devices } = o;
  return devices;
}

/** What a machine holds that a snapshot reads or writes. */
export interface SnapshotParts {
  vm: Vm;
  specs: VirtioSpec[];
  shared: SharedViews;
}

/**
 * The shared block's device and UART layout, as text: device regions are
 * copied as bytes, so a vmm whose layout moved must not take them (the vmm
 * version check catches that too; this names it).
 */
export const SHARED_FINGERPRINT = [
  ...DEVICE_LAYOUT.map((r) => `${r.name}@${r.at}+${r.bytes}`), `block ${VIRTIO_BLOCK_BYTES}`, `uart ${SERIAL_BYTES}`,
].join("; ");

/** What must match for the guest not to notice a device moved (vm/snapshot_file.ts SnapshotDevice.identity). */
export function deviceIdentity(spec: VirtioSpec): Record<string, string | number | boolean> {
  switch (spec.kind) {
    case "blk":
      return { sizeBytes: spec.disk.sizeBytes, readOnly: spec.disk.readOnly, serial: spec.disk.id };
    case "net":
      return { mac: spec.net.mac.map((b) => b.toString(16).padStart(2, "0")).join(":"), mtu: spec.net.mtu };
    case "fs":
      return { tag: spec.tag, readOnly: spec.readOnly };
    default:
      return {}; // rng, console, stdio: nothing of their own the guest could tell apart
  }
}

function deviceRecord(spec: VirtioSpec): Omit<SnapshotDevice, "block"> {
  const m = describe(spec);
  return { kind: spec.kind, identity: deviceIdentity(spec), deviceId: m.deviceId, features: m.features, queueSizes: m.queueSizes };
}

/**
 * Copy `len` bytes of the shared block at `at`, a region guarded by a
 * spinlock (devices/spinlock.ts) at its byte `lockAt`, holding it, so the
 * copy is never of a change half made. The copy's lock word is left free.
 */
function lockedCopy(shared: SharedViews, at: number, len: number, lockAt = 0): Uint8Array {
  const words = new Int32Array(shared.bytes.buffer, shared.bytes.byteOffset + at, len / 4);
  const copy = withSpinLock(words, lockAt / 4, () => shared.bytes.slice(at, at + len));
  new DataView(copy.buffer).setInt32(lockAt, 0, true);
  return copy;
}

/** Write `p`'s snapshot into `dir`. The machine must be paused (loop/lifecycle.ts "snapshot"). */
export function writeSnapshot(dir: string, p: SnapshotParts): void {
  const { vm, shared } = p;
  mkdirSync(dir, { recursive: true });
  const caps = vcpuStateCaps(vm.vm);
  const msrs = msrsToSave(vm.kvm);
  const vcpus = vm.vcpuFds.map((fd) => saveVcpu(new VcpuFd(fd), msrs, caps));
  const state: SnapshotState = {
    createdAt: new Date().toISOString(),
    memory: { bytes: vm.memSize, regions: vm.regions.map((r) => ({ ...r })) },
    cpus: vm.vcpuFds.length,
    sharedLayout: SHARED_FINGERPRINT,
    devices: p.specs.map((spec, i) => ({ ...deviceRecord(spec), block: lockedCopy(shared, virtioBlock(i), VIRTIO_BLOCK_BYTES, DEV.MMIO) })),
    vcpus,
    vm: saveVmState(vm.vm),
    uart: lockedCopy(shared, SERIAL_OFFSET, SERIAL_BYTES),
  };
  writeMemory(join(dir, MEMORY_FILE), vm);
  publish(join(dir, STATE_FILE), (tmp) => {
    const fd = open(tmp, O_WRONLY | O_CREAT, 0o600);
    try {
      writeAll(fd, encodeSnapshot(state));
      check("fdatasync snapshot", libc.fdatasync(fd));
    } finally {
      close(fd);
    }
  });
}

/** Whether each path still names the file its fd is open on (same device and inode). */
export function stillThere(files: readonly (readonly [string, number])[]): boolean {
  return files.every(([path, fd]) => {
    try {
      const st = statSync(path);
      return `${st.dev}:${st.ino}` === fileIdOf(fd);
    } catch {
      return false; // gone
    }
  });
}

/** Open a snapshot file to read, or refuse the snapshot naming it. */
function openOrRefuse(path: string): number {
  try {
    return open(path, O_RDONLY | O_CLOEXEC);
  } catch (e) {
    throw new SnapshotError(`${path}: ${e instanceof SysError && e.errno === E.ENOENT ? "no such file" : (e as Error).message}`);
  }
}

/** Make `path` by writing a temporary file beside it, then renaming it into place. */
function publish(path: string, write: (tmp: string) => void): void {
  const tmp = `${path}.tmp-${pid()}`;
  rmSync(tmp, { force: true });
  try {
    write(tmp);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Guest RAM into `path`, skipping all-zero pages: each run of non-zero pages
 * is one pwrite(2) straight from the guest mapping at its own offset, so the
 * pages between stay holes; a final truncate gives the file its full size.
 */
export function writeMemory(path: string, vm: Pick<Vm, "memAddr" | "memSize" | "memFromFile">): void {
  const ram = hostView(vm.memAddr, vm.memSize);
  const words = new Int32Array(ram.buffer, ram.byteOffset, vm.memSize / 4);
  const untouched = untouchedPages(vm);
  const zero = (page: number) => {
    if (untouched?.[page]) return true;
    for (let i = page * (PAGE / 4), end = i + PAGE / 4; i < end; i++) if (words[i] !== 0) return false;
    return true;
  };
  publish(path, (tmp) => {
    const fd = open(tmp, O_WRONLY | O_CREAT, 0o600);
    try {
      const pages = vm.memSize / PAGE;
      for (let p = 0; p < pages;) {
        if (zero(p)) {
          p++;
          continue;
        }
        let end = p + 1;
        while (end < pages && !zero(end)) end++;
        pwriteAll(fd, vm.memAddr + BigInt(p * PAGE), (end - p) * PAGE, p * PAGE);
        p = end;
      }
      check("fdatasync snapshot", libc.fdatasync(fd));
    } finally {
      close(fd);
    }
    truncateSync(tmp, vm.memSize);
  });
}

/**
 * Pages of anonymous guest RAM the guest never touched (mincore(2): not
 * resident), which are zero without looking. Reading them to check would
 * cost a page fault each (the kernel maps its zero page there) to learn
 * what is known already. Null (look at
 * every page) for RAM mapped from a file, where a page not in memory may
 * still hold data, and on a host with swap, where a page swapped out is not
 * resident either.
 */
function untouchedPages(vm: Pick<Vm, "memAddr" | "memSize" | "memFromFile">): Uint8Array | null {
  if (vm.memFromFile || hostHasSwap()) return null;
  const pages = vm.memSize / PAGE;
  const vec = NativeBuf.alloc(pages);
  try {
    check("mincore guest RAM", libc.mincore(vm.memAddr, BigInt(vm.memSize), vec.addr));
    return vec.bytes.map((b) => (b & 1) ^ 1);
  } finally {
    vec.free();
  }
}

function hostHasSwap(): boolean {
  try {
    return !/^SwapTotal:\s+0 kB$/m.test(readTextFileSync("/proc/meminfo"));
  } catch {
    return true;
  }
}

function pwriteAll(fd: number, addr: bigint, len: number, off: number): void {
  for (let done = 0; done < len;) {
    const r = Number(libc.pwrite(fd, addr + BigInt(done), BigInt(len - done), BigInt(off + done)));
    if (r < 0) throw new SysError("pwrite snapshot memory", errno());
    done += r;
  }
}

/**
 * A snapshot directory, read and checked, ready to restore: the state
 * file decoded (vm/snapshot_file.ts refuses a damaged one), the memory file
 * present and whole. `Machine.restore()` hands it to build(), which calls
 * `options()`, then `vm()` once the devices are open, then `apply()`.
 */
export class SnapshotSource {
  state!: SnapshotState;
  readonly #memPath: string;
  /** Both files, open from the start: what is read is one snapshot, whatever happens to the directory. */
  #stateFd = -1;
  #memFd = -1;

  /** Open the snapshot in `dir` and check it; a SnapshotError names what is wrong. */
  static async open(dir: string): Promise<SnapshotSource> {
    const src = new SnapshotSource(dir);
    try {
      await src.#check(join(dir, STATE_FILE));
    } catch (e) {
      src.close();
      throw e;
    }
    return src;
  }

  private constructor(dir: string) {
    const statePath = join(dir, STATE_FILE);
    this.#memPath = join(dir, MEMORY_FILE);
    try {
      this.#stateFd = openOrRefuse(statePath);
      this.#memFd = openOrRefuse(this.#memPath);
      // Another process may replace the directory (loop/run_cache.ts) between
      // the two opens; files only ever move as a whole directory, so if the
      // paths still name the files open here, those two belong together.
      if (!stillThere([[statePath, this.#stateFd], [this.#memPath, this.#memFd]])) {
        throw new SnapshotError(`${dir}: the snapshot changed while it was being read`);
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Read the state file through the fd opened above and check it against the memory file. */
  async #check(statePath: string): Promise<void> {
    const bytes = readFileSync(`/proc/self/fd/${this.#stateFd}`);
    const s = this.state = await decodeSnapshot(bytes, statePath);
    if (s.sharedLayout !== SHARED_FINGERPRINT) throw new SnapshotError(`${statePath}: its device block layout is not this vmm's`);
    const size = statSync(`/proc/self/fd/${this.#memFd}`).size;
    if (size < s.memory.bytes) throw new SnapshotError(`${this.#memPath}: truncated: ${size} bytes, the guest has ${s.memory.bytes}`);
    if (size > s.memory.bytes) throw new SnapshotError(`${this.#memPath}: ${size} bytes, the guest has ${s.memory.bytes}: not this snapshot's memory`);
  }

  /** Close the files (the VM's mapping keeps the memory file); safe to call again. */
  close(): void {
    for (const fd of [this.#stateFd, this.#memFd]) if (fd >= 0) close(fd);
    this.#stateFd = this.#memFd = -1;
  }

  /**
   * The machine options build() runs with: the caller's devices, with the
   * snapshot's CPU count and memory size (a different one given is refused),
   * and each net card's MAC and MTU from the snapshot unless given (the
   * guest already knows them). Nothing is loaded: RAM comes from the file.
   */
  options(o: RestoreOptions): MachineOptions {
    const s = this.state, memMiB = s.memory.bytes / MiB;
    const cpus = (n: number) => `${n} CPU${n === 1 ? "" : "s"}`;
    if (o.cpus !== undefined && o.cpus !== s.cpus) throw new SnapshotError(`The snapshot has ${cpus(s.cpus)}, the options give ${o.cpus}`);
    if (o.memMiB !== undefined && o.memMiB !== memMiB) throw new SnapshotError(`The snapshot has ${memMiB} MiB of memory, the options give ${o.memMiB}`);
    const savedNets = s.devices.filter((d) => d.kind === "net");
    const nets = o.nets?.map((n, i) => {
      const spec = typeof n === "string" ? parseNetSpec(n) : { ...n };
      const saved = savedNets[i]?.identity;
      if (saved && spec.mac === undefined) spec.mac = String(saved.mac).split(":").map((h) => parseInt(h, 16));
      if (saved && spec.mtu === undefined) spec.mtu = Number(saved.mtu);
      return spec;
    });
    // A host run's shares are devices, and its command goes ahead of stdin
    // to an init that waits for it (guest/command.ts), as on a cold boot.
    let withRun: RestoreOptions;
    try {
      withRun = withHostRun(o);
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
    return { ...withRun, hostRun: undefined, nets, kernel: new Uint8Array(0), cpus: s.cpus, memMiB };
  }

  /** The devices are open: check them against the snapshot, then make the VM over the memory file. */
  vm(specs: VirtioSpec[]): Vm {
    const s = this.state;
    const diff = devicesMismatch(s.devices, specs.map(deviceRecord));
    if (diff) throw new SnapshotError(`The snapshot's ${diff}`);
    const vm = new Vm({ cpus: s.cpus, memMiB: s.memory.bytes / MiB, memFd: this.#memFd });
    try {
      if (vm.regions.some((r, i) => r.gpa !== s.memory.regions[i]?.gpa || r.size !== s.memory.regions[i].size)) {
        throw new SnapshotError("The snapshot's guest memory regions are not the ones this vmm lays out");
      }
      s.vcpus.forEach((c, i) => {
        // Against what a vCPU here has: the CPUID new Vm() gave it
        // (vm/cpuid.ts), as KVM_GET_CPUID2 reads it back, as saveVcpu() read
        // the saved one. PVM's KVM answers there with more features than its
        // KVM_GET_SUPPORTED_CPUID lists (its guests' user code runs on the
        // host CPU), so the supported list alone refuses its own snapshots.
        const diff = cpuidMismatch(c.cpuid, new VcpuFd(vm.vcpuFds[i]).getCpuid());
        if (diff) throw new SnapshotError(`The snapshot's vCPU ${i} has ${diff}`);
      });
    } catch (e) {
      vm.close();
      throw e;
    }
    return vm;
  }

  /**
   * Put the state back: vCPUs, then the shared block (device regions, UART,
   * the vCPUs told to park), then the VM state with the clock. Called once
   * the queues are wired (their config space written at reset, overwritten here).
   */
  apply(p: SnapshotParts): void {
    const s = this.state, { vm, shared } = p;
    s.vcpus.forEach((c, i) => {
      const { refusedMsrs } = restoreVcpu(new VcpuFd(vm.vcpuFds[i]), c);
      if (refusedMsrs.length) {
        throw new SnapshotError(`KVM refused MSRs ${refusedMsrs.map((m) => "0x" + m.toString(16)).join(", ")} of the snapshot's vCPU ${i}`);
      }
    });
    if (s.uart.length !== SERIAL_BYTES) throw new SnapshotError(`The snapshot's UART state is ${s.uart.length} bytes, not ${SERIAL_BYTES}`);
    shared.bytes.set(s.uart, SERIAL_OFFSET);
    s.devices.forEach((d, i) => {
      const block = virtioBlock(i);
      if (d.block.length !== VIRTIO_BLOCK_BYTES) throw new SnapshotError(`The snapshot's device ${i} block is ${d.block.length} bytes`);
      shared.bytes.set(d.block, block);
      // A queue the pause left PAUSED was running: its Worker takes it back
      // at the saved position (QPOS), still paused; any other state is idle.
      d.queueSizes.forEach((_, q) => {
        const w = queueRunWord(block, q);
        shared.ctl[w] = shared.ctl[w] === Q.PAUSED ? Q.PAUSED : Q.IDLE;
      });
    });
    // The vCPU Workers see PAUSE before their first KVM_RUN and park.
    Atomics.store(shared.ctl, CTL.RUN, RUN.PAUSE);
    restoreVmState(vm.vm, s.vm);
  }
}
