/**
 * vmm as a library: create a KVM virtual machine, boot a Linux kernel in it,
 * pause, resume and stop it, and learn how it ended — without blocking the
 * caller's event loop (the control loop runs on a Worker of its own).
 *
 * @example
 * ```ts
 * import { Machine } from "./mod.ts";
 * await using m = await Machine.create({ kernel: "/path/bzImage", initrd: "/path/initrd", cpus: 2, memMiB: 512 });
 * m.start();                      // returns at once; the guest runs
 * await m.pause();                // every vCPU parked, every queue quiesced, disks flushed
 * await m.resume();
 * await m.pause();
 * await m.snapshot("/var/tmp/snap"); // guest RAM (sparse) + state; still paused
 * // later, in any process: `await Machine.restore("/var/tmp/snap", { drives: [...] })`, then resume()
 * const result = await m.stop();   // or: await m.resume(); await m.wait()
 * console.log(result.code, result.reason);
 * ```
 */
export { DEFAULT_CMDLINE, Machine, type MachineOptions } from "./loop/machine.ts";
export { type MachineState, StateError } from "./loop/lifecycle.ts";
export { EXIT_PANIC, EXIT_TRIPLE_FAULT, EXIT_VMM_ERROR, type RunResult } from "./loop/control.ts";
export { ConfigError, SnapshotError } from "./vm/vm.ts";
export type { RestoreOptions } from "./loop/snapshot.ts";
export { SysError } from "./ffi/errno.ts";
export { KernelImageError } from "./boot/bzimage.ts";
export { type DriveSpec, parseDriveSpec } from "./devices/blk/disk.ts";
export { type NetSpec, parseNetSpec } from "./devices/net/tap.ts";
export { DEVICE_KINDS } from "./devices/registry.ts";
export { concatInitrd, runArchive, shellQuote } from "./guest/command.ts";
