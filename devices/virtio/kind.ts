/**
 * What a kind of virtio device declares, so that adding one touches its own
 * folder and one line of devices/registry.ts, and nothing else: not the
 * CLI, not mod.ts, not the Workers (kvmtool's `struct virtio_ops`,
 * registered with `virtio_dev_init()`).
 *
 * A device instance is a *spec*: plain data (fds as numbers, no functions)
 * that the main thread makes from the machine's options and posts as is to
 * every vCPU and queue Worker, each of which looks its kind up by
 * `spec.kind` and builds what it needs from it. State that must be the same
 * on every thread lives in the device's block of shared memory
 * (loop/shared.ts DEV): the registers, the configuration space, and
 * `DEVICE_STATE_WORDS` words the kind uses as it likes.
 */
import type { GuestMemory } from "../../vm/memory.ts";
import type { QueueHandler } from "./queue_handler.ts";

/** Every spec names its kind. */
export interface DeviceSpec {
  kind: string;
}

/** What the transport tells the driver (virtio 1.2 §4.2.2). */
export interface DeviceModel {
  /** Virtio device ID (virtio 1.2 §5: 1 net, 2 block, 3 console, 4 entropy, 26 fs). */
  deviceId: number;
  /** Device-specific feature bits; the transport adds the ring bits. */
  features: bigint;
  /** QueueNumMax of each queue. */
  queueSizes: number[];
  /** The configuration space at reset; copied into shared memory once. */
  config: Uint8Array;
}

/** What a queue handler may use, on its queue Worker's thread. */
export interface HandlerContext {
  mem: GuestMemory;
  /** Features the driver accepted. */
  features: bigint;
  /** Which of the device's queues this is. */
  queue: number;
  /** One line about the device (already prefixed with its name). */
  log: (line: string) => void;
  /** End the VM (a panic seen on hvc0, Ctrl-A x). */
  end: (kind: number, code: number, reason: string) => void;
  /** Words shared by every thread of this device, zero at VM start. */
  state: Int32Array;
  /** The configuration space as every vCPU reads it. Change bytes, then call `configChanged()`. */
  config: Uint8Array;
  /** Tell the driver the configuration changed (ConfigGeneration + a config interrupt). */
  configChanged: () => void;
  /**
   * The queue was taken over from a snapshot (loop/snapshot.ts): `state`
   * holds the saved driver session's words, to go on with, not to clear as
   * a new session (after DRIVER_OK) would.
   */
  restored?: boolean;
}

/** The file descriptors of the machine's console, for kinds that use them. */
export interface ConsoleOptions {
  outFd: number;
  inFd: number | null;
  device?: "serial" | "hvc";
}

/** A command-line option a kind adds to `vmm boot` and `vmm run`. */
export interface CliOption<Opts> {
  /** `drive` for `--drive`. */
  flag: string;
  /** A flag with no value (`--rng`), or one taking a string, repeatable or not. */
  type: "boolean" | "string";
  multiple?: boolean;
  /** Lines of `vmm --help`, already indented after the first. */
  help: string;
  /** Put the parsed value (string[] when multiple) into the machine's options; may throw ConfigError. */
  apply(values: string[] | string | boolean, o: Opts): void;
}

/**
 * A kind of device. `Opts` is the part of the machine's options it reads
 * (`{ drives?: … }`); devices/registry.ts merges them all into MachineOptions.
 */
export interface DeviceKind<Spec extends DeviceSpec = DeviceSpec, Opts = Record<string, unknown>> {
  readonly kind: Spec["kind"];
  readonly cli?: CliOption<Opts>;
  /**
   * Open what the devices need on the host (disk images, TAPs) and return
   * one spec per device, in the order the guest should see them. Throws
   * ConfigError naming the option; what it opened before throwing it closes.
   */
  open(o: Opts, console: ConsoleOptions): Spec[];
  /** Release what `open` took (close fds, drop locks). */
  close(spec: Spec): void;
  model(spec: Spec): DeviceModel;
  /** For log lines: `virtio-blk vda (disk.img)`; `ordinal` counts devices of this kind from 0. */
  name(spec: Spec, ordinal: number): string;
  /** The handler of one queue, made at each DRIVER_OK (a reset forgets the old one). */
  handler(spec: Spec, ctx: HandlerContext): QueueHandler;
  /**
   * Serve all of the device's queues from one Worker (one poll(2) on all
   * their fds) rather than one Worker per queue. For a device whose queues
   * carry little: every Worker costs its start-up (a module graph compiled
   * and FFI bound again; about 0.3 s on Bun and 1 s on Deno each in the
   * nested test host), which a restored guest waits for. A handler there
   * must not block for long: it holds up the device's other queues.
   */
  readonly oneWorker?: boolean;
}
