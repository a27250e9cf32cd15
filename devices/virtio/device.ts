/**
 * Where each virtio device sits and how every thread sees it.
 *
 * The main thread decides the devices (devices/registry.ts, from the
 * machine's options) and what the transport tells the driver of each (its
 * `DeviceModel`); each vCPU Worker and queue Worker receives the same
 * models and builds its own `MmioTransport` over the device's block of
 * shared memory (loop/shared.ts DEV), whose registers and configuration
 * space are therefore one device for all of them. This file does not load
 * the registry, so a vCPU Worker does not load every kind's queue handlers.
 *
 * Each device gets the next virtio-mmio window and the next interrupt, in
 * order, so `--drive a --drive b` is vda then vdb, as with QEMU and kvmtool.
 */
import { VIRTIO_IRQ_START, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START } from "../../boot/layout.ts";
import { DEV, VIRTIO_BLOCK_BYTES, VIRTIO_CONFIG_MAX, VIRTIO_MAX_QUEUES } from "../../loop/shared.ts";
import type { VirtioDeviceInit } from "../../loop/messages.ts";
import type { DeviceModel } from "./kind.ts";
import { MmioTransport, mmioStateWords, VIRTIO_MMIO_PAGE_SIZE } from "./mmio.ts";

/** The last GSI of the IOAPIC's 24 pins: virtio devices take 5…23. */
const LAST_GSI = 23;
export const MAX_VIRTIO_DEVICES = LAST_GSI - VIRTIO_IRQ_START + 1;

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

/** `m`, a device of `kind`'s model, once checked against what its shared block holds. */
export function checkedModel(kind: string, m: DeviceModel): DeviceModel {
  if (m.queueSizes.length > VIRTIO_MAX_QUEUES || mmioStateWords(m.queueSizes.length) * 4 > DEV.QUEUE_RUN - DEV.MMIO) {
    throw new RangeError(`virtio-${kind}: too many queues (${m.queueSizes.length})`);
  }
  if (m.config.length > VIRTIO_CONFIG_MAX) throw new RangeError(`virtio-${kind}: config space of ${m.config.length} bytes`);
  return m;
}

/**
 * This thread's view of a device's block (`block`: the bytes at its DEV
 * offset 0): registers and configuration space in shared memory, and of
 * its register page if it has one (loop/virtio.ts). Every thread passes its
 * own view of the same block and page.
 */
export function transportFor(model: DeviceModel, block: Uint8Array, page?: Uint8Array): MmioTransport {
  const state = new Int32Array(block.buffer, block.byteOffset + DEV.MMIO, (DEV.QUEUE_RUN - DEV.MMIO) / 4);
  const config = block.subarray(DEV.CONFIG, DEV.CONFIG + model.config.length);
  return new MmioTransport({ ...model, config }, { eventIdx: true, indirectDesc: true, state, page });
}

/**
 * This thread's transport of a wired device (loop/virtio.ts wireVirtio),
 * over its block and register page in `shared`, this thread's view of the
 * whole shared block.
 */
export function deviceTransport(dev: VirtioDeviceInit, shared: Uint8Array): MmioTransport {
  const block = shared.subarray(dev.block, dev.block + VIRTIO_BLOCK_BYTES);
  return transportFor(dev.model, block, dev.page < 0 ? undefined : shared.subarray(dev.page, dev.page + VIRTIO_MMIO_PAGE_SIZE));
}

/** Put a device's reset-time configuration space into its shared block (the main thread, once). */
export function initConfig(model: DeviceModel, block: Uint8Array): void {
  block.set(model.config, DEV.CONFIG);
}
