/**
 * parseBzImage() (boot/bzimage.ts) on images from `makeBzImage`
 * (test/support/tiny_kernel.ts): a good image parses into the setup header
 * and protected-mode kernel; each broken image changes one header field
 * (x86 boot.rst, "THE REAL-MODE KERNEL HEADER") and must fail with a
 * KernelImageError that says what is wrong.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { HDR, KernelImageError, parseBzImage } from "./bzimage.ts";
import { makeBzImage } from "../test/support/tiny_kernel.ts";

const CODE = new Uint8Array([0xf4, 0xeb, 0xfd]); // hlt; jmp hlt

/** A good image with one field changed by `edit`. */
function image(edit: (v: DataView, img: Uint8Array) => void = () => {}, o?: Parameters<typeof makeBzImage>[1]): Uint8Array {
  const img = makeBzImage(CODE, o);
  edit(new DataView(img.buffer), img);
  return img;
}

function rejects(img: Uint8Array, message: string): void {
  assert.throws(() => parseBzImage(img), (e: unknown) => {
    assert.ok(e instanceof KernelImageError, `expected a KernelImageError, got ${e}`);
    assert.equal(e.name, "KernelImageError");
    assert.equal(e.message, message);
    return true;
  });
}

test("parseBzImage() returns the version, setup header, kernel and limits of a good image", () => {
  const img = image();
  const bz = parseBzImage(img);
  assert.equal(bz.version, 0x20f);
  assert.equal(bz.header.length, 0x264 - HDR.SETUP_SECTS, "from setup_sects to the end the jump byte gives");
  assert.equal(bz.header[0], 1, "setup_sects is the header's first byte");
  assert.equal(bz.kernel.length, 0x200 + CODE.length, "everything after setup_sects + 1 sectors");
  assert.deepEqual(bz.kernel.subarray(0x200), CODE, "the 64-bit entry code sits 0x200 into the kernel");
  assert.equal(bz.initrdAddrMax, 0x7fff_ffff);
  assert.equal(bz.cmdlineSize, 2047);
  assert.equal(bz.initSize, 0x10000);
});

test("parseBzImage() finds the kernel after setup_sects sectors, and reads setup_sects 0 as 4", () => {
  const eight = parseBzImage(image(undefined, { setupSects: 8 }));
  assert.deepEqual(eight.kernel.subarray(0x200), CODE);
  const zero = parseBzImage(image((v) => v.setUint8(HDR.SETUP_SECTS, 0), { setupSects: 4 }));
  assert.deepEqual(zero.kernel.subarray(0x200), CODE, "boot.rst: if setup_sects is 0, the real value is 4");
});

test("parseBzImage() accepts boot protocol 2.12, the first with the 64-bit entry", () => {
  assert.equal(parseBzImage(image(undefined, { version: 0x20c })).version, 0x20c);
});

test("parseBzImage() rejects an image without the 0xAA55 boot flag", () => {
  rejects(image((v) => v.setUint16(HDR.BOOT_FLAG, 0, true)), "Not a bzImage: no boot signature 0xAA55 and 'HdrS' header");
});

test("parseBzImage() rejects an image without the 'HdrS' magic", () => {
  rejects(image((v) => v.setUint32(HDR.HEADER, 0x53726449, true)), "Not a bzImage: no boot signature 0xAA55 and 'HdrS' header");
});

test("parseBzImage() recognises an ELF vmlinux and says to use the bzImage", () => {
  const elf = new Uint8Array(4096);
  elf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]); // \x7fELF, 64-bit, little-endian
  rejects(elf, "Is an ELF vmlinux; vmm boots bzImage kernels (arch/x86/boot/bzImage)");
});

test("parseBzImage() rejects boot protocol 2.11 as too old for the 64-bit entry", () => {
  rejects(image(undefined, { version: 0x20b }), "Boot protocol 2.11 is too old: the 64-bit entry needs 2.12 or later");
  rejects(image(undefined, { version: 0x200 }), "Boot protocol 2.00 is too old: the 64-bit entry needs 2.12 or later");
});

test("parseBzImage() rejects a kernel without XLF_KERNEL_64 as 32-bit", () => {
  rejects(
    image(undefined, { xloadflags: 0x2 }), // XLF_CAN_BE_LOADED_ABOVE_4G alone
    "Kernel has no 64-bit entry point (XLF_KERNEL_64 unset): is it a 32-bit kernel?",
  );
});

test("parseBzImage() rejects a kernel without LOADED_HIGH", () => {
  rejects(image((v) => v.setUint8(HDR.LOADFLAGS, 0x80)), "Kernel does not load high (LOADED_HIGH unset)"); // CAN_USE_HEAP only
});

test("parseBzImage() rejects a file too short for the setup header", () => {
  rejects(image().subarray(0, 0x263), "Truncated: 611 bytes is too short for a bzImage header");
  rejects(new Uint8Array(0), "Truncated: 0 bytes is too short for a bzImage header");
});

test("parseBzImage() rejects a file that ends inside the setup sectors", () => {
  rejects(image((v) => v.setUint8(HDR.SETUP_SECTS, 30)), `Truncated: setup claims 30 sectors but the file is ${1024 + 0x200 + 3} bytes`);
  const full = image();
  rejects(full.subarray(0, 1024), "Truncated: setup claims 1 sectors but the file is 1024 bytes");
});

test("parseBzImage() accepts a file as long as setup_sects and syssize say, or longer", () => {
  // The fake kernel is 0x200 + 3 bytes after 2 sectors: 32 paragraphs fit in it, with 3 bytes to spare.
  const longer = image((v) => v.setUint32(HDR.SYSSIZE, 32, true));
  assert.equal(parseBzImage(longer).kernel.length, 0x200 + CODE.length, "bytes past syssize (a signature) are kept");
  const exact = longer.subarray(0, 1024 + 32 * 16);
  assert.equal(parseBzImage(exact).kernel.length, 32 * 16);
});

test("parseBzImage() rejects a file shorter than setup_sects and syssize say, naming both sizes", () => {
  const len = 1024 + 0x200 + CODE.length;
  rejects(image((v) => v.setUint32(HDR.SYSSIZE, 33, true)), `bzImage is truncated: the header says ${1024 + 33 * 16} bytes, the file has ${len}`);
  // syssize is 4 bytes wide from protocol 2.04: its upper half counts.
  rejects(image((v) => v.setUint32(HDR.SYSSIZE, 0x10000, true)), `bzImage is truncated: the header says ${1024 + 0x100000} bytes, the file has ${len}`);
});

test("parseBzImage() reads setup_sects 0 as 4 when it checks the length", () => {
  const zero = image((v) => {
    v.setUint8(HDR.SETUP_SECTS, 0);
    v.setUint32(HDR.SYSSIZE, 33, true);
  }, { setupSects: 4 });
  rejects(zero, `bzImage is truncated: the header says ${5 * 512 + 33 * 16} bytes, the file has ${5 * 512 + 0x200 + CODE.length}`);
});

test("parseBzImage() refuses a 14 MiB kernel cut to 3 MiB before it can boot", () => {
  const full = 14 * 1024 * 1024;
  const big = makeBzImage(new Uint8Array(full - 1024 - 0x200)); // setup_sects 1: 2 sectors, then the kernel
  new DataView(big.buffer).setUint32(HDR.SYSSIZE, (full - 1024) / 16, true);
  assert.equal(big.length, full);
  assert.equal(parseBzImage(big).kernel.length, full - 1024);
  rejects(big.subarray(0, 3 * 1024 * 1024), "bzImage is truncated: the header says 14680064 bytes, the file has 3145728");
});

test("parseBzImage() copies the header: later edits to the image do not change it", () => {
  const img = image();
  const bz = parseBzImage(img);
  img[HDR.VERSION] = 0;
  assert.equal(bz.header[HDR.VERSION - HDR.SETUP_SECTS], 0x0f);
});
