/**
 * virtio-fs (virtio 1.2 §5.11) as vmm serves it: the configuration space
 * and the two kinds of queue, both served by one Worker (mod.ts says why).
 *
 * Queue 0, hiprio, carries the requests that must not wait behind others
 * and get no reply: FORGET (and BATCH_FORGET), INTERRUPT. Queue 1 carries
 * every other request; Linux 6.1 uses exactly one such queue. The inode
 * table belongs to the request queue's handler (its FsServer), so the
 * hiprio queue hands its forgets over a pipe (forget.ts) and answers nothing.
 *
 * @example
 * ```ts
 * import { FsHiprioQueue, FsRequestQueue } from "./device.ts";
 * import { openForgetPipe } from "./forget.ts";
 *
 * const [rd, wr] = openForgetPipe();
 * const req = new FsRequestQueue({ root: "/srv/share", readOnly: false }, rd, console.error); // queue 1's handler
 * const hi = new FsHiprioQueue(wr, console.error);                                          // queue 0's handler
 * // each serves chains of its own queue: vq.pushUsed(chain.head, hi.serve(chain));
 * req.close();
 * ```
 */
import type { Chain } from "../virtio/ring.ts";
import { FUSE_BATCH_FORGET, FUSE_FORGET, FUSE_INTERRUPT } from "./fuse.ts";
import { FsServer, type FsServerOptions } from "./passthrough.ts";
import { parseRequest } from "./message.ts";
import { eachForget, ForgetReceiver, ForgetSender } from "./forget.ts";
import { FS_TAG_BYTES } from "./share_option.ts";

/** Virtio device ID of a file system device (virtio 1.2 §5.11.1). */
export const VIRTIO_ID_FS = 26;

/**
 * Queue sizes. hiprio holds single FORGETs; 128 is QEMU's vhost-user-fs
 * default. A request may take 2 + 256 descriptors (header, reply header,
 * a page each of a 1 MiB READ or WRITE), which fits a ring of 1024 even
 * without indirect descriptors; Linux 6.1 takes the size the device offers.
 */
export const FS_HIPRIO_QUEUE_SIZE = 128;
export const FS_REQUEST_QUEUE_SIZE = 1024;
export const FS_HIPRIO_QUEUE = 0;
export const FS_REQUEST_QUEUE = 1;

/** struct virtio_fs_config (virtio 1.2 §5.11.4); notify_buf_size exists only with VIRTIO_FS_F_NOTIFICATION. */
export const FS_CONFIG = { TAG: 0, NUM_REQUEST_QUEUES: FS_TAG_BYTES, SIZE: FS_TAG_BYTES + 4 } as const;

/** The configuration space: the tag, NUL padded, and one request queue. */
export function fsConfig(tag: string): Uint8Array {
  const b = new Uint8Array(FS_CONFIG.SIZE);
  const t = new TextEncoder().encode(tag);
  if (t.length === 0 || t.length > FS_TAG_BYTES) throw new RangeError(`virtio-fs tag of ${t.length} bytes`);
  b.set(t, FS_CONFIG.TAG);
  new DataView(b.buffer).setUint32(FS_CONFIG.NUM_REQUEST_QUEUES, 1, true);
  return b;
}

/**
 * The hiprio queue: read each chain as a FUSE request, forward its forgets,
 * answer nothing (used length 0: FORGET and INTERRUPT have no reply, fuse.h).
 * INTERRUPT needs no action: the request queue finishes each request
 * before it takes the next, so there is never one in flight to stop.
 * Anything else does not belong on this queue and is dropped.
 */
export class FsHiprioQueue {
  readonly #out: ForgetSender;
  readonly #pairs: [bigint, bigint][] = [];

  constructor(forgetWriteFd: number, log: (line: string) => void) {
    this.#out = new ForgetSender(forgetWriteFd, log);
  }

  /** Serve one chain; its used length (always 0). Throws GuestError for a chain without a fuse_in_header. */
  serve(chain: Chain): number {
    const req = parseRequest(chain, (op, len) => (op === FUSE_FORGET || op === FUSE_BATCH_FORGET ? len : 0));
    if (req.opcode === FUSE_INTERRUPT) return 0;
    const pairs = this.#pairs;
    pairs.length = 0;
    eachForget(req, (nodeid, n) => pairs.push([nodeid, n]));
    if (pairs.length) this.#out.send(pairs);
    return 0;
  }

  /** Forgets lost to a full pipe (logged once). */
  get dropped(): number {
    return this.#out.dropped;
  }

  close(): void {
    this.#out.close();
  }
}

/**
 * The request queue: the device's FsServer, and the read end of the forget
 * pipe. Forgets are applied whenever the pipe polls readable, and before each
 * batch of requests, so an inode the guest let go is closed promptly.
 */
export class FsRequestQueue {
  readonly server: FsServer;
  readonly #in: ForgetReceiver;
  readonly #apply = (nodeid: bigint, n: bigint) => this.server.forget(nodeid, n);

  /** Opens the share (throws SysError when it cannot); `forgetReadFd` is the pipe's read end. */
  constructor(o: FsServerOptions, forgetReadFd: number, log: (line: string) => void) {
    this.#in = new ForgetReceiver(forgetReadFd);
    // Records a previous driver left (forgets sent before a reset) name
    // nodeids of a server that is gone: discard them before this one hands out any.
    this.#in.drain(() => {});
    try {
      this.server = new FsServer({ ...o, log });
    } catch (e) {
      this.#in.close();
      throw e;
    }
  }

  /** The fd the queue Worker polls besides the kick. */
  get forgetFd(): number {
    return this.#in.fd;
  }

  /** Apply every forget waiting in the pipe; how many. */
  applyForgets(): number {
    return this.#in.drain(this.#apply);
  }

  /** Serve one request chain; its used length. */
  serve(chain: Chain): number {
    return this.server.serve(chain);
  }

  /** Close the share's fds: the handler is discarded (reset, VM stop). */
  close(): void {
    this.server.close();
    this.#in.close();
  }
}
