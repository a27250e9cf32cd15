/**
 * Every kind of virtio device vmm has, in the order the guest sees them:
 * disks first (vda, vdb, …), then network cards, entropy, the console, the
 * shared directories. Adding a kind is a folder under devices/ with a
 * `DeviceKind` (devices/virtio/kind.ts) in its mod.ts, the script of its
 * queue Workers in its queue_worker.ts (three lines: serveQueues(itsKind)),
 * and one line here; the CLI, mod.ts's MachineOptions and the Workers take
 * it from this list.
 */
import type { DeviceKind, DeviceModel, DeviceSpec } from "./virtio/kind.ts";
import { queueWorkerPath, WORKER_ENTRIES } from "../loop/spare_workers.ts";
import { checkedModel } from "./virtio/device.ts";
import { type BlkOptions, blkKind, type BlkSpec } from "./blk/mod.ts";
import { type NetDeviceSpec, netKind, type NetOptions } from "./net/mod.ts";
import { rngKind, type RngOptions, type RngSpec } from "./rng/mod.ts";
import { consoleKind, type ConsoleSpec } from "./console/mod.ts";
import { type FsOptions, fsKind, type FsSpec } from "./fs/mod.ts";
import { stdioKind, type StdioOptions, type StdioSpec } from "./stdio/mod.ts";

// deno-lint-ignore no-explicit-any
export const DEVICE_KINDS: readonly DeviceKind<any, any>[] = [blkKind, netKind, rngKind, consoleKind, fsKind, stdioKind];

/** The options every kind reads, merged: part of MachineOptions. */
export type DeviceOptions = BlkOptions & NetOptions & RngOptions & FsOptions & StdioOptions;

/** Any device's spec. */
export type VirtioSpec = BlkSpec | NetDeviceSpec | RngSpec | ConsoleSpec | FsSpec | StdioSpec;

const byName = new Map(DEVICE_KINDS.map((k) => [k.kind, k]));

/** The kind of `spec`; throws for a kind this build does not have. */
export function kindOf(spec: DeviceSpec): DeviceKind {
  const k = byName.get(spec.kind);
  if (!k) throw new RangeError(`Unknown virtio device kind '${spec.kind}'`);
  return k;
}

/**
 * Every Worker script, by path from the repository root: the vCPU and
 * control Workers' and each kind's queue Worker's. A compiled executable must
 * list each as an entry point (scripts/build-exe.ts, scripts/deno-compile.ts).
 */
export function workerScripts(): string[] {
  return [...Object.values(WORKER_ENTRIES), ...DEVICE_KINDS.map((k) => queueWorkerPath(k.kind))];
}

/**
 * What the transport tells the driver of `spec` (checked against what its
 * shared block holds). The main thread works it out and posts it to the
 * Workers (loop/messages.ts VirtioDeviceInit), so a vCPU Worker needs no kind.
 */
export function describe(spec: VirtioSpec): DeviceModel {
  return checkedModel(spec.kind, kindOf(spec).model(spec));
}

/** Each device with its model and its name, for loop/virtio.ts wireVirtio. */
export function describeAll<S extends VirtioSpec>(specs: readonly S[]): { spec: S; model: DeviceModel; name: string }[] {
  const names = deviceNames(specs);
  return specs.map((spec, i) => ({ spec, model: describe(spec), name: names[i] }));
}

/** A short name of each device for log lines: `virtio-blk vda (disk.img)`. */
export function deviceNames(specs: readonly DeviceSpec[]): string[] {
  const seen = new Map<string, number>();
  return specs.map((spec) => {
    const n = seen.get(spec.kind) ?? 0;
    seen.set(spec.kind, n + 1);
    return kindOf(spec).name(spec, n);
  });
}
