/**
 * The AML encoder checked byte for byte against ACPI 6.4 §20 (encodings) and
 * §6.4 (resource descriptors). iasl's disassembler reads the whole DSDT in
 * acpi_test.ts; here each term is pinned on its own.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  buffer,
  device,
  eisaId,
  eisaIdValue,
  END_TAG_DESC,
  EXT_IRQ_DESC,
  integer,
  interrupt,
  IO_PORT_DESC,
  ioPort,
  MEMORY32_FIXED_DESC,
  memory32Fixed,
  method,
  name,
  nameSeg,
  nameString,
  pkg,
  PKG_LENGTH_MAX,
  pkgLength,
  resourceTemplate,
  returnOp,
  scope,
  string,
} from "./aml.ts";

const bytes = (...b: number[]) => new Uint8Array(b);
const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));

/** Reads a PkgLength the way ACPICA's `acpi_ps_get_next_package_length` does: [total, encoded size]. */
function readPkgLength(b: Uint8Array): [number, number] {
  const follow = b[0] >> 6;
  if (follow === 0) return [b[0] & 0x3f, 1];
  let total = b[0] & 0x0f;
  for (let k = 1; k <= follow; k++) total |= b[k] << (4 + 8 * (k - 1));
  return [total, follow + 1];
}

test("pkgLength() switches size exactly at the 1/2/3/4-byte boundaries", () => {
  // [payload, expected encoding]; the encoded total counts the PkgLength bytes.
  const cases: [number, number[]][] = [
    [0, [0x01]],
    [62, [0x3f]], // total 63: the largest one-byte length
    [63, [0x41, 0x04]], // total 65 = 0x041
    [4093, [0x4f, 0xff]], // total 4095 = 0xfff: the largest two-byte length
    [4094, [0x81, 0x00, 0x01]], // total 4097 = 0x01001
    [0xfffff - 3, [0x8f, 0xff, 0xff]], // total 0xfffff: the largest three-byte length
    [0xfffff - 2, [0xc1, 0x00, 0x00, 0x01]], // total 0x100001
    [0xfffffff - 4, [0xcf, 0xff, 0xff, 0xff]], // total 0xfffffff: the largest of all
  ];
  for (const [payload, enc] of cases) {
    const got = pkgLength(payload);
    assert.deepEqual([...got], enc, `payload ${payload}`);
    const [total, size] = readPkgLength(got);
    assert.equal(size, got.length);
    assert.equal(total, payload + got.length, `payload ${payload} decodes back`);
    assert.ok(total <= PKG_LENGTH_MAX[size - 1]);
  }
});

test("pkgLength() rejects a package too long to express", () => {
  assert.throws(() => pkgLength(0xfffffff - 3), RangeError);
  assert.throws(() => pkgLength(-1), RangeError);
});

test("pkgLength() round-trips every size near each boundary", () => {
  for (const edge of [63, 4095, 0xfffff]) {
    for (let payload = edge - 8; payload <= edge + 8; payload++) {
      const enc = pkgLength(payload);
      const [total, size] = readPkgLength(enc);
      assert.equal(total, payload + size);
      // Never larger than needed: one byte fewer could not hold it.
      if (size > 1) assert.ok(payload + size - 1 > PKG_LENGTH_MAX[size - 2]);
    }
  }
});

test("integer() uses ZeroOp, OneOp, then the smallest prefix", () => {
  const cases: [number | bigint, number[]][] = [
    [0, [0x00]],
    [1, [0x01]],
    [2, [0x0a, 0x02]],
    [0xff, [0x0a, 0xff]],
    [0x100, [0x0b, 0x00, 0x01]],
    [0xffff, [0x0b, 0xff, 0xff]],
    [0x1_0000, [0x0c, 0x00, 0x00, 0x01, 0x00]],
    [0xffff_ffff, [0x0c, 0xff, 0xff, 0xff, 0xff]],
    [0x1_0000_0000, [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]],
    [0x0123_4567_89ab_cdefn, [0x0e, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]],
    [2n ** 64n - 1n, [0x0e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]],
  ];
  for (const [v, enc] of cases) assert.deepEqual([...integer(v)], enc, `integer ${v}`);
  assert.throws(() => integer(-1), RangeError);
  assert.throws(() => integer(2n ** 64n), RangeError);
});

test("nameSeg() pads with _ and rejects characters AML does not allow", () => {
  assert.deepEqual([...nameSeg("_SB")], ascii("_SB_"));
  assert.deepEqual([...nameSeg("VR00")], ascii("VR00"));
  for (const bad of ["", "TOOLONG", "0ABC", "abcd", "A-B"]) assert.throws(() => nameSeg(bad), RangeError, bad);
});

test("nameString() encodes root, parent, dual and multi-segment paths", () => {
  assert.deepEqual([...nameString("_HID")], ascii("_HID"));
  assert.deepEqual([...nameString("\\_SB_")], [0x5c, ...ascii("_SB_")]);
  assert.deepEqual([...nameString("\\_SB_.VR00")], [0x5c, 0x2e, ...ascii("_SB_VR00")]);
  assert.deepEqual([...nameString("_SB_.PCI0.ISA_")], [0x2f, 3, ...ascii("_SB_PCI0ISA_")]);
  assert.deepEqual([...nameString("^^COM1")], [0x5e, 0x5e, ...ascii("COM1")]);
  assert.deepEqual([...nameString("\\")], [0x5c, 0x00]);
});

test("string() is StringPrefix, ASCII, NUL", () => {
  assert.deepEqual([...string("LNRO0005")], [0x0d, ...ascii("LNRO0005"), 0x00]);
  assert.throws(() => string("caf\u00e9"), RangeError);
  assert.throws(() => string("a\0b"), RangeError);
});

test("eisaIdValue() compresses PNP ids as iasl's EISAID() does", () => {
  assert.equal(eisaIdValue("PNP0501"), 0x0105d041); // 16550A UART
  assert.equal(eisaIdValue("PNP0A03"), 0x030ad041); // PCI host bridge
  assert.equal(eisaIdValue("PNP0303"), 0x0303d041); // PS/2 keyboard
  assert.deepEqual([...eisaId("PNP0501")], [0x0c, 0x41, 0xd0, 0x05, 0x01]);
  assert.throws(() => eisaIdValue("pnp0501"), RangeError);
  assert.throws(() => eisaIdValue("PNP050"), RangeError);
});

test("pkg() counts its own length and elements", () => {
  // Name (_S5_, Package () { 5, 0 })
  assert.deepEqual([...pkg([integer(5), integer(0)])], [0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]);
  assert.deepEqual([...name("_S5_", pkg([integer(5)]))], [0x08, ...ascii("_S5_"), 0x12, 0x04, 0x01, 0x0a, 0x05]);
  assert.throws(() => pkg(Array.from({ length: 256 }, () => integer(0))), RangeError);
});

test("buffer() holds its size as an Integer before the bytes", () => {
  assert.deepEqual([...buffer(bytes(0xaa, 0xbb))], [0x11, 0x05, 0x0a, 0x02, 0xaa, 0xbb]);
  assert.deepEqual([...buffer(bytes())], [0x11, 0x02, 0x00]);
  const big = buffer(new Uint8Array(300)); // PkgLength needs two bytes, BufferSize a word
  assert.deepEqual([...big.subarray(0, 6)], [0x11, ...pkgLength(3 + 300), 0x0b, 0x2c, 0x01]);
  assert.equal(big.length, 1 + 2 + 3 + 300);
});

test("device() and scope() wrap their terms after a PkgLength", () => {
  const hid = name("_HID", string("LNRO0005"));
  const dev = device("VR00", [hid]);
  assert.deepEqual([...dev.subarray(0, 3)], [0x5b, 0x82, 1 + 4 + hid.length]);
  assert.deepEqual([...dev.subarray(3, 7)], ascii("VR00"));
  assert.deepEqual([...dev.subarray(7)], [...hid]);
  const sc = scope("\\_SB_", [dev]);
  assert.deepEqual([...sc.subarray(0, 7)], [0x10, ...pkgLength(5 + dev.length), 0x5c, ...ascii("_SB_")]);
  assert.equal(sc.length, 2 + 5 + dev.length);
});

test("device() with a body over 63 bytes takes a two-byte PkgLength", () => {
  const terms = Array.from({ length: 8 }, (_, k) => name(`N${k}__`, integer(0x1_0000))); // 10 bytes each
  const dev = device("BIG_", terms);
  const [total, size] = readPkgLength(dev.subarray(2));
  assert.equal(size, 2);
  assert.equal(total, dev.length - 2);
});

test("method() packs argument count and serialization into MethodFlags", () => {
  const m = method("_STA", 0, false, [returnOp(integer(0x0f))]);
  assert.deepEqual([...m], [0x14, 0x09, ...ascii("_STA"), 0x00, 0xa4, 0x0a, 0x0f]);
  assert.equal(method("_EVT", 1, true, [])[6], 0x09);
  assert.throws(() => method("_EVT", 8, false, []), RangeError);
});

test("ioPort() is a Decode16 I/O Port Descriptor", () => {
  const d = ioPort(0x3f8, 0x3f8, 1, 8);
  assert.equal(d.length, IO_PORT_DESC.SIZE);
  assert.deepEqual([...d], [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]);
  assert.throws(() => ioPort(0x1_0000, 0, 1, 1), RangeError);
});

test("memory32Fixed() is a 32-bit Fixed Memory Range Descriptor", () => {
  const d = memory32Fixed(0xd000_0000, 0x1000);
  assert.equal(d.length, MEMORY32_FIXED_DESC.SIZE);
  assert.deepEqual([...d], [0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00]);
  assert.equal(memory32Fixed(0, 1, false)[MEMORY32_FIXED_DESC.INFO], 0x00);
  assert.throws(() => memory32Fixed(0xffff_f000, 0x2000), RangeError);
});

test("interrupt() is an Extended Interrupt Descriptor, edge/active-high/exclusive by default", () => {
  const d = interrupt(5);
  assert.equal(d.length, EXT_IRQ_DESC.SIZE);
  assert.deepEqual([...d], [0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00]);
  const lvl = interrupt(9, { level: true, activeLow: true, shared: true });
  assert.equal(lvl[EXT_IRQ_DESC.FLAGS], 0x01 | 0x04 | 0x08);
});

test("resourceTemplate() ends with an End Tag inside a Buffer", () => {
  const io = ioPort(0x3f8, 0x3f8, 1, 8);
  const irq = interrupt(4);
  const rt = resourceTemplate([io, irq]);
  const inner = io.length + irq.length + END_TAG_DESC.SIZE;
  assert.deepEqual([...rt.subarray(0, 4)], [0x11, ...pkgLength(2 + inner), 0x0a, inner]);
  assert.deepEqual([...rt.subarray(4, 4 + io.length)], [...io]);
  assert.deepEqual([...rt.subarray(rt.length - 2)], [0x79, 0x00]);
});
