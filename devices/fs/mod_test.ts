/**
 * virtio-fs as a device kind (devices/fs/mod.ts): what `open` takes and
 * `close` gives back, the model the transport shows, and the two queue
 * handlers as queue Workers call them: kick, input on the forget pipe, close.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { libc } from "../../ffi/libc.ts";
import { ConfigError } from "../../vm/vm.ts";
import { hostGuestMemory } from "../../test/support/host_memory.ts";
import { DriverQueue } from "../../test/support/driver_queue.ts";
import { Virtqueue } from "../virtio/ring.ts";
import type { HandlerContext } from "../virtio/kind.ts";
import type { QueueHandler } from "../virtio/queue_handler.ts";
import { kindOf } from "../registry.ts";
import { EBADF, ENTRY_OUT, FUSE_FORGET, FUSE_GETATTR, FUSE_INIT, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_LOOKUP, INIT_IN, OUT_HEADER } from "./fuse.ts";
import { cstr, FuseDriver, le } from "./fuse_driver.ts";
import { fsConfig, VIRTIO_ID_FS } from "./device.ts";
import { type FsSpec, fsKind } from "./mod.ts";

const F_GETFD = 1;
const isOpen = (fd: number) => libc.fcntl(fd, F_GETFD, 0n) >= 0;
const console_ = { outFd: 1, inFd: null };

/** A temp dir (real path) holding `a/` with a file `f`; removed after `fn`. */
function withDir(fn: (dir: string) => void): void {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), "vmm-fskind-")));
  try {
    mkdirSync(join(dir, "a"));
    writeFileSync(join(dir, "a/f"), "f");
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("the fs kind is in the registry", () => {
  assert.equal(kindOf({ kind: "fs" }), fsKind);
});

test("open() makes one device per share with its own forget pipe; close() closes both ends", () => {
  withDir((dir) => {
    assert.deepEqual(fsKind.open({}, console_), []);
    const specs = fsKind.open({ shares: [{ path: `${dir}/a`, tag: "a", readOnly: false }, { path: dir, tag: "top", readOnly: true }] }, console_);
    assert.equal(specs.length, 2);
    assert.deepEqual(specs.map((s) => [s.kind, s.path, s.tag, s.readOnly]), [["fs", `${dir}/a`, "a", false], ["fs", dir, "top", true]]);
    const fds = specs.flatMap((s) => [s.forgetRead, s.forgetWrite]);
    assert.equal(new Set(fds).size, 4);
    assert.ok(fds.every(isOpen));
    assert.deepEqual(JSON.parse(JSON.stringify(specs)), specs, "plain data, as posted to every Worker");
    specs.forEach((s) => fsKind.close(s));
    assert.ok(!fds.some(isOpen));
  });
});

test("open() refuses shares a program got wrong with one ConfigError line", () => {
  withDir((dir) => {
    const dup = { shares: [{ path: `${dir}/a`, tag: "x", readOnly: false }, { path: dir, tag: "x", readOnly: false }] };
    assert.throws(() => fsKind.open(dup, console_), (e) => e instanceof ConfigError && e.message === `--share ${dir}: tag "x" is already the tag of ${dir}/a`);
    assert.throws(() => fsKind.open({ shares: [{ path: `${dir}/a/f`, tag: "f", readOnly: false }] }, console_), /^ConfigError: --share .*\/a\/f: not a directory$/);
  });
});

test("model(): device ID 26, queues hiprio and requests, config = tag + one request queue", () => {
  const spec: FsSpec = { kind: "fs", path: "/srv/x", tag: "x", readOnly: true, cache: "auto", forgetRead: -1, forgetWrite: -1 };
  const m = fsKind.model(spec);
  assert.equal(m.deviceId, VIRTIO_ID_FS);
  assert.equal(m.deviceId, 26);
  assert.equal(m.features, 0n);
  assert.deepEqual(m.queueSizes, [128, 1024]);
  assert.ok(m.queueSizes.every((n) => (n & (n - 1)) === 0), "powers of 2");
  assert.deepEqual(m.config, fsConfig("x"));
  assert.equal(fsKind.name(spec, 0), "virtio-fs x (/srv/x, ro)");
});

/** A driver-side queue at `base` in `mem` and the device's Virtqueue over it. */
function ring(mem: ReturnType<typeof hostGuestMemory>, base: number, size: number) {
  const dq = new DriverQueue(mem, DriverQueue.layout(base, size));
  return { dq, vq: new Virtqueue(mem, dq.config(false)) };
}

test("the handlers: hiprio forwards a FORGET, the request queue applies it on input(), close() closes the share", () => {
  withDir((dir) => {
    const [spec] = fsKind.open({ shares: [{ path: `${dir}/a`, tag: "a", readOnly: false }] }, console_);
    const mem = hostGuestMemory();
    const lines: string[] = [];
    const ctx = (queue: number): HandlerContext => ({
      mem, features: 0n, queue, log: (l) => lines.push(l), end: () => assert.fail("nothing ends the VM"),
      state: new Int32Array(8), config: fsConfig("a"), configChanged: () => {},
    });
    const hi = fsKind.handler(spec, ctx(0)), rq = fsKind.handler(spec, ctx(1));
    const hq = ring(mem, 0x1000, 128), q = ring(mem, 0x8000, 1024);
    const msg = new FuseDriver({ serve: () => 0 }); // only to build messages
    const REQ = 0x40000, REPLY = 0x50000;

    /** Post one request on `r`, kick `h`, and read the reply's error and body. */
    const exchange = (r: typeof q, h: QueueHandler, opcode: number, nodeid: bigint, args: Uint8Array[], reply = 256) => {
      const { head } = msg.message(opcode, nodeid, args);
      const bytes = new Uint8Array([...head, ...args.flatMap((a) => [...a])]);
      mem.write(REQ, bytes);
      r.dq.add([{ gpa: REQ, len: bytes.length }, ...(reply ? [{ gpa: REPLY, len: reply, write: true }] : [])]);
      assert.equal(h.kick(r.vq), false, "no budget spent");
      const used = r.dq.popUsed();
      assert.ok(used);
      const out = mem.slice(REPLY, Math.max(used.len, OUT_HEADER.SIZE));
      const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
      return { used: used.len, error: used.len ? v.getInt32(OUT_HEADER.ERROR, true) : 0, view: v };
    };

    assert.equal(hi.inputFd, undefined, "hiprio waits on nothing but its kick");
    assert.equal(rq.inputFd?.(), spec.forgetRead);
    assert.equal(rq.drain, undefined, "no flush: the guest asks with FUSE FSYNC");
    const init = le(INIT_IN.SIZE).u32(INIT_IN.MAJOR, FUSE_KERNEL_VERSION).u32(INIT_IN.MINOR, FUSE_KERNEL_MINOR_VERSION).bytes;
    assert.equal(exchange(q, rq, FUSE_INIT, 0n, [init]).error, 0);
    const look = exchange(q, rq, FUSE_LOOKUP, 1n, [cstr("f")]);
    assert.equal(look.error, 0);
    const f = look.view.getBigUint64(OUT_HEADER.SIZE + ENTRY_OUT.NODEID, true);
    const getattr = () => exchange(q, rq, FUSE_GETATTR, f, [new Uint8Array(16)]).error;
    assert.equal(getattr(), 0);

    assert.equal(exchange(hq, hi, FUSE_FORGET, f, [le(8).u64(0, 1n).bytes], 0).used, 0, "hiprio: used length 0");
    rq.input!(q.vq); // the Worker saw the pipe readable
    assert.equal(getattr(), -EBADF, "EBADF: the request queue forgot the inode");

    // A FORGET that arrives without input(): the next kick applies it before serving.
    const g = exchange(q, rq, FUSE_LOOKUP, 1n, [cstr("f")]).view.getBigUint64(OUT_HEADER.SIZE + ENTRY_OUT.NODEID, true);
    exchange(hq, hi, FUSE_FORGET, g, [le(8).u64(0, 1n).bytes], 0);
    assert.equal(exchange(q, rq, FUSE_GETATTR, g, [new Uint8Array(16)]).error, -EBADF);

    rq.close!();
    hi.close!();
    assert.throws(() => exchange(q, rq, FUSE_GETATTR, 1n, [new Uint8Array(16)]), /FsServer is closed/);
    assert.ok(isOpen(spec.forgetRead) && isOpen(spec.forgetWrite), "the pipe is the spec's: the kind's close() closes it");
    fsKind.close(spec);
    assert.deepEqual(lines, []);
  });
});
