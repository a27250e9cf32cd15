/**
 * Per-vCPU CPUID: what KVM can offer (KVM_GET_SUPPORTED_CPUID), with the
 * fields only the VMM knows filled in: each vCPU's APIC id, the CPU count
 * and topology, and the hypervisor bit. Firecracker's `cpuid/` and QEMU's
 * `cpu_x86_cpuid()` do the same fixups (Intel SDM vol. 2A "CPUID", AMD APM
 * vol. 3 appendix E).
 */
import type { CpuidEntry } from "../ffi/structs.ts";

const LEAF1_ECX_HYPERVISOR = 1 << 31;
const LEAF1_EDX_HTT = 1 << 28;
const AMD_80000001_ECX_CMP_LEGACY = 1 << 1;

/** Bits needed to number `n` things (ceil(log2(n))). */
function bitsFor(n: number): number {
  let b = 0;
  while ((1 << b) < n) b++;
  return b;
}

/**
 * CPUID entries for vCPU `id` of `cpus`, all cores of one socket with one
 * thread each. APIC ids equal vCPU ids, as KVM assigns them and as the ACPI
 * MADT lists them.
 */
export function vcpuCpuid(supported: CpuidEntry[], id: number, cpus: number): CpuidEntry[] {
  const coreBits = bitsFor(cpus);
  const out: CpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        // EBX[31:24] initial APIC id, [23:16] logical processors per package.
        e.ebx = (e.ebx & 0x0000ffff) | (id << 24) | (Math.min(cpus, 255) << 16);
        e.ecx |= LEAF1_ECX_HYPERVISOR;
        e.edx = cpus > 1 ? e.edx | LEAF1_EDX_HTT : e.edx & ~LEAF1_EDX_HTT;
        break;
      case 0x4: {
        // Deterministic cache parameters: EAX[31:26] = cores per package - 1,
        // EAX[25:14] = threads sharing this cache - 1 (one thread per core).
        e.eax = (e.eax & 0x3fff) | ((cpus - 1) << 26);
        break;
      }
      case 0xb:
      case 0x1f: {
        // Extended topology: level 0 = SMT (1 thread), level 1 = core (cpus).
        e.edx = id;
        if (e.index === 0) {
          e.eax = 0; e.ebx = 1; e.ecx = (1 << 8) | 0;
        } else if (e.index === 1) {
          e.eax = coreBits; e.ebx = cpus; e.ecx = (2 << 8) | 1;
        } else {
          e.eax = 0; e.ebx = 0; e.ecx = e.index;
        }
        break;
      }
      case 0x80000001:
        e.ecx = cpus > 1 ? e.ecx | AMD_80000001_ECX_CMP_LEGACY : e.ecx & ~AMD_80000001_ECX_CMP_LEGACY;
        break;
      case 0x80000008:
        // ECX[15:12] APIC id bits for cores, [7:0] cores - 1 (AMD APM).
        e.ecx = (e.ecx & ~0xf0ff) | (coreBits << 12) | (cpus - 1);
        break;
    }
    out.push(e);
  }
  // Leaf 0xB must have its sub-leaves even if KVM returned only index 0.
  for (const f of [0xb]) {
    if (out.some((e) => e.function === f) && !out.some((e) => e.function === f && e.index === 1)) {
      const base = out.find((e) => e.function === f)!;
      out.push({ ...base, index: 1, eax: coreBits, ebx: cpus, ecx: (2 << 8) | 1, edx: id });
    }
  }
  return out;
}
