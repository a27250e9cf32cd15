/**
 * Every kind of virtio device vmm has, in the order the guest sees them:
 * disks first (vda, vdb, …), then network cards, entropy, the console, the
 * shared directories. Adding a kind is a folder under devices/ with a
 * `DeviceKind` (devices/virtio/kind.ts) and one line here; the CLI, mod.ts's
 * MachineOptions and the Workers take it from this list.
 */
import type { DeviceKind, DeviceSpec } from "./virtio/kind.ts";
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
