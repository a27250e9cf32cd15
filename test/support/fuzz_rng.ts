/**
 * The seeded random numbers of the fuzz tests (devices/virtio/ring_fuzz_test.ts,
 * loop/queue_service_fuzz_test.ts): sfc32, small, fast, good enough to fuzz
 * with, and identical on every runtime, so a seed printed by a failure on Bun
 * replays the same case on Deno.
 *
 * @example
 * ```ts
 * import { Rng } from "./fuzz_rng.ts";
 *
 * const rng = new Rng(0x5eed);
 * const size = 1 << rng.int(9); // a queue size, 1…256
 * const hostile = rng.chance(0.1); // one case in ten
 * const addr = rng.u64(); // any u64, for a descriptor's address
 * ```
 */
export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d = 1;
  constructor(seed: number) {
    this.#a = 0x9e3779b9;
    this.#b = 0x243f6a88;
    this.#c = seed >>> 0;
    for (let i = 0; i < 12; i++) this.u32();
  }
  u32(): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0;
    this.#d = (this.#d + 1) | 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) | 0;
    this.#c = (this.#c << 21) | (this.#c >>> 11);
    this.#c = (this.#c + t) | 0;
    return t >>> 0;
  }
  /** 0 … n − 1. */
  int(n: number): number {
    return this.u32() % n;
  }
  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.u32() < p * 0x1_0000_0000;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  /** One element of `xs`. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}
