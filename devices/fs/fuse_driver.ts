/**
 * The guest's side of virtio-fs, for tests and the fuzzer: it builds FUSE
 * requests as Linux's virtio_fs.c sends them (fuse_in_header in its own
 * buffer, each in-arg in another, WRITE data in page-sized buffers; the
 * reply's out header, out-arg and READ data pages likewise), places them in
 * host-backed guest memory as a descriptor chain on a real split queue
 * (test/support/driver_queue.ts), pops it with the device's Virtqueue and
 * hands the Chain to the server, then reads the reply back.
 *
 * @example
 * ```ts
 * import { FsServer } from "./passthrough.ts";
 * import { FuseDriver } from "./fuse_driver.ts";
 * import { FUSE_ROOT_ID } from "./fuse.ts";
 *
 * const fs = new FsServer({ root: "/tmp", readOnly: true });
 * const d = new FuseDriver(fs);
 * d.init();
 * const e = d.lookup(FUSE_ROOT_ID, "hello.txt"); // { error, nodeid, attr }
 * ```
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { GuestMemory } from "../../vm/memory.ts";
import { HIGH_GPA, hostGuestMemory } from "../../test/support/host_memory.ts";
import { type DriverBuffer, DriverQueue } from "../../test/support/driver_queue.ts";
import { type Chain, Virtqueue } from "../virtio/ring.ts";
import {
  ATTR,
  ATTR_OUT,
  CREATE_IN,
  DIRENT,
  DIRENTPLUS,
  direntAlign,
  ENTRY_OUT,
  FUSE_CREATE,
  FUSE_GETATTR,
  FUSE_INIT,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_LOOKUP,
  FUSE_MKDIR,
  FUSE_OPEN,
  FUSE_OPENDIR,
  FUSE_READ,
  FUSE_READDIR,
  FUSE_READDIRPLUS,
  FUSE_RELEASE,
  FUSE_RELEASEDIR,
  FUSE_WRITE,
  IN_HEADER,
  INIT_IN,
  MKDIR_IN,
  OPEN_IN,
  OPEN_OUT,
  OUT_HEADER,
  READ_IN,
  RELEASE_IN,
  WRITE_IN,
} from "./fuse.ts";
import { FsServer } from "./passthrough.ts";
import type { CacheMode } from "./share.ts";

/** Something that serves a chain: the FsServer. */
export interface ChainServer {
  serve(chain: Chain): number;
}

const QUEUE = 0x1000; // ring of QUEUE_SIZE entries
const QUEUE_SIZE = 4096;
const REQ = 0x40000; // readable buffers, low region
const REQ_END = 0x1f_0000;
const REPLY = HIGH_GPA; // writable buffers, high region
export const PAGE = 4096;

const enc = new TextEncoder();

/** Little-endian struct bytes: `le(16).u32(0, 1).u64(8, 2n).bytes`. */
export class Le {
  readonly bytes: Uint8Array;
  readonly #v: DataView;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.#v = new DataView(this.bytes.buffer);
  }
  u16(at: number, v: number): this {
    this.#v.setUint16(at, v, true);
    return this;
  }
  u32(at: number, v: number): this {
    this.#v.setUint32(at, v >>> 0, true);
    return this;
  }
  u64(at: number, v: bigint | number): this {
    this.#v.setBigUint64(at, BigInt.asUintN(64, BigInt(v)), true);
    return this;
  }
}
export const le = (size: number): Le => new Le(size);

/** A name as FUSE sends it: its bytes and a NUL. */
export function cstr(name: string | Uint8Array): Uint8Array {
  const b = typeof name === "string" ? enc.encode(name) : name;
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

/** A reply as the guest reads it. */
export interface FuseResult {
  /** The used length the server returned. */
  used: number;
  /** fuse_out_header fields (0 when there was no reply). */
  len: number;
  error: number;
  unique: bigint;
  /** The reply after the out header, `len - 16` bytes. */
  body: Uint8Array;
  view: DataView;
}

/** How a request is laid out in guest memory. */
export interface SendOptions {
  /** Writable bytes after the out header (default 4096). */
  reply?: number;
  /** WRITE's data, sent in page-sized readable buffers after the op's args. */
  data?: Uint8Array;
  /** Offer no writable buffers at all (FORGET). */
  noReply?: boolean;
  /** Size of each writable buffer after the out header (default a page). */
  segment?: number;
  nodeid?: bigint | number;
  /** Override fuse_in_header.len. */
  len?: number;
}

/** Parsed fuse_entry_out. */
export interface Entry {
  error: number;
  nodeid: bigint;
  ino: bigint;
  mode: number;
  size: bigint;
  nlink: number;
  uid: number;
  gid: number;
}

/** One entry of a READDIR or READDIRPLUS reply. */
export interface Dirent {
  name: string;
  ino: bigint;
  off: bigint;
  type: number;
  /** READDIRPLUS only: the entry's nodeid (0 for "." and ".."). */
  nodeid?: bigint;
}

/** The driver side of one virtio-fs request queue. */
export class FuseDriver {
  readonly mem: GuestMemory;
  readonly dq: DriverQueue;
  readonly vq: Virtqueue;
  readonly server: ChainServer;
  uid = 0;
  gid = 0;
  pid = 1;
  #unique = 1n;

  constructor(server: ChainServer, mem: GuestMemory = hostGuestMemory()) {
    this.server = server;
    this.mem = mem;
    this.dq = new DriverQueue(mem, DriverQueue.layout(QUEUE, QUEUE_SIZE));
    this.vq = new Virtqueue(mem, this.dq.config(false));
  }

  /** The bytes of a request: fuse_in_header then `args`, each as given. */
  message(opcode: number, nodeid: bigint | number, args: Uint8Array[], extra = 0, len?: number): { head: Uint8Array; unique: bigint } {
    const argLen = args.reduce((n, a) => n + a.length, 0);
    const unique = this.#unique++;
    const head = le(IN_HEADER.SIZE)
      .u32(IN_HEADER.LEN, len ?? IN_HEADER.SIZE + argLen + extra)
      .u32(IN_HEADER.OPCODE, opcode)
      .u64(IN_HEADER.UNIQUE, unique)
      .u64(IN_HEADER.NODEID, nodeid)
      .u32(IN_HEADER.UID, this.uid)
      .u32(IN_HEADER.GID, this.gid)
      .u32(IN_HEADER.PID, this.pid).bytes;
    return { head, unique };
  }

  /** Send one request through the queue and read its reply. */
  send(opcode: number, args: Uint8Array[], o: SendOptions = {}): FuseResult {
    const data = o.data ?? new Uint8Array(0);
    const { head, unique } = this.message(opcode, o.nodeid ?? 1n, args, data.length, o.len);
    const bufs: DriverBuffer[] = [];
    let at = REQ;
    const put = (b: Uint8Array) => {
      if (b.length === 0) return;
      if (at + b.length > REQ_END) throw new RangeError("Request too big for the test layout");
      this.mem.write(at, b);
      bufs.push({ gpa: at, len: b.length });
      at = (at + b.length + 15) & ~15;
    };
    put(head);
    args.forEach(put);
    for (let p = 0; p < data.length; p += PAGE) put(data.subarray(p, p + PAGE));
    let replyLen = 0;
    if (!o.noReply) {
      const space = o.reply ?? 4096;
      // The out header, then the rest in pages (READ's data pages).
      bufs.push({ gpa: REPLY, len: OUT_HEADER.SIZE, write: true });
      const seg = o.segment ?? PAGE;
      let w = REPLY + PAGE;
      for (let p = 0; p < space; p += seg) {
        const n = Math.min(seg, space - p);
        if (w + n > HIGH_GPA + (2 << 20)) throw new RangeError("Reply too big for the test layout");
        bufs.push({ gpa: w, len: n, write: true });
        w += n + 64; // a gap between buffers: segments are not contiguous
      }
      replyLen = OUT_HEADER.SIZE + space;
      this.mem.slice(REPLY, OUT_HEADER.SIZE).fill(0xee);
    }
    return this.serveBuffers(bufs, unique, replyLen);
  }

  /** Publish `bufs` as one chain, serve it, and read the reply. */
  serveBuffers(bufs: DriverBuffer[], unique: bigint, replyLen: number): FuseResult {
    this.dq.add(bufs);
    const chain = this.vq.pop();
    if (!chain) throw new Error("No chain popped");
    const used = this.server.serve(chain);
    this.vq.pushUsed(chain.head, used);
    this.dq.popUsed();
    if (used === 0) return { used, len: 0, error: 0, unique: 0n, body: new Uint8Array(0), view: new DataView(new ArrayBuffer(0)) };
    const out = new Uint8Array(Math.max(used, OUT_HEADER.SIZE));
    let got = 0;
    for (const b of bufs) {
      if (!b.write || got >= used) continue;
      const n = Math.min(b.len, used - got);
      out.set(this.mem.slice(b.gpa, n), got);
      got += n;
    }
    const v = new DataView(out.buffer);
    const res: FuseResult = {
      used,
      len: v.getUint32(OUT_HEADER.LEN, true),
      error: v.getInt32(OUT_HEADER.ERROR, true),
      unique: v.getBigUint64(OUT_HEADER.UNIQUE, true),
      body: out.subarray(OUT_HEADER.SIZE, used),
      view: new DataView(out.buffer, OUT_HEADER.SIZE),
    };
    if (res.unique !== unique) throw new Error(`Reply unique ${res.unique} for request ${unique}`);
    if (res.len !== used) throw new Error(`Reply header len ${res.len}, used length ${used}`);
    if (used > replyLen) throw new Error(`Used length ${used} is more than the ${replyLen} writable bytes`);
    return res;
  }

  // ---- the ops tests use most, parsed ----

  init(minor = FUSE_KERNEL_MINOR_VERSION, flags = 0xffff_ffff): FuseResult {
    return this.send(FUSE_INIT, [
      le(INIT_IN.SIZE).u32(INIT_IN.MAJOR, FUSE_KERNEL_VERSION).u32(INIT_IN.MINOR, minor).u32(INIT_IN.MAX_READAHEAD, 0x20000)
        .u32(INIT_IN.FLAGS, flags).bytes,
    ]);
  }

  /** Parse a fuse_entry_out at `at` of a reply. */
  static entry(r: FuseResult, at = 0): Entry {
    if (r.error) return { error: r.error, nodeid: 0n, ino: 0n, mode: 0, size: 0n, nlink: 0, uid: 0, gid: 0 };
    const v = r.view, a = at + ENTRY_OUT.ATTR;
    return {
      error: 0,
      nodeid: v.getBigUint64(at + ENTRY_OUT.NODEID, true),
      ino: v.getBigUint64(a + ATTR.INO, true),
      mode: v.getUint32(a + ATTR.MODE, true),
      size: v.getBigUint64(a + ATTR.SIZE_, true),
      nlink: v.getUint32(a + ATTR.NLINK, true),
      uid: v.getUint32(a + ATTR.UID, true),
      gid: v.getUint32(a + ATTR.GID, true),
    };
  }

  lookup(parent: bigint | number, name: string | Uint8Array): Entry {
    return FuseDriver.entry(this.send(FUSE_LOOKUP, [cstr(name)], { nodeid: parent }));
  }

  /** GETATTR: mode and size, or the error. */
  getattr(nodeid: bigint | number): { error: number; mode: number; size: bigint; ino: bigint; mtime: bigint; uid: number; gid: number } {
    const r = this.send(FUSE_GETATTR, [new Uint8Array(16)], { nodeid });
    if (r.error) return { error: r.error, mode: 0, size: 0n, ino: 0n, mtime: 0n, uid: 0, gid: 0 };
    const a = ATTR_OUT.ATTR;
    return {
      error: 0,
      mode: r.view.getUint32(a + ATTR.MODE, true),
      size: r.view.getBigUint64(a + ATTR.SIZE_, true),
      ino: r.view.getBigUint64(a + ATTR.INO, true),
      mtime: r.view.getBigUint64(a + ATTR.MTIME, true),
      uid: r.view.getUint32(a + ATTR.UID, true),
      gid: r.view.getUint32(a + ATTR.GID, true),
    };
  }

  mkdir(parent: bigint | number, name: string, mode = 0o755): Entry {
    return FuseDriver.entry(this.send(FUSE_MKDIR, [le(MKDIR_IN.SIZE).u32(MKDIR_IN.MODE, mode).bytes, cstr(name)], { nodeid: parent }));
  }

  /** CREATE: the entry and the handle. */
  create(parent: bigint | number, name: string, flags = 0o102 /* O_RDWR|O_CREAT */, mode = 0o644): Entry & { fh: bigint; openFlags: number } {
    const r = this.send(FUSE_CREATE, [le(CREATE_IN.SIZE).u32(CREATE_IN.FLAGS, flags).u32(CREATE_IN.MODE, mode).bytes, cstr(name)], { nodeid: parent });
    const e = FuseDriver.entry(r);
    if (r.error) return { ...e, fh: 0n, openFlags: 0 };
    return {
      ...e,
      fh: r.view.getBigUint64(ENTRY_OUT.SIZE + OPEN_OUT.FH, true),
      openFlags: r.view.getUint32(ENTRY_OUT.SIZE + OPEN_OUT.OPEN_FLAGS, true),
    };
  }

  /** OPEN or OPENDIR: the handle, or the error. */
  open(nodeid: bigint | number, flags = 0, dir = false): { error: number; fh: bigint; openFlags: number } {
    const r = this.send(dir ? FUSE_OPENDIR : FUSE_OPEN, [le(OPEN_IN.SIZE).u32(OPEN_IN.FLAGS, flags).bytes], { nodeid });
    if (r.error) return { error: r.error, fh: 0n, openFlags: 0 };
    return { error: 0, fh: r.view.getBigUint64(OPEN_OUT.FH, true), openFlags: r.view.getUint32(OPEN_OUT.OPEN_FLAGS, true) };
  }

  release(fh: bigint, dir = false): FuseResult {
    return this.send(dir ? FUSE_RELEASEDIR : FUSE_RELEASE, [le(RELEASE_IN.SIZE).u64(RELEASE_IN.FH, fh).bytes]);
  }

  read(fh: bigint, offset: bigint | number, size: number, reply = size, segment = PAGE): FuseResult {
    return this.send(FUSE_READ, [le(READ_IN.SIZE).u64(READ_IN.FH, fh).u64(READ_IN.OFFSET, offset).u32(READ_IN.SIZE_, size).bytes], { reply, segment });
  }

  /** WRITE: bytes written, or the error (negative). */
  write(fh: bigint, offset: bigint | number, data: Uint8Array): number {
    const r = this.send(FUSE_WRITE, [le(WRITE_IN.SIZE).u64(WRITE_IN.FH, fh).u64(WRITE_IN.OFFSET, offset).u32(WRITE_IN.SIZE_, data.length).bytes], { data, reply: 8 });
    return r.error || r.view.getUint32(0, true);
  }

  /** READDIR or READDIRPLUS from `offset`, one reply. */
  readdir(fh: bigint, offset: bigint | number = 0, plus = false, size = 4096): { error: number; entries: Dirent[] } {
    const r = this.send(plus ? FUSE_READDIRPLUS : FUSE_READDIR, [le(READ_IN.SIZE).u64(READ_IN.FH, fh).u64(READ_IN.OFFSET, offset).u32(READ_IN.SIZE_, size).bytes], { reply: size });
    if (r.error) return { error: r.error, entries: [] };
    const entries: Dirent[] = [];
    const dec = new TextDecoder();
    for (let p = 0; p < r.body.length;) {
      const d = plus ? p + DIRENTPLUS.DIRENT : p;
      const namelen = r.view.getUint32(d + DIRENT.NAMELEN, true);
      entries.push({
        name: dec.decode(r.body.subarray(d + DIRENT.NAME, d + DIRENT.NAME + namelen)),
        ino: r.view.getBigUint64(d + DIRENT.INO, true),
        off: r.view.getBigUint64(d + DIRENT.OFF, true),
        type: r.view.getUint32(d + DIRENT.TYPE, true),
        nodeid: plus ? r.view.getBigUint64(p + ENTRY_OUT.NODEID, true) : undefined,
      });
      p = d + direntAlign(DIRENT.NAME + namelen);
    }
    return { error: 0, entries };
  }

  /** Every entry of a directory, READDIR after READDIR until an empty reply. */
  list(fh: bigint, plus = false, size = 4096): Dirent[] {
    const all: Dirent[] = [];
    let off = 0n;
    for (let i = 0; i < 10_000; i++) {
      const { error, entries } = this.readdir(fh, off, plus, size);
      if (error) throw new Error(`READDIR: error ${error}`);
      if (entries.length === 0) return all;
      all.push(...entries);
      off = entries[entries.length - 1].off;
    }
    throw new Error("READDIR never ended");
  }
}

/** A temporary share for a test: its directory, a server over it and an initialised driver. */
export interface ShareRig {
  dir: string;
  server: FsServer;
  d: FuseDriver;
  /** Close the server and remove the directory. */
  done(): void;
}

/** Make a temporary directory, fill it with `setup(dir)`, serve it and INIT. */
export function shareRig(setup: (dir: string) => void = () => {}, readOnly = false, cache: CacheMode = "auto"): ShareRig {
  const dir = mkdtempSync(join(tmpdir(), "vmm-fs-"));
  setup(dir);
  const lines: string[] = [];
  const server = new FsServer({ root: dir, readOnly, cache, log: (l) => lines.push(l) });
  const d = new FuseDriver(server);
  const r = d.init();
  if (r.error) throw new Error(`INIT failed: ${r.error}`);
  return {
    dir,
    server,
    d,
    done() {
      server.checkConsistent();
      server.close();
      rmSync(dir, { recursive: true, force: true });
      if (server.internalErrors) throw new Error(`Server hit ${server.internalErrors} internal errors: ${lines[0]}`);
    },
  };
}
