/**
 * Queue Workers for real: a KVM VM with its irqfds and ioeventfds
 * registered (loop/virtio.ts), the queue Workers started as the control
 * loop starts them, and this test thread playing both the vCPU (register
 * writes through its own MmioTransport over the shared state, startQueues /
 * stopQueues as the vCPU Worker calls them) and the guest driver (rings in
 * guest RAM through test/support/driver_queue.ts). A kick is the write KVM
 * would make to the ioeventfd; the interrupt is seen in InterruptStatus.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { close, EFD_CLOEXEC, eventfd, eventfdSignal, hostView, libc, mmapAnon, NativeBuf, O_CLOEXEC, O_NONBLOCK, pipe, writeAll } from "../ffi/libc.ts";
import { Vm } from "../vm/vm.ts";
import { ioeventfd } from "../ffi/kvm.ts";
import { SysError } from "../ffi/errno.ts";
import { closeDisk, openDisk } from "../devices/blk/disk.ts";
import { deviceTransport } from "../devices/virtio/device.ts";
import { describeAll, kindOf, type VirtioSpec } from "../devices/registry.ts";
import {
  type MmioTransport,
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_INT_CONFIG,
  VIRTIO_MMIO_INT_VRING,
  VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_INTERRUPT_STATUS,
  VIRTIO_MMIO_MAGIC,
  VIRTIO_MMIO_MAGIC_VALUE,
  VIRTIO_MMIO_DEVICE_ID,
  VIRTIO_MMIO_PAGE_SIZE,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_DEVICE_LOW,
  VIRTIO_MMIO_QUEUE_DRIVER_LOW,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_STATUS,
} from "../devices/virtio/mmio.ts";
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from "../devices/blk/request.ts";
import { DriverQueue } from "../test/support/driver_queue.ts";
import { fsKind } from "../devices/fs/mod.ts";
import { cstr, le } from "../devices/fs/fuse_driver.ts";
import {
  EBADF,
  ENTRY_OUT,
  FORGET_IN,
  FUSE_FORGET,
  FUSE_GETATTR,
  FUSE_INIT,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_LOOKUP,
  FUSE_ROOT_ID,
  GETATTR_IN,
  IN_HEADER,
  INIT_IN,
  OUT_HEADER,
} from "../devices/fs/fuse.ts";
import { requireKvm } from "../test/support/require_kvm.ts";
import { joinWorkers, queueWorker, startWorker, type WorkerHandle } from "./workers.ts";
import { pauseQueues, resumeQueues, startQueues, stopQueues, syncPages, unwireVirtio, wireVirtio } from "./virtio.ts";
import { EXIT_KIND, mmioPage, Q, QPOS, queuePosWord, queueRunWord, SHARED_BYTES } from "./shared.ts";
import type { QueueInit, VirtioDeviceInit } from "./messages.ts";

const QSIZE = 16;
/** Guest RAM layout of the test driver: rings at 1 MiB (one area per device), buffers at 4 MiB. */
const RINGS = 0x10_0000;
const BUFS = 0x40_0000;

/**
 * A VM, its shared block, and running queue Workers for `specs`: one per
 * queue, or one per device where its kind says `oneWorker` (as
 * loop/machine.ts starts them) or `together` lists the device's index.
 */
async function rig(specs: VirtioSpec[], together: number[] = [], withPages = false) {
  requireKvm();
  const vm = new Vm({ memMiB: 16, cpus: 1 });
  const shared = mmapAnon(SHARED_BYTES);
  const bytes = hostView(shared, SHARED_BYTES);
  const ctl = new Int32Array(bytes.buffer, bytes.byteOffset, SHARED_BYTES / 4);
  const devs = wireVirtio(vm.vm.fd, describeAll(specs), bytes, withPages ? { sharedAddr: shared, firstSlot: vm.regions.length } : undefined);
  if (withPages) syncPages(devs, bytes);
  const workers: WorkerHandle[] = [];
  for (const [i, device] of devs.entries()) {
    const queues = device.ioFds.map((_, q) => q);
    for (const group of kindOf(device.spec).oneWorker || together.includes(i) ? [queues] : queues.map((q) => [q])) {
      const init: QueueInit = {
        kind: "queue", device, queues: group, shared, ctlFd: device.ackFd, // ctlFd: anything pollable; the VM never ends here
        memAddr: vm.memAddr, memSize: vm.memSize, regions: vm.regions,
      };
      workers.push(await startWorker(queueWorker(device.spec.kind), init));
    }
  }
  const transport = (i: number) => deviceTransport(devs[i], bytes);
  const qstate = (i: number, q: number) => Atomics.load(ctl, queueRunWord(devs[i].block, q));
  /** Stop the Workers (drained) and wait for them to end; returns the queues that were late. */
  const close = async () => {
    const late = stopQueues(ctl, devs, "exit", 5000);
    assert.equal(await joinWorkers(workers, 5000), 0, "every queue Worker ended");
    return late;
  };
  /** After close(): give back the fds and mappings (no view of them may be used afterwards). */
  const free = () => {
    unwireVirtio(devs);
    libc.munmap(shared, BigInt(SHARED_BYTES));
    vm.close();
  };
  return { vm, ctl, bytes, devs, transport, qstate, close, free, workers };
}

/** What Linux's virtio_mmio probe does, up to DRIVER_OK, with queue `q` at `ringBase`; returns the driver's queues. */
function probe(t: MmioTransport, dev: VirtioDeviceInit, ctl: Int32Array, vm: Vm, ringBase: number, queues = 1): DriverQueue[] {
  t.write(VIRTIO_MMIO_STATUS, 4, 0);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE);
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  const f = VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX;
  t.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 4, 1);
  t.write(VIRTIO_MMIO_DRIVER_FEATURES, 4, Number(f >> 32n));
  t.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 4, 0);
  t.write(VIRTIO_MMIO_DRIVER_FEATURES, 4, Number(f & 0xffff_ffffn));
  t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  const dqs: DriverQueue[] = [];
  for (let q = 0; q < queues; q++) {
    const layout = DriverQueue.layout(ringBase + q * 0x4000, QSIZE);
    t.write(VIRTIO_MMIO_QUEUE_SEL, 4, q);
    t.write(VIRTIO_MMIO_QUEUE_NUM, 4, QSIZE);
    t.write(VIRTIO_MMIO_QUEUE_DESC_LOW, 4, layout.descAddr);
    t.write(VIRTIO_MMIO_QUEUE_DRIVER_LOW, 4, layout.availAddr);
    t.write(VIRTIO_MMIO_QUEUE_DEVICE_LOW, 4, layout.usedAddr);
    t.write(VIRTIO_MMIO_QUEUE_READY, 4, 1);
    dqs.push(new DriverQueue(vm.mem, layout));
  }
  const ev = t.write(VIRTIO_MMIO_STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  assert.deepEqual(ev, { kind: "driverOk" });
  startQueues(ctl, dev); // what the vCPU Worker does on driverOk
  return dqs;
}

/** Wait (event loop free) until `cond`, or fail after `ms`. */
async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

test("virtio-rng queue Worker fills a buffer the guest posted and raises VRING", async () => {
  const r = await rig([{ kind: "rng" }]);
  try {
    const t = r.transport(0);
    const [dq] = probe(t, r.devs[0], r.ctl, r.vm, RINGS);
    await until(() => r.qstate(0, 0) === Q.RUNNING, "the Worker to run");
    r.vm.mem.write(BUFS, new Uint8Array(64));
    dq.add([{ gpa: BUFS, len: 64, write: true }]);
    eventfdSignal(r.devs[0].ioFds[0]); // the guest's QueueNotify write, as KVM delivers it
    await until(() => dq.usedIdx === 1, "the used ring");
    assert.deepEqual(dq.popUsed()?.len, 64);
    assert.ok(r.vm.mem.slice(BUFS, 64).some((b) => b !== 0), "random bytes arrived");
    await until(() => (t.interruptStatus & VIRTIO_MMIO_INT_VRING) !== 0, "InterruptStatus VRING");
    assert.equal(t.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4), VIRTIO_MMIO_INT_VRING, "the driver's read finds VRING");
    assert.equal(t.interruptStatus, 0, "and takes it");
  } finally {
    assert.deepEqual(await r.close(), []);
    r.free();
  }
});

test("KVM swallows every device's InterruptACK write: wireVirtio registered an ioeventfd on it", async () => {
  const r = await rig([{ kind: "rng" }, { kind: "rng" }]);
  try {
    for (const d of r.devs) {
      const efd = eventfd(EFD_CLOEXEC);
      try {
        // KVM refuses a second ioeventfd of the same address, length and match (EEXIST).
        assert.throws(() => ioeventfd(r.vm.vm.fd, { fd: efd, addr: d.base + VIRTIO_MMIO_INTERRUPT_ACK, len: 4 }), (e: unknown) => {
          assert.ok(e instanceof SysError);
          assert.equal(e.code, "EEXIST");
          return true;
        });
      } finally {
        close(efd);
      }
    }
  } finally {
    assert.deepEqual(await r.close(), []);
    r.free();
  }
});

test("with register pages, KVM maps each window read-only, a Worker's interrupt shows in the page, and KVM swallows an ACK of VRING alone", async () => {
  const r = await rig([{ kind: "rng" }, { kind: "rng" }], [], true);
  try {
    for (const [i, d] of r.devs.entries()) {
      assert.equal(d.page, mmioPage(i));
      const page = new DataView(r.bytes.buffer, r.bytes.byteOffset + d.page, VIRTIO_MMIO_PAGE_SIZE);
      assert.equal(page.getUint32(VIRTIO_MMIO_MAGIC_VALUE, true), VIRTIO_MMIO_MAGIC, "syncPages filled it");
      assert.equal(page.getUint32(VIRTIO_MMIO_DEVICE_ID, true), 4);
      // KVM refuses a second slot over the same guest addresses (EEXIST): the window is mapped.
      assert.throws(() => r.vm.vm.setUserMemoryRegion(100 + i, d.base, VIRTIO_MMIO_PAGE_SIZE, r.vm.memAddr), (e: unknown) => {
        assert.ok(e instanceof SysError);
        assert.equal(e.code, "EEXIST");
        return true;
      });
      const efd = eventfd(EFD_CLOEXEC);
      try {
        const ack = { fd: efd, addr: d.base + VIRTIO_MMIO_INTERRUPT_ACK, len: 4 };
        assert.throws(() => ioeventfd(r.vm.vm.fd, { ...ack, datamatch: VIRTIO_MMIO_INT_VRING }), /EEXIST/, "an ACK of 1 is taken");
        ioeventfd(r.vm.vm.fd, { ...ack, datamatch: VIRTIO_MMIO_INT_CONFIG }); // but not one of 2: that reaches the vCPU
        ioeventfd(r.vm.vm.fd, { ...ack, datamatch: VIRTIO_MMIO_INT_CONFIG, deassign: true });
      } finally {
        close(efd);
      }
    }
    const t = r.transport(0);
    const [dq] = probe(t, r.devs[0], r.ctl, r.vm, RINGS);
    await until(() => r.qstate(0, 0) === Q.RUNNING, "the Worker to run");
    dq.add([{ gpa: BUFS, len: 64, write: true }]);
    eventfdSignal(r.devs[0].ioFds[0]);
    await until(() => dq.usedIdx === 1, "the used ring");
    const status = () => new DataView(r.bytes.buffer, r.bytes.byteOffset + r.devs[0].page).getUint32(VIRTIO_MMIO_INTERRUPT_STATUS, true);
    await until(() => status() === VIRTIO_MMIO_INT_VRING, "VRING in the page the guest reads");
  } finally {
    assert.deepEqual(await r.close(), []);
    r.free();
  }
});

test("virtio-blk queue Worker writes, flushes and reads a real image; reset parks it, a new DRIVER_OK restarts it", async () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-vq-"));
  const path = join(dir, "disk.img");
  writeFileSync(path, new Uint8Array(64 * 1024));
  const disk = openDisk({ path, readOnly: false });
  const r = await rig([{ kind: "blk", disk, queues: 1 }]);
  try {
    const t = r.transport(0);
    let [dq] = probe(t, r.devs[0], r.ctl, r.vm, RINGS);
    const mem = r.vm.mem;
    const header = (type: number, sector: number, at: number) => {
      const h = new DataView(new ArrayBuffer(16));
      h.setUint32(0, type, true);
      h.setBigUint64(8, BigInt(sector), true);
      mem.write(at, new Uint8Array(h.buffer));
    };
    const data = Uint8Array.from({ length: 1024 }, (_, i) => (i * 7 + 3) & 0xff);
    mem.write(BUFS + 0x1000, data);
    header(VIRTIO_BLK_T_OUT, 4, BUFS);
    dq.add([{ gpa: BUFS, len: 16 }, { gpa: BUFS + 0x1000, len: 1024 }, { gpa: BUFS + 0x100, len: 1, write: true }]);
    header(VIRTIO_BLK_T_FLUSH, 0, BUFS + 0x200);
    dq.add([{ gpa: BUFS + 0x200, len: 16 }, { gpa: BUFS + 0x101, len: 1, write: true }]);
    mem.writeU8(BUFS + 0x100, 0xff);
    mem.writeU8(BUFS + 0x101, 0xff);
    eventfdSignal(r.devs[0].ioFds[0]);
    await until(() => dq.usedIdx === 2, "two requests served");
    assert.equal(mem.readU8(BUFS + 0x100), VIRTIO_BLK_S_OK);
    assert.equal(mem.readU8(BUFS + 0x101), VIRTIO_BLK_S_OK);
    assert.deepEqual(new Uint8Array(readFileSync(path)).subarray(4 * 512, 4 * 512 + 1024), data);

    // Reset (what the vCPU does on a Status write of 0), then probe again.
    assert.deepEqual(stopQueues(r.ctl, r.devs, "reset", 5000), []);
    assert.equal(r.qstate(0, 0), Q.IDLE);
    [dq] = probe(t, r.devs[0], r.ctl, r.vm, RINGS + 0x8000);
    await until(() => r.qstate(0, 0) === Q.RUNNING, "the Worker to run again");
    // Read it back, and a read past the end of the disk gets IOERR.
    header(VIRTIO_BLK_T_IN, 4, BUFS + 0x300);
    dq.add([{ gpa: BUFS + 0x300, len: 16 }, { gpa: BUFS + 0x2000, len: 1024, write: true }, { gpa: BUFS + 0x102, len: 1, write: true }]);
    header(VIRTIO_BLK_T_IN, 127, BUFS + 0x400);
    dq.add([{ gpa: BUFS + 0x400, len: 16 }, { gpa: BUFS + 0x3000, len: 1024, write: true }, { gpa: BUFS + 0x103, len: 1, write: true }]);
    eventfdSignal(r.devs[0].ioFds[0]);
    await until(() => dq.usedIdx === 2, "two reads served");
    assert.deepEqual(mem.slice(BUFS + 0x2000, 1024), data);
    assert.equal(mem.readU8(BUFS + 0x102), VIRTIO_BLK_S_OK);
    assert.equal(mem.readU8(BUFS + 0x103), VIRTIO_BLK_S_IOERR);
  } finally {
    assert.deepEqual(await r.close(), []);
    r.free();
    closeDisk(disk);
    rmSync(dir, { recursive: true });
  }
});

test("a hostile chain marks the device DEVICE_NEEDS_RESET with a config interrupt; the Worker survives and resets", async () => {
  const r = await rig([{ kind: "rng" }]);
  try {
    const t = r.transport(0);
    let [dq] = probe(t, r.devs[0], r.ctl, r.vm, RINGS);
    await until(() => r.qstate(0, 0) === Q.RUNNING, "the Worker to run");
    // A descriptor pointing past the end of guest RAM (16 MiB).
    dq.add([{ gpa: 0xfff_f000, len: 0x2000, write: true }]);
    eventfdSignal(r.devs[0].ioFds[0]);
    await until(() => (t.status & STATUS_DEVICE_NEEDS_RESET) !== 0, "DEVICE_NEEDS_RESET");
    assert.ok(t.interruptStatus & VIRTIO_MMIO_INT_CONFIG);
    assert.equal(dq.usedIdx, 0, "nothing was used");
    // The driver resets; the Worker parks and serves a fresh queue.
    assert.deepEqual(stopQueues(r.ctl, r.devs, "reset", 5000), []);
    [dq] = probe(t, r.devs[0], r.ctl, r.vm, RINGS + 0x8000);
    assert.equal(t.status & STATUS_DEVICE_NEEDS_RESET, 0);
    await until(() => r.qstate(0, 0) === Q.RUNNING, "the Worker to run again");
    dq.add([{ gpa: BUFS, len: 16, write: true }]);
    eventfdSignal(r.devs[0].ioFds[0]);
    await until(() => dq.usedIdx === 1, "the fresh queue served");
  } finally {
    assert.deepEqual(await r.close(), []);
    r.free();
  }
});

test("stopping the VM drains: requests made available but never kicked are served before the Worker ends", async () => {
  const r = await rig([{ kind: "rng" }]);
  const t = r.transport(0);
  const [dq] = probe(t, r.devs[0], r.ctl, r.vm, RINGS);
  await until(() => r.qstate(0, 0) === Q.RUNNING, "the Worker to run");
  dq.add([{ gpa: BUFS, len: 32, write: true }]); // no kick
  assert.deepEqual(await r.close(), []);
  assert.equal(r.qstate(0, 0), Q.GONE);
  assert.equal(dq.usedIdx, 1);
  assert.equal(Atomics.load(r.ctl, 1), EXIT_KIND.NONE, "nothing ended the VM");
  r.free();
});

test("a paused blk queue serves nothing, keeps its ring position in shared memory, and completes the requests on resume", async () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-vq-"));
  const path = join(dir, "disk.img");
  writeFileSync(path, new Uint8Array(64 * 1024));
  const disk = openDisk({ path, readOnly: false });
  const r = await rig([{ kind: "blk", disk, queues: 1 }]);
  try {
    const t = r.transport(0);
    const [dq] = probe(t, r.devs[0], r.ctl, r.vm, RINGS);
    const mem = r.vm.mem;
    await until(() => r.qstate(0, 0) === Q.RUNNING, "the Worker to run");
    const write = (sector: number, at: number, fill: number) => {
      const h = new DataView(new ArrayBuffer(16));
      h.setUint32(0, VIRTIO_BLK_T_OUT, true);
      h.setBigUint64(8, BigInt(sector), true);
      mem.write(at, new Uint8Array(h.buffer));
      mem.write(at + 0x100, new Uint8Array(512).fill(fill));
      mem.writeU8(at + 0x80, 0xff);
      dq.add([{ gpa: at, len: 16 }, { gpa: at + 0x100, len: 512 }, { gpa: at + 0x80, len: 1, write: true }]);
    };
    write(1, BUFS, 0x11);
    eventfdSignal(r.devs[0].ioFds[0]);
    await until(() => dq.usedIdx === 1, "the first write");

    assert.deepEqual(pauseQueues(r.ctl, r.devs, 5000), []);
    assert.equal(r.qstate(0, 0), Q.PAUSED);
    const pos = queuePosWord(r.devs[0].block, 0);
    assert.deepEqual([QPOS.VALID, QPOS.NEXT_AVAIL, QPOS.NEXT_USED].map((w) => Atomics.load(r.ctl, pos + w)), [1, 1, 1]);
    // The driver queues two more writes and kicks: a paused Worker serves neither.
    write(2, BUFS + 0x1000, 0x22);
    write(3, BUFS + 0x2000, 0x33);
    eventfdSignal(r.devs[0].ioFds[0]);
    await new Promise((res) => setTimeout(res, 200));
    assert.equal(dq.usedIdx, 1, "a paused queue served a request");
    assert.equal(mem.readU8(BUFS + 0x1080), 0xff, "a paused queue wrote a status");

    resumeQueues(r.ctl, r.devs);
    await until(() => dq.usedIdx === 3, "the two writes after resume");
    assert.equal(mem.readU8(BUFS + 0x1080), VIRTIO_BLK_S_OK);
    assert.equal(mem.readU8(BUFS + 0x2080), VIRTIO_BLK_S_OK);
    const img = new Uint8Array(readFileSync(path));
    assert.deepEqual([img[512], img[1024], img[1536]], [0x11, 0x22, 0x33]);
    assert.deepEqual([QPOS.NEXT_AVAIL, QPOS.NEXT_USED].map((w) => Atomics.load(r.ctl, pos + w)), [3, 3]);
  } finally {
    assert.deepEqual(await r.close(), []);
    r.free();
    closeDisk(disk);
    rmSync(dir, { recursive: true });
  }
});

test("virtio-fs: one Worker serves both queues; a FORGET on hiprio reaches the request queue's inode table", async () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-fs-worker-"));
  writeFileSync(join(dir, "hello"), "hi");
  const [spec] = fsKind.open({ shares: [{ path: dir, tag: "t", readOnly: true }] }, { outFd: 1, inFd: null });
  const r = await rig([spec]);
  const mem = r.vm.mem;
  let unique = 0n;
  /** Write one request (header + body) at `at`, its reply room at `at + 0x800`; returns the reply's offset. */
  const request = (at: number, opcode: number, nodeid: bigint, body: Uint8Array): number => {
    const h = le(IN_HEADER.SIZE).u32(IN_HEADER.LEN, IN_HEADER.SIZE + body.length).u32(IN_HEADER.OPCODE, opcode)
      .u64(IN_HEADER.UNIQUE, ++unique).u64(IN_HEADER.NODEID, nodeid);
    mem.write(at, h.bytes);
    mem.write(at + IN_HEADER.SIZE, body);
    return at + 0x800;
  };
  const replyError = (at: number) => mem.readU32(at + OUT_HEADER.ERROR) | 0;
  try {
    assert.equal(r.workers.length, 1, "one Worker for the hiprio and the request queue");
    const [hiprio, requests] = probe(r.transport(0), r.devs[0], r.ctl, r.vm, RINGS, 2);
    await until(() => r.qstate(0, 0) === Q.RUNNING && r.qstate(0, 1) === Q.RUNNING, "both queues to run");
    const send = async (dq: DriverQueue, at: number, opcode: number, nodeid: bigint, body: Uint8Array, reply: number) => {
      const out = request(at, opcode, nodeid, body);
      const used = dq.usedIdx;
      dq.add(reply ? [{ gpa: at, len: IN_HEADER.SIZE + body.length }, { gpa: out, len: reply, write: true }] : [{ gpa: at, len: IN_HEADER.SIZE + body.length }]);
      eventfdSignal(r.devs[0].ioFds[dq === hiprio ? 0 : 1]);
      await until(() => dq.usedIdx === ((used + 1) & 0xffff), `the reply to opcode ${opcode}`);
      return out;
    };
    const init = le(INIT_IN.SIZE).u32(INIT_IN.MAJOR, FUSE_KERNEL_VERSION).u32(INIT_IN.MINOR, FUSE_KERNEL_MINOR_VERSION);
    assert.equal(replyError(await send(requests, BUFS, FUSE_INIT, 0n, init.bytes, 0x400)), 0, "INIT");
    const found = await send(requests, BUFS + 0x1000, FUSE_LOOKUP, FUSE_ROOT_ID, cstr("hello"), 0x400);
    assert.equal(replyError(found), 0, "LOOKUP hello");
    const nodeid = mem.readU64(found + OUT_HEADER.SIZE + ENTRY_OUT.NODEID);
    const getattr = le(GETATTR_IN.SIZE).bytes;
    assert.equal(replyError(await send(requests, BUFS + 0x2000, FUSE_GETATTR, nodeid, getattr, 0x400)), 0, "GETATTR while looked up");
    // The FORGET goes to the hiprio queue, gets no reply, and drops the lookup in the request queue's table.
    await send(hiprio, BUFS + 0x3000, FUSE_FORGET, nodeid, le(FORGET_IN.SIZE).u64(FORGET_IN.NLOOKUP, 1).bytes, 0);
    assert.equal(hiprio.usedElem(0).len, 0, "a FORGET is answered with nothing");
    assert.equal(replyError(await send(requests, BUFS + 0x4000, FUSE_GETATTR, nodeid, getattr, 0x400)), -EBADF, "GETATTR of a forgotten nodeid");
  } finally {
    assert.deepEqual(await r.close(), []);
    r.free();
    fsKind.close(spec);
    rmSync(dir, { recursive: true });
  }
});

test("one Worker serves all of a device's queues: console output and input both ways, a pause holds both, the stop drains", async () => {
  const [inR, inW] = pipe(O_CLOEXEC | O_NONBLOCK);
  const [outR, outW] = pipe(O_CLOEXEC | O_NONBLOCK);
  const r = await rig([{ kind: "console", inFd: inR, outFd: outW, escape: false }, { kind: "rng" }], [0]);
  const buf = NativeBuf.alloc(256);
  const readOut = () => {
    const n = Number(libc.read(outR, buf.addr, 256n));
    return n > 0 ? new TextDecoder().decode(buf.bytes.subarray(0, n)) : "";
  };
  try {
    assert.equal(r.workers.length, 2, "one Worker for the console's two queues, one for rng's");
    const [rx, tx] = probe(r.transport(0), r.devs[0], r.ctl, r.vm, RINGS, 2);
    await until(() => r.qstate(0, 0) === Q.RUNNING && r.qstate(0, 1) === Q.RUNNING, "both queues to run");
    const mem = r.vm.mem;
    // Guest output: transmitq (1) → the out pipe.
    mem.write(BUFS, new TextEncoder().encode("hello"));
    tx.add([{ gpa: BUFS, len: 5 }]);
    eventfdSignal(r.devs[0].ioFds[1]);
    await until(() => tx.usedIdx === 1, "the output chain used");
    assert.equal(readOut(), "hello");
    // Host input: the in pipe → a buffer the guest posted on receiveq (0), through the handler's input fd.
    rx.add([{ gpa: BUFS + 0x1000, len: 64, write: true }]);
    eventfdSignal(r.devs[0].ioFds[0]);
    writeAll(inW, new TextEncoder().encode("typed"));
    await until(() => rx.usedIdx === 1, "the input chain used");
    assert.equal(new TextDecoder().decode(mem.slice(BUFS + 0x1000, 5)), "typed");
    // A pause parks both queues of the one Worker; a resume serves what came meanwhile.
    assert.deepEqual(pauseQueues(r.ctl, r.devs, 5000), []);
    assert.deepEqual([r.qstate(0, 0), r.qstate(0, 1)], [Q.PAUSED, Q.PAUSED]);
    mem.write(BUFS + 0x100, new TextEncoder().encode("later"));
    tx.add([{ gpa: BUFS + 0x100, len: 5 }]);
    eventfdSignal(r.devs[0].ioFds[1]);
    await new Promise((res) => setTimeout(res, 200));
    assert.equal(tx.usedIdx, 1, "a paused queue served a chain");
    resumeQueues(r.ctl, r.devs);
    await until(() => tx.usedIdx === 2, "the output after resume");
    assert.equal(readOut(), "later");
    // The stop drains: output made available, never kicked, still reaches the pipe.
    mem.write(BUFS + 0x200, new TextEncoder().encode("last"));
    tx.add([{ gpa: BUFS + 0x200, len: 4 }]);
  } finally {
    assert.deepEqual(await r.close(), []);
    assert.equal(readOut(), "last");
    r.free();
    buf.free();
    for (const fd of [inR, inW, outR, outW]) close(fd);
  }
});
