/**
 * Parse one virtio-blk request out of a checked chain (virtio 1.2 §5.2.6).
 *
 * Parse, then act (STYLE rule 4): `parseBlkRequest` reads the header and
 * works out where the data and the status byte are, and decides whether the
 * request may run at all. It does no I/O. Two kinds of failure:
 *
 * - The chain has no room for the 16-byte header or the status byte, or data
 *   in the wrong direction: the device cannot answer, so this throws
 *   `GuestError` and the device sets DEVICE_NEEDS_RESET (Firecracker's
 *   `Request::parse` errors, `DescriptorChainTooShort`…).
 * - The request is well formed but must fail (past the end of the disk, a
 *   write to a read-only disk, unknown type or flags): the request comes
 *   back with `status` set to IOERR or UNSUPP, for the device to write into
 *   the status byte without touching the disk.
 *
 * The spec leaves framing free (virtio 1.2 §2.7.4.1), so fields are located
 * by byte offset across the chain, never by descriptor.
 *
 * @example
 * ```ts
 * const req = parseBlkRequest(chain, mem, capacitySectors, false);
 * if (req.status !== null) { mem.writeU8(req.statusGpa, req.status); vq.pushUsed(chain.head, 1); }
 * ```
 */

import type { GuestMemory } from "../../vm/memory.ts";
import { type Chain, GuestError, Reader, type Segment, subSegments } from "../virtio/ring.ts";

// virtio 1.2 §5.2.6: request types.
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

// virtio 1.2 §5.2.6: status byte values.
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** struct virtio_blk_req header: le32 type, le32 reserved, le64 sector. */
export const BLK_HEADER_SIZE = 16;
/** struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags. */
export const BLK_DWZ_SEGMENT_SIZE = 16;
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
export const SECTOR_SIZE = 512;
/** GET_ID answers with at most 20 bytes (virtio 1.2 §5.2.6). */
export const VIRTIO_BLK_ID_BYTES = 20;

export type BlkRequestType = "in" | "out" | "flush" | "getId" | "discard" | "writeZeroes" | "unsupported";

/** Malformed requests the device cannot even answer. */
export type BlkErrorKind = "HeaderTooShort" | "StatusNotWritable" | "UnexpectedReadable" | "UnexpectedWritable";

/** One range of a discard or write-zeroes request. */
export interface BlkRange {
  sector: bigint;
  numSectors: number;
  /** write-zeroes only: the device may deallocate instead of writing zeroes. */
  unmap: boolean;
}

export interface BlkRequest {
  type: BlkRequestType;
  /** The raw `type` field, for logging unsupported requests. */
  rawType: number;
  /** First sector of an in/out request; 0n for the others. */
  sector: bigint;
  /** Guest buffers of the data: device-readable for out, device-writable (status byte excluded) for in and getId. */
  data: Segment[];
  dataLength: number;
  /** Discard / write-zeroes ranges, checked against the disk. */
  ranges: BlkRange[];
  /** Guest address of the status byte: the last writable byte of the chain. */
  statusGpa: number;
  /** Non-null: write this status and skip the I/O. Null: perform the request, then write OK or IOERR. */
  status: number | null;
}

/** Limits the device advertised in its config space (virtio 1.2 §5.2.4). */
export interface BlkLimits {
  /** max_discard_seg; default 1. */
  maxDiscardSeg?: number;
  /** max_write_zeroes_seg; default 1. */
  maxWriteZeroesSeg?: number;
}

const TYPES: Record<number, BlkRequestType> = {
  [VIRTIO_BLK_T_IN]: "in",
  [VIRTIO_BLK_T_OUT]: "out",
  [VIRTIO_BLK_T_FLUSH]: "flush",
  [VIRTIO_BLK_T_GET_ID]: "getId",
  [VIRTIO_BLK_T_DISCARD]: "discard",
  [VIRTIO_BLK_T_WRITE_ZEROES]: "writeZeroes",
};

/**
 * Where the data of each type travels. `any` is for unsupported types: their
 * layout is unknown, so only the header and status byte are required.
 */
const DIRECTION: Record<BlkRequestType, "none" | "toDevice" | "fromDevice" | "any"> = {
  in: "fromDevice",
  out: "toDevice",
  flush: "none",
  getId: "fromDevice",
  discard: "toDevice",
  writeZeroes: "toDevice",
  unsupported: "any",
};

/** Parse a virtio-blk request; throws GuestError<BlkErrorKind> when it cannot be answered. */
export function parseBlkRequest(
  chain: Chain,
  mem: GuestMemory,
  capacitySectors: bigint | number,
  readOnly: boolean,
  limits: BlkLimits = {},
): BlkRequest {
  if (chain.readableLength < BLK_HEADER_SIZE) {
    throw new GuestError<BlkErrorKind>("HeaderTooShort", `Block request has ${chain.readableLength} readable bytes, header needs 16`);
  }
  if (chain.writableLength < 1) {
    throw new GuestError<BlkErrorKind>("StatusNotWritable", "Block request has no writable status byte");
  }
  const capacity = BigInt(capacitySectors);
  // struct virtio_blk_outhdr: le32 type, le32 reserved (legacy ioprio), le64 sector.
  // Drivers put it in one buffer of its own (Linux does): read it in place;
  // only a header split across buffers needs the Reader's byte stream.
  let r: Reader | null = null;
  let rawType: number, headerSector: bigint;
  const first = chain.readable[0];
  if (first.len >= BLK_HEADER_SIZE) {
    rawType = mem.readU32(first.gpa);
    headerSector = mem.readU64(first.gpa + 8);
  } else {
    r = new Reader(mem, chain.readable);
    rawType = r.readU32();
    r.skip(4);
    headerSector = r.readU64();
  }
  const type = TYPES[rawType] ?? "unsupported";

  const last = chain.writable[chain.writable.length - 1];
  const statusGpa = last.gpa + last.len - 1;
  const inLength = chain.writableLength - 1;
  const outLength = chain.readableLength - BLK_HEADER_SIZE;
  const dir = DIRECTION[type];
  if (outLength > 0 && dir !== "toDevice" && dir !== "any") {
    throw new GuestError<BlkErrorKind>("UnexpectedReadable", `Block ${type} request carries ${outLength} readable data bytes`);
  }
  if (inLength > 0 && dir !== "fromDevice" && dir !== "any") {
    throw new GuestError<BlkErrorKind>("UnexpectedWritable", `Block ${type} request has ${inLength} writable bytes before its status`);
  }

  const req: BlkRequest = { type, rawType, sector: 0n, data: [], dataLength: 0, ranges: [], statusGpa, status: null };
  if (dir === "toDevice") {
    req.data = subSegments(chain.readable, BLK_HEADER_SIZE, outLength);
    req.dataLength = outLength;
  } else if (dir === "fromDevice") {
    req.data = subSegments(chain.writable, 0, inLength);
    req.dataLength = inLength;
  }

  switch (type) {
    case "in":
    case "out":
      req.sector = headerSector;
      // §5.2.6: data is whole sectors; §5.2.6.2: a write to a read-only disk fails.
      if (req.dataLength % SECTOR_SIZE !== 0) req.status = VIRTIO_BLK_S_IOERR;
      else if (type === "out" && readOnly) req.status = VIRTIO_BLK_S_IOERR;
      else if (headerSector + BigInt(req.dataLength / SECTOR_SIZE) > capacity) req.status = VIRTIO_BLK_S_IOERR;
      break;
    case "discard":
    case "writeZeroes":
      if (!r) {
        r = new Reader(mem, chain.readable);
        r.skip(BLK_HEADER_SIZE);
      }
      req.status = parseRanges(req, r, capacity, readOnly, limits);
      break;
    case "unsupported":
      req.status = VIRTIO_BLK_S_UNSUPP;
      break;
    // flush and getId always run; getId writes min(dataLength, 20) bytes.
  }
  return req;
}

/** Read and check discard / write-zeroes segments; returns the status to fail with, or null. */
function parseRanges(req: BlkRequest, r: Reader, capacity: bigint, readOnly: boolean, limits: BlkLimits): number | null {
  const max = req.type === "discard" ? limits.maxDiscardSeg ?? 1 : limits.maxWriteZeroesSeg ?? 1;
  const n = req.dataLength / BLK_DWZ_SEGMENT_SIZE;
  if (req.dataLength === 0 || !Number.isInteger(n) || n > max) return VIRTIO_BLK_S_IOERR;
  let unsupported = false;
  let outOfRange = false;
  for (let i = 0; i < n; i++) {
    const sector = r.readU64();
    const numSectors = r.readU32();
    const flags = r.readU32();
    // §5.2.6.2: unknown flags, or unmap on a discard, are UNSUPP.
    if (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) unsupported = true;
    if (req.type === "discard" && flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) unsupported = true;
    if (sector + BigInt(numSectors) > capacity) outOfRange = true;
    req.ranges.push({ sector, numSectors, unmap: (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0 });
  }
  if (unsupported) return VIRTIO_BLK_S_UNSUPP;
  if (readOnly || outOfRange) return VIRTIO_BLK_S_IOERR;
  return null;
}
