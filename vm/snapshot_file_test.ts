/**
 * The state file without KVM: a round trip keeps every bigint and byte, and
 * each way a file can be wrong (cut short, flipped, edited, from another
 * format or vmm) is refused with one line naming it, before its body is
 * believed. Then the two checks restore makes against the restoring host:
 * CPUID and the device list.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  cpuidMismatch, decodeSnapshot, devicesMismatch, encodeSnapshot, HDR, SNAPSHOT_FORMAT, SnapshotError, VMM_VERSION,
} from "./snapshot_file.ts";
import { fakeState, INTEL_CPUID } from "../test/support/snapshot_fixture.ts";

const refused = (bytes: Uint8Array, message: string) =>
  assert.rejects(decodeSnapshot(bytes, "snap/state"), (e) => e instanceof SnapshotError && e.message === `snap/state: ${message}`);

test("decodeSnapshot(encodeSnapshot(s)) gives s back, bigints and bytes included", async () => {
  const s = fakeState({ cpus: 2 });
  const bytes = encodeSnapshot(s);
  assert.equal(new TextDecoder().decode(bytes.subarray(0, 8)), "VMMSNAP\0");
  assert.equal(new DataView(bytes.buffer).getUint32(HDR.FORMAT, true), SNAPSHOT_FORMAT);
  const back = await decodeSnapshot(bytes);
  assert.deepEqual(back, s);
  assert.equal(typeof back.vcpus[1].regs.rip, "bigint");
  assert.ok(back.vcpus[0].xsave instanceof Uint8Array);
  assert.equal(typeof VMM_VERSION, "string");
});

test("decodeSnapshot() refuses a file shorter than its header", async () => {
  await refused(encodeSnapshot(fakeState()).subarray(0, 50), `truncated: 50 bytes, the header alone is ${HDR.SIZE}`);
});

test("decodeSnapshot() refuses a file that is not a snapshot", async () => {
  const b = encodeSnapshot(fakeState());
  b[0] = 0x7f;
  await refused(b, "not a vmm snapshot (bad magic)");
});

test("decodeSnapshot() refuses another format version", async () => {
  const b = encodeSnapshot(fakeState());
  new DataView(b.buffer).setUint32(HDR.FORMAT, SNAPSHOT_FORMAT + 1, true);
  await refused(b, `snapshot format ${SNAPSHOT_FORMAT + 1}, this vmm reads format ${SNAPSHOT_FORMAT}`);
});

test("decodeSnapshot() refuses a truncated body, and bytes after it", async () => {
  const b = encodeSnapshot(fakeState());
  const body = b.length - HDR.SIZE;
  await refused(b.subarray(0, b.length - 10), `truncated: the body should be ${body} bytes, the file holds ${body - 10}`);
  const longer = new Uint8Array(b.length + 3);
  longer.set(b);
  await refused(longer, "3 bytes after the end of the body");
});

test("decodeSnapshot() refuses a corrupted body: one flipped bit", async () => {
  const b = encodeSnapshot(fakeState());
  b[HDR.SIZE + 100] ^= 1;
  await refused(b, "corrupted or tampered: its SHA-256 does not match");
});

test("decodeSnapshot() refuses a tampered file: an edited register, an edited version field", async () => {
  const b = encodeSnapshot(fakeState());
  const text = new TextDecoder().decode(b.subarray(HDR.SIZE));
  const at = text.indexOf('"rip":{"$n":"0x') + '"rip":{"$n":"0x'.length;
  b[HDR.SIZE + at] = "9".charCodeAt(0); // still valid JSON, another rip
  await refused(b, "corrupted or tampered: its SHA-256 does not match");
  const v = encodeSnapshot(fakeState());
  v.set(new TextEncoder().encode("9.9.9\0"), HDR.VMM_VERSION);
  await refused(v, "corrupted or tampered: its SHA-256 does not match");
});

test("decodeSnapshot() refuses a snapshot another vmm version made", async () => {
  await refused(encodeSnapshot(fakeState(), "0.0.1"), `made by vmm 0.0.1, this is vmm ${VMM_VERSION}`);
});

test("decodeSnapshot() names a field a well-hashed body lacks", async () => {
  const s = fakeState({ cpus: 2 });
  // deno-lint-ignore no-explicit-any
  delete (s.vcpus[1] as any).lapic;
  await refused(encodeSnapshot(s), "vCPU 1's state is incomplete");
  await refused(encodeSnapshot({ ...fakeState(), cpus: 3 }), "1 vCPU states for 3 CPUs");
});

test("cpuidMismatch() accepts the same CPU, more host features, and bits that follow guest state", () => {
  assert.equal(cpuidMismatch(INTEL_CPUID, INTEL_CPUID), null);
  const more = INTEL_CPUID.map((e) => (e.function === 7 ? { ...e, ebx: e.ebx | (1 << 16) } : e));
  assert.equal(cpuidMismatch(INTEL_CPUID, more), null);
  // OSXSAVE (leaf 1 ECX bit 27) reflects the guest's CR4, not the CPU.
  const osxsave = INTEL_CPUID.map((e) => (e.function === 1 ? { ...e, ecx: e.ecx | (1 << 27) } : e));
  assert.equal(cpuidMismatch(osxsave, INTEL_CPUID), null);
});

test("cpuidMismatch() names another vendor, another model, a feature this host lacks", () => {
  const amd = INTEL_CPUID.map((e) => (e.function === 0 ? { ...e, ebx: 0x68747541, ecx: 0x444d4163, edx: 0x69746e65 } : e));
  assert.equal(cpuidMismatch(INTEL_CPUID, amd), "CPU vendor GenuineIntel, this host's is AuthenticAMD");
  const model = INTEL_CPUID.map((e) => (e.function === 1 ? { ...e, eax: 0x906ea } : e));
  assert.equal(cpuidMismatch(INTEL_CPUID, model), "CPU family/model/stepping 0x50654, this host's is 0x906ea");
  const noAvx2 = INTEL_CPUID.map((e) => (e.function === 7 ? { ...e, ebx: 0 } : e));
  assert.equal(cpuidMismatch(INTEL_CPUID, noAvx2), "CPUID leaf 0x7.0 EBX bits 0x20 are features this host's KVM does not offer");
});

test("devicesMismatch() names another list, another identity, other features", () => {
  const blk = { kind: "blk", identity: { sizeBytes: 1048576, readOnly: false, serial: "" }, deviceId: 2, features: 0x1n, queueSizes: [256] };
  const rng = { kind: "rng", identity: {}, deviceId: 4, features: 0n, queueSizes: [256] };
  assert.equal(devicesMismatch([blk, rng], [blk, rng]), null);
  assert.equal(devicesMismatch([blk, rng], [rng]), "devices blk, rng, the options give rng");
  assert.equal(devicesMismatch([], [rng]), "devices none, the options give rng");
  assert.equal(
    devicesMismatch([blk], [{ ...blk, identity: { ...blk.identity, sizeBytes: 2097152 } }]),
    "device 0 (blk) has sizeBytes 1048576, the options give 2097152",
  );
  assert.equal(devicesMismatch([blk], [{ ...blk, features: 0x21n }]), "device 0 (blk) offered other features or queues");
});
