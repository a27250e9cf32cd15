/**
 * A KVM virtual machine: checks on /dev/kvm, guest RAM as one mapping,
 * in-kernel interrupt controllers and PIT, and the vCPU file descriptors.
 * The main thread builds it; vCPU Workers then receive plain numbers
 * (fds, addresses) and open their own views.
 */
import { Kvm, REQUIRED_CAPS, CAP, VmFd, KVM_API_VERSION, VcpuFd } from "../ffi/kvm.ts";
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_SHARED, mmapAnon, hostView, PROT_READ, PROT_WRITE } from "../ffi/libc.ts";
import { GuestMemory, type MemoryRegion } from "./memory.ts";
import { KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, ramRegions } from "../boot/layout.ts";
import { vcpuCpuid } from "./cpuid.ts";
import type { CpuidEntry } from "../ffi/structs.ts";

/** A configuration vmm cannot run with (bad sizes, missing KVM features). */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

export interface VmOptions {
  /** Guest RAM in MiB. */
  memMiB: number;
  /** Number of vCPUs. */
  cpus: number;
  /** Path of the KVM device. */
  kvmPath?: string;
}

export const MIN_MEM_MIB = 16;
export const MAX_MEM_MIB = 1024 * 1024;

/** The VM: fds and the guest memory mapping. */
export class Vm {
  readonly kvm: Kvm;
  readonly vm: VmFd;
  readonly memSize: number;
  readonly memAddr: bigint;
  readonly regions: MemoryRegion[];
  readonly mem: GuestMemory;
  readonly vcpuFds: number[] = [];
  readonly runSize: number;
  readonly supportedCpuid: CpuidEntry[];

  constructor(o: VmOptions) {
    if (!Number.isInteger(o.memMiB) || o.memMiB < MIN_MEM_MIB || o.memMiB > MAX_MEM_MIB) {
      throw new ConfigError(`--memory ${o.memMiB}: must be a whole number of MiB from ${MIN_MEM_MIB} to ${MAX_MEM_MIB}`);
    }
    this.kvm = new Kvm(o.kvmPath);
    const api = this.kvm.apiVersion();
    if (api !== KVM_API_VERSION) throw new ConfigError(`/dev/kvm speaks API version ${api}, vmm needs ${KVM_API_VERSION}`);
    for (const c of REQUIRED_CAPS) {
      if (this.kvm.checkExtension(CAP[c]) <= 0) throw new ConfigError(`/dev/kvm lacks KVM_CAP_${c}, which vmm needs`);
    }
    const maxCpus = this.kvm.checkExtension(CAP.MAX_VCPUS) || this.kvm.checkExtension(CAP.NR_VCPUS) || 1;
    if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > Math.min(maxCpus, 254)) {
      throw new ConfigError(`--cpus ${o.cpus}: must be a whole number from 1 to ${Math.min(maxCpus, 254)}`);
    }
    this.vm = new VmFd(this.kvm.createVm());
    this.runSize = this.kvm.vcpuMmapSize();
    this.supportedCpuid = this.kvm.supportedCpuid();

    // Intel VMX needs these pages for real mode; harmless elsewhere.
    this.vm.setTssAddr(KVM_TSS_ADDR);
    this.vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
    this.vm.createIrqchip();
    this.vm.createPit2();

    // One shared, lazily-populated mapping for all of RAM: every thread
    // reaches guest memory by address; pages cost nothing until touched.
    this.memSize = o.memMiB * 1024 * 1024;
    this.memAddr = mmapAnon(this.memSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, "mmap guest RAM");
    let offset = 0;
    this.regions = ramRegions(this.memSize).map((r) => {
      const m = { gpa: r.gpa, size: r.size, offset };
      offset += r.size;
      return m;
    });
    this.regions.forEach((r, slot) => this.vm.setUserMemoryRegion(slot, r.gpa, r.size, this.memAddr + BigInt(r.offset)));
    this.mem = new GuestMemory(hostView(this.memAddr, this.memSize), this.regions, this.memAddr);

    for (let id = 0; id < o.cpus; id++) {
      const fd = this.vm.createVcpu(id);
      new VcpuFd(fd).setCpuid(vcpuCpuid(this.supportedCpuid, id, o.cpus));
      this.vcpuFds.push(fd);
    }
  }
}
