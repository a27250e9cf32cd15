/**
 * The inodes a virtio-fs guest knows, as virtiofsd keeps them
 * (src/passthrough/inode_store.rs): each is an O_PATH fd on the host file,
 * keyed by (st_dev, st_ino) so one host file has one nodeid however many
 * names lead to it, and counted in lookups: every reply that hands the guest
 * a nodeid (LOOKUP, CREATE, MKNOD, MKDIR, SYMLINK, LINK, a READDIRPLUS
 * entry) adds one, FORGET and BATCH_FORGET take them back
 * (include/uapi/linux/fuse.h: "nlookup"), and at zero the fd is closed.
 *
 * An open handle pins its inode too (`opens`): the kernel keeps an inode it
 * has open, but a guest may FORGET it anyway, and the handle's ops still use
 * the inode's fd, whose number must not be closed and handed to another
 * file meanwhile. So an inode leaves the table when it has neither lookups
 * nor opens. An O_PATH fd pins its host inode, so (st_dev, st_ino) cannot be
 * reused by another file while it is in the table. Nodeids are never reused either:
 * with generation 0, "nodeid:gen must be unique for the fs's lifetime".
 */
import { FUSE_ROOT_ID } from "./fuse.ts";

/** One inode the guest was told about. */
export interface Inode {
  readonly nodeid: number;
  /** O_PATH | O_NOFOLLOW fd on the host file: never used for I/O, only as a dirfd or reopened. */
  readonly fd: number;
  readonly dev: bigint;
  readonly ino: bigint;
  /** st_mode & S_IFMT: an inode never changes type. */
  readonly type: number;
  /** Lookups the guest holds; the root's never drops to 0. */
  nlookup: number;
  /** Open handles on it. */
  opens: number;
  /** mtime, ctime and size when last opened, to decide FOPEN_KEEP_CACHE. */
  openStamp: string;
}

/** The table of inodes, by nodeid and by (st_dev, st_ino). */
export class InodeTable {
  readonly #byId = new Map<number, Inode>();
  readonly #byKey = new Map<string, Inode>();
  readonly #close: (fd: number) => void;
  #next = Number(FUSE_ROOT_ID) + 1;
  readonly root: Inode;

  /** A table holding the share's root (fd, dev, ino, type) as FUSE_ROOT_ID; `close` closes host fds. */
  constructor(root: { fd: number; dev: bigint; ino: bigint; type: number }, close: (fd: number) => void) {
    this.#close = close;
    this.root = { nodeid: Number(FUSE_ROOT_ID), ...root, nlookup: 1, opens: 0, openStamp: "" };
    this.#add(this.root);
  }

  /** Inodes in the table, the root included. */
  get size(): number {
    return this.#byId.size;
  }

  /** The inode for a guest's nodeid, or undefined for one we never gave (or took back). */
  get(nodeid: bigint): Inode | undefined {
    return nodeid <= BigInt(Number.MAX_SAFE_INTEGER) ? this.#byId.get(Number(nodeid)) : undefined;
  }

  /** The inode already known for (dev, ino), if any. */
  find(dev: bigint, ino: bigint): Inode | undefined {
    return this.#byKey.get(`${dev}:${ino}`);
  }

  /**
   * Count one lookup of the host file `fd` (an O_PATH fd this call takes
   * over) with identity (dev, ino): the known inode gains a lookup and `fd`
   * is closed, or `fd` becomes a new inode with one lookup.
   */
  adopt(fd: number, dev: bigint, ino: bigint, type: number): Inode {
    const known = this.find(dev, ino);
    if (known) {
      this.#close(fd);
      known.nlookup++;
      return known;
    }
    const inode: Inode = { nodeid: this.#next++, fd, dev, ino, type, nlookup: 1, opens: 0, openStamp: "" };
    this.#add(inode);
    return inode;
  }

  /** One more lookup of an inode the table holds (LINK hands out its old inode again). */
  ref(inode: Inode): void {
    inode.nlookup++;
  }

  /**
   * FORGET: the guest drops `n` lookups of `nodeid` (a u64 it chose). An
   * unknown nodeid is ignored, as is any forget of the root, which the
   * kernel holds for the life of the mount and never forgets.
   */
  forget(nodeid: bigint, n: bigint): void {
    const inode = this.get(nodeid);
    if (!inode || inode === this.root) return;
    inode.nlookup = n >= BigInt(inode.nlookup) ? 0 : inode.nlookup - Number(n);
    if (inode.nlookup === 0 && inode.opens === 0) this.#drop(inode);
  }

  /** A handle opened on `inode`: it stays until the handle is released. */
  pin(inode: Inode): void {
    inode.opens++;
  }

  /** A handle on `inode` was released. */
  unpin(inode: Inode): void {
    inode.opens--;
    if (inode.nlookup === 0 && inode.opens === 0 && inode !== this.root && this.#byId.get(inode.nodeid) === inode) this.#drop(inode);
  }

  /** DESTROY: forget everything but the root (release the handles first). */
  clear(): void {
    for (const inode of [...this.#byId.values()]) {
      if (inode !== this.root) this.#drop(inode);
    }
    this.root.nlookup = 1;
    this.root.opens = 0;
  }

  /** Every inode, for consistency checks in tests. */
  entries(): Inode[] {
    return [...this.#byId.values()];
  }

  /** Throws when the two maps disagree: a vmm bug, for tests and the fuzzer. */
  checkConsistent(): void {
    if (this.#byId.size !== this.#byKey.size) throw new Error(`Inode maps differ: ${this.#byId.size} by id, ${this.#byKey.size} by key`);
    for (const [id, inode] of this.#byId) {
      if (inode.nodeid !== id || this.#byKey.get(`${inode.dev}:${inode.ino}`) !== inode) throw new Error(`Inode ${id} is filed wrongly`);
      if (!Number.isSafeInteger(inode.nlookup) || !Number.isSafeInteger(inode.opens) || inode.nlookup < 0 || inode.opens < 0) {
        throw new Error(`Inode ${id} has lookup count ${inode.nlookup} and ${inode.opens} opens`);
      }
      if (inode.nlookup === 0 && inode.opens === 0) throw new Error(`Inode ${id} has neither lookups nor opens but is kept`);
    }
  }

  #add(inode: Inode): void {
    this.#byId.set(inode.nodeid, inode);
    this.#byKey.set(`${inode.dev}:${inode.ino}`, inode);
  }

  #drop(inode: Inode): void {
    this.#byId.delete(inode.nodeid);
    this.#byKey.delete(`${inode.dev}:${inode.ino}`);
    this.#close(inode.fd);
  }
}
