/**
 * virtio-blk against real files (devices/blk/blk.ts): guest RAM here is
 * a real anonymous host mapping, so preadv/pwritev/fallocate really run
 * between the image and guest memory, and every result is checked by
 * reading the file back with node:fs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../vm/memory.ts";
import { HIGH_GPA as HIGH, hostGuestMemory } from "../../test/support/host_memory.ts";
import { close, libc, O_RDONLY, open } from "../../ffi/libc.ts";
import { SysError } from "../../ffi/errno.ts";
import { closeDisk, type Disk, openDisk } from "./disk.ts";
import { BLK_DEFAULT_QUEUES, BLK_QUEUE_SIZE, blkKind, blkQueues } from "./mod.ts";
import { ConfigError } from "../../vm/vm.ts";
import { GuestError, Virtqueue } from "../virtio/ring.ts";
import { type DriverBuffer, DriverQueue } from "../../test/support/driver_queue.ts";
import {
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "./request.ts";
import {
  BLK_CFG_BLK_SIZE,
  BLK_CFG_CAPACITY,
  BLK_CFG_DISCARD_SECTOR_ALIGNMENT,
  BLK_CFG_MAX_DISCARD_SECTORS,
  BLK_CFG_MAX_DISCARD_SEG,
  BLK_CFG_MAX_WRITE_ZEROES_SECTORS,
  BLK_CFG_MAX_WRITE_ZEROES_SEG,
  BLK_CFG_SEG_MAX,
  BLK_CFG_WRITE_ZEROES_MAY_UNMAP,
  BLK_CONFIG_SIZE,
  BLK_MAX_DISCARD_SECTORS,
  BLK_CFG_NUM_QUEUES,
  blkConfig,
  blkFeatures,
  VIRTIO_BLK_F_MQ,
  BlkQueue,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_ID_BLOCK,
} from "./blk.ts";
import { IOV_MAX } from "../virtio/iovec.ts";

// ---- guest memory: test/support/host_memory.ts, a real host mapping in two regions ----

const QUEUE = 0x1000; // rings, up to 2048 entries (~54 KiB)
const TABLE = 0x20000; // an indirect table
const HDR = 0x30000; // request header
const STATUS = 0x31000; // status byte
const DATA = HIGH; // data buffers, in the high region
const SECTOR = 512;

/** The byte at offset `i` of a fresh image: differs from sector to sector and within one. */
const pattern = (i: number) => (i * 7 + (i >>> 9) * 13 + 1) & 0xff;

interface Rig {
  mem: GuestMemory;
  dq: DriverQueue;
  vq: Virtqueue;
  blk: BlkQueue;
  disk: Disk;
  path: string;
  /** The image as it is on disk now. */
  file(): Uint8Array;
  /** Publish a chain and serve it: the used length. */
  serve(bufs: DriverBuffer[]): number;
  /** Publish an indirect chain and serve it. */
  serveIndirect(bufs: DriverBuffer[]): number;
}

interface RigOptions {
  sectors?: number;
  readOnly?: boolean;
  id?: string;
  queueSize?: number;
  /** Directory for the image (default: a new temp dir). */
  dir?: string;
}

/** An image of patterned sectors, opened as a drive, and a queue to send it requests. */
function withRig(o: RigOptions, fn: (r: Rig) => void): void {
  const dir = mkdtempSync(join(o.dir ?? tmpdir(), "vmm-blk-"));
  const path = join(dir, "disk.img");
  const size = (o.sectors ?? 64) * SECTOR;
  writeFileSync(path, new Uint8Array(size).map((_, i) => pattern(i)));
  const disk = openDisk({ path, readOnly: o.readOnly ?? false, id: o.id });
  try {
    const mem = hostGuestMemory();
    const dq = new DriverQueue(mem, DriverQueue.layout(QUEUE, o.queueSize ?? 16));
    const vq = new Virtqueue(mem, dq.config(false));
    const blk = new BlkQueue(mem, disk);
    fn({
      mem, dq, vq, blk, disk, path,
      file: () => new Uint8Array(readFileSync(path)),
      serve: (bufs) => (dq.add(bufs), blk.serve(vq.pop()!)),
      serveIndirect: (bufs) => (dq.addIndirect(bufs, TABLE), blk.serve(vq.pop()!)),
    });
  } finally {
    closeDisk(disk);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** struct virtio_blk_req header at HDR, followed by `extra` readable bytes in the same buffer. */
function header(mem: GuestMemory, type: number, sector: bigint, extra = 0): DriverBuffer {
  mem.writeU32(HDR, type);
  mem.writeU32(HDR + 4, 0);
  mem.writeU64(HDR + 8, sector);
  return { gpa: HDR, len: 16 + extra };
}

/** struct virtio_blk_discard_write_zeroes segments at DATA. */
function ranges(mem: GuestMemory, segs: [number, number, number][]): DriverBuffer {
  segs.forEach(([sector, n, flags], i) => {
    mem.writeU64(DATA + 16 * i, BigInt(sector));
    mem.writeU32(DATA + 16 * i + 8, n);
    mem.writeU32(DATA + 16 * i + 12, flags);
  });
  return { gpa: DATA, len: 16 * segs.length };
}

const status: DriverBuffer = { gpa: STATUS, len: 1, write: true };

/** The image bytes of sectors [first, first + n) as a fresh image has them. */
function fresh(first: number, n: number): Uint8Array {
  return new Uint8Array(n * SECTOR).map((_, i) => pattern(first * SECTOR + i));
}

/** A copy of `file` with `data` laid over it at `sector`. */
function patched(file: Uint8Array, sector: number, data: Uint8Array): Uint8Array {
  const out = file.slice();
  out.set(data, sector * SECTOR);
  return out;
}

// ---- features and config space ----

test("VIRTIO_ID_BLOCK is 2 and the feature bits sit where virtio 1.2 §5.2.3 puts them", () => {
  assert.equal(VIRTIO_ID_BLOCK, 2);
  assert.deepEqual(
    [VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES],
    [1n << 2n, 1n << 5n, 1n << 6n, 1n << 9n, 1n << 13n, 1n << 14n],
  );
});

test("blkFeatures() offers discard and write-zeroes to a writable disk, RO to a read-only one", () => {
  const common = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
  assert.equal(blkFeatures({ readOnly: false }), common | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES);
  assert.equal(blkFeatures({ readOnly: true }), common | VIRTIO_BLK_F_RO);
});

test("blkConfig() lays out struct virtio_blk_config at the spec's offsets", () => {
  // virtio 1.2 §5.2.4 / uapi/linux/virtio_blk.h, byte by byte.
  assert.deepEqual(
    [BLK_CFG_CAPACITY, BLK_CFG_SEG_MAX, BLK_CFG_BLK_SIZE, BLK_CFG_MAX_DISCARD_SECTORS, BLK_CFG_MAX_DISCARD_SEG,
      BLK_CFG_DISCARD_SECTOR_ALIGNMENT, BLK_CFG_MAX_WRITE_ZEROES_SECTORS, BLK_CFG_MAX_WRITE_ZEROES_SEG, BLK_CFG_WRITE_ZEROES_MAY_UNMAP],
    [0, 12, 20, 36, 40, 44, 48, 52, 56],
  );
  const cfg = blkConfig({ sizeBytes: 2 ** 45, readOnly: false }, 256); // 32 TiB: capacity needs the high half
  assert.equal(cfg.length, BLK_CONFIG_SIZE);
  assert.equal(BLK_CONFIG_SIZE, 60);
  const v = new DataView(cfg.buffer);
  assert.equal(v.getUint32(0, true), 0, "capacity low");
  assert.equal(v.getUint32(4, true), 16, "capacity high: 2^36 sectors");
  assert.equal(v.getUint32(8, true), 0, "size_max: not offered");
  assert.equal(v.getUint32(12, true), 254, "seg_max: queue size minus header and status");
  assert.equal(v.getUint32(16, true), 0, "geometry: not offered");
  assert.equal(v.getUint32(20, true), 512, "blk_size");
  assert.equal(v.getBigUint64(24, true), 0n, "topology: not offered");
  assert.equal(v.getUint32(32, true), 0, "writeback, unused0, num_queues: not offered");
  assert.equal(v.getUint32(36, true), 2097152, "max_discard_sectors: 1 GiB");
  assert.equal(v.getUint32(40, true), 16, "max_discard_seg");
  assert.equal(v.getUint32(44, true), 8, "discard_sector_alignment: 4 KiB");
  assert.equal(v.getUint32(48, true), 2097152, "max_write_zeroes_sectors");
  assert.equal(v.getUint32(52, true), 16, "max_write_zeroes_seg");
  assert.equal(v.getUint32(56, true), 1, "write_zeroes_may_unmap, then 3 bytes of padding");
});

test("several queues: VIRTIO_BLK_F_MQ (bit 12) and num_queues at offset 34; one queue offers neither", () => {
  assert.equal(VIRTIO_BLK_F_MQ, 1n << 12n);
  assert.equal(BLK_CFG_NUM_QUEUES, 34);
  assert.equal(blkFeatures({ readOnly: false }, 1) & VIRTIO_BLK_F_MQ, 0n);
  assert.equal(blkFeatures({ readOnly: true }, 3) & VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_MQ);
  assert.equal(blkFeatures({ readOnly: false }, 3), blkFeatures({ readOnly: false }) | VIRTIO_BLK_F_MQ);
  const v = (q: number) => new DataView(blkConfig({ sizeBytes: 64 * SECTOR, readOnly: false }, 256, q).buffer);
  assert.equal(v(1).getUint16(BLK_CFG_NUM_QUEUES, true), 0);
  assert.equal(v(3).getUint16(BLK_CFG_NUM_QUEUES, true), 3);
  assert.equal(v(3).getUint32(12, true), 254, "seg_max is per queue, the same");
});

test("a drive's queues leave seg_max room for Linux's largest default request, 1280 KiB of 4 KiB pages", () => {
  const disk = { fd: -1, path: "d.img", sizeBytes: 1 << 20, readOnly: false, id: "d" };
  const m = blkKind.model({ kind: "blk", disk, queues: 2 });
  assert.deepEqual(m.queueSizes, [BLK_QUEUE_SIZE, BLK_QUEUE_SIZE]);
  const segMax = new DataView(m.config.buffer).getUint32(BLK_CFG_SEG_MAX, true);
  assert.equal(segMax, BLK_QUEUE_SIZE - 2);
  assert.ok(segMax >= (1280 * 1024) / 4096, `seg_max ${segMax} splits a 1280 KiB request of scattered pages`);
});

test("blkQueues(): one queue per vCPU up to the default, queues=N up to the vCPUs", () => {
  const d = (queues?: number) => ({ path: "d.img", queues });
  assert.equal(blkQueues(d(), 1), 1);
  assert.equal(blkQueues(d(), 2), 2);
  assert.equal(blkQueues(d(), 64), BLK_DEFAULT_QUEUES);
  assert.equal(blkQueues(d(1), 8), 1);
  assert.equal(blkQueues(d(8), 8), 8);
  assert.equal(blkQueues(d(8), 2), 2, "a queue no vCPU submits on would only cost a Worker");
  for (const bad of [0, -1, 1.5, NaN]) assert.equal(blkQueues(d(), bad), 1, `cpus ${bad}: the VM refuses it later, with its own message`);
  // A DriveSpec object does not pass through parseDriveSpec: the same limits, the same one line.
  for (const bad of [0, 17, 2.5, NaN]) {
    assert.throws(() => blkQueues(d(bad), 4), (e: Error) =>
      e instanceof ConfigError && e.message === "--drive d.img: queues takes a whole number from 1 to 16 (queues=N)");
  }
});

test("blkConfig() leaves discard and write-zeroes fields zero on a read-only disk", () => {
  const cfg = blkConfig({ sizeBytes: 64 * SECTOR, readOnly: true }, 16);
  const v = new DataView(cfg.buffer);
  assert.equal(v.getBigUint64(0, true), 64n);
  assert.equal(v.getUint32(12, true), 14);
  assert.deepEqual(cfg.subarray(36), new Uint8Array(BLK_CONFIG_SIZE - 36));
  assert.throws(() => blkConfig({ sizeBytes: 512, readOnly: true }, 2), RangeError);
});

// ---- reads and writes ----

test("BlkQueue reads sectors into several guest buffers, byte for byte as the file has them", () => {
  withRig({}, ({ mem, serve, file }) => {
    const used = serve([header(mem, VIRTIO_BLK_T_IN, 3n), { gpa: DATA, len: 1024, write: true }, { gpa: DATA + 0x8000, len: 1536, write: true }, status]);
    assert.equal(used, 2561, "data and status");
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    const f = file();
    assert.deepEqual(mem.slice(DATA, 1024), f.subarray(3 * SECTOR, 5 * SECTOR));
    assert.deepEqual(mem.slice(DATA + 0x8000, 1536), f.subarray(5 * SECTOR, 8 * SECTOR));
  });
});

test("BlkQueue writes guest buffers of uneven sizes to the file and nothing else", () => {
  withRig({}, ({ mem, serve, file }) => {
    const data = new Uint8Array(3 * SECTOR).map((_, i) => (i * 3) ^ 0x5a);
    mem.write(DATA, data.subarray(0, 100));
    mem.write(DATA + 0x1000, data.subarray(100, 1100));
    mem.write(DATA + 0x3000, data.subarray(1100));
    const before = file();
    const used = serve([
      header(mem, VIRTIO_BLK_T_OUT, 10n),
      { gpa: DATA, len: 100 },
      { gpa: DATA + 0x1000, len: 1000 },
      { gpa: DATA + 0x3000, len: 436 },
      status,
    ]);
    assert.equal(used, 1, "a write hands back only the status byte");
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    assert.deepEqual(file(), patched(before, 10, data));
  });
});

test("BlkQueue serves requests through an indirect table", () => {
  withRig({}, ({ mem, serveIndirect, file }) => {
    const data = new Uint8Array(SECTOR).fill(0xa7);
    mem.write(DATA, data);
    assert.equal(serveIndirect([header(mem, VIRTIO_BLK_T_OUT, 63n), { gpa: DATA, len: SECTOR }, status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    assert.deepEqual(file().subarray(63 * SECTOR), data);

    assert.equal(serveIndirect([header(mem, VIRTIO_BLK_T_IN, 62n), { gpa: DATA + 0x1000, len: 2 * SECTOR, write: true }, status]), 1025);
    assert.deepEqual(mem.slice(DATA + 0x1000, 2 * SECTOR), file().subarray(62 * SECTOR));
  });
});

test("BlkQueue takes the header with the data and the status with the data (free framing, §2.7.4)", () => {
  withRig({}, ({ mem, serve, file }) => {
    const before = file();
    const data = new Uint8Array(SECTOR).fill(0x3c);
    mem.write(HDR + 16, data);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_OUT, 1n, SECTOR), status]), 1);
    assert.deepEqual(file(), patched(before, 1, data));

    assert.equal(serve([header(mem, VIRTIO_BLK_T_IN, 1n), { gpa: DATA, len: SECTOR + 1, write: true }]), SECTOR + 1);
    assert.equal(mem.readU8(DATA + SECTOR), VIRTIO_BLK_S_OK, "status after the data, in the same buffer");
    assert.deepEqual(mem.slice(DATA, SECTOR), data);
  });
});

test("BlkQueue splits a chain of more than IOV_MAX buffers across preadv/pwritev calls", () => {
  const n = IOV_MAX + 76; // 1100 one-sector buffers
  withRig({ sectors: n, queueSize: 2048 }, ({ mem, serve, file }) => {
    // Buffer k sits at slot n-1-k: a batch applied out of order would show.
    const bufs = (write: boolean) => Array.from({ length: n }, (_, k) => ({ gpa: DATA + (n - 1 - k) * SECTOR, len: SECTOR, write }));
    assert.equal(serve([header(mem, VIRTIO_BLK_T_IN, 0n), ...bufs(true), status]), n * SECTOR + 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    for (const k of [0, IOV_MAX - 1, IOV_MAX, n - 1]) {
      assert.deepEqual(mem.slice(DATA + (n - 1 - k) * SECTOR, SECTOR), fresh(k, 1), `sector ${k}`);
    }

    // Write it back reversed in the file: sector k now holds what sector n-1-k held.
    for (let k = 0; k < n; k++) mem.write(DATA + k * SECTOR, fresh(k, 1));
    assert.equal(serve([header(mem, VIRTIO_BLK_T_OUT, 0n), ...bufs(false), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    const f = file();
    for (let k = 0; k < n; k++) assert.deepEqual(f.subarray(k * SECTOR, (k + 1) * SECTOR), fresh(n - 1 - k, 1), `sector ${k}`);
  });
});

test("BlkQueue answers a request past the end with IOERR and touches neither memory nor file", () => {
  withRig({}, ({ mem, serve, file }) => {
    mem.slice(DATA, 2 * SECTOR).fill(0xee);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_IN, 63n), { gpa: DATA, len: 2 * SECTOR, write: true }, status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR);
    assert.deepEqual(mem.slice(DATA, 2 * SECTOR), new Uint8Array(2 * SECTOR).fill(0xee));

    const before = file();
    assert.equal(serve([header(mem, VIRTIO_BLK_T_OUT, 64n), { gpa: DATA, len: SECTOR }, status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR);
    assert.deepEqual(file(), before);
  });
});

test("BlkQueue answers IOERR when the file shrank under it and the read meets its end", () => {
  withRig({}, ({ mem, serve, path }) => {
    truncateSync(path, 4 * SECTOR + 100); // the guest still thinks 64 sectors
    assert.equal(serve([header(mem, VIRTIO_BLK_T_IN, 2n), { gpa: DATA, len: 2 * SECTOR, write: true }, status]), 2 * SECTOR + 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK, "still inside the file");
    // preadv returns the 612 bytes left (a short read), then 0: the end of the file.
    assert.equal(serve([header(mem, VIRTIO_BLK_T_IN, 3n), { gpa: DATA, len: SECTOR, write: true }, { gpa: DATA + 0x1000, len: 2 * SECTOR, write: true }, status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR);
  });
});

test("BlkQueue on a read-only drive fails writes with IOERR and serves reads", () => {
  withRig({ readOnly: true }, ({ mem, serve, file }) => {
    const before = file();
    mem.slice(DATA, SECTOR).fill(1);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_OUT, 0n), { gpa: DATA, len: SECTOR }, status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_DISCARD, 0n), ranges(mem, [[0, 8, 0]]), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR);
    assert.deepEqual(file(), before);

    assert.equal(serve([header(mem, VIRTIO_BLK_T_IN, 0n), { gpa: DATA, len: SECTOR, write: true }, status]), SECTOR + 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    assert.deepEqual(mem.slice(DATA, SECTOR), before.subarray(0, SECTOR));
    assert.equal(serve([header(mem, VIRTIO_BLK_T_FLUSH, 0n), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK, "nothing to flush");
  });
});

test("BlkQueue turns a host I/O error into IOERR, never an exception", () => {
  withRig({}, ({ mem, dq, vq, path }) => {
    // A drive that claims to be writable over an fd the kernel will not write.
    const fd = open(path, O_RDONLY);
    try {
      const blk = new BlkQueue(mem, { fd, sizeBytes: 64 * SECTOR, readOnly: false, id: "x" });
      const serve = (bufs: DriverBuffer[]) => (dq.add(bufs), blk.serve(vq.pop()!));
      assert.equal(serve([header(mem, VIRTIO_BLK_T_OUT, 0n), { gpa: DATA + 0x1000, len: SECTOR }, status]), 1);
      assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR, "pwritev: EBADF");
      assert.equal(serve([header(mem, VIRTIO_BLK_T_DISCARD, 0n), ranges(mem, [[0, 8, 0]]), status]), 1);
      assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR, "fallocate: EBADF");
      assert.equal(serve([header(mem, VIRTIO_BLK_T_WRITE_ZEROES, 0n), ranges(mem, [[0, 8, 0]]), status]), 1);
      assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR);
    } finally {
      close(fd);
    }
  });
});

// ---- flush, get-id ----

test("BlkQueue answers a flush with OK once fdatasync returned", () => {
  withRig({}, ({ mem, serve, blk }) => {
    mem.writeU8(STATUS, 0xee);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_FLUSH, 0n), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    blk.flush(); // the queue stopping
  });
});

test("BlkQueue.flush() throws SysError when the disk cannot sync", () => {
  const mem = hostGuestMemory();
  assert.throws(() => new BlkQueue(mem, { fd: -1, sizeBytes: SECTOR, readOnly: false, id: "gone" }).flush(), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.message, "fdatasync of drive gone: EBADF (bad file descriptor)");
    return true;
  });
  new BlkQueue(mem, { fd: -1, sizeBytes: SECTOR, readOnly: true, id: "ro" }).flush(); // read-only: nothing to sync
});

test("BlkQueue answers get-ID with the id NUL-padded to 20 bytes, cut to the buffer", () => {
  withRig({ id: "boot-disk" }, ({ mem, serve }) => {
    const want = new Uint8Array(20);
    want.set(new TextEncoder().encode("boot-disk"));
    mem.slice(DATA, 32).fill(0xee);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_GET_ID, 0n), { gpa: DATA, len: 32, write: true }, status]), 21);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    assert.deepEqual(mem.slice(DATA, 20), want);
    assert.deepEqual(mem.slice(DATA + 20, 12), new Uint8Array(12).fill(0xee), "nothing past 20 bytes");

    assert.equal(serve([header(mem, VIRTIO_BLK_T_GET_ID, 0n), { gpa: DATA + 0x100, len: 4, write: true }, { gpa: DATA + 0x200, len: 4, write: true }, status]), 9);
    assert.deepEqual([...mem.slice(DATA + 0x100, 4), ...mem.slice(DATA + 0x200, 4)], [...want.subarray(0, 8)]);
  });
  withRig({ id: "exactly-twenty-bytes" }, ({ mem, serve }) => {
    assert.equal(serve([header(mem, VIRTIO_BLK_T_GET_ID, 0n), { gpa: DATA, len: 20, write: true }, status]), 21);
    assert.equal(new TextDecoder().decode(mem.slice(DATA, 20)), "exactly-twenty-bytes", "20 bytes: no NUL");
  });
});

// ---- discard and write-zeroes ----

test("BlkQueue discards by punching holes: the ranges read as zeroes, the size stays", () => {
  withRig({}, ({ mem, serve, file, path }) => {
    const before = file();
    assert.equal(serve([header(mem, VIRTIO_BLK_T_DISCARD, 0n), ranges(mem, [[8, 8, 0], [32, 16, 0]]), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    const want = patched(patched(before, 8, new Uint8Array(8 * SECTOR)), 32, new Uint8Array(16 * SECTOR));
    assert.deepEqual(file(), want);
    assert.equal(statSync(path).size, 64 * SECTOR);
  });
});

test("BlkQueue writes zeroes, with and without unmap, without growing the file", () => {
  withRig({}, ({ mem, serve, file, path }) => {
    const before = file();
    assert.equal(serve([header(mem, VIRTIO_BLK_T_WRITE_ZEROES, 0n), ranges(mem, [[1, 3, 0]]), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_WRITE_ZEROES, 0n), ranges(mem, [[16, 8, 1 /* UNMAP */], [60, 4, 0]]), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    let want = patched(before, 1, new Uint8Array(3 * SECTOR));
    want = patched(want, 16, new Uint8Array(8 * SECTOR));
    want = patched(want, 60, new Uint8Array(4 * SECTOR));
    assert.deepEqual(file(), want);
    assert.equal(statSync(path).size, 64 * SECTOR);
  });
});

test("BlkQueue writes zeroes by hand where the filesystem has no ZERO_RANGE (tmpfs)", { skip: !existsSync("/dev/shm") && "no /dev/shm" }, () => {
  const sectors = 3 * 2048; // 3 MiB: more than one 1 MiB chunk of zeroes
  withRig({ sectors, dir: "/dev/shm" }, ({ mem, serve, file, disk }) => {
    // Show the fallback is what runs here: tmpfs refuses ZERO_RANGE.
    const rc = Number(libc.fallocate(disk.fd, 0x10 | 0x01, 0n, BigInt(SECTOR)));
    if (rc === 0) return; // this /dev/shm zeroes ranges itself: the fallback cannot be observed
    const before = file();
    assert.equal(serve([header(mem, VIRTIO_BLK_T_WRITE_ZEROES, 0n), ranges(mem, [[100, 5000, 0]]), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    assert.deepEqual(file(), patched(before, 100, new Uint8Array(5000 * SECTOR)));
  });
});

test("BlkQueue fails ranges longer than the config's maximum with IOERR", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-blk-big-"));
  try {
    // A sparse 2 GiB image, to hold a range one sector over the 1 GiB limit.
    const path = join(dir, "big.img");
    closeSync(openSync(path, "w"));
    truncateSync(path, 2 ** 31);
    const disk = openDisk({ path, readOnly: false });
    try {
      const mem = hostGuestMemory();
      const dq = new DriverQueue(mem, DriverQueue.layout(QUEUE, 16));
      const vq = new Virtqueue(mem, dq.config(false));
      const blk = new BlkQueue(mem, disk);
      for (const type of [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]) {
        dq.add([header(mem, type, 0n), ranges(mem, [[0, 8, 0], [8, BLK_MAX_DISCARD_SECTORS + 1, 0]]), status]);
        assert.equal(blk.serve(vq.pop()!), 1);
        assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR);
      }
      assert.equal(statSync(path).blocks, 0, "no range was touched, not even the first");
    } finally {
      closeDisk(disk);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("BlkQueue takes as many ranges per request as the config advertises, and no more", () => {
  withRig({}, ({ mem, serve }) => {
    const many = (n: number) => Array.from({ length: n }, (_, i): [number, number, number] => [i * 4, 1, 0]);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_DISCARD, 0n), ranges(mem, many(16)), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_OK);
    assert.equal(serve([header(mem, VIRTIO_BLK_T_DISCARD, 0n), ranges(mem, many(17)), status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_IOERR);
  });
});

// ---- what the guest gets wrong ----

test("BlkQueue answers an unknown request type with UNSUPP", () => {
  withRig({}, ({ mem, serve }) => {
    assert.equal(serve([header(mem, 10 /* GET_LIFETIME */, 0n), { gpa: DATA, len: 16, write: true }, status]), 1);
    assert.equal(mem.readU8(STATUS), VIRTIO_BLK_S_UNSUPP);
  });
});

test("BlkQueue lets the GuestError of a chain it cannot answer through, writing nothing", () => {
  withRig({}, ({ mem, serve }) => {
    mem.writeU8(STATUS, 0xee);
    assert.throws(() => serve([{ ...header(mem, VIRTIO_BLK_T_IN, 0n), len: 12 }, status]), (e: unknown) => {
      assert.ok(e instanceof GuestError);
      assert.equal(e.kind, "HeaderTooShort");
      return true;
    });
    assert.equal(mem.readU8(STATUS), 0xee);
  });
});

test("BlkQueue refuses guest memory that is not a host mapping", () => {
  assert.throws(
    () => new BlkQueue(new GuestMemory(new Uint8Array(4096)), { fd: 0, sizeBytes: SECTOR, readOnly: true, id: "x" }),
    /needs guest memory backed by a host mapping/,
  );
});
