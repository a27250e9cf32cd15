/**
 * One FUSE request as a descriptor chain (virtio 1.2 §5.11.6): the
 * driver-readable buffers hold fuse_in_header, the op's struct, names and,
 * for WRITE, the data; the device-writable buffers take fuse_out_header,
 * the reply struct and, for READ, READDIR and the like, the data.
 *
 * `parseRequest` copies the header and the small op body out of guest
 * memory, and leaves bulk data where it is: `payload()` names the guest
 * segments of WRITE's data and `FuseReply.dataSegments()` those of READ's
 * reply, for preadv/pwritev straight between a host file and guest RAM.
 * Replies are built in a scratch buffer the server owns and copied once.
 */
import { type Chain, GuestError, type Segment, subSegments } from "../virtio/ring.ts";
import { EINVAL, IN_HEADER, OUT_HEADER } from "./fuse.ts";

/** Largest op body copied out of the guest: two names of PATH_MAX and a struct, or a BATCH_FORGET of 4096 entries. */
export const MAX_BODY = 65536 + 64;

/** What a virtio-fs chain got wrong so badly that no FUSE reply can be written. */
export type FuseChainErrorKind = "ShortRequest" | "NoReplySpace";

/** One request: its header, a copy of its body, and the chain it came in. */
export interface FuseRequest {
  readonly opcode: number;
  readonly unique: bigint;
  readonly nodeid: bigint;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  /** fuse_in_header.len: bytes of the whole message. */
  readonly len: number;
  /** The op struct and names (up to MAX_BODY bytes), copied out of guest memory. */
  readonly body: Uint8Array;
  readonly view: DataView;
  /** 0, or the errno to answer at once: the header's lengths do not fit the chain. */
  readonly bad: number;
  readonly chain: Chain;
}

/**
 * Read a request's header and body. Throws GuestError `ShortRequest` when
 * the chain has no whole fuse_in_header: there is no `unique` to answer.
 * `copyBody(opcode, bodyLen)` says how many body bytes to copy (WRITE
 * copies only its struct).
 */
export function parseRequest(chain: Chain, copyBody: (opcode: number, bodyLen: number) => number): FuseRequest {
  if (chain.readableLength < IN_HEADER.SIZE) {
    throw new GuestError<FuseChainErrorKind>("ShortRequest", `FUSE request of ${chain.readableLength} bytes has no fuse_in_header`);
  }
  const r = chain.reader();
  const h = new DataView(r.readBytes(IN_HEADER.SIZE).buffer);
  const len = h.getUint32(IN_HEADER.LEN, true);
  const opcode = h.getUint32(IN_HEADER.OPCODE, true);
  // Extensions (fuse_ext_header, 8-byte units) end the message; we negotiate
  // none (FUSE_SECURITY_CTX), so they are skipped, not read.
  const bodyLen = len - IN_HEADER.SIZE - 8 * h.getUint16(IN_HEADER.TOTAL_EXTLEN, true);
  // The driver's in.len covers exactly its readable buffers (Linux
  // virtio_fs_enqueue_req); a longer claim would read past them.
  const bad = len > chain.readableLength || bodyLen < 0 ? EINVAL : 0;
  const body = bad ? new Uint8Array(0) : r.readBytes(Math.min(copyBody(opcode, bodyLen), bodyLen, MAX_BODY));
  return {
    opcode,
    unique: h.getBigUint64(IN_HEADER.UNIQUE, true),
    nodeid: h.getBigUint64(IN_HEADER.NODEID, true),
    uid: h.getUint32(IN_HEADER.UID, true),
    gid: h.getUint32(IN_HEADER.GID, true),
    pid: h.getUint32(IN_HEADER.PID, true),
    len,
    body,
    view: new DataView(body.buffer, body.byteOffset, body.byteLength),
    bad,
    chain,
  };
}

/**
 * `count` NUL-terminated names from body offset `at` on (FUSE sends each
 * name with its NUL, include/uapi/linux/fuse.h), without their NULs; null
 * when the body ends before the last NUL.
 */
export function names(req: FuseRequest, at: number, count: number): Uint8Array[] | null {
  const out: Uint8Array[] = [];
  const b = req.body;
  for (let i = 0; i < count; i++) {
    const end = b.indexOf(0, at);
    if (end < 0) return null;
    out.push(b.subarray(at, end));
    at = end + 1;
  }
  return out;
}

/** Guest segments of message bytes `[from, from + n)` (offsets from the in header's start): WRITE's data. */
export function payload(req: FuseRequest, from: number, n: number): Segment[] {
  return subSegments(req.chain.readable, from, n);
}

/**
 * The reply to one request, built in a scratch buffer (out header + body)
 * and copied into the chain's writable buffers once.
 */
export class FuseReply {
  readonly #scratch: Uint8Array;
  readonly #view: DataView;
  #chain: Chain | null = null;
  #unique = 0n;
  /** Bytes the chain can take after the out header: READ's limit. */
  space = 0;
  /**
   * Bytes of body the scratch buffer can build and the chain take: the limit
   * of replies built in scratch (READDIR, READLINK, GETXATTR, LISTXATTR).
   */
  room = 0;

  constructor(maxBody: number) {
    this.#scratch = new Uint8Array(OUT_HEADER.SIZE + maxBody);
    this.#view = new DataView(this.#scratch.buffer);
  }

  /** Start the reply to `req`; throws GuestError `NoReplySpace` when not even an out header fits. */
  begin(req: FuseRequest): void {
    const w = req.chain.writableLength;
    if (w < OUT_HEADER.SIZE) {
      throw new GuestError<FuseChainErrorKind>("NoReplySpace", `FUSE request has ${w} writable bytes, the reply header needs ${OUT_HEADER.SIZE}`);
    }
    this.#chain = req.chain;
    this.#unique = req.unique;
    this.space = w - OUT_HEADER.SIZE;
    this.room = Math.min(this.space, this.#scratch.length - OUT_HEADER.SIZE);
  }

  /** The reply body, after the out header: ops write their struct and data here. */
  get body(): Uint8Array {
    return this.#scratch.subarray(OUT_HEADER.SIZE);
  }
  /** A DataView over the scratch: body offset `o` is at `OUT_HEADER.SIZE + o`. */
  get view(): DataView {
    return this.#view;
  }
  /** Zero `n` body bytes before an op fills a struct. */
  clear(n: number): void {
    this.#scratch.fill(0, OUT_HEADER.SIZE, OUT_HEADER.SIZE + n);
  }

  /** Send the header and `n` body bytes; the used length. */
  ok(n: number): number {
    return this.#send(0, n, true);
  }
  /** Send an error (`errno` > 0) with no body. */
  error(errno: number): number {
    return this.#send(-errno, 0, true);
  }
  /** Send the header for `n` bytes of data the op already placed in `dataSegments(n)`. */
  okDirect(n: number): number {
    return this.#send(0, n, false);
  }

  /** Guest segments of the first `n` bytes after the out header, for preadv (n ≤ the chain's space). */
  dataSegments(n: number): Segment[] {
    return subSegments(this.#chain!.writable, OUT_HEADER.SIZE, n);
  }
  /** The chain being answered (for its iovecs). */
  get chain(): Chain {
    return this.#chain!;
  }

  #send(error: number, n: number, withBody: boolean): number {
    const v = this.#view;
    const len = OUT_HEADER.SIZE + n;
    v.setUint32(OUT_HEADER.LEN, len, true);
    v.setInt32(OUT_HEADER.ERROR, error, true);
    v.setBigUint64(OUT_HEADER.UNIQUE, this.#unique, true);
    const w = this.#chain!.writer();
    w.write(this.#scratch.subarray(0, withBody ? len : OUT_HEADER.SIZE));
    return len;
  }
}
