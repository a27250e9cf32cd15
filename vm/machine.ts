/**
 * Assemble a bootable machine: the VM, the kernel and initrd in guest memory,
 * ACPI tables describing the CPUs and devices, and each vCPU's boot state.
 * Everything here happens on the main thread before any Worker starts.
 */
import { Vm } from "./vm.ts";
import { setupVcpuBoot, writeBootTables } from "./regs.ts";
import { VcpuFd } from "../ffi/kvm.ts";
import { loadLinux } from "../boot/loader.ts";
import type { ImageSource } from "../boot/image.ts";
import { buildAcpiTables, type VirtioMmioDevice } from "../boot/acpi.ts";
import { ACPI_MAX, ACPI_START } from "../boot/layout.ts";

export interface MachineConfig {
  kernel: ImageSource;
  initrd?: ImageSource;
  /** Appended to the initrd as a second archive (boot/loader.ts LinuxImage). */
  initrdExtra?: Uint8Array;
  cmdline: string;
  cpus: number;
  memMiB: number;
  mmioDevices?: VirtioMmioDevice[];
  kvmPath?: string;
}

/** Create the VM and load the guest; the vCPUs are ready for KVM_RUN. */
export function buildMachine(c: MachineConfig): Vm {
  const vm = new Vm({ memMiB: c.memMiB, cpus: c.cpus, kvmPath: c.kvmPath });
  try {
    load(vm, c);
  } catch (e) {
    vm.close(); // a kernel the loader refuses must not leak the VM's fds and RAM
    throw e;
  }
  return vm;
}

function load(vm: Vm, c: MachineConfig): void {
  const acpi = buildAcpiTables({ cpus: c.cpus, addr: ACPI_START, mmioDevices: c.mmioDevices ?? [] });
  if (acpi.bytes.length > ACPI_MAX) throw new RangeError(`ACPI tables (${acpi.bytes.length} bytes) overflow their area`);
  vm.mem.write(ACPI_START, acpi.bytes);
  writeBootTables(vm.mem);
  const boot = loadLinux(vm.mem, vm.memSize, {
    kernel: c.kernel,
    initrd: c.initrd,
    initrdExtra: c.initrdExtra,
    cmdline: c.cmdline,
    acpiRsdpAddr: acpi.rsdpAddr,
  });
  vm.vcpuFds.forEach((fd, id) => setupVcpuBoot(new VcpuFd(fd), id === 0 ? boot : null));
}
