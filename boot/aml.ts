/**
 * A small AML encoder: just enough ACPI Machine Language for vmm's DSDT.
 *
 * AML is the bytecode of ACPI definition blocks (ACPI 6.4 §20). vmm writes
 * its DSDT directly as bytes, the way Firecracker's and cloud-hypervisor's
 * `acpi_tables::aml` do, instead of compiling ASL with iasl at build time.
 * Every helper returns the encoded bytes of one term, so terms nest by
 * plain function calls:
 *
 * ```ts
 * device("VR00", [name("_HID", string("LNRO0005")), name("_UID", integer(0))]);
 * ```
 *
 * Resource descriptors (ACPI 6.4 §6.4) live here too: a `_CRS` object is an
 * AML Buffer holding them, built by `resourceTemplate()`.
 */

/** AML opcodes and prefixes used here (ACPI 6.4 §20.2.5, §20.3 opcode table). */
export const AML = {
  ZERO_OP: 0x00,
  ONE_OP: 0x01,
  NAME_OP: 0x08,
  BYTE_PREFIX: 0x0a,
  WORD_PREFIX: 0x0b,
  DWORD_PREFIX: 0x0c,
  STRING_PREFIX: 0x0d,
  QWORD_PREFIX: 0x0e,
  SCOPE_OP: 0x10,
  BUFFER_OP: 0x11,
  PACKAGE_OP: 0x12,
  METHOD_OP: 0x14,
  DUAL_NAME_PREFIX: 0x2e,
  MULTI_NAME_PREFIX: 0x2f,
  EXT_OP_PREFIX: 0x5b,
  ROOT_CHAR: 0x5c,
  PARENT_PREFIX_CHAR: 0x5e,
  NULL_NAME: 0x00,
  /** Second byte after EXT_OP_PREFIX. */
  DEVICE_OP: 0x82,
  RETURN_OP: 0xa4,
} as const;

/** Concatenate byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Names (§20.2.2)
// ---------------------------------------------------------------------------

const LEAD_NAME_CHAR = /^[A-Z_]$/;
const NAME_CHAR = /^[A-Z0-9_]$/;

/**
 * A NameSeg: exactly four characters, the first `A-Z` or `_`, the rest
 * `A-Z 0-9 _` (§20.2.2). Shorter names are padded with `_`, as ASL does
 * (`_SB` is the NameSeg `_SB_`).
 */
export function nameSeg(seg: string): Uint8Array {
  if (seg.length < 1 || seg.length > 4) throw new RangeError(`AML name segment "${seg}" must have 1 to 4 characters`);
  const s = seg.padEnd(4, "_");
  if (!LEAD_NAME_CHAR.test(s[0]) || ![...s.slice(1)].every((c) => NAME_CHAR.test(c))) {
    throw new RangeError(`AML name segment "${seg}" has a character outside A-Z, 0-9 and _`);
  }
  return new Uint8Array([...s].map((c) => c.charCodeAt(0)));
}

/**
 * A NameString (§20.2.2): an optional root `\` or parent `^` prefixes, then
 * dot-separated segments, e.g. `\_SB_.VR00`, `_HID`, `^COM1`. One segment is
 * written bare, two after DualNamePrefix, more after MultiNamePrefix and a
 * count; no segment at all is the NullName.
 */
export function nameString(path: string): Uint8Array {
  const prefix: number[] = [];
  let i = 0;
  if (path[0] === "\\") {
    prefix.push(AML.ROOT_CHAR);
    i = 1;
  } else {
    while (path[i] === "^") {
      prefix.push(AML.PARENT_PREFIX_CHAR);
      i++;
    }
  }
  const rest = path.slice(i);
  const segs = rest === "" ? [] : rest.split(".").map(nameSeg);
  if (segs.length > 255) throw new RangeError(`AML name "${path}" has more than 255 segments`);
  let head: number[];
  if (segs.length === 0) head = [AML.NULL_NAME];
  else if (segs.length === 1) head = [];
  else if (segs.length === 2) head = [AML.DUAL_NAME_PREFIX];
  else head = [AML.MULTI_NAME_PREFIX, segs.length];
  return concat(new Uint8Array(prefix), new Uint8Array(head), ...segs);
}

// ---------------------------------------------------------------------------
// Package length (§20.2.4)
// ---------------------------------------------------------------------------

/** Largest total length each PkgLength size can express (the total counts the PkgLength bytes too). */
export const PKG_LENGTH_MAX = [0x3f, 0xfff, 0xfffff, 0xfffffff] as const;

/**
 * The PkgLength that precedes `payloadLen` bytes (§20.2.4). The encoded
 * value counts the PkgLength bytes themselves, so the size is chosen first:
 * one byte holds totals up to 63 in bits 0–5; otherwise bits 7–6 of the lead
 * byte say how many bytes follow (1–3), bits 3–0 hold the low nibble and each
 * following byte the next 8 bits (bits 5–4 of the lead byte stay zero).
 */
export function pkgLength(payloadLen: number): Uint8Array {
  if (!Number.isSafeInteger(payloadLen) || payloadLen < 0) {
    throw new RangeError(`AML package length ${payloadLen} is not a size`);
  }
  for (let n = 1; n <= 4; n++) {
    const total = payloadLen + n;
    if (total > PKG_LENGTH_MAX[n - 1]) continue;
    if (n === 1) return new Uint8Array([total]);
    const out = new Uint8Array(n);
    out[0] = ((n - 1) << 6) | (total & 0x0f);
    for (let k = 1; k < n; k++) out[k] = (total >>> (4 + 8 * (k - 1))) & 0xff;
    return out;
  }
  throw new RangeError(`AML package of ${payloadLen} bytes is longer than a PkgLength can express`);
}

/** `op`, then PkgLength, then `body`: the shape of Scope, Device, Package, Buffer, Method. */
function withPkgLength(op: Uint8Array, body: Uint8Array): Uint8Array {
  return concat(op, pkgLength(body.length), body);
}

// ---------------------------------------------------------------------------
// Data objects (§20.2.3)
// ---------------------------------------------------------------------------

/**
 * An Integer in its smallest encoding (§20.2.3): ZeroOp, OneOp, or a
 * Byte/Word/DWord/QWord prefix followed by the little-endian value. OnesOp is
 * never used: its value depends on the definition block revision.
 */
export function integer(value: number | bigint): Uint8Array {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new RangeError(`AML integer ${value} is outside 0..2^64-1`);
  if (v === 0n) return new Uint8Array([AML.ZERO_OP]);
  if (v === 1n) return new Uint8Array([AML.ONE_OP]);
  let prefix: number, size: number;
  if (v <= 0xffn) [prefix, size] = [AML.BYTE_PREFIX, 1];
  else if (v <= 0xffffn) [prefix, size] = [AML.WORD_PREFIX, 2];
  else if (v <= 0xffff_ffffn) [prefix, size] = [AML.DWORD_PREFIX, 4];
  else [prefix, size] = [AML.QWORD_PREFIX, 8];
  const out = new Uint8Array(1 + size);
  out[0] = prefix;
  for (let k = 0; k < size; k++) out[1 + k] = Number((v >> BigInt(8 * k)) & 0xffn);
  return out;
}

/** A String (§20.2.3): StringPrefix, ASCII characters 0x01–0x7F, NUL. */
export function string(s: string): Uint8Array {
  const out = new Uint8Array(s.length + 2);
  out[0] = AML.STRING_PREFIX;
  for (let k = 0; k < s.length; k++) {
    const c = s.charCodeAt(k);
    if (c < 0x01 || c > 0x7f) throw new RangeError(`AML string "${s}" has a non-ASCII or NUL character`);
    out[1 + k] = c;
  }
  return out;
}

/**
 * The 32-bit compressed EISA id of `id`, e.g. "PNP0501" (the ASL EISAID()
 * macro, ACPI 6.4 §19.6):
 * three uppercase letters of 5 bits each (letter − 0x40), then four hex
 * digits, stored big-endian, so the integer read little-endian is
 * byte-swapped. "PNP0501" → 0x0105D041.
 */
export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) {
    throw new RangeError(`EISA id "${id}" must be 3 uppercase letters then 4 hex digits`);
  }
  const c = [0, 1, 2].map((k) => id.charCodeAt(k) - 0x40);
  const hex = parseInt(id.slice(3), 16);
  const b0 = (c[0] << 2) | (c[1] >> 3);
  const b1 = ((c[1] & 0x7) << 5) | c[2];
  const b2 = hex >>> 8;
  const b3 = hex & 0xff;
  return (b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)) >>> 0;
}

/** EISAID("PNP0501") as an AML Integer, the form `_HID` takes for PNP ids. */
export function eisaId(id: string): Uint8Array {
  return integer(eisaIdValue(id));
}

/** A Package (§20.2.5.4 DefPackage): PackageOp PkgLength NumElements elements. */
export function pkg(elements: Uint8Array[]): Uint8Array {
  if (elements.length > 255) throw new RangeError(`AML Package of ${elements.length} elements needs VarPackage`);
  return withPkgLength(new Uint8Array([AML.PACKAGE_OP]), concat(new Uint8Array([elements.length]), ...elements));
}

/** A Buffer (§20.2.5.4 DefBuffer): BufferOp PkgLength BufferSize bytes. */
export function buffer(bytes: Uint8Array): Uint8Array {
  return withPkgLength(new Uint8Array([AML.BUFFER_OP]), concat(integer(bytes.length), bytes));
}

// ---------------------------------------------------------------------------
// Named objects and namespace modifiers (§20.2.5)
// ---------------------------------------------------------------------------

/** Name(path, value) (§20.2.5.1 DefName): NameOp NameString DataRefObject. */
export function name(path: string, value: Uint8Array): Uint8Array {
  return concat(new Uint8Array([AML.NAME_OP]), nameString(path), value);
}

/** Scope(path) { terms } (§20.2.5.1 DefScope). */
export function scope(path: string, terms: Uint8Array[]): Uint8Array {
  return withPkgLength(new Uint8Array([AML.SCOPE_OP]), concat(nameString(path), ...terms));
}

/** Device(path) { terms } (§20.2.5.2 DefDevice): ExtOpPrefix DeviceOp PkgLength NameString TermList. */
export function device(path: string, terms: Uint8Array[]): Uint8Array {
  return withPkgLength(new Uint8Array([AML.EXT_OP_PREFIX, AML.DEVICE_OP]), concat(nameString(path), ...terms));
}

/**
 * Method(path, argCount, serialized) { terms } (§20.2.5.2 DefMethod).
 * MethodFlags: bits 0–2 ArgCount, bit 3 SerializeFlag, bits 4–7 SyncLevel (0).
 */
export function method(path: string, argCount: number, serialized: boolean, terms: Uint8Array[]): Uint8Array {
  if (!Number.isInteger(argCount) || argCount < 0 || argCount > 7) {
    throw new RangeError(`AML method argument count ${argCount} is outside 0..7`);
  }
  const flags = argCount | (serialized ? 0x08 : 0);
  return withPkgLength(new Uint8Array([AML.METHOD_OP]), concat(nameString(path), new Uint8Array([flags]), ...terms));
}

/** Return(value) (§20.2.5.3 DefReturn). */
export function returnOp(value: Uint8Array): Uint8Array {
  return concat(new Uint8Array([AML.RETURN_OP]), value);
}

// ---------------------------------------------------------------------------
// Resource descriptors (ACPI 6.4 §6.4), the bytes inside a _CRS buffer
// ---------------------------------------------------------------------------

/** I/O Port Descriptor, a small resource (§6.4.2.5). */
export const IO_PORT_DESC = {
  TAG: 0, // 0x47: small item 0x08, length 7
  INFO: 1, // bit 0: decodes all 16 address bits
  MIN: 2, // u16 range minimum base
  MAX: 4, // u16 range maximum base
  ALIGN: 6, // u8 base alignment
  LENGTH: 7, // u8 number of ports
  SIZE: 8,
} as const;
const IO_PORT_TAG = 0x47;

/** End Tag, a small resource closing every resource template (§6.4.2.9). */
export const END_TAG_DESC = {
  TAG: 0, // 0x79: small item 0x0F, length 1
  CHECKSUM: 1, // 0: "valid" without computing it
  SIZE: 2,
} as const;
const END_TAG = 0x79;

/** 32-bit Fixed Memory Range Descriptor, a large resource (§6.4.3.4). */
export const MEMORY32_FIXED_DESC = {
  TAG: 0, // 0x86
  LENGTH: 1, // u16 bytes after this field: 9
  INFO: 3, // bit 0: read-write
  BASE: 4, // u32
  RANGE_LENGTH: 8, // u32
  SIZE: 12,
} as const;
const MEMORY32_FIXED_TAG = 0x86;

/** Extended Interrupt Descriptor with one interrupt, a large resource (§6.4.3.6). */
export const EXT_IRQ_DESC = {
  TAG: 0, // 0x89
  LENGTH: 1, // u16 bytes after this field: 2 + 4 per interrupt
  FLAGS: 3, // bit 0 consumer, bit 1 edge (_HE), bit 2 active-low (_LL), bit 3 shared (_SHR), bit 4 wake (_WKC)
  COUNT: 4, // u8 interrupt table length
  GSI: 5, // u32 each
  SIZE: 9,
} as const;
const EXT_IRQ_TAG = 0x89;
export const EXT_IRQ_CONSUMER = 0x01;
export const EXT_IRQ_EDGE = 0x02;
export const EXT_IRQ_ACTIVE_LOW = 0x04;
export const EXT_IRQ_SHARED = 0x08;

function descView(size: number): [Uint8Array, DataView] {
  const b = new Uint8Array(size);
  return [b, new DataView(b.buffer)];
}

function checkU(value: number, bits: 8 | 16 | 32, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
    throw new RangeError(`${what} ${value} does not fit in ${bits} bits`);
  }
}

/** IO(Decode16, min, max, align, len): a fixed or relocatable range of I/O ports. */
export function ioPort(min: number, max: number, align: number, len: number): Uint8Array {
  checkU(min, 16, "I/O port minimum");
  checkU(max, 16, "I/O port maximum");
  checkU(align, 8, "I/O port alignment");
  checkU(len, 8, "I/O port count");
  const [b, v] = descView(IO_PORT_DESC.SIZE);
  b[IO_PORT_DESC.TAG] = IO_PORT_TAG;
  b[IO_PORT_DESC.INFO] = 0x01;
  v.setUint16(IO_PORT_DESC.MIN, min, true);
  v.setUint16(IO_PORT_DESC.MAX, max, true);
  b[IO_PORT_DESC.ALIGN] = align;
  b[IO_PORT_DESC.LENGTH] = len;
  return b;
}

/** Memory32Fixed(ReadWrite or ReadOnly, base, len). */
export function memory32Fixed(base: number, len: number, writable = true): Uint8Array {
  checkU(base, 32, "Memory32Fixed base");
  checkU(len, 32, "Memory32Fixed length");
  if (base + len > 2 ** 32) {
    throw new RangeError(`Memory32Fixed range 0x${base.toString(16)}+0x${len.toString(16)} crosses 4 GiB`);
  }
  const [b, v] = descView(MEMORY32_FIXED_DESC.SIZE);
  b[MEMORY32_FIXED_DESC.TAG] = MEMORY32_FIXED_TAG;
  v.setUint16(MEMORY32_FIXED_DESC.LENGTH, MEMORY32_FIXED_DESC.SIZE - 3, true);
  b[MEMORY32_FIXED_DESC.INFO] = writable ? 0x01 : 0x00;
  v.setUint32(MEMORY32_FIXED_DESC.BASE, base, true);
  v.setUint32(MEMORY32_FIXED_DESC.RANGE_LENGTH, len, true);
  return b;
}

/** How an interrupt line behaves; the default is what an irqfd delivers: edge, active-high, exclusive. */
export interface InterruptMode {
  level?: boolean;
  activeLow?: boolean;
  shared?: boolean;
}

/**
 * Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow,
 * Exclusive|Shared) { gsi }: an Extended Interrupt Descriptor naming a GSI
 * directly, so Linux maps it through the IOAPIC without ISA translation.
 */
export function interrupt(gsi: number, mode: InterruptMode = {}): Uint8Array {
  checkU(gsi, 32, "Interrupt number");
  const [b, v] = descView(EXT_IRQ_DESC.SIZE);
  b[EXT_IRQ_DESC.TAG] = EXT_IRQ_TAG;
  v.setUint16(EXT_IRQ_DESC.LENGTH, EXT_IRQ_DESC.SIZE - 3, true);
  b[EXT_IRQ_DESC.FLAGS] = EXT_IRQ_CONSUMER | (mode.level ? 0 : EXT_IRQ_EDGE) |
    (mode.activeLow ? EXT_IRQ_ACTIVE_LOW : 0) | (mode.shared ? EXT_IRQ_SHARED : 0);
  b[EXT_IRQ_DESC.COUNT] = 1;
  v.setUint32(EXT_IRQ_DESC.GSI, gsi, true);
  return b;
}

/**
 * ResourceTemplate() { descriptors }: a Buffer holding the descriptors, then
 * an End Tag. Its checksum byte is 0, which §6.4.2.9 defines as "treat the
 * checksum as valid"; iasl and ACPICA's own resource encoder write 0 too,
 * and Linux's ACPICA never checks it.
 */
export function resourceTemplate(descriptors: Uint8Array[]): Uint8Array {
  const end = new Uint8Array(END_TAG_DESC.SIZE);
  end[END_TAG_DESC.TAG] = END_TAG;
  end[END_TAG_DESC.CHECKSUM] = 0;
  return buffer(concat(...descriptors, end));
}
