import { test } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../vm/memory.ts";
import { GuestError, Virtqueue } from "../virtio/ring.ts";
import { type DriverBuffer, DriverQueue } from "../../test/support/driver_queue.ts";
import {
  parseBlkRequest,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "./request.ts";

const HDR = 0x8000; // request header
const DATA = 0x9000; // data buffers
const STATUS = 0xc000; // status byte
const CAPACITY = 64n; // sectors: a 32 KiB disk

function setup() {
  const mem = new GuestMemory(new Uint8Array(0x10000));
  const dq = new DriverQueue(mem, DriverQueue.layout(0x1000, 16));
  const vq = new Virtqueue(mem, dq.config(false));
  return { mem, dq, vq };
}

/** struct virtio_blk_req header at `gpa`: type, reserved, sector. */
function header(mem: GuestMemory, type: number, sector: bigint, gpa = HDR): DriverBuffer {
  mem.writeU32(gpa, type);
  mem.writeU32(gpa + 4, 0);
  mem.writeU64(gpa + 8, sector);
  return { gpa, len: 16 };
}

/** struct virtio_blk_discard_write_zeroes segments at DATA. */
function ranges(mem: GuestMemory, segs: [bigint, number, number][]): DriverBuffer {
  segs.forEach(([sector, n, flags], i) => {
    mem.writeU64(DATA + 16 * i, sector);
    mem.writeU32(DATA + 16 * i + 8, n);
    mem.writeU32(DATA + 16 * i + 12, flags);
  });
  return { gpa: DATA, len: 16 * segs.length };
}

const status: DriverBuffer = { gpa: STATUS, len: 1, write: true };

/** Build with access to the memory: each entry is a buffer or a function of the memory. */
type Part = DriverBuffer | ((mem: GuestMemory) => DriverBuffer);
function request(parts: Part[], readOnly = false, limits = {}) {
  const { mem, dq, vq } = setup();
  dq.add(parts.map((p) => (typeof p === "function" ? p(mem) : p)));
  return parseBlkRequest(vq.pop()!, mem, CAPACITY, readOnly, limits);
}

function throwsKind(fn: () => unknown, kind: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GuestError, `expected a GuestError, got ${e}`);
    assert.equal(e.kind, kind);
    return true;
  });
}

test("parseBlkRequest() parses a read into the writable buffers before the status byte", () => {
  const req = request([(m) => header(m, VIRTIO_BLK_T_IN, 8n), { gpa: DATA, len: 1024, write: true }, status]);
  assert.equal(req.type, "in");
  assert.equal(req.sector, 8n);
  assert.deepEqual(req.data, [{ gpa: DATA, len: 1024 }]);
  assert.equal(req.dataLength, 1024);
  assert.equal(req.statusGpa, STATUS);
  assert.equal(req.status, null);
});

test("parseBlkRequest() finds the status byte at the end of a data buffer", () => {
  // §2.7.4: framing is free; the status may share the last descriptor with data.
  const req = request([(m) => header(m, VIRTIO_BLK_T_IN, 0n), { gpa: DATA, len: 513, write: true }]);
  assert.deepEqual(req.data, [{ gpa: DATA, len: 512 }]);
  assert.equal(req.statusGpa, DATA + 512);
  assert.equal(req.status, null);
});

test("parseBlkRequest() parses a write whose data shares the header's buffer", () => {
  const req = request([(m) => ({ ...header(m, VIRTIO_BLK_T_OUT, 63n), len: 16 + 512 }), status]);
  assert.equal(req.type, "out");
  assert.deepEqual(req.data, [{ gpa: HDR + 16, len: 512 }]);
  assert.equal(req.status, null);
});

test("parseBlkRequest() parses a flush and a get-ID", () => {
  assert.equal(request([(m) => header(m, VIRTIO_BLK_T_FLUSH, 0n), status]).type, "flush");
  const id = request([(m) => header(m, VIRTIO_BLK_T_GET_ID, 0n), { gpa: DATA, len: 20, write: true }, status]);
  assert.equal(id.type, "getId");
  assert.equal(id.dataLength, 20);
  assert.equal(id.status, null);
});

test("parseBlkRequest() marks a read past the end of the disk as IOERR, not an exception", () => {
  const at = (sector: bigint, len: number) => request([(m) => header(m, VIRTIO_BLK_T_IN, sector), { gpa: DATA, len, write: true }, status]);
  assert.equal(at(62n, 1024).status, null); // ends exactly at the end
  assert.equal(at(63n, 1024).status, VIRTIO_BLK_S_IOERR);
  assert.equal(at(64n, 0).status, null); // empty read at the end
  assert.equal(at(0xffff_ffff_ffff_ffffn, 512).status, VIRTIO_BLK_S_IOERR); // no u64 wrap-around
});

test("parseBlkRequest() marks data that is not whole sectors as IOERR", () => {
  const req = request([(m) => header(m, VIRTIO_BLK_T_OUT, 0n), { gpa: DATA, len: 100 }, status]);
  assert.equal(req.status, VIRTIO_BLK_S_IOERR);
});

test("parseBlkRequest() marks a write to a read-only disk as IOERR but lets reads through", () => {
  const w = request([(m) => header(m, VIRTIO_BLK_T_OUT, 0n), { gpa: DATA, len: 512 }, status], true);
  assert.equal(w.status, VIRTIO_BLK_S_IOERR);
  const r = request([(m) => header(m, VIRTIO_BLK_T_IN, 0n), { gpa: DATA, len: 512, write: true }, status], true);
  assert.equal(r.status, null);
});

test("parseBlkRequest() answers an unknown type with UNSUPP", () => {
  const req = request([(m) => header(m, 10 /* GET_LIFETIME */, 0n), { gpa: DATA, len: 8, write: true }, status]);
  assert.equal(req.type, "unsupported");
  assert.equal(req.rawType, 10);
  assert.equal(req.status, VIRTIO_BLK_S_UNSUPP);
});

test("parseBlkRequest() reads discard and write-zeroes ranges", () => {
  const d = request([(m) => header(m, VIRTIO_BLK_T_DISCARD, 0n), (m) => ranges(m, [[4n, 8, 0]]), status]);
  assert.equal(d.type, "discard");
  assert.deepEqual(d.ranges, [{ sector: 4n, numSectors: 8, unmap: false }]);
  assert.equal(d.status, null);
  const z = request([(m) => header(m, VIRTIO_BLK_T_WRITE_ZEROES, 0n), (m) => ranges(m, [[0n, 64, 1]]), status]);
  assert.deepEqual(z.ranges, [{ sector: 0n, numSectors: 64, unmap: true }]);
  assert.equal(z.status, null);
});

test("parseBlkRequest() reads a range that straddles two buffers", () => {
  const req = request([
    (m) => {
      header(m, VIRTIO_BLK_T_DISCARD, 0n);
      ranges(m, [[5n, 3, 0]]);
      m.write(HDR + 16, m.slice(DATA, 6)); // first 6 bytes of the range right after the header
      return { gpa: HDR, len: 22 };
    },
    { gpa: DATA + 6, len: 10 },
    status,
  ]);
  assert.deepEqual(req.ranges, [{ sector: 5n, numSectors: 3, unmap: false }]);
});

test("parseBlkRequest() answers bad discard flags with UNSUPP (§5.2.6.2)", () => {
  const unmap = request([(m) => header(m, VIRTIO_BLK_T_DISCARD, 0n), (m) => ranges(m, [[0n, 1, 1]]), status]);
  assert.equal(unmap.status, VIRTIO_BLK_S_UNSUPP);
  const unknown = request([(m) => header(m, VIRTIO_BLK_T_WRITE_ZEROES, 0n), (m) => ranges(m, [[0n, 1, 2]]), status]);
  assert.equal(unknown.status, VIRTIO_BLK_S_UNSUPP);
});

test("parseBlkRequest() marks bad discard ranges as IOERR", () => {
  const past = request([(m) => header(m, VIRTIO_BLK_T_DISCARD, 0n), (m) => ranges(m, [[60n, 5, 0]]), status]);
  assert.equal(past.status, VIRTIO_BLK_S_IOERR);
  const two = [(m: GuestMemory) => header(m, VIRTIO_BLK_T_DISCARD, 0n), (m: GuestMemory) => ranges(m, [[0n, 1, 0], [8n, 1, 0]]), status];
  assert.equal(request(two).status, VIRTIO_BLK_S_IOERR); // max_discard_seg defaults to 1
  assert.equal(request(two, false, { maxDiscardSeg: 2 }).status, null);
  const ragged = request([(m) => header(m, VIRTIO_BLK_T_DISCARD, 0n), { gpa: DATA, len: 20 }, status]);
  assert.equal(ragged.status, VIRTIO_BLK_S_IOERR);
  const empty = request([(m) => header(m, VIRTIO_BLK_T_WRITE_ZEROES, 0n), status]);
  assert.equal(empty.status, VIRTIO_BLK_S_IOERR);
  const ro = request([(m) => header(m, VIRTIO_BLK_T_WRITE_ZEROES, 0n), (m) => ranges(m, [[0n, 1, 0]]), status], true);
  assert.equal(ro.status, VIRTIO_BLK_S_IOERR);
});

test("parseBlkRequest() rejects a header shorter than 16 bytes", () => {
  throwsKind(() => request([(m) => ({ ...header(m, VIRTIO_BLK_T_IN, 0n), len: 15 }), status]), "HeaderTooShort");
});

test("parseBlkRequest() rejects a read-only status", () => {
  throwsKind(() => request([(m) => header(m, VIRTIO_BLK_T_FLUSH, 0n), { ...status, write: false }]), "StatusNotWritable");
});

test("parseBlkRequest() rejects data that flows the wrong way", () => {
  throwsKind(() => request([(m) => header(m, VIRTIO_BLK_T_OUT, 0n), { gpa: DATA, len: 512, write: true }, status]), "UnexpectedWritable");
  throwsKind(() => request([(m) => header(m, VIRTIO_BLK_T_IN, 0n), { gpa: DATA, len: 512 }, status]), "UnexpectedReadable");
  throwsKind(() => request([(m) => header(m, VIRTIO_BLK_T_FLUSH, 0n), { gpa: DATA, len: 512 }, status]), "UnexpectedReadable");
  throwsKind(() => request([(m) => header(m, VIRTIO_BLK_T_DISCARD, 0n), (m) => ranges(m, [[0n, 1, 0]]), { gpa: DATA + 0x100, len: 4, write: true }, status]), "UnexpectedWritable");
});
