/**
 * Bus (devices/bus.ts): port and MMIO ranges mapped to devices. A device
 * sees offsets from its base; ranges never overlap; an access nobody claims
 * reads as all ones and a write to it vanishes, like an empty ISA bus.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Bus, type BusDevice } from "./bus.ts";

/** A device that records its accesses and reads back `0x40 + offset`. */
function recorder(): BusDevice & { log: string[] } {
  const log: string[] = [];
  return {
    log,
    read(offset, size) {
      log.push(`r ${offset} ${size}`);
      return 0x40 + offset;
    },
    write(offset, size, value) {
      log.push(`w ${offset} ${size} ${value}`);
    },
  };
}

test("Bus hands a device offsets from its base", () => {
  const bus = new Bus();
  const com1 = recorder();
  bus.add(0x3f8, 8, com1);
  assert.equal(bus.read(0x3fd, 1), 0x45);
  bus.write(0x3f8, 1, 0x41);
  bus.write(0x3ff, 1, 7);
  assert.deepEqual(com1.log, ["r 5 1", "w 0 1 65", "w 7 1 7"]);
});

test("Bus sends each access to the device whose range holds it", () => {
  const bus = new Bus();
  const a = recorder(), b = recorder();
  bus.add(0x60, 1, a);
  bus.add(0x64, 1, b);
  bus.write(0x64, 1, 0xfe);
  assert.deepEqual([a.log, b.log], [[], ["w 0 1 254"]]);
});

test("Bus reads an unclaimed address as all ones of the access size", () => {
  const bus = new Bus();
  bus.add(0x3f8, 8, recorder());
  assert.equal(bus.read(0x2f8, 1), 0xff);
  assert.equal(bus.read(0x2f8, 2), 0xffff);
  assert.equal(bus.read(0x2f8, 4), 0xffff_ffff);
  assert.equal(bus.read(0x3f8 + 8, 1), 0xff, "the first address past a range is unclaimed");
  assert.equal(bus.read(0xd000_0000, 4), 0xffff_ffff, "MMIO addresses above 2 GiB");
});

test("Bus drops a write to an unclaimed address", () => {
  const bus = new Bus();
  const dev = recorder();
  bus.add(0x600, 1, dev);
  bus.write(0x601, 1, 0x34);
  bus.write(0x5ff, 2, 0x3434);
  assert.deepEqual(dev.log, []);
});

test("Bus.add() rejects a range that overlaps one already claimed", () => {
  const bus = new Bus();
  bus.add(0x3f8, 8, recorder());
  for (const [base, len] of [[0x3f8, 8], [0x3f0, 9], [0x3ff, 1], [0x3fc, 2], [0x300, 0x200]]) {
    assert.throws(() => bus.add(base, len, recorder()), RangeError, `0x${base.toString(16)}+${len}`);
  }
  assert.throws(() => bus.add(0x3f0, 9, recorder()), { message: "Bus range 0x3f0+9 overlaps 0x3f8+8" });
  bus.add(0x3f0, 8, recorder()); // adjacent below
  bus.add(0x400, 4, recorder()); // adjacent above
  assert.equal(bus.read(0x3f7, 1), 0x47);
});
