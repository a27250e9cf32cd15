/**
 * virtio-net (devices/net/net.ts) against a TAP stand-in: one end of an
 * AF_UNIX SOCK_SEQPACKET socketpair keeps frame boundaries as a TAP does,
 * so each write(2) is one frame and each read(2) one frame, and the test
 * holds the other end as "the host network". Guest RAM is a real anonymous
 * mapping (writev and read take host addresses), in two regions so that a
 * buffer above 256 MiB catches a translation that forgets the region; this
 * test plays the driver through test/support/driver_queue.ts.
 *
 * The last tests run the same queues on a real TAP in a private network
 * namespace (test/support/tap_netns.ts): an ARP request gets the host
 * kernel's reply, a header the TAP refuses costs one frame, a deleted link
 * ends both directions with one line each.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { close, EAGAIN, errno, libc, NativeBuf, pipe, POLLERR } from "../../ffi/libc.ts";
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 } from "../../ffi/tap.ts";
import type { GuestMemory } from "../../vm/memory.ts";
import { HIGH_GPA as HIGH, hostGuestMemory } from "../../test/support/host_memory.ts";
import { Virtqueue } from "../virtio/ring.ts";
import { type DriverBuffer, DriverQueue } from "../../test/support/driver_queue.ts";
import { inNetns } from "../../test/support/tap_netns.ts";
import { describe } from "../registry.ts";
import { kindOf } from "../registry.ts";
import {
  MAX_FRAME,
  NET_FEATURES,
  NET_RX_QUEUE,
  NET_TX_QUEUE,
  netConfig,
  NetRx,
  NetStats,
  NetTx,
  tapOffloads,
  VIRTIO_ID_NET,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_S_LINK_UP,
} from "./net.ts";

// ---- guest memory: test/support/host_memory.ts, a real host mapping in two regions ----

const RING = 0x1000; // up to 256 entries (~7 KiB)
const TABLE = 0x4000; // an indirect table
const TX_BUF = 0x10000; // frames the guest sends, up to MAX_FRAME + a little (to 0x30000)
const RX_BUF = HIGH; // receive buffers, in the high region

// ---- the TAP stand-in ----

const AF_UNIX = 1, SOCK_SEQPACKET = 5, SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000;
const pairBuf = NativeBuf.alloc(8);
const peerBuf = NativeBuf.alloc(MAX_FRAME + 4096);

/** [device end, host end]: both non-blocking, as openTap() leaves a TAP. */
function seqpacketPair(): [number, number] {
  const r = libc.socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pairBuf.addr);
  assert.equal(r, 0, `socketpair: errno ${errno()}`);
  return [pairBuf.view.getInt32(0, true), pairBuf.view.getInt32(4, true)];
}

/** The host sends one frame to the guest. */
function hostSend(fd: number, frame: Uint8Array): void {
  peerBuf.bytes.set(frame);
  assert.equal(Number(libc.write(fd, peerBuf.addr, BigInt(frame.length))), frame.length, `write: errno ${errno()}`);
}

/** The next frame the guest sent, or null when there is none. */
function hostRecv(fd: number): Uint8Array | null {
  const r = Number(libc.read(fd, peerBuf.addr, BigInt(peerBuf.bytes.length)));
  if (r < 0) {
    assert.equal(errno(), EAGAIN);
    return null;
  }
  return peerBuf.bytes.slice(0, r);
}

// ---- frames ----

/**
 * A `len`-byte frame: virtio_net_hdr (virtio 1.2 §5.1.6: flags, gso_type,
 * hdr_len, gso_size, csum_start, csum_offset, num_buffers), an Ethernet
 * header, then a payload that differs with `seed` and with every offset.
 */
function frame(len: number, seed = 1, hdr: { flags?: number; csumStart?: number; csumOffset?: number; numBuffers?: number } = {}): Uint8Array {
  const f = new Uint8Array(len);
  const v = new DataView(f.buffer);
  if (len >= 12) {
    v.setUint8(0, hdr.flags ?? 0);
    v.setUint16(6, hdr.csumStart ?? 0, true);
    v.setUint16(8, hdr.csumOffset ?? 0, true);
    v.setUint16(10, hdr.numBuffers ?? 0, true);
  }
  const eth = [0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0x00];
  for (let i = 12; i < len; i++) f[i] = i < 26 ? eth[i - 12] : (i * 31 + seed * 7 + (i >>> 8)) & 0xff;
  return f;
}

/** `f` as the guest must see it: num_buffers set to `n`. */
function withNumBuffers(f: Uint8Array, n: number): Uint8Array {
  const out = f.slice();
  new DataView(out.buffer).setUint16(10, n, true);
  return out;
}

// ---- rigs ----

interface TxRig {
  mem: GuestMemory;
  dq: DriverQueue;
  vq: Virtqueue;
  tx: NetTx;
  stats: NetStats;
  log: string[];
  dev: number;
  host: number;
  /** Close the host end: the TAP goes away. */
  closeHost(): void;
  /** Put `f` in guest RAM at TX_BUF as one readable descriptor and kick. */
  send(f: Uint8Array): void;
}

function withTx(o: { queueSize?: number; maxSegs?: number; eventIdx?: boolean }, fn: (r: TxRig) => void): void {
  const [dev, host] = seqpacketPair();
  let hostOpen = true;
  const closeHost = () => {
    if (hostOpen) close(host);
    hostOpen = false;
  };
  try {
    const mem = hostGuestMemory();
    const dq = new DriverQueue(mem, DriverQueue.layout(RING, o.queueSize ?? 16));
    const vq = new Virtqueue(mem, dq.config(o.eventIdx ?? false));
    const log: string[] = [];
    const stats = new NetStats((l) => log.push(l));
    const tx = new NetTx(mem, dev, o.maxSegs ?? o.queueSize ?? 16, stats);
    const send = (f: Uint8Array) => {
      mem.write(TX_BUF, f);
      dq.add([{ gpa: TX_BUF, len: f.length }]);
      tx.kick(vq);
    };
    fn({ mem, dq, vq, tx, stats, log, dev, host, closeHost, send });
  } finally {
    close(dev);
    closeHost();
  }
}

interface RxRig {
  mem: GuestMemory;
  dq: DriverQueue;
  vq: Virtqueue;
  rx: NetRx;
  stats: NetStats;
  log: string[];
  dev: number;
  host: number;
  /** Close the host end: the TAP goes away. */
  closeHost(): void;
  /** Post `n` chains of one `len`-byte writable buffer each, consecutive from `at`; returns their gpas. */
  post(n: number, len: number, at?: number): number[];
  /** The used elements since the last call. */
  used(): { id: number; len: number }[];
}

/** The line NetRx logs once on a fd that is not a TAP (TUNSETOFFLOAD does not apply to a socket). */
const NOT_A_TAP = "TUNSETOFFLOAD: ENOTTY (inappropriate ioctl for device); receiving without offloads";

function withRx(o: { features?: bigint; queueSize?: number; eventIdx?: boolean }, fn: (r: RxRig) => void): void {
  const [dev, host] = seqpacketPair();
  let hostOpen = true;
  const closeHost = () => {
    if (hostOpen) close(host);
    hostOpen = false;
  };
  try {
    const mem = hostGuestMemory();
    const dq = new DriverQueue(mem, DriverQueue.layout(RING, o.queueSize ?? 16));
    const vq = new Virtqueue(mem, dq.config(o.eventIdx ?? false));
    const log: string[] = [];
    const stats = new NetStats((l) => log.push(l));
    const rx = new NetRx(mem, dev, o.features ?? 0n, stats);
    assert.deepEqual(log, [NOT_A_TAP]);
    log.length = 0;
    let next = RX_BUF;
    const post = (n: number, len: number, at = next) => {
      const gpas: number[] = [];
      for (let i = 0; i < n; i++, at += len) {
        dq.add([{ gpa: at, len, write: true }]);
        gpas.push(at);
      }
      next = at;
      return gpas;
    };
    const used = () => {
      const out: { id: number; len: number }[] = [];
      for (let u = dq.popUsed(); u; u = dq.popUsed()) out.push(u);
      return out;
    };
    fn({ mem, dq, vq, rx, stats, log, dev, host, closeHost, post, used });
  } finally {
    close(dev);
    closeHost();
  }
}

// ---- features and config space ----

test("VIRTIO_ID_NET is 1, RX is queue 0 and TX queue 1, and the feature bits sit where virtio 1.2 §5.1.3 puts them", () => {
  assert.equal(VIRTIO_ID_NET, 1);
  assert.deepEqual([NET_RX_QUEUE, NET_TX_QUEUE], [0, 1]);
  assert.deepEqual(
    [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MTU, VIRTIO_NET_F_MAC, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
      VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS],
    [0n, 1n, 3n, 5n, 7n, 8n, 11n, 12n, 15n, 16n].map((b) => 1n << b),
  );
  assert.equal(VIRTIO_NET_S_LINK_UP, 1);
  // 64 KiB of GSO payload + Ethernet header + virtio_net_hdr (Firecracker's 65562).
  assert.equal(MAX_FRAME, 65562);
});

test("NET_FEATURES offers the TAP's offloads, MAC, MTU, status and MRG_RXBUF, and nothing a TAP cannot carry", () => {
  assert.equal(
    NET_FEATURES,
    VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_MTU | VIRTIO_NET_F_MAC | VIRTIO_NET_F_GUEST_TSO4 |
      VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_STATUS,
  );
  // Not offered: GUEST_ECN 9, GUEST_UFO 10, HOST_ECN 13, HOST_UFO 14, CTRL_VQ 17, MQ 22.
  for (const bit of [9n, 10n, 13n, 14n, 17n, 22n]) assert.equal(NET_FEATURES & (1n << bit), 0n, `bit ${bit}`);
});

test("NET_FEATURES meets virtio 1.2 §5.1.3.1: HOST_TSO* needs CSUM, GUEST_TSO* needs GUEST_CSUM", () => {
  const requires: [bigint, bigint][] = [
    [VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_CSUM],
    [VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_CSUM],
    [VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_CSUM],
    [VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_CSUM],
  ];
  for (const [f, needs] of requires) {
    assert.ok(!(NET_FEATURES & f) || (NET_FEATURES & needs) !== 0n, `feature ${f} without ${needs}`);
  }
});

test("netConfig() lays out struct virtio_net_config: mac at 0, status LINK_UP at 6, one queue pair at 8, mtu at 10", () => {
  const cfg = netConfig([0x52, 0x54, 0x00, 0x12, 0x34, 0x56], 1400);
  assert.equal(cfg.length, 12);
  const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  assert.deepEqual([...cfg.subarray(0, 6)], [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
  assert.equal(v.getUint16(6, true), VIRTIO_NET_S_LINK_UP, "status");
  assert.equal(v.getUint16(8, true), 1, "max_virtqueue_pairs");
  assert.equal(v.getUint16(10, true), 1400, "mtu");
  assert.equal(new DataView(netConfig([2, 0, 0, 0, 0, 1], 65521).buffer).getUint16(10, true), 65521);
});

test("describe() gives a net device ID 1, NET_FEATURES, two 256-entry queues and its netConfig()", () => {
  const net = { tapFd: -1, tap: "tap0", mac: [0x52, 0x54, 0, 9, 8, 7], mtu: 1500 };
  const d = describe({ kind: "net", net });
  assert.equal(d.deviceId, VIRTIO_ID_NET);
  assert.equal(d.features, NET_FEATURES);
  assert.deepEqual(d.queueSizes, [256, 256]);
  assert.deepEqual(d.config, netConfig(net.mac, 1500));
});

test("tapOffloads() lets the TAP send only what the driver takes: no TSO without GUEST_CSUM", () => {
  assert.equal(tapOffloads(0n), 0);
  assert.equal(tapOffloads(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
  assert.equal(tapOffloads(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4), TUN_F_CSUM | TUN_F_TSO4);
  assert.equal(tapOffloads(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO6), TUN_F_CSUM | TUN_F_TSO6);
  assert.equal(tapOffloads(VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6), 0, "the kernel refuses TSO without CSUM");
  // What the driver may send us (CSUM, HOST_TSO*) says nothing of what it takes.
  assert.equal(tapOffloads(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_MRG_RXBUF), 0);
  assert.equal(tapOffloads(NET_FEATURES), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
});

test("the registry's net kind serves a net device's queue 0 with NetRx and queue 1 with NetTx, logging through the context", () => {
  const [dev, host] = seqpacketPair();
  try {
    const log: string[] = [];
    const spec = { kind: "net" as const, net: { tapFd: dev, tap: "tap0", mac: [0x52, 0x54, 0, 0, 0, 1], mtu: 1500 } };
    const ctx = {
      mem: hostGuestMemory(), features: 0n, end: () => {}, log: (l: string) => log.push(l),
      state: new Int32Array(4), config: new Uint8Array(12), configChanged: () => {},
    };
    assert.ok(kindOf(spec).handler(spec, { ...ctx, queue: NET_RX_QUEUE }) instanceof NetRx);
    assert.ok(kindOf(spec).handler(spec, { ...ctx, queue: NET_TX_QUEUE }) instanceof NetTx);
    assert.deepEqual(log, [NOT_A_TAP]);
  } finally {
    close(dev);
    close(host);
  }
});

// ---- transmit ----

test("NetTx writes a guest frame to the TAP byte for byte, virtio_net_hdr included, and returns the chain with len 0", () => {
  withTx({}, (r) => {
    const f = frame(1526, 3, { flags: 1, csumStart: 34, csumOffset: 16 }); // NEEDS_CSUM: the header passes through
    r.send(f);
    assert.deepEqual(hostRecv(r.host), f);
    assert.equal(hostRecv(r.host), null, "one frame, once");
    assert.deepEqual(r.dq.popUsed(), { id: 0, len: 0 });
    assert.equal(r.vq.needsInterrupt(), true);
    assert.deepEqual([r.stats.txFrames, r.stats.txDropped, r.log], [1, 0, []]);
  });
});

test("NetTx gathers a frame split over several descriptors in both memory regions", () => {
  withTx({}, (r) => {
    const f = frame(3000, 5);
    const bufs: DriverBuffer[] = [
      { gpa: TX_BUF, len: 12 }, // header alone, as Linux's xmit_skb puts it
      { gpa: HIGH + 0x100, len: 14 },
      { gpa: HIGH + 0x1000, len: 0 }, // zero-length: ignored
      { gpa: TX_BUF + 0x2000, len: 1000 },
      { gpa: HIGH + 0x8000, len: 1974 },
    ];
    let at = 0;
    for (const b of bufs) {
      r.mem.write(b.gpa, f.subarray(at, at + b.len));
      at += b.len;
    }
    r.dq.add(bufs);
    r.tx.kick(r.vq);
    assert.deepEqual(hostRecv(r.host), f);
    assert.deepEqual(r.dq.popUsed(), { id: 0, len: 0 });
    assert.equal(r.stats.txFrames, 1);
  });
});

test("NetTx sends a frame given as an indirect chain", () => {
  withTx({}, (r) => {
    const f = frame(1000, 7);
    r.mem.write(TX_BUF, f.subarray(0, 12));
    r.mem.write(HIGH + 0x4000, f.subarray(12));
    const head = r.dq.addIndirect([{ gpa: TX_BUF, len: 12 }, { gpa: HIGH + 0x4000, len: 988 }], TABLE);
    r.tx.kick(r.vq);
    assert.deepEqual(hostRecv(r.host), f);
    assert.deepEqual(r.dq.popUsed(), { id: head, len: 0 });
  });
});

test("NetTx sends every chain made available before one kick, in order", () => {
  withTx({}, (r) => {
    const frames = [frame(60, 1), frame(1500, 2), frame(200, 3)];
    frames.forEach((f, i) => {
      r.mem.write(TX_BUF + i * 0x1000, f);
      r.dq.add([{ gpa: TX_BUF + i * 0x1000, len: f.length }]);
    });
    r.tx.kick(r.vq);
    for (const f of frames) assert.deepEqual(hostRecv(r.host), f);
    assert.equal(r.dq.usedIdx, 3);
    assert.equal(r.stats.txFrames, 3);
  });
});

test("NetTx takes the smallest (header + Ethernet header) and the largest (MAX_FRAME) frame", () => {
  withTx({}, (r) => {
    for (const len of [12 + 14, MAX_FRAME]) {
      const f = frame(len, len);
      r.send(f);
      assert.deepEqual(hostRecv(r.host), f, `${len} bytes`);
    }
    assert.deepEqual([r.stats.txFrames, r.stats.txDropped], [2, 0]);
  });
});

test("NetTx drops malformed frames (short, too long, writable, too many pieces), counts them, logs once, and sends later frames", () => {
  withTx({ queueSize: 16, maxSegs: 4 }, (r) => {
    r.send(frame(25));
    r.send(frame(MAX_FRAME + 1));
    r.mem.write(TX_BUF, frame(100));
    r.dq.add([{ gpa: TX_BUF, len: 100 }, { gpa: TX_BUF + 0x1000, len: 64, write: true }]);
    r.tx.kick(r.vq);
    const f = frame(100, 9);
    r.mem.write(TX_BUF, f);
    r.dq.add([0, 20, 40, 60, 80].map((o) => ({ gpa: TX_BUF + o, len: 20 }))); // 5 pieces, NetTx takes 4
    r.tx.kick(r.vq);
    assert.equal(hostRecv(r.host), null, "nothing reached the TAP");
    assert.deepEqual([r.stats.txFrames, r.stats.txDropped], [0, 4]);
    assert.deepEqual(r.log, ["dropped a malformed frame from the guest (25 bytes, 0 writable); further drops are counted"]);
    const used = [r.dq.popUsed(), r.dq.popUsed(), r.dq.popUsed(), r.dq.popUsed()];
    assert.ok(used.every((u) => u?.len === 0), "every dropped chain is returned");

    r.send(f);
    assert.deepEqual(hostRecv(r.host), f, "the next good frame passes");
    assert.deepEqual([r.stats.txFrames, r.stats.txDropped, r.log.length, r.stats.tapGone], [1, 4, 1, false]);
  });
});

test("NetTx after the host end closed: tapGone, one line, later frames dropped and counted without throwing", () => {
  withTx({}, (r) => {
    r.closeHost();
    r.send(frame(100));
    assert.ok(r.stats.tapGone);
    assert.deepEqual(r.log, ["the TAP stopped taking frames (EPIPE): its link went away? The guest keeps running without network"]);
    r.send(frame(200));
    r.send(frame(300));
    assert.deepEqual([r.stats.txFrames, r.stats.txDropped, r.log.length], [0, 3, 1]);
    assert.equal(r.dq.usedIdx, 3, "the guest gets its buffers back");
  });
});

test("NetTx on a fd it cannot write (EBADF) marks the TAP gone", () => {
  const [rd, wr] = pipe();
  try {
    const mem = hostGuestMemory();
    const dq = new DriverQueue(mem, DriverQueue.layout(RING, 16));
    const vq = new Virtqueue(mem, dq.config(false));
    const log: string[] = [];
    const stats = new NetStats((l) => log.push(l));
    const tx = new NetTx(mem, rd, 16, stats); // a pipe's read end
    mem.write(TX_BUF, frame(64));
    dq.add([{ gpa: TX_BUF, len: 64 }]);
    tx.kick(vq);
    assert.ok(stats.tapGone);
    assert.deepEqual(log, ["the TAP stopped taking frames (EBADF): its link went away? The guest keeps running without network"]);
  } finally {
    close(rd);
    close(wr);
  }
});

// ---- receive ----

test("NetRx without MRG_RXBUF puts a frame in one chain with num_buffers 1", () => {
  withRx({}, (r) => {
    assert.equal(r.rx.inputFd(), r.dev);
    const f = frame(600, 4, { numBuffers: 0x7777 }); // the TAP leaves num_buffers alone: ours to set
    hostSend(r.host, f);
    // Linux's "big packets" layout: the header in its own buffer, then the data.
    r.dq.add([{ gpa: RX_BUF, len: 12, write: true }, { gpa: RX_BUF + 0x1000, len: 2048, write: true }]);
    r.rx.input(r.vq);
    assert.deepEqual(r.used(), [{ id: 0, len: 600 }]);
    const got = new Uint8Array([...r.mem.slice(RX_BUF, 12), ...r.mem.slice(RX_BUF + 0x1000, 588)]);
    assert.deepEqual(got, withNumBuffers(f, 1));
    assert.deepEqual([r.stats.rxFrames, r.stats.rxDropped, r.log], [1, 0, []]);
    assert.equal(r.rx.inputFd(), r.dev, "still waiting on the TAP");
    assert.equal(r.vq.needsInterrupt(), true);
  });
});

test("NetRx without MRG_RXBUF drops a frame bigger than the chain, returns the chain with len 0, and logs once", () => {
  withRx({}, (r) => {
    r.post(1, 1000, RX_BUF);
    const [big] = r.post(1, 2048, RX_BUF + 0x1000);
    const [f1, f2, f3] = [frame(1600, 1), frame(500, 2), frame(1001, 3)];
    hostSend(r.host, f1);
    hostSend(r.host, f2);
    r.rx.input(r.vq);
    assert.deepEqual(r.used(), [{ id: 0, len: 0 }, { id: 1, len: 500 }]);
    assert.deepEqual(r.mem.slice(big, 500), withNumBuffers(f2, 1));
    assert.deepEqual(r.log, ["dropped a 1600-byte frame: the guest's receive buffer has 1000 bytes"]);
    r.post(1, 1000);
    hostSend(r.host, f3);
    r.rx.input(r.vq);
    assert.deepEqual(r.used(), [{ id: 2, len: 0 }]);
    assert.deepEqual([r.stats.rxFrames, r.stats.rxDropped, r.log.length], [1, 2, 1], "counted, not logged again");
  });
});

test("NetRx drops a read shorter than virtio_net_hdr + Ethernet header and delivers the next frame", () => {
  withRx({}, (r) => {
    r.post(2, 2048);
    hostSend(r.host, frame(25));
    const f = frame(26, 6);
    hostSend(r.host, f);
    r.rx.input(r.vq);
    assert.deepEqual(r.used(), [{ id: 0, len: 26 }]);
    assert.deepEqual(r.mem.slice(RX_BUF, 26), withNumBuffers(f, 1));
    assert.deepEqual([r.stats.rxFrames, r.stats.rxDropped], [1, 1]);
  });
});

test("NetRx with MRG_RXBUF spreads a 20000-byte frame over 4 KiB chains with num_buffers = chain count", () => {
  withRx({ features: VIRTIO_NET_F_MRG_RXBUF }, (r) => {
    const gpas = r.post(8, 4096);
    const f = frame(20000, 8);
    hostSend(r.host, f);
    r.rx.input(r.vq);
    const used = r.used();
    assert.deepEqual(used, [0, 1, 2, 3, 4].map((id) => ({ id, len: id < 4 ? 4096 : 20000 - 4 * 4096 })));
    const got = new Uint8Array(20000);
    let at = 0;
    for (const u of used) {
      got.set(r.mem.slice(gpas[u.id], u.len), at);
      at += u.len;
    }
    assert.deepEqual(got, withNumBuffers(f, 5));
    // The next frame starts in the next chain, alone.
    const g = frame(100, 9);
    hostSend(r.host, g);
    r.rx.input(r.vq);
    assert.deepEqual(r.used(), [{ id: 5, len: 100 }]);
    assert.deepEqual(r.mem.slice(gpas[5], 100), withNumBuffers(g, 1));
    assert.deepEqual([r.stats.rxFrames, r.stats.rxDropped, r.log], [2, 0, []]);
  });
});

test("NetRx with MRG_RXBUF holds the chains of a frame that outgrows the posted buffers until more come, then returns them together", () => {
  withRx({ features: VIRTIO_NET_F_MRG_RXBUF }, (r) => {
    const gpas = r.post(2, 4096);
    const f = frame(20000, 10);
    hostSend(r.host, f);
    r.rx.input(r.vq);
    assert.equal(r.dq.usedIdx, 0, "no half frame reaches the guest");
    assert.equal(r.rx.inputFd(), -1, "waiting for buffers, not for the TAP");
    gpas.push(...r.post(3, 4096));
    r.rx.kick(r.vq);
    const used = r.used();
    assert.deepEqual(used.map((u) => u.id), [0, 1, 2, 3, 4]);
    const got = new Uint8Array(used.reduce((n, u) => n + u.len, 0));
    let at = 0;
    for (const u of used) {
      got.set(r.mem.slice(gpas[u.id], u.len), at);
      at += u.len;
    }
    assert.deepEqual(got, withNumBuffers(f, 5));
    assert.equal(r.rx.inputFd(), r.dev);
  });
});

test("NetRx with MRG_RXBUF drops a frame whose first buffer cannot hold the header (virtio 1.2 §5.1.6.3)", () => {
  withRx({ features: VIRTIO_NET_F_MRG_RXBUF }, (r) => {
    r.dq.add([{ gpa: RX_BUF, len: 8, write: true }, { gpa: RX_BUF + 0x100, len: 4096, write: true }]);
    r.post(1, 4096, RX_BUF + 0x2000);
    hostSend(r.host, frame(100, 1));
    const g = frame(200, 2);
    hostSend(r.host, g);
    r.rx.input(r.vq);
    assert.deepEqual(r.used(), [{ id: 0, len: 0 }, { id: 2, len: 200 }]);
    assert.deepEqual(r.mem.slice(RX_BUF + 0x2000, 200), withNumBuffers(g, 1));
    assert.deepEqual([r.stats.rxFrames, r.stats.rxDropped], [1, 1]);
  });
});

test("NetRx with no buffers stops reading the TAP, asks for a kick, and delivers the waiting frames once buffers come", () => {
  withRx({ eventIdx: true }, (r) => {
    const [f1, f2] = [frame(300, 1), frame(400, 2)];
    hostSend(r.host, f1);
    hostSend(r.host, f2);
    r.mem.writeU16(r.dq.layout.usedAddr + 4 + 8 * r.dq.layout.size, 0x1234); // a stale avail_event
    r.rx.input(r.vq);
    assert.equal(r.rx.inputFd(), -1, "starved: the Worker sleeps on the queue's ioeventfd instead");
    assert.equal(r.dq.availEvent, 0, "EVENT_IDX: the driver's next buffer (avail index 0) kicks");
    r.post(1, 2048);
    assert.equal(r.rx.inputFd(), -1, "a buffer alone does not wake it: the kick does");
    r.rx.kick(r.vq);
    assert.deepEqual(r.used(), [{ id: 0, len: 300 }]);
    assert.deepEqual(r.mem.slice(RX_BUF, 300), withNumBuffers(f1, 1));
    // The kick read on: f2 waits for the next buffer, which must kick again.
    assert.equal(r.rx.inputFd(), -1);
    assert.equal(r.dq.availEvent, 1);
    r.post(1, 2048);
    r.rx.kick(r.vq);
    assert.deepEqual(r.used(), [{ id: 1, len: 400 }]);
    assert.deepEqual(r.mem.slice(RX_BUF + 2048, 400), withNumBuffers(f2, 1));
    assert.equal(r.rx.inputFd(), r.dev, "all delivered: back to waiting on the TAP");
    assert.deepEqual([r.stats.rxFrames, r.stats.rxDropped], [2, 0], "nothing lost");
  });
});

test("NetRx starving without EVENT_IDX clears used.flags NO_NOTIFY so the driver kicks", () => {
  withRx({}, (r) => {
    r.mem.writeU16(r.dq.layout.usedAddr, 1); // NO_NOTIFY, as if notifications had been off
    hostSend(r.host, frame(100));
    r.rx.input(r.vq);
    assert.equal(r.rx.inputFd(), -1);
    assert.equal(r.dq.usedFlags, 0);
  });
});

test("NetRx delivers up to a batch (64) of queued frames per input() call, in order, for one interrupt", () => {
  withRx({ queueSize: 128 }, (r) => {
    const gpas = r.post(100, 2048);
    const frames = Array.from({ length: 70 }, (_, i) => frame(100 + i, i));
    frames.forEach((f) => hostSend(r.host, f));
    r.rx.input(r.vq);
    assert.equal(r.dq.usedIdx, 64, "RX_BATCH in net.ts");
    assert.equal(r.vq.needsInterrupt(), true);
    assert.equal(r.vq.needsInterrupt(), false, "one interrupt covers the batch");
    r.rx.input(r.vq);
    assert.equal(r.dq.usedIdx, 70);
    r.rx.input(r.vq);
    assert.equal(r.dq.usedIdx, 70, "the TAP is empty: EAGAIN ends the call");
    r.used().forEach((u, i) => {
      assert.deepEqual(u, { id: i, len: 100 + i });
      assert.deepEqual(r.mem.slice(gpas[i], u.len), withNumBuffers(frames[i], 1), `frame ${i}`);
    });
    assert.deepEqual([r.stats.rxFrames, r.stats.rxDropped, r.rx.inputFd()], [70, 0, r.dev]);
  });
});

test("NetRx when the host end closes: frames sent before still arrive, then tapGone, one line, and no more waiting on the fd", () => {
  withRx({}, (r) => {
    r.post(4, 2048);
    const f = frame(128, 3);
    hostSend(r.host, f);
    r.closeHost();
    r.rx.input(r.vq);
    assert.deepEqual(r.used(), [{ id: 0, len: 128 }]);
    assert.ok(r.stats.tapGone);
    assert.equal(r.rx.inputFd(), -1);
    assert.deepEqual(r.log, ["reading the TAP failed (end of file): its link went away? The guest keeps running without network"]);
    r.rx.input(r.vq);
    r.rx.kick(r.vq);
    assert.equal(r.log.length, 1, "said once");
    assert.deepEqual([r.stats.rxFrames, r.stats.rxDropped], [1, 0]);
  });
});

test("NetRx on a fd it cannot read (EBADF) marks the TAP gone", () => {
  const [rd, wr] = pipe();
  try {
    const mem = hostGuestMemory();
    const dq = new DriverQueue(mem, DriverQueue.layout(RING, 16));
    const vq = new Virtqueue(mem, dq.config(false));
    const log: string[] = [];
    const stats = new NetStats((l) => log.push(l));
    const rx = new NetRx(mem, wr, 0n, stats); // a pipe's write end
    rx.input(vq);
    assert.ok(stats.tapGone);
    assert.equal(rx.inputFd(), -1);
    assert.deepEqual(log, [NOT_A_TAP, "reading the TAP failed (EBADF): its link went away? The guest keeps running without network"]);
  } finally {
    close(rd);
    close(wr);
  }
});

// ---- on a real TAP, in a private network namespace ----

interface TrafficRun {
  linkDown: { txFrames: number; txDropped: number; tapGone: boolean; lines: number };
  replies: { header: number[]; frame: number[] }[];
  afterRefusal: { txFrames: number; txDropped: number; tapGone: boolean };
  afterGood: { txFrames: number; txDropped: number };
  revents: number;
  afterDelete: { txDropped: number; txGone: boolean; rxGone: boolean; inputFd: number };
  log: string[];
}
let trafficRun: TrafficRun | undefined;
const traffic = () => (trafficRun ??= inNetns<TrafficRun>("traffic"));

test("on a real TAP: a frame sent while the link is down (EIO) is dropped and counted, quietly, as a NIC without carrier would", () => {
  assert.deepEqual(traffic().linkDown, { txFrames: 0, txDropped: 1, tapGone: false, lines: 0 });
});

test("on a real TAP: the guest's ARP request gets the host kernel's reply, with num_buffers 1", () => {
  const { replies } = traffic();
  assert.equal(replies.length, 1);
  const { header, frame: f } = replies[0];
  assert.deepEqual(header.slice(10), [1, 0], "num_buffers");
  assert.deepEqual(f.slice(0, 6), [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc], "to the guest's MAC");
  assert.deepEqual(f.slice(12, 14), [0x08, 0x06], "ARP");
  assert.deepEqual(f.slice(20, 22), [0, 2], "a reply");
  assert.deepEqual(f.slice(28, 32), [10, 9, 0, 1], "from the host's address");
});

test("on a real TAP: a virtio_net_hdr the TAP refuses (EINVAL) costs that frame only, and the link stays up", () => {
  const r = traffic();
  assert.deepEqual(r.afterRefusal, { txFrames: 1, txDropped: 2, tapGone: false });
  assert.deepEqual(r.afterGood, { txFrames: 2, txDropped: 2 });
  assert.equal(r.log[0], "the TAP refused a frame from the guest (EINVAL: a malformed virtio_net_hdr?); further refusals are counted");
});

test("on a real TAP: deleting the link polls POLLERR and ends both queues with one line each (EBADFD)", () => {
  const r = traffic();
  assert.equal(r.revents & POLLERR, POLLERR);
  assert.deepEqual(r.afterDelete, { txDropped: 4, txGone: true, rxGone: true, inputFd: -1 });
  assert.deepEqual(r.log.slice(1), [
    "the TAP stopped taking frames (EBADFD): its link went away? The guest keeps running without network",
    "reading the TAP failed (EBADFD): its link went away? The guest keeps running without network",
  ]);
});
