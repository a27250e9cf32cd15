import { test } from "node:test";
import assert from "node:assert/strict";
import { MAX_VIRTIO_DEVICES, virtioCmdline, virtioSlot } from "./device.ts";
import { deviceNames, describe } from "../registry.ts";
import type { VirtioSpec } from "../registry.ts";
import { buildDsdt } from "../../boot/acpi.ts";

const disk = (path: string, readOnly = false) => ({ fd: -1, path, sizeBytes: 1 << 20, readOnly, id: "x" });

test("virtioSlot gives each device the next 4 KiB window and the next GSI from 5", () => {
  assert.deepEqual(virtioSlot(0), { base: 0xd000_0000, size: 0x1000, irq: 5 });
  assert.deepEqual(virtioSlot(2), { base: 0xd000_2000, size: 0x1000, irq: 7 });
  assert.equal(virtioSlot(MAX_VIRTIO_DEVICES - 1).irq, 23); // the IOAPIC's last pin
  assert.throws(() => virtioSlot(MAX_VIRTIO_DEVICES), /at most 19 virtio devices/);
});

test("virtioCmdline is the form Linux's virtio_mmio.device= parser takes: size@base:irq", () => {
  assert.equal(virtioCmdline(0), "virtio_mmio.device=4K@0xd0000000:5");
  assert.equal(virtioCmdline(1), "virtio_mmio.device=4K@0xd0001000:6");
});

test("describe: device IDs, queue counts and config sizes per virtio 1.2 §5", () => {
  const blk = describe({ kind: "blk", disk: disk("a.img"), queues: 1 });
  assert.deepEqual([blk.deviceId, blk.queueSizes.length], [2, 1]);
  assert.ok(blk.config.length >= 8, "blk config has at least the capacity");
  const rng = describe({ kind: "rng" });
  assert.deepEqual([rng.deviceId, rng.queueSizes.length, rng.config.length], [4, 1, 0]);
  const con = describe({ kind: "console", inFd: null, outFd: 1, escape: false });
  assert.deepEqual([con.deviceId, con.queueSizes.length, con.config.length], [3, 2, 12]);
});

test("deviceNames names disks vda, vdb… in order, whatever sits between them", () => {
  const specs: VirtioSpec[] = [{ kind: "blk", disk: disk("a.img"), queues: 1 }, { kind: "rng" }, { kind: "blk", disk: disk("b.img", true), queues: 1 }];
  assert.deepEqual(deviceNames(specs), ["virtio-blk vda (a.img)", "virtio-rng", "virtio-blk vdb (b.img)"]);
});

test("the DSDT lists each slot as an LNRO0005 device", () => {
  const dsdt = new TextDecoder("latin1").decode(buildDsdt([virtioSlot(0), virtioSlot(1)]));
  assert.equal(dsdt.split("LNRO0005").length - 1, 2);
});
