/**
 * guest/lz4.ts: legacy LZ4 frames decoded by hand-made blocks (literals,
 * overlapping and long matches, several blocks), refused when broken, and
 * checked against the `lz4` program and a real kernel where they are here.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LZ4_LEGACY_MAGIC, lz4LegacyDecode } from "./lz4.ts";
import { builtImage, vmlinuxInProcess } from "./build.ts";
import { hasProgram } from "../test/support/programs.ts";

const enc = new TextEncoder();

/** A legacy frame of the given raw blocks. */
function frame(...blocks: number[][]): Uint8Array {
  const parts: number[] = [];
  const u32 = (n: number) => parts.push(n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24);
  u32(LZ4_LEGACY_MAGIC);
  for (const b of blocks) {
    u32(b.length);
    parts.push(...b);
  }
  return new Uint8Array(parts);
}

const lits = (s: string) => [...enc.encode(s)];

test("lz4LegacyDecode() copies literals and matches, overlapping ones as a repeating pattern", () => {
  // "abc" then a match of 9 at offset 3 (abcabcabc), then literals "!" alone.
  const block = [0x35, ...lits("abc"), 3, 0, 0x10, ...lits("!")];
  assert.equal(new TextDecoder().decode(lz4LegacyDecode(frame(block), 13)), "abcabcabcabc!");
  // One byte repeated: offset 1, match length 4 + 15 + 6 = 25.
  const run = [0x1f, ...lits("z"), 1, 0, 6, 0x00];
  assert.equal(new TextDecoder().decode(lz4LegacyDecode(frame(run), 26)), "z".repeat(26));
});

test("lz4LegacyDecode() reads lengths of 15 and more from the bytes after the token, and decodes block after block", () => {
  const long = "x".repeat(15 + 255 + 3);
  const block = [0xf0, 255, 3, ...lits(long)]; // 273 literals, last sequence
  const second = [0x20, ...lits("ok")];
  assert.equal(new TextDecoder().decode(lz4LegacyDecode(frame(block, second), 275)), long + "ok");
});

test("lz4LegacyDecode() refuses a wrong magic, a match before its block, a block past the frame and a size that differs", () => {
  assert.throws(() => lz4LegacyDecode(new Uint8Array(8), 0), /Not a legacy LZ4 frame/);
  // The second block's match reaches into the first block: blocks are independent.
  assert.throws(() => lz4LegacyDecode(frame([0x40, ...lits("abcd")], [0x10, ...lits("e"), 3, 0, 0x00]), 10), /match offset 3 reaches before the block/);
  const cut = frame([0x30, ...lits("abc")]).subarray(0, 9);
  assert.throws(() => lz4LegacyDecode(cut, 3), /runs past the frame's end/);
  assert.throws(() => lz4LegacyDecode(frame([0x30, ...lits("abc")]), 4), /decoded to 3 bytes, not the 4 expected/);
  assert.throws(() => lz4LegacyDecode(frame([0x30, ...lits("abc")]), 2), /literals run past the block or the output/);
});

const hasLz4 = hasProgram("lz4");

test("lz4LegacyDecode() gives back what `lz4 -l` compressed", { skip: !hasLz4 && "no lz4 program here" }, () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-lz4-"));
  try {
    // 20 MiB: three blocks; text-like runs (matches), some noise (literals).
    const data = new Uint8Array(20 * 1024 * 1024);
    let x = 1;
    for (let i = 0; i < data.length; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      data[i] = (x >>> 24) % 7 === 0 ? x & 0xff : "the quick brown fox "[i % 20].charCodeAt(0);
    }
    writeFileSync(join(dir, "in"), data);
    execFileSync("sh", ["-c", 'lz4 -l -q -c "$1" >"$2"', "sh", join(dir, "in"), join(dir, "out.lz4")]);
    const out = lz4LegacyDecode(new Uint8Array(readFileSync(join(dir, "out.lz4"))), data.length);
    assert.ok(Buffer.compare(out, data) === 0, "decoded bytes differ");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const img = builtImage("guest");
test("vmlinuxInProcess() takes the same vmlinux out of the default guest's bzImage as the lz4 program did", { skip: !(img?.vmlinux && existsSync(img.vmlinux)) && "no built default guest with a vmlinux here" }, () => {
  const elf = vmlinuxInProcess(new Uint8Array(readFileSync(img!.kernel)));
  assert.ok(elf, "the payload is gzip or LZ4");
  assert.ok(Buffer.compare(elf, readFileSync(img!.vmlinux!)) === 0, "the vmlinux differs");
});
