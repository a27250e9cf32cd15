/**
 * A vCPU's state for snapshots: `saveVcpu()` reads every register set KVM
 * keeps for an x86 vCPU with the ioctl that owns it, `restoreVcpu()` writes
 * them into a fresh vCPU in the order KVM needs. The state is plain data
 * (bigints and byte arrays), ready to serialise.
 *
 * The orders follow Firecracker's `arch/x86_64/vcpu.rs` (`save_state`,
 * `restore_state`) and QEMU's `kvm_arch_put_registers()`; each step below
 * says which KVM behaviour makes it come where it does.
 */
import { CAP, type Kvm, type VcpuFd, type VmFd } from "../ffi/kvm.ts";
import type { CpuidEntry, DebugRegs, Fpu, Regs, Sregs, Xcr } from "../ffi/structs.ts";
import { cpuidVendor } from "./cpuid.ts";

/** IA32_TSC and IA32_TSC_DEADLINE (Intel SDM vol. 4): the deadline is restored after the TSC. */
export const MSR_IA32_TSC = 0x10, MSR_IA32_TSC_DEADLINE = 0x6e0;

/** The optional pieces of vCPU state this KVM offers (KVM_CHECK_EXTENSION on the VM). */
export interface VcpuStateCaps {
  /** KVM_CAP_MP_STATE */
  mpState: boolean;
  /** KVM_CAP_XSAVE */
  xsave: boolean;
  /** KVM_CAP_XSAVE2: the size of the XSAVE image KVM_GET_XSAVE2 fills, 0 without it. */
  xsave2Size: number;
  /** KVM_CAP_XCRS */
  xcrs: boolean;
  /** KVM_CAP_DEBUGREGS */
  debugRegs: boolean;
  /** KVM_CAP_VCPU_EVENTS */
  vcpuEvents: boolean;
}

/** Every piece, KVM_GET_XSAVE for XSAVE: what hardware KVM has offered since Linux 2.6.36. */
export const ALL_VCPU_STATE: VcpuStateCaps = {
  mpState: true, xsave: true, xsave2Size: 0, xcrs: true, debugRegs: true, vcpuEvents: true,
};

/** What `vm`'s KVM offers; ask once per VM and pass it to every saveVcpu(). */
export function vcpuStateCaps(vm: VmFd): VcpuStateCaps {
  const has = (cap: number) => vm.checkExtension(cap) > 0;
  return {
    mpState: has(CAP.MP_STATE),
    xsave: has(CAP.XSAVE),
    xsave2Size: Math.max(0, vm.checkExtension(CAP.XSAVE2)),
    xcrs: has(CAP.XCRS),
    debugRegs: has(CAP.DEBUGREGS),
    vcpuEvents: has(CAP.VCPU_EVENTS),
  };
}

/**
 * One vCPU's state. A piece is null where this KVM does not offer it (its
 * capability is named on VcpuStateCaps); restoreVcpu() then leaves it alone.
 */
export interface VcpuState {
  /** KVM_GET_CPUID2: MSRs and XCR0 are checked against it, so it goes in first. */
  cpuid: CpuidEntry[];
  /** KVM_GET_TSC_KHZ, or 0 where KVM cannot tell. */
  tscKhz: number;
  /** KVM_GET_MP_STATE (MP_STATE.*). */
  mpState: number | null;
  regs: Regs;
  sregs: Sregs;
  /**
   * KVM_GET_FPU: the legacy x87/SSE area (the same bytes sit in `xsave` where
   * XSAVE exists); without XSAVE, MXCSR is lost (KVM_GET_FPU leaves it out).
   */
  fpu: Fpu;
  /** KVM_GET_XSAVE or KVM_GET_XSAVE2: the whole XSAVE image, 4096 bytes or KVM_CAP_XSAVE2's size. */
  xsave: Uint8Array | null;
  xcrs: Xcr[] | null;
  debugRegs: DebugRegs | null;
  /** KVM_GET_LAPIC: the 1 KiB register page. */
  lapic: Uint8Array;
  /** [index, value] for each MSR of the list that this vCPU could read, in list order. */
  msrs: [number, bigint][];
  /** struct kvm_vcpu_events, raw (VCPU_EVENTS in ffi/structs.ts names the fields). */
  vcpuEvents: Uint8Array | null;
}

/**
 * The MSRs to save: KVM_GET_MSR_INDEX_LIST, the MSRs KVM itself can save and
 * restore. saveVcpu() skips those a given vCPU cannot read.
 */
export function msrsToSave(kvm: Kvm): number[] {
  return kvm.msrIndexList();
}

/**
 * Read `vcpu`'s state. The vCPU must not be running (its Worker out of
 * KVM_RUN), and on a multi-vCPU guest no vCPU of the VM may be: KVM's vCPU
 * events and MP state may change under a running sibling's INIT or SIPI.
 */
export function saveVcpu(vcpu: VcpuFd, msrIndexes: number[], caps: VcpuStateCaps = ALL_VCPU_STATE): VcpuState {
  // KVM_GET_MP_STATE first: it makes KVM take INIT/SIPI the LAPIC latched
  // (kvm_apic_accept_events), which changes registers and LAPIC state that
  // the reads below must see.
  const mpState = caps.mpState ? vcpu.getMpState() : null;
  const regs = vcpu.getRegs();
  const sregs = vcpu.getSregs();
  const fpu = vcpu.getFpu();
  const xsave = caps.xsave ? vcpu.getXsave(caps.xsave2Size) : null;
  const xcrs = caps.xcrs ? vcpu.getXcrs() : null;
  const debugRegs = caps.debugRegs ? vcpu.getDebugRegs() : null;
  const lapic = vcpu.getLapic();
  const khz = vcpu.tscKhz();
  const cpuid = vcpu.getCpuid();
  const { msrs } = vcpu.getMsrs(msrIndexes);
  // Last: the GETs above may queue events of their own (Firecracker's note).
  const vcpuEvents = caps.vcpuEvents ? vcpu.getVcpuEvents() : null;
  return { cpuid, tscKhz: khz > 0 ? khz : 0, mpState, regs, sregs, fpu, xsave, xcrs, debugRegs, lapic, msrs, vcpuEvents };
}

/** A snapshot's TSC rate is kept unless the host's differs by more than 250 ppm (QEMU's and Firecracker's tolerance). */
const TSC_KHZ_TOLERANCE_PPM = 250;

/** What restoreVcpu() could not put back. */
export interface RestoreReport {
  /** MSRs KVM_SET_MSRS refused; each was skipped and the rest set. */
  refusedMsrs: number[];
}

/**
 * The special registers to write back, with TR's type as the CPU had it.
 * On AMD, KVM reports TR always busy (svm_get_segment: "the busy flag in the
 * tr selector isn't exposed"), and writes back whatever it is given. A
 * long-mode guest never looks at the flag, and AMD's VMRUN does not check
 * it, but QEMU's TCG, which runs the nested host's SVM, takes an I/O
 * permission check through a busy TSS for a #GP: a restored guest's
 * `ioperm()`ed `out` (guest/init.sh reporting its command's status) faulted.
 * So on AMD the 64-bit TSS goes back available (9): TCG runs with that, as
 * it had it before the snapshot, and the hardware ignores the flag.
 */
function trAsSaved(state: VcpuState): VcpuState["sregs"] {
  const s = state.sregs;
  if (cpuidVendor(state.cpuid) !== "AuthenticAMD" || s.tr.type !== TSS64_BUSY) return s;
  return { ...s, tr: { ...s.tr, type: TSS64_AVAILABLE } };
}
const TSS64_AVAILABLE = 9, TSS64_BUSY = 11;

/**
 * Write `state` into `vcpu`, a vCPU that has not run yet (fresh from
 * KVM_CREATE_VCPU on a VM whose irqchip and PIT already exist). Throws
 * SysError naming the ioctl KVM refused; MSRs KVM refuses are skipped and
 * listed in the report instead, so the caller decides whether one matters.
 */
export function restoreVcpu(vcpu: VcpuFd, state: VcpuState): RestoreReport {
  // CPUID first: KVM checks MSR writes and XCR0 against the guest's CPUID.
  vcpu.setCpuid(state.cpuid);
  // The TSC rate before the TSC itself is written (an MSR, below).
  if (state.tscKhz > 0) {
    const khz = vcpu.tscKhz();
    if (khz > 0 && Math.abs(khz - state.tscKhz) * 1e6 > state.tscKhz * TSC_KHZ_TOLERANCE_PPM) vcpu.setTscKhz(state.tscKhz);
  }
  // Special registers before general ones: EFER, CR0 and CR4 set the mode in
  // which RIP and RFLAGS are taken (QEMU's order), and SREGS carries the APIC
  // base that KVM_SET_LAPIC below relies on.
  vcpu.setSregs(trAsSaved(state));
  // KVM_SET_REGS drops any pending exception: it must precede KVM_SET_VCPU_EVENTS.
  vcpu.setRegs(state.regs);
  // FPU, then XSAVE: KVM_SET_FPU writes the legacy area only, and KVM_SET_XSAVE
  // overwrites each component its XSTATE_BV marks in use and leaves the others,
  // so the pair reproduces the saved image exactly, stale legacy bytes included.
  vcpu.setFpu(state.fpu);
  if (state.xsave) vcpu.setXsave(state.xsave);
  if (state.xcrs) vcpu.setXcrs(state.xcrs);
  if (state.debugRegs) vcpu.setDebugRegs(state.debugRegs);
  // After SREGS (the APIC base) and before the MSRs: KVM quietly drops a
  // TSC_DEADLINE write unless the LAPIC timer is in TSC-deadline mode.
  vcpu.setLapic(state.lapic);
  // TSC_DEADLINE after the TSC, else KVM arms the deadline timer against the
  // wrong TSC and the guest loses its timer interrupt (Firecracker's DEFERRED_MSRS).
  const late = state.msrs.filter(([i]) => i === MSR_IA32_TSC_DEADLINE);
  const refusedMsrs = [
    ...vcpu.setMsrsEach(state.msrs.filter(([i]) => i !== MSR_IA32_TSC_DEADLINE)),
    ...vcpu.setMsrsEach(late),
  ];
  if (state.vcpuEvents) vcpu.setVcpuEvents(state.vcpuEvents);
  // MP state last (QEMU's order): KVM_SET_SREGS can mark the boot vCPU
  // runnable, and whether KVM accepts INIT_RECEIVED depends on the SMM state
  // the events just restored.
  if (state.mpState !== null) vcpu.setMpState(state.mpState);
  return { refusedMsrs };
}
