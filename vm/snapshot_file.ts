/**
 * The snapshot state file: one versioned, hashed file holding everything of
 * a paused machine except its RAM (which sits beside it, raw and sparse, in
 * the memory file). Pure code: bytes in, checked data out, and the checks
 * that decide whether a snapshot may be restored here. loop/snapshot.ts
 * gathers the state and applies it.
 *
 * ```
 * offset size
 *      0    8  magic "VMMSNAP\0"
 *      8    4  format version (u32 LE): changes whenever the body's meaning does
 *     12    4  0 (reserved)
 *     16    8  body length in bytes (u64 LE)
 *     24   24  vmm version that wrote it, ASCII, NUL-padded
 *     48   32  SHA-256 over bytes 0..48 and the body
 *     80    …  body: UTF-8 JSON, bigints as {"$n":"0x…"}, byte arrays as {"$b":"base64"}
 * ```
 *
 * Why JSON inside a binary header: the body is a tree of small records
 * (registers, segments, MSR pairs) that changes shape whenever vCPU state
 * grows a field; JSON carries names, so a reader names what is missing
 * instead of reading garbage at a shifted offset. The header is fixed and
 * binary so that a file from another format or another vmm is refused
 * before its body is parsed, and the hash makes a truncated, corrupted or
 * edited file a refusal rather than a guest running on wrong registers
 * (Firecracker's snapshot file likewise ends in a CRC64 over the state).
 */
import { sha256, sha256Async } from "../ffi/sha256.ts";
import pkg from "../package.json" with { type: "json" };
import type { CpuidEntry } from "../ffi/structs.ts";
import type { VcpuState } from "./vcpu_state.ts";
import { cpuidVendor } from "./cpuid.ts";
import type { VmState } from "./vm_state.ts";
import { SnapshotError } from "./vm.ts";

/** The version of vmm this code is: a snapshot restores only into the same one. */
export const VMM_VERSION: string = pkg.version;
/** Bumped whenever the body's fields or their meaning change. */
export const SNAPSHOT_FORMAT = 2; // 2: the stdio device keeps what its driver was told (devices/stdio/control.ts W.PLAN)
export const SNAPSHOT_MAGIC = "VMMSNAP\0";
/** Header byte offsets, as drawn above. */
export const HDR = { MAGIC: 0, FORMAT: 8, BODY_LEN: 16, VMM_VERSION: 24, SHA256: 48, SIZE: 80 } as const;
const VERSION_BYTES = HDR.SHA256 - HDR.VMM_VERSION;

export { SnapshotError } from "./vm.ts";

/** One virtio device as the snapshot saw it. */
export interface SnapshotDevice {
  /** devices/registry.ts kind: "blk", "net", … */
  kind: string;
  /**
   * What must be the same in the restoring machine for the guest not to
   * notice: blk its size, read-only flag and serial, net its MAC and MTU,
   * fs its tag. Paths, TAP names and fds may differ.
   */
  identity: Record<string, string | number | boolean>;
  /** What the transport offered the driver (devices/virtio/kind.ts DeviceModel). */
  deviceId: number;
  features: bigint;
  queueSizes: number[];
  /** The device's whole region of the shared block (loop/shared.ts DEV): registers, queue positions, config, state words. */
  block: Uint8Array;
}

/** Everything in the state file's body. */
export interface SnapshotState {
  /** ISO time of the snapshot, for people. */
  createdAt: string;
  /** Guest RAM: its size and how the memory file's offsets map to guest physical addresses. */
  memory: { bytes: number; regions: { gpa: number; size: number; offset: number }[] };
  cpus: number;
  /** A fingerprint of loop/shared.ts's device block layout: device blocks are copied as bytes. */
  sharedLayout: string;
  devices: SnapshotDevice[];
  /** One per vCPU; each holds the CPUID that vCPU was given. */
  vcpus: VcpuState[];
  vm: VmState;
  /** The UART's shared register words (devices/serial.ts), as bytes. */
  uart: Uint8Array;
}

/** JSON cannot hold bigints or bytes: tag them. */
function replacer(_k: string, v: unknown): unknown {
  if (typeof v === "bigint") return { $n: "0x" + v.toString(16) };
  if (v instanceof Uint8Array) return { $b: toBase64(v) };
  return v;
}
function reviver(_k: string, v: unknown): unknown {
  if (v && typeof v === "object" && !Array.isArray(v)) {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o);
    if (keys.length === 1 && typeof o.$n === "string") return BigInt(o.$n);
    if (keys.length === 1 && typeof o.$b === "string") return fromBase64(o.$b);
  }
  return v;
}

/**
 * Base64 through btoa/atob, which both runtimes have without `node:buffer`
 * (ffi/sys.ts says why that matters); they take a byte string, built here
 * in slices so that no call gets more arguments than the engine allows.
 */
function toBase64(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}
function fromBase64(text: string): Uint8Array {
  let s: string;
  try {
    s = atob(text);
  } catch {
    throw new Error("a byte field is not base64");
  }
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** The state file's bytes for `s`. */
export function encodeSnapshot(s: SnapshotState, vmmVersion = VMM_VERSION): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify(s, replacer));
  const out = new Uint8Array(HDR.SIZE + body.length);
  const v = new DataView(out.buffer);
  out.set(new TextEncoder().encode(SNAPSHOT_MAGIC), HDR.MAGIC);
  v.setUint32(HDR.FORMAT, SNAPSHOT_FORMAT, true);
  v.setBigUint64(HDR.BODY_LEN, BigInt(body.length), true);
  const ver = new TextEncoder().encode(vmmVersion);
  if (ver.length > VERSION_BYTES) throw new RangeError(`vmm version '${vmmVersion}' is longer than ${VERSION_BYTES} bytes`);
  out.set(ver, HDR.VMM_VERSION);
  out.set(body, HDR.SIZE);
  out.set(sha256(out.subarray(0, HDR.SHA256), body), HDR.SHA256);
  return out;
}

/**
 * Check and read a state file. Each refusal is a SnapshotError whose
 * message starts with `what` (the file's path) and names the one thing
 * wrong, checked in this order: size, magic, format version, length, hash,
 * vmm version, body shape.
 */
export async function decodeSnapshot(bytes: Uint8Array, what = "snapshot", vmmVersion = VMM_VERSION): Promise<SnapshotState> {
  const fail = (why: string) => new SnapshotError(`${what}: ${why}`);
  if (bytes.length < HDR.SIZE) throw fail(`truncated: ${bytes.length} bytes, the header alone is ${HDR.SIZE}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (new TextDecoder().decode(bytes.subarray(0, 8)) !== SNAPSHOT_MAGIC) throw fail("not a vmm snapshot (bad magic)");
  const format = v.getUint32(HDR.FORMAT, true);
  if (format !== SNAPSHOT_FORMAT) throw fail(`snapshot format ${format}, this vmm reads format ${SNAPSHOT_FORMAT}`);
  const bodyLen = v.getBigUint64(HDR.BODY_LEN, true);
  const have = BigInt(bytes.length - HDR.SIZE);
  if (bodyLen > have) throw fail(`truncated: the body should be ${bodyLen} bytes, the file holds ${have}`);
  if (bodyLen < have) throw fail(`${have - bodyLen} bytes after the end of the body`);
  const body = bytes.subarray(HDR.SIZE);
  // Web Crypto's native digest: every restore (each `vmm run` from its
  // snapshot) checks this, and plain TypeScript with its JIT still cold cost
  // several times as much (ffi/sha256.ts); writing keeps the synchronous one.
  const want = await sha256Async(bytes.subarray(0, HDR.SHA256), body);
  if (!want.every((b, i) => b === bytes[HDR.SHA256 + i])) throw fail("corrupted or tampered: its SHA-256 does not match");
  // After the hash: a version field someone edited is caught above, not believed here.
  const verBytes = bytes.subarray(HDR.VMM_VERSION, HDR.SHA256);
  const ver = new TextDecoder().decode(verBytes.subarray(0, verBytes.indexOf(0) < 0 ? VERSION_BYTES : verBytes.indexOf(0)));
  if (ver !== vmmVersion) throw fail(`made by vmm ${ver}, this is vmm ${vmmVersion}`);
  let s: SnapshotState;
  try {
    s = JSON.parse(new TextDecoder().decode(body), reviver);
  } catch (e) {
    throw fail(`unreadable body: ${(e as Error).message}`);
  }
  const shape = checkShape(s);
  if (shape) throw fail(shape);
  return s;
}

/** A body that passed the hash yet lacks a field is a writer's bug: say which field. */
function checkShape(s: SnapshotState): string | null {
  const int = (x: unknown) => Number.isInteger(x) && (x as number) >= 0;
  if (!s || typeof s !== "object") return "the body is not an object";
  if (!int(s.memory?.bytes) || !Array.isArray(s.memory.regions)) return "no memory size or regions";
  if (!int(s.cpus) || s.cpus < 1) return "no CPU count";
  if (!Array.isArray(s.vcpus) || s.vcpus.length !== s.cpus) return `${s.vcpus?.length ?? 0} vCPU states for ${s.cpus} CPUs`;
  for (const [i, c] of s.vcpus.entries()) {
    if (!c?.regs || !c.sregs || !c.fpu || !(c.lapic instanceof Uint8Array) || !Array.isArray(c.cpuid) || !Array.isArray(c.msrs)) {
      return `vCPU ${i}'s state is incomplete`;
    }
  }
  if (!s.vm?.picMaster || !s.vm.picSlave || !s.vm.ioapic) return "no interrupt controller state";
  if (!(s.uart instanceof Uint8Array)) return "no UART state";
  if (!Array.isArray(s.devices)) return "no device list";
  for (const [i, d] of s.devices.entries()) {
    if (typeof d?.kind !== "string" || !(d.block instanceof Uint8Array) || typeof d.features !== "bigint") return `device ${i} is incomplete`;
  }
  return null;
}

/**
 * CPUID bits that follow guest state rather than the CPU (KVM updates them
 * as the guest writes CR4 or the APIC base): leaf 1 ECX.OSXSAVE, EDX.APIC,
 * leaf 7 ECX.OSPKE. A restored vCPU gets the saved values back anyway.
 */
const DYNAMIC: Record<string, number> = { "1.0.ecx": 1 << 27, "1.0.edx": 1 << 9, "7.0.ecx": 1 << 4 };
/** The registers that list CPU features a guest may use once it has seen them. */
const FEATURE_REGS: [leaf: number, index: number, reg: "eax" | "ebx" | "ecx" | "edx"][] = [
  [0x1, 0, "ecx"], [0x1, 0, "edx"], [0x7, 0, "ebx"], [0x7, 0, "ecx"], [0x7, 0, "edx"], [0x7, 1, "eax"],
  [0xd, 1, "eax"], [0x80000001, 0, "ecx"], [0x80000001, 0, "edx"], [0x80000007, 0, "edx"],
];
const hex = (n: number) => "0x" + (n >>> 0).toString(16);

/**
 * Would a guest that booted with `saved` notice being moved to a vCPU whose
 * CPUID this host makes (`here`, from vm/cpuid.ts `vcpuCpuid` for the same
 * vCPU)? It would if the CPU vendor or family/model/stepping differ (code
 * paths and errata chosen at boot), or if the guest was told of a feature
 * this host cannot give (it would fault on the first instruction using
 * it). Features this host has and the guest was not told of do not matter:
 * the restored vCPU gets `saved` back. Returns the first difference, or null.
 */
export function cpuidMismatch(saved: CpuidEntry[], here: CpuidEntry[]): string | null {
  const find = (t: CpuidEntry[], f: number, i: number) => t.find((e) => e.function === f && e.index === i);
  const vendor = cpuidVendor;
  if (vendor(saved) !== vendor(here)) return `CPU vendor ${vendor(saved)}, this host's is ${vendor(here)}`;
  const fms = (t: CpuidEntry[]) => (find(t, 1, 0)?.eax ?? 0) >>> 0;
  if (fms(saved) !== fms(here)) return `CPU family/model/stepping ${hex(fms(saved))}, this host's is ${hex(fms(here))}`;
  for (const [leaf, index, reg] of FEATURE_REGS) {
    const s = find(saved, leaf, index);
    if (!s) continue;
    const h = find(here, leaf, index);
    const missing = (s[reg] & ~(h?.[reg] ?? 0) & ~(DYNAMIC[`${leaf}.${index}.${reg}`] ?? 0)) >>> 0;
    if (missing) return `CPUID leaf ${hex(leaf)}.${index} ${reg.toUpperCase()} bits ${hex(missing)} are features this host's KVM does not offer`;
  }
  return null;
}

/**
 * Whether the restoring machine has the snapshot's devices, in the same
 * order, each of the same kind and identity, offering the same features.
 * Returns the first difference, or null.
 */
export function devicesMismatch(saved: Omit<SnapshotDevice, "block">[], here: Omit<SnapshotDevice, "block">[]): string | null {
  const list = (d: { kind: string }[]) => d.map((x) => x.kind).join(", ") || "none";
  if (saved.length !== here.length || saved.some((d, i) => d.kind !== here[i].kind)) {
    return `devices ${list(saved)}, the options give ${list(here)}`;
  }
  for (const [i, s] of saved.entries()) {
    const h = here[i];
    for (const k of new Set([...Object.keys(s.identity), ...Object.keys(h.identity)])) {
      if (s.identity[k] !== h.identity[k]) return `device ${i} (${s.kind}) has ${k} ${s.identity[k]}, the options give ${h.identity[k]}`;
    }
    if (s.deviceId !== h.deviceId || s.features !== h.features || s.queueSizes.join() !== h.queueSizes.join()) {
      return `device ${i} (${s.kind}) offered other features or queues`;
    }
  }
  return null;
}
