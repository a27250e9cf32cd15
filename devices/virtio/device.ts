/**
 * The virtio devices of a VM, as plain data every thread can rebuild them
 * from: the main thread decides them (from the command line), and each vCPU
 * Worker and queue Worker receives the same `VirtioSpec` and builds its own
 * `MmioTransport` over the device's shared register state.
 *
 * Each device gets the next virtio-mmio window and the next interrupt, in
 * order, so `--drive a --drive b` is vda then vdb, as with QEMU and kvmtool.
 */
import { VIRTIO_IRQ_START, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START } from "../../boot/layout.ts";
import type { Disk } from "../disk.ts";
import type { NetBackend } from "../tap.ts";
import { NET_FEATURES, netConfig, VIRTIO_ID_NET } from "./net.ts";
import { blkConfig, blkFeatures, VIRTIO_ID_BLOCK } from "./blk.ts";
import { consoleConfig, VIRTIO_ID_CONSOLE } from "./console.ts";
import { type MmioDevice, MmioTransport } from "./mmio.ts";
import { VIRTIO_ID_ENTROPY } from "./rng.ts";

/** The last GSI of the IOAPIC's 24 pins: virtio devices take 5…23. */
const LAST_GSI = 23;
export const MAX_VIRTIO_DEVICES = LAST_GSI - VIRTIO_IRQ_START + 1;

/** Queue sizes: room for a deep block queue, small ones for the chatty-free devices. */
export const BLK_QUEUE_SIZE = 256;
export const RNG_QUEUE_SIZE = 64;
export const CONSOLE_QUEUE_SIZE = 128;
export const NET_QUEUE_SIZE = 256;

export type VirtioSpec =
  | { kind: "blk"; disk: Disk }
  | { kind: "rng" }
  | { kind: "net"; net: NetBackend }
  /** `inFd` null: the guest gets no input. `escape`: Ctrl-A x quits (terminal input). */
  | { kind: "console"; inFd: number | null; outFd: number; escape: boolean };

/** Where device `index` sits: its MMIO window and interrupt. */
export function virtioSlot(index: number): { base: number; size: number; irq: number } {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_VIRTIO_DEVICES) {
    throw new RangeError(`vmm supports at most ${MAX_VIRTIO_DEVICES} virtio devices`);
  }
  return { base: VIRTIO_MMIO_START + index * VIRTIO_MMIO_SIZE, size: VIRTIO_MMIO_SIZE, irq: VIRTIO_IRQ_START + index };
}

/**
 * The kernel command-line form of a device, `virtio_mmio.device=4K@0xd0000000:5`,
 * for kernels built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (Debian's are
 * not: they find the devices in the ACPI DSDT).
 */
export function virtioCmdline(index: number): string {
  const { base, size, irq } = virtioSlot(index);
  return `virtio_mmio.device=${size / 1024}K@0x${base.toString(16)}:${irq}`;
}

/** What the transport must know of a device. */
export function describe(spec: VirtioSpec): MmioDevice {
  switch (spec.kind) {
    case "blk":
      return {
        deviceId: VIRTIO_ID_BLOCK,
        features: blkFeatures(spec.disk),
        queueSizes: [BLK_QUEUE_SIZE],
        config: blkConfig(spec.disk, BLK_QUEUE_SIZE),
      };
    case "net":
      return {
        deviceId: VIRTIO_ID_NET,
        features: NET_FEATURES,
        queueSizes: [NET_QUEUE_SIZE, NET_QUEUE_SIZE],
        config: netConfig(spec.net.mac, spec.net.mtu),
      };
    case "rng":
      return { deviceId: VIRTIO_ID_ENTROPY, features: 0n, queueSizes: [RNG_QUEUE_SIZE], config: new Uint8Array(0) };
    case "console":
      return {
        deviceId: VIRTIO_ID_CONSOLE,
        features: 0n,
        queueSizes: [CONSOLE_QUEUE_SIZE, CONSOLE_QUEUE_SIZE],
        config: consoleConfig(),
      };
  }
}

/** A short name of each device for log lines: `virtio-blk vda (disk.img)`. */
export function deviceNames(specs: readonly VirtioSpec[]): string[] {
  let blk = 0;
  return specs.map((spec) => {
    if (spec.kind === "net") return `virtio-net (${spec.net.tap})`;
    if (spec.kind !== "blk") return `virtio-${spec.kind}`;
    // vda…vdz, then vdaa like Linux's sd_format_disk_name; 19 devices never get there.
    return `virtio-blk vd${String.fromCharCode(0x61 + blk++)} (${spec.disk.path})`;
  });
}

/** This thread's view of the device's registers: every thread passes the same `state`. */
export function transportFor(spec: VirtioSpec, state: Int32Array): MmioTransport {
  return new MmioTransport(describe(spec), { eventIdx: true, indirectDesc: true, state });
}
