/**
 * The forget channel between the hiprio and request threads
 * (devices/fs/forget.ts): what a request carries, records through a real
 * pipe, and a full pipe that drops rather than waits.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { close } from "../../ffi/libc.ts";
import { eachForget, ForgetReceiver, ForgetSender, openForgetPipe } from "./forget.ts";
import { BATCH_FORGET_IN, FORGET_ONE, FUSE_BATCH_FORGET, FUSE_FORGET, FUSE_INTERRUPT, FUSE_LOOKUP } from "./fuse.ts";
import type { FuseRequest } from "./message.ts";
import { le } from "./fuse_driver.ts";

/** A parsed request with just what eachForget reads. */
function req(opcode: number, nodeid: bigint, body: Uint8Array, bad = 0): FuseRequest {
  return { opcode, nodeid, body, view: new DataView(body.buffer, body.byteOffset, body.byteLength), bad } as FuseRequest;
}

/** A BATCH_FORGET body: its count, then `pairs` as fuse_forget_one. */
function batch(count: number, pairs: [bigint, bigint][]): Uint8Array {
  const b = le(BATCH_FORGET_IN.SIZE + pairs.length * FORGET_ONE.SIZE).u32(BATCH_FORGET_IN.COUNT, count);
  pairs.forEach(([id, n], i) => b.u64(BATCH_FORGET_IN.SIZE + i * FORGET_ONE.SIZE, id).u64(BATCH_FORGET_IN.SIZE + i * 16 + 8, n));
  return b.bytes;
}

function collect(r: FuseRequest): [bigint, bigint][] {
  const out: [bigint, bigint][] = [];
  eachForget(r, (id, n) => out.push([id, n]));
  return out;
}

/** A fresh pipe for `fn`, closed after. */
function withPipe(fn: (rd: number, wr: number) => void): void {
  const [rd, wr] = openForgetPipe();
  try {
    fn(rd, wr);
  } finally {
    close(rd);
    close(wr);
  }
}

test("eachForget() reads FORGET's nodeid and nlookup", () => {
  assert.deepEqual(collect(req(FUSE_FORGET, 7n, le(8).u64(0, 3n).bytes)), [[7n, 3n]]);
  assert.deepEqual(collect(req(FUSE_FORGET, 7n, new Uint8Array(4))), [], "a body shorter than fuse_forget_in");
  assert.deepEqual(collect(req(FUSE_FORGET, 7n, le(8).u64(0, 3n).bytes, 22)), [], "a request whose lengths were bad");
});

test("eachForget() reads a BATCH_FORGET's entries, no more than its body holds", () => {
  const pairs: [bigint, bigint][] = [[2n, 1n], [0xffff_ffff_ffff_ffffn, 5n], [9n, 0n]];
  assert.deepEqual(collect(req(FUSE_BATCH_FORGET, 0n, batch(3, pairs))), pairs);
  assert.deepEqual(collect(req(FUSE_BATCH_FORGET, 0n, batch(1, pairs))), pairs.slice(0, 1), "count smaller than the body");
  assert.deepEqual(collect(req(FUSE_BATCH_FORGET, 0n, batch(1000, pairs))), pairs, "count larger than the body");
  assert.deepEqual(collect(req(FUSE_BATCH_FORGET, 0n, batch(3, pairs).subarray(0, 30))), pairs.slice(0, 1), "a torn last entry");
  assert.deepEqual(collect(req(FUSE_BATCH_FORGET, 0n, new Uint8Array(4))), []);
});

test("eachForget() finds nothing in INTERRUPT or any other request", () => {
  assert.deepEqual(collect(req(FUSE_INTERRUPT, 0n, le(8).u64(0, 3n).bytes)), []);
  assert.deepEqual(collect(req(FUSE_LOOKUP, 5n, le(8).u64(0, 3n).bytes)), []);
});

test("ForgetSender and ForgetReceiver carry records intact, more than one atomic write's worth", () => {
  withPipe((rd, wr) => {
    const lines: string[] = [];
    const tx = new ForgetSender(wr, (l) => lines.push(l));
    const rx = new ForgetReceiver(rd);
    const pairs: [bigint, bigint][] = Array.from({ length: 1000 }, (_, i) => [BigInt(i) << 40n | 1n, BigInt(i)]);
    pairs.push([0xffff_ffff_ffff_ffffn, 0xffff_ffff_ffff_ffffn]);
    tx.send(pairs);
    tx.send([[3n, 4n]]);
    const got: [bigint, bigint][] = [];
    assert.equal(rx.drain((id, n) => got.push([id, n])), pairs.length + 1);
    assert.deepEqual(got, [...pairs, [3n, 4n]]);
    assert.equal(rx.drain(() => assert.fail("nothing is left")), 0, "an empty pipe does not block");
    assert.equal(tx.dropped, 0);
    assert.deepEqual(lines, []);
    tx.close();
    rx.close();
  });
});

test("a full pipe drops forgets instead of waiting, and says so once", () => {
  withPipe((rd, wr) => {
    const lines: string[] = [];
    const tx = new ForgetSender(wr, (l) => lines.push(l));
    const rx = new ForgetReceiver(rd);
    const many: [bigint, bigint][] = Array.from({ length: 20_000 }, (_, i) => [BigInt(i + 2), 1n]);
    tx.send(many); // Linux's default pipe holds 64 KiB: 4096 records
    tx.send([[1n, 1n]]);
    assert.ok(tx.dropped > 0, "something was dropped");
    assert.equal(lines.length, 1, "logged once");
    assert.match(lines[0], /forget pipe full/);
    let got = 0, last = 0n;
    got = rx.drain((id) => {
      assert.ok(id > last, "records arrive whole and in order");
      last = id;
    });
    assert.equal(got + tx.dropped, many.length + 1, "every forget is either delivered or counted as dropped");
    // Room again: the next send goes through.
    tx.send([[5n, 1n]]);
    assert.equal(rx.drain(() => {}), 1);
    tx.close();
    rx.close();
  });
});
