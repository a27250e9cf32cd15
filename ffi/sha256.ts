/**
 * SHA-256 (FIPS 180-4), synchronous, in plain TypeScript: what
 * `node:crypto`'s `createHash("sha256")` gives, for the few small hashes on
 * `vmm run`'s path (a snapshot's state file, the run cache's key), without
 * loading Deno's Node layer (ffi/sys.ts says why that matters). Web Crypto's
 * `crypto.subtle.digest` is asynchronous, and these callers are not.
 *
 * The inputs are kilobytes, so plain code is fast enough (tens of MB/s);
 * it is not meant for guest memory. A caller that can wait uses
 * `sha256HexAsync()`, Web Crypto's native digest, which gives the same.
 *
 * @example
 * ```ts
 * import { Sha256 } from "./sha256.ts";
 * new Sha256().update("abc").hex(); // "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
 * ```
 */

/** The first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** An incremental SHA-256: `update()` any number of times, then `digest()` or `hex()` once. */
export class Sha256 {
  /** The state: the first 32 bits of the fractional parts of the square roots of the first 8 primes. */
  #h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  #w = new Uint32Array(64);
  /** A block not yet full. */
  #block = new Uint8Array(64);
  #fill = 0;
  /** Bytes hashed so far. */
  #length = 0;
  #done = false;

  update(data: Uint8Array | string): this {
    if (this.#done) throw new Error("Sha256: update() after digest()");
    const d = typeof data === "string" ? new TextEncoder().encode(data) : data;
    this.#length += d.length;
    let i = 0;
    if (this.#fill > 0) {
      const n = Math.min(64 - this.#fill, d.length);
      this.#block.set(d.subarray(0, n), this.#fill);
      this.#fill += n;
      i = n;
      if (this.#fill < 64) return this;
      this.#compress(this.#block, 0);
      this.#fill = 0;
    }
    for (; i + 64 <= d.length; i += 64) this.#compress(d, i);
    if (i < d.length) {
      this.#block.set(d.subarray(i));
      this.#fill = d.length - i;
    }
    return this;
  }

  /** The 32-byte hash; the object is spent after it. */
  digest(): Uint8Array {
    if (this.#done) throw new Error("Sha256: digest() twice");
    const bits = this.#length * 8;
    // Padding: 0x80, zeros to 56 mod 64, then the length in bits, big-endian.
    const pad = new Uint8Array(((this.#fill < 56 ? 56 : 120) - this.#fill) + 8);
    pad[0] = 0x80;
    const v = new DataView(pad.buffer);
    v.setUint32(pad.length - 8, Math.floor(bits / 0x1_0000_0000));
    v.setUint32(pad.length - 4, bits >>> 0);
    this.update(pad);
    this.#done = true;
    const out = new Uint8Array(32);
    const o = new DataView(out.buffer);
    for (let j = 0; j < 8; j++) o.setUint32(j * 4, this.#h[j]);
    return out;
  }

  /** The hash in lower-case hex. */
  hex(): string {
    return hex(this.digest());
  }

  /** One 64-byte block of `d` at `at` into the state. */
  #compress(d: Uint8Array, at: number): void {
    const w = this.#w, h = this.#h;
    for (let t = 0; t < 16; t++) {
      const p = at + t * 4;
      w[t] = (d[p] << 24) | (d[p + 1] << 16) | (d[p + 2] << 8) | d[p + 3];
    }
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15], y = w[t - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    let a = h[0], b = h[1], c = h[2], e = h[4], f = h[5], g = h[6];
    let dd = h[3], hh = h[7];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[t] + w[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      hh = g;
      g = f;
      f = e;
      e = (dd + t1) | 0;
      dd = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += dd;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }
}

/** SHA-256 of the parts, one after the other, as bytes. */
export function sha256(...parts: (Uint8Array | string)[]): Uint8Array {
  const h = new Sha256();
  for (const p of parts) h.update(p);
  return h.digest();
}

/** SHA-256 of the parts in lower-case hex, as `createHash("sha256").update(…).digest("hex")`. */
export function sha256Hex(...parts: (Uint8Array | string)[]): string {
  const h = new Sha256();
  for (const p of parts) h.update(p);
  return h.hex();
}

/** Bytes in lower-case hex, two digits each. */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * `sha256()` through Web Crypto: native on both runtimes, so cheaper for
 * tens of KB on a path that runs at every start, but asynchronous.
 */
export async function sha256Async(...parts: (Uint8Array | string)[]): Promise<Uint8Array> {
  const enc = new TextEncoder();
  const bytes = parts.map((p) => typeof p === "string" ? enc.encode(p) : p);
  const all = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0));
  bytes.reduce((at, b) => (all.set(b, at), at + b.length), 0);
  return new Uint8Array(await crypto.subtle.digest("SHA-256", all));
}

/** `sha256Hex()` through Web Crypto (sha256Async). */
export async function sha256HexAsync(...parts: (Uint8Array | string)[]): Promise<string> {
  return hex(await sha256Async(...parts));
}
