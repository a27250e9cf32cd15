/**
 * vcpuCpuid() (vm/cpuid.ts): the fields of KVM's supported CPUID that only
 * the VMM knows, filled in per vCPU: the APIC id (leaf 1, leaf 0xB), the CPU
 * count and topology (leaves 1, 4, 0xB, 0x80000008) and the hypervisor bit.
 * The input is a made-up KVM_GET_SUPPORTED_CPUID answer, so every expected
 * value is computed here from the Intel SDM / AMD APM field definitions.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { CpuidEntry } from "../ffi/structs.ts";
import { vcpuCpuid } from "./cpuid.ts";

const SIGNIFICANT_INDEX = 1;

/** A plausible supported list; leaf 0xB has only sub-leaf 0, as some hosts report. */
function supported(): CpuidEntry[] {
  return [
    { function: 0, index: 0, flags: 0, eax: 0x16, ebx: 0x756e6547, ecx: 0x6c65746e, edx: 0x49656e69 },
    // EBX: brand 0x00, CLFLUSH 8 (×8 bytes), 2 logical CPUs, APIC id 7 (the host's, to be replaced).
    { function: 1, index: 0, flags: 0, eax: 0x906ea, ebx: 0x0702_0800, ecx: 0x7ffa_fbff, edx: 0xbfeb_fbff },
    { function: 4, index: 0, flags: SIGNIFICANT_INDEX, eax: 0x1c00_4121, ebx: 0x01c0_003f, ecx: 0x3f, edx: 0 },
    { function: 0xb, index: 0, flags: SIGNIFICANT_INDEX, eax: 1, ebx: 2, ecx: 0x100, edx: 7 },
    { function: 0x8000_0001, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0x121, edx: 0x2c10_0800 },
    { function: 0x8000_0008, index: 0, flags: 0, eax: 0x3027, ebx: 0, ecx: 0x0000_f001, edx: 0 },
  ];
}

function leaf(entries: CpuidEntry[], fn: number, index = 0): CpuidEntry {
  const e = entries.find((x) => x.function === fn && x.index === index);
  assert.ok(e, `leaf 0x${fn.toString(16)}.${index} is present`);
  return e;
}

const u32 = (x: number) => x >>> 0;

test("vcpuCpuid() puts each vCPU's APIC id and the CPU count in leaf 1 EBX", () => {
  for (const id of [0, 1, 3]) {
    const l1 = leaf(vcpuCpuid(supported(), id, 4), 1);
    assert.equal(u32(l1.ebx) >>> 24, id, "EBX[31:24] initial APIC id");
    assert.equal((l1.ebx >>> 16) & 0xff, 4, "EBX[23:16] logical processors");
    assert.equal(l1.ebx & 0xffff, 0x0800, "CLFLUSH size and brand index are kept");
  }
  assert.equal(u32(leaf(vcpuCpuid(supported(), 200, 254), 1).ebx) >>> 24, 200, "APIC ids above 127 stay unsigned");
});

test("vcpuCpuid() sets the hypervisor bit and sets HTT only for more than one CPU", () => {
  const one = leaf(vcpuCpuid(supported(), 0, 1), 1);
  const two = leaf(vcpuCpuid(supported(), 0, 2), 1);
  assert.equal(u32(one.ecx) >>> 31, 1, "ECX[31] hypervisor present");
  assert.equal(u32(one.ecx) & 0x7fff_ffff, 0x7ffa_fbff, "other ECX bits kept");
  assert.equal((one.edx >>> 28) & 1, 0, "one CPU: no HTT");
  assert.equal((two.edx >>> 28) & 1, 1, "two CPUs: HTT");
  assert.equal(u32(two.edx) & ~(1 << 28), u32(0xbfeb_fbff) & ~(1 << 28));
});

test("vcpuCpuid() gives leaf 0xB an SMT level of one thread and a core level of all CPUs", () => {
  const out = vcpuCpuid(supported(), 2, 4);
  const smt = leaf(out, 0xb, 0), core = leaf(out, 0xb, 1);
  assert.deepEqual([smt.eax, smt.ebx, smt.ecx, smt.edx], [0, 1, 0x100, 2], "level 0: shift 0, 1 thread, type SMT, x2APIC id");
  assert.deepEqual([core.eax, core.ebx, core.ecx, core.edx], [2, 4, 0x201, 2], "level 1: shift 2, 4 CPUs, type core");
  assert.equal(core.flags, SIGNIFICANT_INDEX, "the synthesized sub-leaf is indexed like the original");
});

test("vcpuCpuid() sizes the topology shift to the next power of two", () => {
  for (const [cpus, bits] of [[1, 0], [2, 1], [3, 2], [4, 2], [5, 3], [8, 3], [9, 4]]) {
    const out = vcpuCpuid(supported(), 0, cpus);
    assert.equal(leaf(out, 0xb, 1).eax, bits, `${cpus} CPUs`);
    assert.equal((leaf(out, 0x8000_0008).ecx >> 12) & 0xf, bits, `${cpus} CPUs, AMD ApicIdCoreIdSize`);
    assert.equal(leaf(out, 0x8000_0008).ecx & 0xff, cpus - 1, `${cpus} CPUs, AMD NC`);
  }
});

test("vcpuCpuid() keeps sub-leaves KVM already gave and marks levels past the core level invalid", () => {
  const base = supported();
  base.push({ function: 0xb, index: 1, flags: SIGNIFICANT_INDEX, eax: 9, ebx: 9, ecx: 0x201, edx: 7 });
  base.push({ function: 0xb, index: 2, flags: SIGNIFICANT_INDEX, eax: 9, ebx: 9, ecx: 0x302, edx: 7 });
  const out = vcpuCpuid(base, 1, 2);
  assert.equal(out.filter((e) => e.function === 0xb).length, 3, "no duplicate sub-leaf");
  assert.deepEqual([leaf(out, 0xb, 1).eax, leaf(out, 0xb, 1).ebx, leaf(out, 0xb, 1).edx], [1, 2, 1]);
  const l2 = leaf(out, 0xb, 2);
  assert.deepEqual([l2.eax, l2.ebx, l2.ecx & 0xff00, l2.edx], [0, 0, 0, 1], "level type 0: invalid");
});

test("vcpuCpuid() reports cores per package in leaf 4 and CMP_LEGACY on AMD for several CPUs", () => {
  const out4 = vcpuCpuid(supported(), 0, 4);
  assert.equal(u32(leaf(out4, 4).eax) >>> 26, 3, "EAX[31:26] cores - 1");
  assert.equal(leaf(out4, 4).eax & 0x3fff, 0x0121, "cache type and level kept");
  assert.equal(leaf(out4, 0x8000_0001).ecx & 2, 2, "CMP_LEGACY with 4 CPUs");
  assert.equal(leaf(vcpuCpuid(supported(), 0, 1), 0x8000_0001).ecx & 2, 0, "no CMP_LEGACY with 1 CPU");
});

test("vcpuCpuid() passes other leaves through and leaves its input alone", () => {
  const input = supported();
  const before = structuredClone(input);
  const out = vcpuCpuid(input, 3, 4);
  assert.deepEqual(input, before);
  assert.deepEqual(leaf(out, 0), before[0]);
});

test("vcpuCpuid() offers the TSC-deadline timer (leaf 1 ECX[24]) only when KVM says it emulates it", () => {
  // KVM's own list leaves the bit clear (the fixture's made-up ECX has it).
  const kvmList = supported().map((e) => (e.function === 1 ? { ...e, ecx: e.ecx & ~(1 << 24) } : e));
  const without = leaf(vcpuCpuid(kvmList, 0, 1), 1);
  const withCap = leaf(vcpuCpuid(kvmList, 0, 1, { tscDeadline: true }), 1);
  assert.equal((without.ecx >>> 24) & 1, 0, "no KVM_CAP_TSC_DEADLINE_TIMER: the bit stays clear");
  assert.equal((withCap.ecx >>> 24) & 1, 1, "KVM_CAP_TSC_DEADLINE_TIMER: the bit is set");
  assert.equal(u32(withCap.ecx & ~(1 << 24)), u32(without.ecx), "no other ECX bit changes");
});
