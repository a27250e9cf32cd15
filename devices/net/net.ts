/**
 * virtio-net over a TAP device (virtio 1.2 §5.1), served the way the lguest
 * Launcher served its network: a transmit Worker that sleeps on the TX
 * queue's ioeventfd and writes frames to the TAP, and a receive Worker that
 * sleeps on the TAP fd (on the RX ioeventfd instead while the guest has no
 * buffers) and fills the guest's buffers.
 *
 * Every frame on the ring starts with a 12-byte `virtio_net_hdr` and the
 * TAP is opened with IFF_VNET_HDR of the same size (ffi/tap.ts), so the
 * header passes through as is: checksum offload (CSUM / GUEST_CSUM) and
 * segmentation offload (HOST_TSO* / GUEST_TSO*) cost nothing here, and a
 * 64 KiB TCP segment crosses as one frame. Transmit is writev(2) straight
 * from guest RAM (no copy); receive reads a frame into one host buffer and
 * copies it once into the guest's buffers, which with MRG_RXBUF may be
 * several chains (num_buffers in the header says how many).
 *
 * A frame the guest gets wrong (too short, too long, writable buffers on
 * the transmit queue) is dropped and counted, never fatal; a TAP that goes
 * away (its link deleted) is reported once and the guest keeps running with
 * a dead link.
 */
import { EAGAIN, EINTR, errno, libc, NativeBuf } from "../../ffi/libc.ts";
import { errnoName } from "../../ffi/errno.ts";
import { setTapOffload, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_SIZE } from "../../ffi/tap.ts";
import type { GuestMemory } from "../../vm/memory.ts";
import type { Chain, Virtqueue } from "../virtio/ring.ts";
import { type QueueHandler, serveAll } from "../virtio/queue_handler.ts";
import { IOV_MAX, IovecArray } from "../virtio/iovec.ts";

export const VIRTIO_ID_NET = 1;
export const NET_RX_QUEUE = 0;
export const NET_TX_QUEUE = 1;

// Feature bits (virtio 1.2 §5.1.3).
export const VIRTIO_NET_F_CSUM = 1n << 0n;
export const VIRTIO_NET_F_GUEST_CSUM = 1n << 1n;
export const VIRTIO_NET_F_MTU = 1n << 3n;
export const VIRTIO_NET_F_MAC = 1n << 5n;
export const VIRTIO_NET_F_GUEST_TSO4 = 1n << 7n;
export const VIRTIO_NET_F_GUEST_TSO6 = 1n << 8n;
export const VIRTIO_NET_F_HOST_TSO4 = 1n << 11n;
export const VIRTIO_NET_F_HOST_TSO6 = 1n << 12n;
export const VIRTIO_NET_F_MRG_RXBUF = 1n << 15n;
export const VIRTIO_NET_F_STATUS = 1n << 16n;
export const VIRTIO_NET_S_LINK_UP = 1;

/** What vmm offers: the offloads a TAP with IFF_VNET_HDR passes through, MAC, MTU and link status. */
export const NET_FEATURES = VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_MTU | VIRTIO_NET_F_MAC |
  VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6 |
  VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_STATUS;

/** Ethernet header: a frame shorter than this is garbage. */
const ETH_HLEN = 14;
/**
 * The largest frame either way: a 64 KiB GSO segment plus its Ethernet
 * header and our header (Firecracker's MAX_BUFFER_SIZE is the same 65562).
 */
export const MAX_FRAME = VNET_HDR_SIZE + ETH_HLEN + 65536;
/** Frames received in one go before the guest is interrupted (lguest's batching; NAPI's budget). */
const RX_BATCH = 64;
/** num_buffers: the last u16 of the 12-byte header. */
const NUM_BUFFERS_OFFSET = 10;

/** Offset of `status` in struct virtio_net_config. */
export const NET_STATUS_OFFSET = 6;

/** struct virtio_net_config: mac[6], status u16, max_virtqueue_pairs u16, mtu u16. */
export function netConfig(mac: number[], mtu: number): Uint8Array {
  const c = new Uint8Array(12);
  const v = new DataView(c.buffer);
  c.set(mac.slice(0, 6), 0);
  v.setUint16(NET_STATUS_OFFSET, VIRTIO_NET_S_LINK_UP, true);
  v.setUint16(8, 1, true);
  v.setUint16(10, mtu, true);
  return c;
}

/** TAP offloads for what the driver accepted: the TAP may only send the guest what it can take. */
export function tapOffloads(driverFeatures: bigint): number {
  let f = 0;
  if (driverFeatures & VIRTIO_NET_F_GUEST_CSUM) {
    f |= TUN_F_CSUM;
    if (driverFeatures & VIRTIO_NET_F_GUEST_TSO4) f |= TUN_F_TSO4;
    if (driverFeatures & VIRTIO_NET_F_GUEST_TSO6) f |= TUN_F_TSO6;
  }
  return f;
}

/**
 * The link as both queues of a device see it: each queue runs on its own
 * Worker, so "the TAP is gone" must live in memory both threads share.
 */
export interface NetLink {
  isDown(): boolean;
  /** Called once by the queue that found the TAP gone. */
  goDown(): void;
}

/** Counters of one queue, and its one-line reports. */
export class NetStats {
  txFrames = 0;
  txDropped = 0;
  rxFrames = 0;
  rxDropped = 0;
  #gone = false;
  readonly #log: (line: string) => void;
  readonly #said = new Set<string>();
  readonly #link?: NetLink;
  constructor(log: (line: string) => void, link?: NetLink) {
    this.#log = log;
    this.#link = link;
  }
  /** This queue, or the device's other queue, found the TAP gone. */
  get tapGone(): boolean {
    return this.#gone || (this.#link?.isDown() ?? false);
  }
  set tapGone(gone: boolean) {
    if (!gone || this.#gone) return;
    this.#gone = true;
    this.#link?.goDown();
  }
  /** Log `line` the first time `kind` happens; later ones are only counted. */
  once(kind: string, line: string): void {
    if (this.#said.has(kind)) return;
    this.#said.add(kind);
    this.#log(line);
  }
}

/** A TAP read or write error that means the link is gone (deleted, or the fd detached). */
function tapGone(e: number): boolean {
  return e !== EAGAIN && e !== EINTR;
}

/** The transmit queue: guest frames → TAP, straight from guest RAM. */
export class NetTx implements QueueHandler {
  readonly #mem: GuestMemory;
  readonly #fd: number;
  readonly #stats: NetStats;
  readonly #txIov = IovecArray.forThread();
  /** One writev takes at most IOV_MAX buffers: a frame in more is dropped. */
  readonly #maxSegs: number;

  constructor(mem: GuestMemory, tapFd: number, queueSize: number, stats: NetStats) {
    this.#mem = mem;
    this.#fd = tapFd;
    this.#stats = stats;
    this.#maxSegs = Math.min(queueSize, IOV_MAX);
  }

  kick(vq: Virtqueue): boolean {
    return serveAll(vq, (chain) => {
      this.#send(chain);
      return 0; // transmit buffers are only read
    });
  }

  #send(chain: Chain): void {
    const s = this.#stats;
    const len = chain.readableLength;
    if (chain.writableLength > 0 || len < VNET_HDR_SIZE + ETH_HLEN || len > MAX_FRAME || chain.readable.length > this.#maxSegs) {
      s.txDropped++;
      s.once("txBad", `dropped a malformed frame from the guest (${len} bytes, ${chain.writableLength} writable); further drops are counted`);
      return;
    }
    if (s.tapGone) {
      s.txDropped++;
      return;
    }
    const iov = this.#txIov;
    iov.fill(this.#mem, chain.readable);
    for (;;) {
      const r = Number(libc.writev(this.#fd, iov.address(), iov.count));
      if (r >= 0) {
        s.txFrames++;
        return;
      }
      const e = errno();
      if (e === EINTR) continue;
      s.txDropped++;
      if (e === EAGAIN || e === 105 /* ENOBUFS */) return; // the host side is congested: drop, as a NIC would
      if (e === 5 /* EIO: the link is down */) return;
      if (e === 22 /* EINVAL */) {
        // The TAP checked the guest's virtio_net_hdr and refused it (an
        // unknown gso_type, hdr_len past the frame: tun_get_user): this one
        // frame is bad, the link is fine.
        s.once("txRefused", `the TAP refused a frame from the guest (EINVAL: a malformed virtio_net_hdr?); further refusals are counted`);
        return;
      }
      if (tapGone(e)) this.#gone(e);
      return;
    }
  }

  #gone(e: number): void {
    this.#stats.tapGone = true;
    this.#stats.once("gone", `the TAP stopped taking frames (${errnoName(e)}): its link went away? The guest keeps running without network`);
  }
}

/** The receive queue: TAP frames → guest buffers, one copy. */
export class NetRx implements QueueHandler {
  readonly #mem: GuestMemory;
  readonly #fd: number;
  readonly #stats: NetStats;
  readonly #mergeable: boolean;
  readonly #buf = NativeBuf.alloc(MAX_FRAME);
  /** Bytes of the frame in #buf not yet placed, from #offset; 0 when none. */
  #pending = 0;
  #offset = 0;
  /** Chains filled with the current frame, returned together once it is whole (MRG_RXBUF). */
  #held: { head: number; len: number; headerGpa: number }[] = [];
  #starved = false;

  constructor(mem: GuestMemory, tapFd: number, driverFeatures: bigint, stats: NetStats) {
    this.#mem = mem;
    this.#fd = tapFd;
    this.#stats = stats;
    this.#mergeable = (driverFeatures & VIRTIO_NET_F_MRG_RXBUF) !== 0n;
    try {
      setTapOffload(tapFd, tapOffloads(driverFeatures));
    } catch (e) {
      stats.once("offload", `${(e as Error).message}; receiving without offloads`); // SysError names the call
      try {
        setTapOffload(tapFd, 0);
      } catch { /* the TAP is gone: reads will say so */ }
    }
  }

  inputFd(): number {
    return this.#stats.tapGone || this.#starved || this.#pending > 0 ? -1 : this.#fd;
  }

  /** The TAP has frames: take up to a batch of them, then let the Worker interrupt once. */
  input(vq: Virtqueue): void {
    for (let n = 0; n < RX_BATCH && this.#pending === 0 && !this.#starved; n++) {
      const r = Number(libc.read(this.#fd, this.#buf.addr, BigInt(MAX_FRAME)));
      if (r <= 0) {
        // A TAP never reads 0 bytes: 0 is end of file (the other end of a
        // socket closed), and that fd would poll readable for ever.
        const e = r < 0 ? errno() : 0;
        if (e === EAGAIN || e === EINTR) return;
        this.#stats.tapGone = true;
        const why = r < 0 ? errnoName(e) : "end of file";
        this.#stats.once("gone", `reading the TAP failed (${why}): its link went away? The guest keeps running without network`);
        return;
      }
      if (r < VNET_HDR_SIZE + ETH_HLEN) {
        this.#stats.rxDropped++;
        continue;
      }
      // The TAP fills the 10-byte header and skips num_buffers: ours to set
      // (§5.1.6.4: 1 without MRG_RXBUF; #finishMerged writes the real count).
      this.#buf.view.setUint16(NUM_BUFFERS_OFFSET, 1, true);
      this.#pending = r;
      this.#offset = 0;
      this.#deliver(vq);
    }
  }

  kick(vq: Virtqueue): void {
    this.#starved = false;
    this.#deliver(vq);
    // Buffers came back: frames may be waiting in the TAP.
    if (!this.#starved && this.#pending === 0) this.input(vq);
  }

  /** Place the pending frame in guest buffers; with none left, ask for a kick and wait. */
  #deliver(vq: Virtqueue): void {
    // A guest vCPU can post empty buffers as fast as we return them: bound the loop.
    let budget = 4 * vq.size;
    while (this.#pending > 0 && budget-- > 0) {
      const chain = vq.pop();
      if (!chain) {
        if (vq.enableNotificationAndCheck()) continue;
        this.#starved = true;
        return;
      }
      const room = chain.writableLength;
      if (!this.#mergeable) {
        // One chain per frame: the driver posts buffers big enough for what it negotiated.
        if (room < this.#pending) {
          this.#stats.rxDropped++;
          this.#stats.once("rxSmall", `dropped a ${this.#pending}-byte frame: the guest's receive buffer has ${room} bytes`);
          vq.pushUsed(chain.head, 0);
        } else {
          chain.writer().write(this.#buf.bytes.subarray(0, this.#pending));
          vq.pushUsed(chain.head, this.#pending);
          this.#stats.rxFrames++;
        }
        this.#pending = 0;
        continue;
      }
      if (this.#held.length === 0 && (room < VNET_HDR_SIZE || chain.writable[0].len < VNET_HDR_SIZE)) {
        // §5.1.6.3: the header must fit the first buffer; a driver that breaks this gets nothing.
        this.#stats.rxDropped++;
        vq.pushUsed(chain.head, 0);
        this.#pending = 0;
        continue;
      }
      const n = Math.min(room, this.#pending);
      chain.writer().write(this.#buf.bytes.subarray(this.#offset, this.#offset + n));
      this.#held.push({ head: chain.head, len: n, headerGpa: chain.writable[0].gpa });
      this.#offset += n;
      this.#pending -= n;
      if (this.#pending === 0) this.#finishMerged(vq);
    }
    if (this.#pending > 0 && !this.#starved) {
      // Budget spent on a frame a hostile driver keeps us from placing: drop it and move on.
      for (const h of this.#held) vq.pushUsed(h.head, 0);
      this.#held = [];
      this.#pending = 0;
      this.#stats.rxDropped++;
      this.#stats.once("rxBudget", "dropped a frame the guest's receive buffers could not hold");
    }
  }

  #finishMerged(vq: Virtqueue): void {
    const first = this.#held[0];
    this.#mem.writeU16(first.headerGpa + NUM_BUFFERS_OFFSET, this.#held.length);
    for (const h of this.#held) vq.pushUsed(h.head, h.len);
    this.#held = [];
    this.#stats.rxFrames++;
  }
}
