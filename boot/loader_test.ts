/**
 * loadLinux() (boot/loader.ts) into plain guest memory: where the kernel,
 * command line, initrd and boot_params land (x86 boot.rst, "64-bit BOOT
 * PROTOCOL"), and the errors for a command line too long and RAM too small.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { initrdLayout, loadLinux } from "./loader.ts";
import { HDR, KernelImageError } from "./bzimage.ts";
import { BP } from "./params.ts";
import { ACPI_START, CMDLINE, CMDLINE_MAX, KERNEL_START, ZERO_PAGE } from "./layout.ts";
import { GuestMemory } from "../vm/memory.ts";
import { makeBzImage, makeVmlinux } from "../test/support/tiny_kernel.ts";

const MiB = 1024 * 1024;
const CODE = new Uint8Array([0xf4, 0xeb, 0xfd]);

function memory(mib = 4): GuestMemory {
  return new GuestMemory(new Uint8Array(mib * MiB));
}

/** A tiny bzImage with one setup-header field changed. */
function kernel(edit: (v: DataView) => void = () => {}): Uint8Array {
  const img = makeBzImage(CODE);
  edit(new DataView(img.buffer));
  return img;
}

function rejects(fn: () => unknown, message: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KernelImageError, `expected a KernelImageError, got ${e}`);
    assert.equal(e.message, message);
    return true;
  });
}

const dec = (b: Uint8Array) => new TextDecoder().decode(b);

test("loadLinux() loads the kernel at 1 MiB and starts it at the 64-bit entry with RSI = boot_params", () => {
  const mem = memory();
  const boot = loadLinux(mem, mem.size, { kernel: kernel(), cmdline: "console=ttyS0", acpiRsdpAddr: 0xe0000 });
  assert.deepEqual(boot, { entry: KERNEL_START + 0x200, bootParams: ZERO_PAGE });
  assert.deepEqual(mem.slice(KERNEL_START + 0x200, 3), CODE);
  assert.equal(mem.readU32(ZERO_PAGE + HDR.HEADER), 0x53726448, "boot_params carries the setup header");
  assert.equal(mem.readU64(ZERO_PAGE + BP.ACPI_RSDP_ADDR), 0xe0000n);
  assert.equal(mem.readU8(ZERO_PAGE + BP.E820_ENTRIES), 4);
});

test("loadLinux() writes the command line NUL-terminated at CMDLINE and points boot_params at it", () => {
  const mem = memory();
  mem.write(CMDLINE, new Uint8Array(64).fill(0x78)); // stale bytes must not extend the string
  loadLinux(mem, mem.size, { kernel: kernel(), cmdline: "console=ttyS0 panic=-1", acpiRsdpAddr: 0 });
  assert.equal(dec(mem.slice(CMDLINE, 22)), "console=ttyS0 panic=-1");
  assert.equal(mem.readU8(CMDLINE + 22), 0);
  assert.equal(mem.readU32(ZERO_PAGE + HDR.CMD_LINE_PTR), CMDLINE);
});

test("loadLinux() accepts a command line of exactly cmdline_size bytes and refuses one more", () => {
  const mem = memory();
  loadLinux(mem, mem.size, { kernel: kernel(), cmdline: "a".repeat(2047), acpiRsdpAddr: 0 });
  assert.equal(mem.readU8(CMDLINE + 2047), 0);
  rejects(
    () => loadLinux(mem, mem.size, { kernel: kernel(), cmdline: "a".repeat(2048), acpiRsdpAddr: 0 }),
    "Command line is 2048 bytes; this kernel accepts at most 2047",
  );
  rejects(
    () => loadLinux(mem, mem.size, { kernel: kernel((v) => v.setUint32(HDR.CMDLINE_SIZE, 0, true)), cmdline: "b".repeat(256), acpiRsdpAddr: 0 }),
    "Command line is 256 bytes; this kernel accepts at most 255", // cmdline_size 0: the old 255-byte limit
  );
});

test("loadLinux() keeps the command line inside its CMDLINE_MAX area whatever cmdline_size claims", () => {
  const mem = memory();
  const big = kernel((v) => v.setUint32(HDR.CMDLINE_SIZE, 0x100000, true));
  rejects(
    () => loadLinux(mem, mem.size, { kernel: big, cmdline: "c".repeat(ACPI_START), acpiRsdpAddr: 0 }),
    `Command line is ${ACPI_START} bytes; this kernel accepts at most ${CMDLINE_MAX - 1}`,
  );
});

test("loadLinux() places the initrd page-aligned at the top of RAM, clear of the kernel", () => {
  const mem = memory(4);
  const initrd = new Uint8Array(100_000).map((_, i) => (i * 7) & 0xff);
  loadLinux(mem, mem.size, { kernel: kernel(), initrd, cmdline: "", acpiRsdpAddr: 0 });
  const addr = mem.readU32(ZERO_PAGE + HDR.RAMDISK_IMAGE);
  assert.equal(mem.readU32(ZERO_PAGE + HDR.RAMDISK_SIZE), initrd.length);
  assert.equal(addr % 4096, 0, "page-aligned");
  assert.ok(addr + initrd.length <= 4 * MiB, "inside RAM");
  assert.ok(4 * MiB - (addr + initrd.length) < 4096, "as high as it goes");
  assert.ok(addr >= KERNEL_START + 0x10000, "above the kernel's init_size");
  assert.deepEqual(mem.slice(addr, initrd.length), initrd);
});

test("loadLinux() keeps the initrd below the kernel's initrd_addr_max", () => {
  const mem = memory(8);
  const initrd = new Uint8Array(8192).fill(1);
  loadLinux(mem, mem.size, {
    kernel: kernel((v) => v.setUint32(HDR.INITRD_ADDR_MAX, 0x2f_ffff, true)), // last byte 3 MiB − 1
    initrd,
    cmdline: "",
    acpiRsdpAddr: 0,
  });
  const addr = mem.readU32(ZERO_PAGE + HDR.RAMDISK_IMAGE);
  assert.equal(addr, 0x30_0000 - 8192);
  assert.equal(mem.readU8(addr + 8191), 1);
});

test("loadLinux() leaves the ramdisk fields zero without an initrd or with an empty one", () => {
  const mem = memory();
  loadLinux(mem, mem.size, { kernel: kernel(), initrd: new Uint8Array(0), cmdline: "", acpiRsdpAddr: 0 });
  assert.equal(mem.readU32(ZERO_PAGE + HDR.RAMDISK_IMAGE), 0);
  assert.equal(mem.readU32(ZERO_PAGE + HDR.RAMDISK_SIZE), 0);
});

test("loadLinux() refuses an initrd that would overlap the kernel's decompression area", () => {
  const mem = memory(4);
  rejects(
    () => loadLinux(mem, mem.size, { kernel: kernel(), initrd: new Uint8Array(3 * MiB), cmdline: "", acpiRsdpAddr: 0 }),
    "Initrd of 3 MiB does not fit in guest RAM beside the kernel; give the guest more memory",
  );
});

test("loadLinux() refuses a kernel whose init_size does not fit in RAM", () => {
  const mem = memory(4);
  rejects(
    () => loadLinux(mem, mem.size, { kernel: kernel((v) => v.setUint32(HDR.INIT_SIZE, 8 * MiB, true)), cmdline: "", acpiRsdpAddr: 0 }),
    "Kernel needs 9 MiB of RAM to decompress but the guest has 4 MiB",
  );
});

test("loadLinux() reports a broken image before writing anything", () => {
  const mem = memory();
  rejects(
    () => loadLinux(mem, mem.size, { kernel: kernel((v) => v.setUint16(HDR.BOOT_FLAG, 0, true)), cmdline: "", acpiRsdpAddr: 0 }),
    "Not a bzImage: no boot signature 0xAA55 and 'HdrS' header",
  );
  assert.ok(mem.bytes.every((b) => b === 0));
});

test("loadLinux() loads a vmlinux's segments at their physical addresses, zeroes past each one's file bytes, and enters at e_entry with a made setup header", () => {
  const mem = memory(32);
  mem.bytes.fill(0xee); // RAM that is not zero: the loader must clear the .bss itself
  const elf = makeVmlinux(CODE, { paddr: 16 * MiB, bssBytes: 0x3000 });
  const boot = loadLinux(mem, mem.size, { kernel: elf, cmdline: "console=ttyS0", acpiRsdpAddr: 0xe0000 });
  assert.deepEqual(boot, { entry: 16 * MiB, bootParams: ZERO_PAGE });
  assert.deepEqual(mem.slice(16 * MiB, 3), CODE);
  assert.deepEqual(mem.slice(16 * MiB + 0x1000, 0x10), elf.subarray(0x2000, 0x2010), "the second segment's file bytes");
  assert.ok(mem.slice(16 * MiB + 0x1010, 0x3000).every((b) => b === 0), "its .bss is zeros");
  assert.equal(mem.readU8(16 * MiB + 0x4010), 0xee, "nothing past the segment is touched");
  assert.equal(mem.readU32(ZERO_PAGE + HDR.HEADER), 0x53726448, "boot_params carries a setup header");
  assert.equal(mem.readU16(ZERO_PAGE + HDR.BOOT_FLAG), 0xaa55);
  assert.equal(mem.readU16(ZERO_PAGE + HDR.VERSION), 0x20f);
  assert.equal(mem.readU32(ZERO_PAGE + HDR.CMD_LINE_PTR), CMDLINE);
  assert.equal(dec(mem.slice(CMDLINE, 13)), "console=ttyS0");
});

test("loadLinux() puts a vmlinux's initrd above the kernel's end, and refuses RAM that cannot hold the kernel or a vmlinux below 1 MiB", () => {
  const mem = memory(32);
  const initrd = new Uint8Array(8192).fill(7);
  loadLinux(mem, mem.size, { kernel: makeVmlinux(CODE, { paddr: 16 * MiB }), initrd, cmdline: "", acpiRsdpAddr: 0 });
  const at = mem.readU32(ZERO_PAGE + HDR.RAMDISK_IMAGE);
  assert.equal(at, 32 * MiB - 8192);
  assert.deepEqual(mem.slice(at, 8192), initrd);
  rejects(() => loadLinux(memory(16), 16 * MiB, { kernel: makeVmlinux(CODE, { paddr: 16 * MiB }), cmdline: "", acpiRsdpAddr: 0 }), "Kernel needs 17 MiB of RAM but the guest has 16 MiB");
  rejects(
    () => loadLinux(memory(), 4 * MiB, { kernel: makeVmlinux(CODE, { paddr: 0x8000 }), cmdline: "", acpiRsdpAddr: 0 }),
    "ELF kernel loads at 0x8000, below 1 MiB where vmm keeps its boot tables",
  );
});

test("loadLinux() refuses a broken vmlinux with the reason", () => {
  const edit = (f: (v: DataView) => void) => {
    const img = makeVmlinux(CODE);
    f(new DataView(img.buffer));
    return () => loadLinux(memory(32), 32 * MiB, { kernel: img, cmdline: "", acpiRsdpAddr: 0 });
  };
  rejects(edit((v) => v.setUint8(4, 1)), "ELF kernel is not 64-bit little-endian");
  rejects(edit((v) => v.setUint16(18, 3, true)), "ELF file is not an x86-64 executable (a vmlinux is ET_EXEC for EM_X86_64)");
  rejects(edit((v) => v.setBigUint64(24, 0x2000000n, true)), "ELF entry point 0x2000000 is not in a loaded segment (a vmlinux's is startup_64's physical address)");
  rejects(edit((v) => v.setBigUint64(64 + 56 + 32, 0x100000n, true)), "ELF segment 1 (1048576 bytes at file offset 8192) runs past the 12304-byte file");
  rejects(edit((v) => v.setUint16(56, 300, true)), "ELF program headers (300 of 56 bytes at 64) are not within the first 12304 bytes");
  rejects(edit((v) => [64, 64 + 56].forEach((p) => v.setUint32(p, 4, true))), "ELF kernel has no PT_LOAD segment");
});

test("loadLinux() appends a second archive to the initrd 4-byte aligned and pads the whole to a page with zeros", () => {
  const mem = memory(8);
  mem.bytes.fill(0xee);
  const initrd = new Uint8Array(4097).fill(1), extra = new Uint8Array(10).fill(2);
  loadLinux(mem, mem.size, { kernel: kernel(), initrd, initrdExtra: extra, cmdline: "", acpiRsdpAddr: 0 });
  const at = mem.readU32(ZERO_PAGE + HDR.RAMDISK_IMAGE), size = mem.readU32(ZERO_PAGE + HDR.RAMDISK_SIZE);
  assert.equal(size, 8192);
  assert.equal(at, 8 * MiB - 8192);
  assert.deepEqual(mem.slice(at, 4097), initrd);
  assert.deepEqual([...mem.slice(at + 4097, 3)], [0, 0, 0], "zeros up to the 4-byte boundary");
  assert.deepEqual(mem.slice(at + 4100, 10), extra);
  assert.ok(mem.slice(at + 4110, 8192 - 4110).every((b) => b === 0), "zeros to the page's end");
});

test("initrdLayout() starts an appended archive 4-byte aligned and pads the whole to pages", () => {
  assert.deepEqual(initrdLayout(10, 5), { extraAt: 12, size: 4096 });
  assert.deepEqual(initrdLayout(4096, 0), { extraAt: 4096, size: 4096 });
  assert.deepEqual(initrdLayout(4095, 1), { extraAt: 4096, size: 8192 });
  assert.deepEqual(initrdLayout(0, 4097), { extraAt: 0, size: 8192 });
});
