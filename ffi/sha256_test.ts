/** ffi/sha256.ts against node:crypto's SHA-256 (the tests may load `node:` modules). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { hex, Sha256, sha256, sha256Async, sha256Hex, sha256HexAsync } from "./sha256.ts";

const ref = (d: Uint8Array | string) => createHash("sha256").update(d).digest("hex");

test("sha256Hex() gives FIPS 180-4's examples and node:crypto's hash at every length around the block and padding edges", () => {
  assert.equal(sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  assert.equal(sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  assert.equal(
    sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
  );
  let seed = 1;
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
  for (let n = 0; n <= 200; n++) {
    const d = bytes(n);
    assert.equal(sha256Hex(d), ref(d), `length ${n}`);
  }
  const big = bytes(1 << 20);
  assert.equal(sha256Hex(big), ref(big), "1 MiB");
  assert.equal(sha256Hex("héllo ☃"), ref("héllo ☃"), "a string is hashed as its UTF-8");
});

test("update() in pieces of any size gives the hash of the whole; the object is spent after its digest", () => {
  const d = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 0xff);
  for (const cut of [1, 3, 63, 64, 65, 127, 500]) {
    const h = new Sha256();
    for (let i = 0; i < d.length; i += cut) h.update(d.subarray(i, i + cut));
    assert.equal(h.hex(), ref(d), `pieces of ${cut}`);
    assert.throws(() => h.update(d), /after digest/);
    assert.throws(() => h.digest(), /twice/);
  }
  assert.deepEqual(sha256(d.subarray(0, 10), d.subarray(10)), new Uint8Array(createHash("sha256").update(d).digest()));
});

test("sha256HexAsync() (Web Crypto) gives what sha256Hex() gives, parts and strings alike; hex() is two lower-case digits a byte", async () => {
  const d = Uint8Array.from({ length: 300 }, (_, i) => (i * 13) & 0xff);
  assert.equal(await sha256HexAsync(d.subarray(0, 100), "héllo", d.subarray(100)), sha256Hex(d.subarray(0, 100), "héllo", d.subarray(100)));
  assert.equal(await sha256HexAsync(), sha256Hex());
  assert.deepEqual(await sha256Async(d, "x"), sha256(d, "x"), "sha256Async() gives the bytes sha256() gives");
  assert.equal(hex(new Uint8Array([0, 1, 0xab, 0xff])), "0001abff");
});
