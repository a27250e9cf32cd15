/**
 * The VM-wide state KVM keeps for snapshots: the in-kernel interrupt
 * controllers (both 8259A PICs and the IOAPIC), the 8254 PIT and kvmclock.
 * `saveVmState()` reads them, `restoreVmState()` writes them into a fresh VM
 * whose irqchip and PIT already exist (vm/vm.ts creates both). Plain data,
 * ready to serialise; Firecracker's `arch/x86_64/vm.rs` (`save_state`,
 * `restore_state`) keeps the same set.
 */
import { CAP, type VmFd } from "../ffi/kvm.ts";
import {
  type ClockData, type IoapicState, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, type PicState, type PitState2,
} from "../ffi/structs.ts";

export interface VmState {
  picMaster: PicState;
  picSlave: PicState;
  ioapic: IoapicState;
  /** KVM_GET_PIT2; null without KVM_CAP_PIT_STATE2. */
  pit2: PitState2 | null;
  /** KVM_GET_CLOCK; null without KVM_CAP_ADJUST_CLOCK. */
  clock: ClockData | null;
}

/**
 * Read `vm`'s interrupt controllers, PIT and clock. No vCPU may be running:
 * a running guest changes all three under the reads.
 */
export function saveVmState(vm: VmFd): VmState {
  const pit2 = vm.checkExtension(CAP.PIT_STATE2) > 0 ? vm.getPit2() : null;
  const clock = vm.checkExtension(CAP.ADJUST_CLOCK) > 0 ? vm.getClock() : null;
  return {
    picMaster: vm.getPic(KVM_IRQCHIP_PIC_MASTER),
    picSlave: vm.getPic(KVM_IRQCHIP_PIC_SLAVE),
    ioapic: vm.getIoapic(),
    pit2,
    clock,
  };
}

/**
 * Write `state` into `vm`. Call it as late as possible before the vCPUs
 * start: from KVM_SET_CLOCK on, kvmclock runs with the host's time.
 */
export function restoreVmState(vm: VmFd, state: VmState): void {
  // KVM reloads each PIT channel's count here, so the counts restart "now".
  if (state.pit2) vm.setPit2(state.pit2);
  // Flags 0: the guest's clock goes on from the saved value. KVM_CLOCK_REALTIME
  // would add the wall time the snapshot spent on disk (and kernels before
  // 5.16 refuse any flag); the other flags are KVM's answers, not requests.
  if (state.clock) vm.setClock({ ...state.clock, flags: 0 });
  vm.setPic(KVM_IRQCHIP_PIC_MASTER, state.picMaster);
  vm.setPic(KVM_IRQCHIP_PIC_SLAVE, state.picSlave);
  vm.setIoapic(state.ioapic);
}
