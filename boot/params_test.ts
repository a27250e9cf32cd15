/**
 * buildBootParams() (boot/params.ts) and the e820 map of boot/layout.ts:
 * the zero page read back at the offsets of struct boot_params
 * (arch/x86/include/uapi/asm/bootparam.h, x86 zero-page.rst).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { BOOT_PARAMS_SIZE, BP, buildBootParams, type BootParamsInput, E820_MAX_ENTRIES } from "./params.ts";
import { HDR, parseBzImage } from "./bzimage.ts";
import { E820_RAM, E820_RESERVED, e820Map, type E820Entry } from "./layout.ts";
import { makeBzImage } from "../test/support/tiny_kernel.ts";

const MiB = 1024 * 1024, GiB = 1024 * MiB;

function input(o: Partial<BootParamsInput> = {}): BootParamsInput {
  return {
    header: parseBzImage(makeBzImage(new Uint8Array([0xf4]))).header,
    cmdlineAddr: 0x20000,
    cmdlineSize: 14,
    initrdAddr: 0x3ff_f000,
    initrdSize: 0x1234,
    e820: e820Map(64 * MiB),
    acpiRsdpAddr: 0xe0000,
    ...o,
  };
}

function readE820(v: DataView): E820Entry[] {
  const n = v.getUint8(BP.E820_ENTRIES);
  return Array.from({ length: n }, (_, i) => {
    const o = BP.E820_TABLE + i * 20; // struct boot_e820_entry: addr u64, size u64, type u32, packed
    return { addr: Number(v.getBigUint64(o, true)), size: Number(v.getBigUint64(o + 8, true)), type: v.getUint32(o + 16, true) };
  });
}

test("boot_params offsets match bootparam.h", () => {
  assert.equal(BOOT_PARAMS_SIZE, 4096);
  assert.equal(BP.ACPI_RSDP_ADDR, 0x070);
  assert.equal(BP.E820_ENTRIES, 0x1e8);
  assert.equal(BP.HDR, 0x1f1);
  assert.equal(BP.E820_TABLE, 0x2d0);
  assert.equal(E820_MAX_ENTRIES, 128);
  assert.equal(BP.E820_TABLE + E820_MAX_ENTRIES * 20, 0xcd0, "the table ends where eddbuf begins");
});

test("buildBootParams() copies the kernel's setup header to 0x1f1", () => {
  const p = input();
  const bp = buildBootParams(p);
  const v = new DataView(bp.buffer);
  assert.equal(bp.length, BOOT_PARAMS_SIZE);
  assert.equal(v.getUint32(HDR.HEADER, true), 0x53726448, "HdrS");
  assert.equal(v.getUint16(HDR.VERSION, true), 0x20f);
  assert.equal(v.getUint16(HDR.BOOT_FLAG, true), 0xaa55);
  assert.equal(v.getUint32(HDR.CMDLINE_SIZE, true), 2047, "cmdline_size stays the kernel's maximum");
});

test("buildBootParams() declares the loader and points at the command line and initrd", () => {
  const v = new DataView(buildBootParams(input()).buffer);
  assert.equal(v.getUint8(HDR.TYPE_OF_LOADER), 0xff, "type_of_loader: undefined loader");
  assert.equal(v.getUint32(HDR.CMD_LINE_PTR, true), 0x20000);
  assert.equal(v.getUint32(HDR.RAMDISK_IMAGE, true), 0x3ff_f000);
  assert.equal(v.getUint32(HDR.RAMDISK_SIZE, true), 0x1234);
  assert.equal(v.getBigUint64(BP.ACPI_RSDP_ADDR, true), 0xe0000n);
});

test("buildBootParams() leaves ramdisk fields zero when there is no initrd", () => {
  const v = new DataView(buildBootParams(input({ initrdAddr: 0, initrdSize: 0 })).buffer);
  assert.equal(v.getUint32(HDR.RAMDISK_IMAGE, true), 0);
  assert.equal(v.getUint32(HDR.RAMDISK_SIZE, true), 0);
});

test("buildBootParams() writes the e820 table and its count", () => {
  const e820 = e820Map(64 * MiB);
  const v = new DataView(buildBootParams(input({ e820 })).buffer);
  assert.deepEqual(readE820(v), e820);
});

test("buildBootParams() refuses more e820 entries than the table holds", () => {
  const e820 = Array.from({ length: 129 }, (_, i) => ({ addr: i * 0x1000, size: 0x1000, type: E820_RAM }));
  assert.throws(() => buildBootParams(input({ e820 })), { name: "RangeError", message: "Too many e820 entries: 129" });
  assert.equal(readE820(new DataView(buildBootParams(input({ e820: e820.slice(0, 128) })).buffer)).length, 128);
});

test("e820Map() gives low RAM, the reserved EBDA and BIOS areas, and RAM from 1 MiB", () => {
  assert.deepEqual(e820Map(64 * MiB), [
    { addr: 0, size: 0x9fc00, type: E820_RAM },
    { addr: 0x9fc00, size: 0x400, type: E820_RESERVED },
    { addr: 0xe0000, size: 0x20000, type: E820_RESERVED }, // ACPI tables live here
    { addr: 0x10_0000, size: 63 * MiB, type: E820_RAM },
  ]);
});

test("e820Map() splits RAM above 3 GiB around the device hole", () => {
  const map = e820Map(4 * GiB);
  assert.deepEqual(map.slice(3), [
    { addr: 0x10_0000, size: 3 * GiB - MiB, type: E820_RAM },
    { addr: 4 * GiB, size: 1 * GiB, type: E820_RAM },
  ]);
  assert.ok(!map.some((e) => e.type === E820_RAM && e.addr <= 0xd000_0000 && e.addr + e.size > 0xd000_0000), "virtio-mmio is not RAM");
});
