/**
 * virtio-blk device logic (virtio 1.2 §5.2): what a block device offers the
 * driver, its config space, and serving one request against a host disk.
 *
 * A queue Worker pops a chain and calls `BlkQueue.serve(chain)`, which
 * parses it (`parseBlkRequest`, which checks everything the guest wrote),
 * does the I/O, writes the status byte and returns the used length for
 * `pushUsed`. Data moves straight between the image and guest RAM: the
 * guest's buffers become iovecs of host addresses inside the guest memory
 * mapping, handed to preadv/pwritev, so no byte is copied through
 * JavaScript (kvmtool's `virtio/blk.c` and `disk/raw.c` do the same).
 *
 * Two kinds of failure, kept apart as STYLE rule 4 asks:
 * - the guest broke the protocol (no header, no status byte): the parser
 *   throws GuestError, `serve` lets it through, and the caller marks the
 *   device DEVICE_NEEDS_RESET;
 * - the request is fine but cannot be done (past the end, read-only, the
 *   host's disk failed): the guest gets VIRTIO_BLK_S_IOERR or _UNSUPP in
 *   the status byte. Host I/O errors never throw and log nothing: a failing
 *   disk would otherwise flood the log once per request, and the guest's
 *   kernel reports them itself.
 *
 * @example
 * ```ts
 * import { BlkQueue } from "./blk.ts";
 *
 * // In a queue Worker, with `mem` over the shared guest RAM mapping:
 * const blk = new BlkQueue(mem, disk);
 * for (let chain = vq.pop(); chain; chain = vq.pop()) vq.pushUsed(chain.head, blk.serve(chain));
 * blk.flush(); // when the queue stops
 * ```
 */

import type { GuestMemory } from "../../vm/memory.ts";
import { EINTR, errno, libc, mmapAnon, PROT_READ } from "../../ffi/libc.ts";
import { E, SysError } from "../../ffi/errno.ts";
import type { Disk } from "./disk.ts";
import { type Chain, type Segment, Writer } from "../virtio/ring.ts";
import { IovecArray } from "../virtio/iovec.ts";
import {
  type BlkLimits,
  type BlkRange,
  parseBlkRequest,
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
} from "./request.ts";

/** Device ID of a block device (virtio 1.2 §5, table "Device Types"). */
export const VIRTIO_ID_BLOCK = 2;

// virtio 1.2 §5.2.3: feature bits. Only the ones offered are named.
/** seg_max is valid: the most data buffers in one request. */
export const VIRTIO_BLK_F_SEG_MAX = 1n << 2n;
/** The disk is read-only. */
export const VIRTIO_BLK_F_RO = 1n << 5n;
/** blk_size is valid. */
export const VIRTIO_BLK_F_BLK_SIZE = 1n << 6n;
/** VIRTIO_BLK_T_FLUSH works: without it the driver assumes a write-through disk. */
export const VIRTIO_BLK_F_FLUSH = 1n << 9n;
/** num_queues is valid: more than one request queue. */
export const VIRTIO_BLK_F_MQ = 1n << 12n;
/** VIRTIO_BLK_T_DISCARD works. */
export const VIRTIO_BLK_F_DISCARD = 1n << 13n;
/** VIRTIO_BLK_T_WRITE_ZEROES works. */
export const VIRTIO_BLK_F_WRITE_ZEROES = 1n << 14n;

// virtio 1.2 §5.2.4: struct virtio_blk_config (Linux uapi/linux/virtio_blk.h), little-endian.
export const BLK_CFG_CAPACITY = 0; // le64, in 512-byte sectors
export const BLK_CFG_SIZE_MAX = 8; // le32, VIRTIO_BLK_F_SIZE_MAX (not offered)
export const BLK_CFG_SEG_MAX = 12; // le32
export const BLK_CFG_GEOMETRY = 16; // le16 cylinders, u8 heads, u8 sectors (not offered)
export const BLK_CFG_BLK_SIZE = 20; // le32
export const BLK_CFG_TOPOLOGY = 24; // u8 physical_block_exp, u8 alignment_offset, le16 min_io_size, le32 opt_io_size (not offered)
export const BLK_CFG_WRITEBACK = 32; // u8, VIRTIO_BLK_F_CONFIG_WCE (not offered)
export const BLK_CFG_NUM_QUEUES = 34; // le16, VIRTIO_BLK_F_MQ
export const BLK_CFG_MAX_DISCARD_SECTORS = 36; // le32
export const BLK_CFG_MAX_DISCARD_SEG = 40; // le32
export const BLK_CFG_DISCARD_SECTOR_ALIGNMENT = 44; // le32
export const BLK_CFG_MAX_WRITE_ZEROES_SECTORS = 48; // le32
export const BLK_CFG_MAX_WRITE_ZEROES_SEG = 52; // le32
export const BLK_CFG_WRITE_ZEROES_MAY_UNMAP = 56; // u8, then 3 bytes of padding
/**
 * The config space ends after write_zeroes_may_unmap and its padding: the
 * secure-erase and zoned fields that follow belong to features we never
 * offer, and the transport reads past the end as zeroes.
 */
export const BLK_CONFIG_SIZE = 60;

/** blk_size: the guest's logical block is one sector, so any sector-aligned request is valid. */
export const BLK_SIZE = SECTOR_SIZE;
/**
 * Most sectors in one discard or write-zeroes range: 1 GiB. Punching a
 * hole is cheap at any size, but writing zeroes by hand (the fallback) is
 * not, and one request holds the queue for as long as it runs.
 */
export const BLK_MAX_DISCARD_SECTORS = (1 << 30) / SECTOR_SIZE;
export const BLK_MAX_WRITE_ZEROES_SECTORS = BLK_MAX_DISCARD_SECTORS;
/** Ask for discards aligned to 4 KiB, the block size of the usual host filesystems, so holes are whole blocks. */
export const BLK_DISCARD_SECTOR_ALIGNMENT = 4096 / SECTOR_SIZE;
/** Ranges per discard / write-zeroes request, in the config and in the parser alike. */
export const BLK_LIMITS: Readonly<Required<BlkLimits>> = { maxDiscardSeg: 16, maxWriteZeroesSeg: 16 };

/** What BlkQueue needs of a Disk (a Worker gets these as plain data). */
export type BlkDisk = Pick<Disk, "fd" | "sizeBytes" | "readOnly" | "id">;

/**
 * Device feature bits for `disk` behind `queues` request queues (virtio 1.2
 * §5.2.3); the transport adds VIRTIO_F_VERSION_1 and the ring features.
 * Discard and write-zeroes would only fail on a read-only disk, so it does
 * not offer them. One queue is offered without VIRTIO_BLK_F_MQ, as before
 * there were more.
 */
export function blkFeatures(disk: { readOnly: boolean }, queues = 1): bigint {
  let f = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
  if (queues > 1) f |= VIRTIO_BLK_F_MQ;
  return disk.readOnly ? f | VIRTIO_BLK_F_RO : f | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
}

/**
 * struct virtio_blk_config for `disk` behind `queues` queues of at most
 * `queueSize` entries. Fields of features not offered stay zero.
 */
export function blkConfig(disk: { sizeBytes: number; readOnly: boolean }, queueSize: number, queues = 1): Uint8Array {
  if (!Number.isInteger(queueSize) || queueSize < 3) throw new RangeError(`Queue size ${queueSize} leaves no room for data`);
  const cfg = new Uint8Array(BLK_CONFIG_SIZE);
  const v = new DataView(cfg.buffer);
  v.setBigUint64(BLK_CFG_CAPACITY, BigInt(Math.floor(disk.sizeBytes / SECTOR_SIZE)), true);
  // One descriptor each for the header and the status byte; the rest may be data
  // (Linux sizes its scatterlists from this, drivers/block/virtio_blk.c).
  v.setUint32(BLK_CFG_SEG_MAX, queueSize - 2, true);
  v.setUint32(BLK_CFG_BLK_SIZE, BLK_SIZE, true);
  if (queues > 1) v.setUint16(BLK_CFG_NUM_QUEUES, queues, true);
  if (!disk.readOnly) {
    v.setUint32(BLK_CFG_MAX_DISCARD_SECTORS, BLK_MAX_DISCARD_SECTORS, true);
    v.setUint32(BLK_CFG_MAX_DISCARD_SEG, BLK_LIMITS.maxDiscardSeg, true);
    v.setUint32(BLK_CFG_DISCARD_SECTOR_ALIGNMENT, BLK_DISCARD_SECTOR_ALIGNMENT, true);
    v.setUint32(BLK_CFG_MAX_WRITE_ZEROES_SECTORS, BLK_MAX_WRITE_ZEROES_SECTORS, true);
    v.setUint32(BLK_CFG_MAX_WRITE_ZEROES_SEG, BLK_LIMITS.maxWriteZeroesSeg, true);
    // We honour unmap by punching a hole, which reads back as zeroes.
    cfg[BLK_CFG_WRITE_ZEROES_MAY_UNMAP] = 1;
  }
  return cfg;
}

/** Bytes of zeroes written per call when the filesystem cannot zero a range itself. */
const ZERO_CHUNK = 1 << 20;

// fallocate(2) modes (uapi/linux/falloc.h).
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
const { EIO, EINVAL, EOPNOTSUPP } = E;

/**
 * The host cannot do this fallocate mode here, as opposed to failing at it:
 * EOPNOTSUPP from a filesystem without it, EINVAL from a block device whose
 * logical blocks are larger than our 512-byte sectors.
 */
function cannot(e: number): boolean {
  return e === EOPNOTSUPP || e === EINVAL;
}

// Per-thread scratch, made on first use and kept (serve() never runs twice
// at once on one thread): a read-only anonymous mapping that reads as
// zeroes without using memory.
let zeroAddr = 0n;

/** One virtqueue of a virtio-blk device, serving requests against one disk. */
export class BlkQueue {
  readonly #mem: GuestMemory;
  readonly #disk: BlkDisk;
  readonly #capacity: bigint;
  readonly #iov: IovecArray;
  readonly #id: Uint8Array;

  constructor(mem: GuestMemory, disk: BlkDisk) {
    // Host address 0 means guest RAM is a plain buffer: the kernel could not reach it.
    if (mem.hostBase === 0n) throw new RangeError("BlkQueue needs guest memory backed by a host mapping");
    this.#mem = mem;
    this.#disk = disk;
    this.#capacity = BigInt(Math.floor(disk.sizeBytes / SECTOR_SIZE));
    this.#iov = IovecArray.forThread();
    // GET_ID answers 20 bytes, NUL-padded; an id of exactly 20 has no NUL (virtio 1.2 §5.2.6).
    this.#id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    this.#id.set(new TextEncoder().encode(disk.id).subarray(0, VIRTIO_BLK_ID_BYTES));
  }

  /**
   * Serve one request: parse, do it, write the status byte, and return the
   * used length, the bytes this request vouches for in the chain's writable
   * buffers: the data read or the id written, plus the status byte (as
   * Firecracker counts it). A failed read vouches for nothing but its status.
   * Throws GuestError for a chain that cannot be answered at all.
   */
  serve(chain: Chain): number {
    const req = parseBlkRequest(chain, this.#mem, this.#capacity, this.#disk.readOnly, BLK_LIMITS);
    let status = req.status;
    let written = 0;
    if (status === null) {
      switch (req.type) {
        case "in":
          status = this.#transfer(req.data, req.dataLength, req.sector, false);
          if (status === VIRTIO_BLK_S_OK) written = req.dataLength;
          break;
        case "out":
          status = this.#transfer(req.data, req.dataLength, req.sector, true);
          break;
        case "flush":
          // The status goes out only after fdatasync returns: the guest may
          // then count on every write it completed before being on disk.
          status = this.#disk.readOnly || this.#fdatasync() ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
          break;
        case "getId": {
          written = Math.min(req.dataLength, VIRTIO_BLK_ID_BYTES);
          new Writer(this.#mem, req.data).write(this.#id.subarray(0, written));
          status = VIRTIO_BLK_S_OK;
          break;
        }
        case "discard":
          status = this.#discard(req.ranges);
          break;
        case "writeZeroes":
          status = this.#writeZeroes(req.ranges);
          break;
        default:
          status = VIRTIO_BLK_S_IOERR; // unreachable: the parser answers unknown types
      }
    }
    this.#mem.writeU8(req.statusGpa, status);
    return written + 1;
  }

  /**
   * Make every completed write durable; call when the queue stops. Throws
   * SysError when the host disk fails, for the caller to log.
   */
  flush(): void {
    if (!this.#disk.readOnly && !this.#fdatasync()) throw new SysError(`fdatasync of drive ${this.#disk.id}`, errno());
  }

  /**
   * Move the data between the file from `sector` on and the guest buffers
   * `segs` (devices/virtio/iovec.ts: straight between the image and guest
   * RAM, resuming after short calls). Anything short of every byte is
   * IOERR: a read that met the end of the file (it shrank under us), a
   * write the disk took nothing of, a host error.
   */
  #transfer(segs: readonly Segment[], length: number, sector: bigint, write: boolean): number {
    const moved = this.#iov.transfer(this.#mem, segs, this.#disk.fd, write, sector * BigInt(SECTOR_SIZE));
    return moved === length ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
  }

  #fdatasync(): boolean {
    for (;;) {
      if (Number(libc.fdatasync(this.#disk.fd)) === 0) return true;
      if (errno() !== EINTR) return false;
    }
  }

  /** fallocate(2) of whole sectors, retried on EINTR; 0 on success, else errno. */
  #fallocate(mode: number, r: BlkRange): number {
    for (;;) {
      const rc = Number(libc.fallocate(this.#disk.fd, mode, r.sector * BigInt(SECTOR_SIZE), BigInt(r.numSectors) * BigInt(SECTOR_SIZE)));
      if (rc === 0) return 0;
      const e = errno();
      if (e !== EINTR) return e;
    }
  }

  /**
   * Discard: punch a hole, so the host gets the space back. The spec lets a
   * device ignore discards (virtio 1.2 §5.2.6.2: it MAY deallocate), so a
   * host that `cannot()` punch holes still answers OK.
   */
  #discard(ranges: readonly BlkRange[]): number {
    for (const r of ranges) {
      if (r.numSectors > BLK_MAX_DISCARD_SECTORS) return VIRTIO_BLK_S_IOERR;
    }
    for (const r of ranges) {
      if (r.numSectors === 0) continue; // fallocate refuses an empty range
      const e = this.#fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r);
      if (e !== 0 && !cannot(e)) return VIRTIO_BLK_S_IOERR;
    }
    return VIRTIO_BLK_S_OK;
  }

  /**
   * Write zeroes: afterwards the ranges must read as zeroes (virtio 1.2
   * §5.2.6.2). With unmap the device may deallocate: punch a hole. Without,
   * ZERO_RANGE keeps the blocks allocated. KEEP_SIZE everywhere: the image
   * never grows. Each step the host `cannot()` do (tmpfs has no ZERO_RANGE)
   * falls to the next, down to writing the zeroes out by hand.
   */
  #writeZeroes(ranges: readonly BlkRange[]): number {
    for (const r of ranges) {
      if (r.numSectors > BLK_MAX_WRITE_ZEROES_SECTORS) return VIRTIO_BLK_S_IOERR;
    }
    for (const r of ranges) {
      if (r.numSectors === 0) continue;
      let e = EOPNOTSUPP;
      if (r.unmap) e = this.#fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r);
      if (cannot(e)) e = this.#fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, r);
      if (cannot(e)) e = this.#pwriteZeroes(r) ? 0 : EIO;
      if (e !== 0) return VIRTIO_BLK_S_IOERR;
    }
    return VIRTIO_BLK_S_OK;
  }

  /** pwrite zeroes over a range, ZERO_CHUNK at a time. */
  #pwriteZeroes(r: BlkRange): boolean {
    if (zeroAddr === 0n) {
      try {
        zeroAddr = mmapAnon(ZERO_CHUNK, PROT_READ);
      } catch {
        return false; // out of address space: an I/O error for the guest, not a throw
      }
    }
    let pos = r.sector * BigInt(SECTOR_SIZE);
    let left = r.numSectors * SECTOR_SIZE;
    while (left > 0) {
      const n = Math.min(left, ZERO_CHUNK);
      const w = Number(libc.pwrite(this.#disk.fd, zeroAddr, BigInt(n), pos));
      if (w < 0 && errno() === EINTR) continue;
      if (w <= 0) return false;
      pos += BigInt(w);
      left -= w;
    }
    return true;
  }
}
