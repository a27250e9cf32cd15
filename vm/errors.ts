/**
 * The errors vmm reports as one line naming the input: here alone, so that
 * a device kind that checks its options (devices/blk, net, fs) does not load
 * vm/vm.ts, and with it KVM and CPUID, into every queue Worker of its kind.
 * vm/vm.ts re-exports both.
 */

/** A configuration vmm cannot run with (bad sizes, missing KVM features). */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/**
 * A snapshot vmm will not restore; the message is one line naming what does
 * not match. Here, beside ConfigError, rather than in vm/snapshot_file.ts:
 * mod.ts exports it, and a library that never restores need not load that.
 */
export class SnapshotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SnapshotError";
  }
}
