/**
 * Open files and directories of a virtio-fs guest: OPEN, CREATE and OPENDIR
 * answer a file handle (fuse_open_out.fh) that later requests name; each is
 * a host fd opened for I/O. Handles are numbers we chose, never reused, so
 * a guest that forges or replays one gets EBADF, never someone else's file.
 */
import type { Inode, InodeTable } from "./inodes.ts";

/** One open file or directory. */
export interface Handle {
  readonly fh: number;
  /** Host fd opened for I/O (never O_PATH). */
  readonly fd: number;
  readonly inode: Inode;
  /** OPENDIR's handle (READDIR, RELEASEDIR, FSYNCDIR), or OPEN/CREATE's. */
  readonly dir: boolean;
  /** Opened with write access: WRITE, FALLOCATE and truncation need it. */
  readonly writable: boolean;
}

/** The handle table. */
export class HandleTable {
  readonly #byFh = new Map<number, Handle>();
  readonly #close: (fd: number) => void;
  readonly #inodes: InodeTable;
  #next = 1;

  /** Handles whose inodes live in `inodes`; `close` closes host fds. */
  constructor(inodes: InodeTable, close: (fd: number) => void) {
    this.#inodes = inodes;
    this.#close = close;
  }

  get size(): number {
    return this.#byFh.size;
  }

  /** A new handle for `fd` (which the table now owns); it pins `inode`. */
  add(fd: number, inode: Inode, dir: boolean, writable: boolean): Handle {
    const h: Handle = { fh: this.#next++, fd, inode, dir, writable };
    this.#inodes.pin(inode);
    this.#byFh.set(h.fh, h);
    return h;
  }

  /** The handle `fh` of the right kind, or undefined for a forged, released or mismatched one. */
  get(fh: bigint, dir: boolean): Handle | undefined {
    const h = fh <= BigInt(Number.MAX_SAFE_INTEGER) ? this.#byFh.get(Number(fh)) : undefined;
    return h && h.dir === dir ? h : undefined;
  }

  /** RELEASE / RELEASEDIR: close it. False when there was no such handle. */
  release(fh: bigint, dir: boolean): boolean {
    const h = this.get(fh, dir);
    if (!h) return false;
    this.#byFh.delete(h.fh);
    this.#close(h.fd);
    this.#inodes.unpin(h.inode);
    return true;
  }

  /** DESTROY: close every handle. */
  clear(): void {
    for (const h of this.#byFh.values()) {
      this.#close(h.fd);
      this.#inodes.unpin(h.inode);
    }
    this.#byFh.clear();
  }

  entries(): Handle[] {
    return [...this.#byFh.values()];
  }
}
