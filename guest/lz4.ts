/**
 * LZ4's legacy frame, the format of a Debian kernel's bzImage payload (the
 * kernel's Makefile runs `lz4 -l`), decoded in TypeScript: so a packaged
 * guest, which has no `lz4` program to call, can have its vmlinux too
 * (guest/packaged.ts; boot/vmlinux.ts says why vmm wants one).
 *
 * The frame (lz4's doc/lz4_Frame_format.md, "Legacy frame"): the magic
 * 0x184C2102, then blocks, each a 4-byte little-endian compressed size and
 * that many bytes, each decoding on its own to at most 8 MiB. A block
 * (doc/lz4_Block_format.md) is sequences of: a token (literal count in its
 * high nibble, match length - 4 in its low one, 15 meaning more bytes
 * follow, each adding up to 255), the literals, a 2-byte little-endian
 * offset back into what this block has decoded, and the match's bytes
 * copied from there. The last sequence has literals only.
 */

export const LZ4_LEGACY_MAGIC = 0x184c2102;
const BLOCK_MAX = 8 * 1024 * 1024;

/** Decode a legacy LZ4 frame whose output is `size` bytes; throws RangeError on a broken one. */
export function lz4LegacyDecode(frame: Uint8Array, size: number): Uint8Array {
  const v = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (frame.length < 4 || v.getUint32(0, true) !== LZ4_LEGACY_MAGIC) throw new RangeError("Not a legacy LZ4 frame (no magic 0x184C2102)");
  const out = new Uint8Array(size);
  let at = 4, o = 0;
  while (at + 4 <= frame.length) {
    const n = v.getUint32(at, true);
    if (n === LZ4_LEGACY_MAGIC) { // a second frame, concatenated: its blocks follow
      at += 4;
      continue;
    }
    at += 4;
    if (at + n > frame.length) throw new RangeError(`LZ4 block of ${n} bytes at ${at - 4} runs past the frame's end`);
    o = decodeBlock(frame, at, at + n, out, o);
    at += n;
  }
  if (o !== size) throw new RangeError(`LZ4 frame decoded to ${o} bytes, not the ${size} expected`);
  return out;
}

/** One block, frame[start, end), into out from o; returns where its output ends. */
function decodeBlock(src: Uint8Array, start: number, end: number, out: Uint8Array, o: number): number {
  const blockStart = o, limit = Math.min(out.length, o + BLOCK_MAX);
  const bad = (what: string) => new RangeError(`LZ4 block at ${start - 4}: ${what}`);
  let i = start;
  const length = (base: number) => {
    let n = base;
    if (base === 15) {
      let b;
      do {
        if (i >= end) throw bad("length runs past the block");
        b = src[i++];
        n += b;
      } while (b === 255);
    }
    return n;
  };
  while (i < end) {
    const token = src[i++];
    const lit = length(token >> 4);
    if (i + lit > end || o + lit > limit) throw bad("literals run past the block or the output");
    if (lit < 32) for (let k = 0; k < lit; k++) out[o++] = src[i++]; // short runs: no subarray to allocate
    else {
      out.set(src.subarray(i, i + lit), o);
      i += lit;
      o += lit;
    }
    if (i === end) return o; // the last sequence: literals only
    if (i + 2 > end) throw bad("match offset runs past the block");
    const offset = src[i] | (src[i + 1] << 8);
    i += 2;
    const len = length(token & 15) + 4;
    if (offset === 0 || o - offset < blockStart) throw bad(`match offset ${offset} reaches before the block`);
    if (o + len > limit) throw bad("match runs past the output");
    if (offset >= len && len >= 32) {
      out.copyWithin(o, o - offset, o - offset + len);
      o += len;
    } else {
      for (let k = 0; k < len; k++, o++) out[o] = out[o - offset]; // short, or overlapping: a repeated pattern
    }
  }
  throw bad("empty");
}
