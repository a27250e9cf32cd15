/**
 * Per-vCPU CPUID: what KVM can offer (KVM_GET_SUPPORTED_CPUID), with the
 * fields only the VMM knows filled in: each vCPU's APIC id, the CPU count
 * and topology, and the hypervisor bit. Firecracker's `cpuid/` and QEMU's
 * `cpu_x86_cpuid()` do the same fixups (Intel SDM vol. 2A "CPUID", AMD APM
 * vol. 3 appendix E).
 */
import type { CpuidEntry } from "../ffi/structs.ts";

const LEAF1_ECX_HYPERVISOR = 1 << 31;
/**
 * The LAPIC timer's TSC-deadline mode. KVM emulates it whenever it says
 * KVM_CAP_TSC_DEADLINE_TIMER, but leaves the bit out of its supported list
 * for the VMM to set, as QEMU, Firecracker and Cloud Hypervisor do. Linux
 * then arms its timer with one MSR write and, above all, skips
 * calibrate_APIC_clock(): without the bit, every boot of every guest spins
 * 100 ms on the TSC (LAPIC_CAL_LOOPS ticks) to learn the LAPIC timer's rate.
 */
const LEAF1_ECX_TSC_DEADLINE = 1 << 24;
const LEAF1_EDX_HTT = 1 << 28;
const AMD_80000001_ECX_CMP_LEGACY = 1 << 1;

/** Bits needed to number `n` things (ceil(log2(n))). */
function bitsFor(n: number): number {
  let b = 0;
  while ((1 << b) < n) b++;
  return b;
}

/** What the VMM knows about its KVM beyond the supported CPUID list. */
export interface CpuidHost {
  /** KVM_CAP_TSC_DEADLINE_TIMER: KVM emulates the LAPIC timer's TSC-deadline mode. */
  tscDeadline?: boolean;
}

/**
 * CPUID entries for vCPU `id` of `cpus`, all cores of one socket with one
 * thread each. APIC ids equal vCPU ids, as KVM assigns them and as the ACPI
 * MADT lists them.
 */
export function vcpuCpuid(supported: CpuidEntry[], id: number, cpus: number, host: CpuidHost = {}): CpuidEntry[] {
  const coreBits = bitsFor(cpus);
  const out: CpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        // EBX[31:24] initial APIC id, [23:16] logical processors per package.
        e.ebx = (e.ebx & 0x0000ffff) | (id << 24) | (Math.min(cpus, 255) << 16);
        e.ecx |= LEAF1_ECX_HYPERVISOR;
        if (host.tscDeadline) e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        e.edx = cpus > 1 ? e.edx | LEAF1_EDX_HTT : e.edx & ~LEAF1_EDX_HTT;
        break;
      case 0x4: {
        // Deterministic cache parameters: EAX[31:26] = cores per package - 1,
        // EAX[25:14] = threads sharing this cache - 1 (one thread per core).
        e.eax = (e.eax & 0x3fff) | ((cpus - 1) << 26);
        break;
      }
      case 0xb:
      case 0x1f:
        Object.assign(e, topologyLevel(e.index, id, cpus));
        break;
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
  // Leaf 0xB must have its core level even if KVM returned only index 0.
  const leafB = out.find((e) => e.function === 0xb);
  if (leafB && !out.some((e) => e.function === 0xb && e.index === 1)) {
    out.push({ ...leafB, index: 1, ...topologyLevel(1, id, cpus) });
  }
  return out;
}

/**
 * One sub-leaf of the extended topology leaves 0xB/0x1F: level 0 is SMT
 * (1 thread per core), level 1 the cores (all `cpus` in one package), then
 * an invalid level that ends the list. EDX is always the x2APIC id.
 */
function topologyLevel(index: number, id: number, cpus: number): Pick<CpuidEntry, "eax" | "ebx" | "ecx" | "edx"> {
  if (index === 0) return { eax: 0, ebx: 1, ecx: (1 << 8) | 0, edx: id };
  if (index === 1) return { eax: bitsFor(cpus), ebx: cpus, ecx: (2 << 8) | 1, edx: id };
  return { eax: 0, ebx: 0, ecx: index, edx: id };
}

/** The vendor string of a CPUID table (leaf 0: EBX, EDX, ECX), "?" without leaf 0. */
export function cpuidVendor(t: CpuidEntry[]): string {
  const e = t.find((x) => x.function === 0 && x.index === 0);
  if (!e) return "?";
  const b = new Uint8Array(12), v = new DataView(b.buffer);
  [e.ebx, e.edx, e.ecx].forEach((x, i) => v.setUint32(i * 4, x, true));
  return new TextDecoder().decode(b);
}
