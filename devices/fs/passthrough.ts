/**
 * A FUSE server passing through to a host directory: the device logic of
 * virtio-fs (virtio 1.2 §5.11) as vmm will serve it, after virtiofsd's
 * passthrough file system and its `--cache auto`.
 *
 * The request queue's Worker pops a chain and hands it to `serve`, which
 * reads the FUSE request out of the chain's readable buffers, does it on the
 * host and writes the reply into the writable ones; the return value is the
 * used length for `pushUsed`. The inode table is not shared between
 * threads: the hiprio queue (FORGET, INTERRUPT) runs on another Worker,
 * which sends its forgets over a pipe to this one's `forget` (forget.ts,
 * device.ts).
 *
 * What the guest gets wrong becomes an errno in the reply, never an
 * exception: unknown opcodes (ENOSYS), forged nodeids and file handles
 * (EBADF), bad names (EINVAL, ENAMETOOLONG), changes to a read-only share
 * (EROFS), structs shorter than their op needs (EINVAL). An exception
 * inside an op is a vmm bug: the guest gets EIO and the first is logged.
 * Only a chain that cannot carry a FUSE exchange at all (no whole
 * fuse_in_header, or no room for fuse_out_header in a request that needs
 * an answer) throws GuestError, for the device to set DEVICE_NEEDS_RESET
 * like virtio-blk does (STYLE rule 4).
 *
 * @example
 * ```ts
 * import { FsServer } from "./passthrough.ts";
 *
 * // In the request queue's Worker:
 * const fs = new FsServer({ root: "/srv/share", readOnly: false });
 * for (let chain = vq.pop(); chain; chain = vq.pop()) vq.pushUsed(chain.head, fs.serve(chain));
 * fs.close(); // when the device goes away
 * ```
 */
import type { Chain } from "../virtio/ring.ts";
import {
  EBADF,
  EINVAL,
  EIO,
  ENOSYS,
  EPROTO,
  EROFS,
  FUSE_ASYNC_READ,
  FUSE_ATOMIC_O_TRUNC,
  FUSE_AUTO_INVAL_DATA,
  FUSE_BATCH_FORGET,
  FUSE_BIG_WRITES,
  FUSE_CACHE_SYMLINKS,
  FUSE_CREATE,
  FUSE_DESTROY,
  FUSE_DO_READDIRPLUS,
  FUSE_FALLOCATE,
  FUSE_FLUSH,
  FUSE_FORGET,
  FUSE_FSYNC,
  FUSE_FSYNCDIR,
  FUSE_GETATTR,
  FUSE_GETXATTR,
  FUSE_INIT,
  FUSE_INTERRUPT,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_LINK,
  FUSE_LISTXATTR,
  FUSE_LOOKUP,
  FUSE_LSEEK,
  FUSE_MAX_PAGES,
  FUSE_MIN_MINOR_VERSION,
  FUSE_MKDIR,
  FUSE_MKNOD,
  FUSE_OPCODE_NAMES,
  FUSE_OPEN,
  FUSE_OPENDIR,
  FUSE_PARALLEL_DIROPS,
  FUSE_READ,
  FUSE_READDIR,
  FUSE_READDIRPLUS,
  FUSE_READDIRPLUS_AUTO,
  FUSE_READLINK,
  FUSE_RELEASE,
  FUSE_RELEASEDIR,
  FUSE_RENAME,
  FUSE_RENAME2,
  FUSE_RMDIR,
  FUSE_SETATTR,
  FUSE_STATFS,
  FUSE_SYMLINK,
  FUSE_UNLINK,
  FUSE_WRITE,
  INIT_IN,
  INIT_OUT,
  OUT_HEADER,
  ATTR_OUT,
  CREATE_IN,
  ENTRY_OUT,
  FALLOCATE_IN,
  FLUSH_IN,
  FSYNC_IN,
  GETATTR_IN,
  GETXATTR_IN,
  KSTATFS,
  LINK_IN,
  LSEEK_IN,
  LSEEK_OUT,
  MKDIR_IN,
  MKNOD_IN,
  OPEN_IN,
  OPEN_OUT,
  READ_IN,
  RELEASE_IN,
  RENAME2_IN,
  RENAME_IN,
  SETATTR_IN,
  WRITE_IN,
  WRITE_OUT,
} from "./fuse.ts";
import { FuseReply, type FuseRequest, parseRequest } from "./message.ts";
import type { Handle } from "./handles.ts";
import type { Inode } from "./inodes.ts";
import { type CacheMode, Share } from "./share.ts";
import * as node from "./node_ops.ts";
import * as file from "./file_ops.ts";
import { eachForget } from "./forget.ts";

/** Largest WRITE and READ we ask the kernel for: 256 pages (fuse_init_out.max_pages). */
export const FS_MAX_PAGES = 256;
export const FS_MAX_WRITE = FS_MAX_PAGES * 4096;
/** Largest reply body built in scratch (READDIR, READLINK, GETXATTR, LISTXATTR): XATTR_SIZE_MAX. */
const MAX_REPLY_BODY = 65536;
/**
 * INIT flags we answer when the kernel offers them: no writeback cache, no
 * locks (the guest kernel keeps them locally), no FUSE_EXPORT_SUPPORT (so
 * the guest never asks for "." and ".."), no FUSE_DONT_MASK (the guest
 * kernel applies its umask).
 */
const INIT_FLAGS = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_AUTO_INVAL_DATA | FUSE_DO_READDIRPLUS |
  FUSE_READDIRPLUS_AUTO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES | FUSE_CACHE_SYMLINKS;

/** How the server treats one opcode. */
interface OpSpec {
  op: node.Op;
  /** Bytes of op struct the body must hold. */
  body: number;
  /** Bytes of reply body it needs room for before acting (its fixed reply struct). */
  reply: number;
  /** Changes the share: EROFS on a read-only one. */
  writes: boolean;
}

const spec = (op: node.Op, body: number, reply: number, writes = false): OpSpec => ({ op, body, reply, writes });

/** The dispatch table: one op per opcode (fuse_opcode); the rest get ENOSYS. */
const OPS: ReadonlyMap<number, OpSpec> = new Map([
  [FUSE_LOOKUP, spec(node.lookup, 0, ENTRY_OUT.SIZE)],
  [FUSE_GETATTR, spec(node.getattr, GETATTR_IN.SIZE, ATTR_OUT.SIZE)],
  [FUSE_SETATTR, spec(node.setattr, SETATTR_IN.SIZE, ATTR_OUT.SIZE, true)],
  [FUSE_READLINK, spec(node.readlink, 0, 0)],
  [FUSE_SYMLINK, spec(node.symlink, 0, ENTRY_OUT.SIZE, true)],
  [FUSE_MKNOD, spec(node.mknod, MKNOD_IN.SIZE, ENTRY_OUT.SIZE, true)],
  [FUSE_MKDIR, spec(node.mkdir, MKDIR_IN.SIZE, ENTRY_OUT.SIZE, true)],
  [FUSE_UNLINK, spec(node.unlink, 0, 0, true)],
  [FUSE_RMDIR, spec(node.rmdir, 0, 0, true)],
  [FUSE_RENAME, spec(node.rename1, RENAME_IN.SIZE, 0, true)],
  [FUSE_RENAME2, spec(node.rename2, RENAME2_IN.SIZE, 0, true)],
  [FUSE_LINK, spec(node.link, LINK_IN.SIZE, ENTRY_OUT.SIZE, true)],
  [FUSE_OPEN, spec(file.open, OPEN_IN.SIZE, OPEN_OUT.SIZE)],
  [FUSE_CREATE, spec(file.create, CREATE_IN.SIZE, ENTRY_OUT.SIZE + OPEN_OUT.SIZE, true)],
  [FUSE_READ, spec(file.read, READ_IN.SIZE, 0)],
  [FUSE_WRITE, spec(file.write, WRITE_IN.SIZE, WRITE_OUT.SIZE, true)],
  [FUSE_FLUSH, spec(file.flush, FLUSH_IN.SIZE, 0)],
  [FUSE_RELEASE, spec(file.release, RELEASE_IN.SIZE, 0)],
  [FUSE_FSYNC, spec(file.fsync, FSYNC_IN.SIZE, 0)],
  [FUSE_OPENDIR, spec(file.opendir, OPEN_IN.SIZE, OPEN_OUT.SIZE)],
  [FUSE_READDIR, spec(file.readdir, READ_IN.SIZE, 0)],
  [FUSE_READDIRPLUS, spec(file.readdirplus, READ_IN.SIZE, 0)],
  [FUSE_RELEASEDIR, spec(file.releasedir, RELEASE_IN.SIZE, 0)],
  [FUSE_FSYNCDIR, spec(file.fsyncdir, FSYNC_IN.SIZE, 0)],
  [FUSE_STATFS, spec(node.statfs, 0, KSTATFS.SIZE)],
  [FUSE_GETXATTR, spec(node.getxattr, GETXATTR_IN.SIZE, 0)],
  [FUSE_LISTXATTR, spec(node.listxattr, GETXATTR_IN.SIZE, 0)],
  [FUSE_FALLOCATE, spec(file.fallocate, FALLOCATE_IN.SIZE, 0, true)],
  [FUSE_LSEEK, spec(file.lseek, LSEEK_IN.SIZE, LSEEK_OUT.SIZE)],
]);

/** Ops that use file handles, not the nodeid: the handle is checked instead. */
const BY_HANDLE = new Set([
  FUSE_READ, FUSE_WRITE, FUSE_FLUSH, FUSE_RELEASE, FUSE_FSYNC, FUSE_READDIR, FUSE_READDIRPLUS, FUSE_RELEASEDIR,
  FUSE_FSYNCDIR, FUSE_FALLOCATE, FUSE_LSEEK,
]);

/** What the server is to share. */
export interface FsServerOptions {
  /** The host directory the guest sees as its root. */
  root: string;
  /** Refuse every change with EROFS (and open nothing for writing). */
  readOnly: boolean;
  /** How long the guest may cache names and attributes (share.ts CACHE_TIMEOUT_S); default "auto". */
  cache?: CacheMode;
  /** Where the one line about a vmm bug goes (default: console.error). */
  log?: (line: string) => void;
}

/** The FUSE server of one virtio-fs device. */
export class FsServer {
  readonly #share: Share;
  readonly #reply = new FuseReply(MAX_REPLY_BODY);
  readonly #log: (line: string) => void;
  /** INIT done (and no DESTROY since): the only time ops other than INIT are served. */
  #initialized = false;
  /** The minor version in use: the smaller of the kernel's and ours. */
  #minor = 0;
  #internalErrors = 0;

  /** Opens `root` (O_PATH) and /proc/self/fd; throws SysError when either cannot be used. */
  constructor(options: FsServerOptions) {
    this.#share = new Share(options.root, options.readOnly, options.cache);
    this.#log = options.log ?? ((line) => console.error(line));
  }

  /** The negotiated protocol minor version (0 before INIT). */
  get minor(): number {
    return this.#minor;
  }
  /** Exceptions turned into EIO so far: each one is a vmm bug. */
  get internalErrors(): number {
    return this.#internalErrors;
  }

  /**
   * Serve one request chain: do it and write the reply. Returns the bytes
   * written to the chain's writable buffers (out header included), 0 for
   * FORGET, BATCH_FORGET and INTERRUPT, which get no reply (fuse.h). Throws
   * GuestError (`ShortRequest`, `NoReplySpace`) only for a chain that
   * cannot carry a FUSE exchange at all.
   */
  serve(chain: Chain): number {
    // After close() the fd numbers in the tables may be reused by anyone: never touch them.
    if (this.#share.closed) throw new Error("FsServer is closed");
    // WRITE's data stays in guest memory: only its struct is copied.
    const req = parseRequest(chain, (opcode, len) => (opcode === FUSE_WRITE ? WRITE_IN.SIZE : len));
    const op = req.opcode;
    if (op === FUSE_FORGET || op === FUSE_BATCH_FORGET || op === FUSE_INTERRUPT) {
      this.#forget(req);
      return 0;
    }
    const r = this.#reply;
    r.begin(req);
    try {
      return this.#dispatch(req, r);
    } catch (e) {
      this.#internalErrors++;
      if (this.#internalErrors === 1) {
        this.#log(`virtio-fs: internal error in ${FUSE_OPCODE_NAMES[op] ?? `opcode ${op}`}, answered EIO: ${(e as Error)?.stack ?? e}`);
      }
      return r.error(EIO);
    }
  }

  #dispatch(req: FuseRequest, r: FuseReply): number {
    if (req.bad) return r.error(req.bad);
    if (req.opcode === FUSE_INIT) return this.#init(req, r);
    // libfuse answers EIO to anything before INIT, and to a second INIT.
    if (!this.#initialized) return r.error(EIO);
    if (req.opcode === FUSE_DESTROY) {
      this.#share.handles.clear();
      this.#share.inodes.clear();
      this.#initialized = false;
      this.#minor = 0;
      return r.ok(0);
    }
    const s = OPS.get(req.opcode);
    if (!s) return r.error(ENOSYS);
    if (req.body.length < s.body) return r.error(EINVAL);
    if (s.writes && this.#share.readOnly) return r.error(EROFS);
    if (r.room < s.reply) return r.error(EINVAL);
    let inode = this.#share.inodes.root;
    if (!BY_HANDLE.has(req.opcode)) {
      const found = this.#share.inodes.get(req.nodeid);
      if (!found) return r.error(EBADF);
      inode = found;
    }
    return s.op(this.#share, req, r, inode);
  }

  /**
   * INIT (fuse.h, "Version negotiation"): a kernel with a newer major gets
   * our major and sends INIT again; an older major, or a minor before
   * virtio-fs existed, gets EPROTO; otherwise the smaller minor is used.
   */
  #init(req: FuseRequest, r: FuseReply): number {
    if (this.#initialized) return r.error(EIO);
    const v = req.view;
    if (req.body.length < INIT_IN.COMPAT_SIZE) return r.error(EINVAL);
    const major = v.getUint32(INIT_IN.MAJOR, true);
    const minor = v.getUint32(INIT_IN.MINOR, true);
    if (major < FUSE_KERNEL_VERSION) return r.error(EPROTO);
    if (r.room < INIT_OUT.SIZE) return r.error(EINVAL);
    const o = r.view, H = OUT_HEADER.SIZE;
    r.clear(INIT_OUT.SIZE);
    o.setUint32(H + INIT_OUT.MAJOR, FUSE_KERNEL_VERSION, true);
    o.setUint32(H + INIT_OUT.MINOR, FUSE_KERNEL_MINOR_VERSION, true);
    if (major > FUSE_KERNEL_VERSION) return r.ok(INIT_OUT.SIZE);
    if (minor < FUSE_MIN_MINOR_VERSION) return r.error(EPROTO);
    o.setUint32(H + INIT_OUT.MAX_READAHEAD, v.getUint32(INIT_IN.MAX_READAHEAD, true), true);
    o.setUint32(H + INIT_OUT.FLAGS, v.getUint32(INIT_IN.FLAGS, true) & INIT_FLAGS, true);
    o.setUint32(H + INIT_OUT.MAX_WRITE, FS_MAX_WRITE, true);
    o.setUint32(H + INIT_OUT.TIME_GRAN, 1, true); // nanosecond timestamps
    o.setUint16(H + INIT_OUT.MAX_PAGES, FS_MAX_PAGES, true);
    this.#initialized = true;
    this.#minor = Math.min(minor, FUSE_KERNEL_MINOR_VERSION);
    return r.ok(INIT_OUT.SIZE);
  }

  /**
   * Drop `nlookup` lookups of `nodeid` (FORGET). Both FORGETs that come in
   * a chain and those the hiprio queue's thread forwards (devices/fs/forget.ts)
   * end here; before INIT, or after DESTROY, there is nothing to forget.
   */
  forget(nodeid: bigint, nlookup: bigint): void {
    if (this.#initialized && !this.#share.closed) this.#share.inodes.forget(nodeid, nlookup);
  }

  /** FORGET and BATCH_FORGET drop lookups; INTERRUPT has nothing to stop (each request is done before the next). */
  #forget(req: FuseRequest): void {
    eachForget(req, (nodeid, n) => this.forget(nodeid, n));
  }

  /** Close every host fd the server holds; `serve` throws afterwards. Safe to call twice. */
  close(): void {
    this.#share.close();
  }

  /** Inodes and handles held, for tests and the fuzzer. */
  tables(): { inodes: Inode[]; handles: Handle[] } {
    return { inodes: this.#share.inodes.entries(), handles: this.#share.handles.entries() };
  }

  /**
   * Throws when the tables disagree: a vmm bug, for tests and the fuzzer.
   * Every handle's inode is in the table, pinned once per handle.
   */
  checkConsistent(): void {
    const { inodes, handles } = this.#share;
    inodes.checkConsistent();
    const opens = new Map<Inode, number>();
    for (const h of handles.entries()) {
      if (inodes.get(BigInt(h.inode.nodeid)) !== h.inode) throw new Error(`Handle ${h.fh} names inode ${h.inode.nodeid}, not in the table`);
      opens.set(h.inode, (opens.get(h.inode) ?? 0) + 1);
    }
    for (const i of inodes.entries()) {
      if (i.opens !== (opens.get(i) ?? 0)) throw new Error(`Inode ${i.nodeid} counts ${i.opens} opens, ${opens.get(i) ?? 0} handles name it`);
    }
  }
}
