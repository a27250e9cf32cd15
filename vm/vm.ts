/**
 * A KVM virtual machine: checks on /dev/kvm, guest RAM as one mapping,
 * in-kernel interrupt controllers and PIT, and the vCPU file descriptors.
 * The main thread builds it; vCPU Workers then receive plain numbers
 * (fds, addresses) and open their own views.
 */
import { Kvm, REQUIRED_CAPS, CAP, VmFd, KVM_API_VERSION, VcpuFd } from "../ffi/kvm.ts";
import { close, hostView, libc, mmapGuestRam, mmapGuestRamFrom } from "../ffi/libc.ts";
import { GuestMemory, type MemoryRegion } from "./memory.ts";
import { KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, ramRegions } from "../boot/layout.ts";
import { vcpuCpuid } from "./cpuid.ts";
import type { CpuidEntry } from "../ffi/structs.ts";
import { ConfigError } from "./errors.ts";

export { ConfigError, SnapshotError } from "./errors.ts";

export interface VmOptions {
  /** Guest RAM in MiB. */
  memMiB: number;
  /** Number of vCPUs. */
  cpus: number;
  /** Path of the KVM device. */
  kvmPath?: string;
  /**
   * Guest RAM from this file (a snapshot's memory file) instead of zeroes:
   * mapped MAP_PRIVATE where it holds data (ffi/libc.ts mmapGuestRamFrom),
   * so pages are read only when first touched and the guest's writes stay
   * in this process, never reaching the file.
   */
  memFd?: number;
}

export const MIN_MEM_MIB = 16;
export const MAX_MEM_MIB = 1024 * 1024;

/**
 * The VM: fds and the guest memory mapping. It owns them: `close()` gives
 * them all back, and a constructor that fails half-way closes what it made.
 */
export class Vm {
  readonly kvm!: Kvm;
  readonly vm!: VmFd;
  readonly memSize!: number;
  readonly memAddr: bigint = 0n;
  readonly regions!: MemoryRegion[];
  readonly mem!: GuestMemory;
  readonly vcpuFds: number[] = [];
  readonly runSize!: number;
  readonly supportedCpuid!: CpuidEntry[];
  /** RAM is mapped from a snapshot's memory file (`memFd`), not anonymous. */
  readonly memFromFile: boolean = false;
  #closed = false;

  constructor(o: VmOptions) {
    if (!Number.isInteger(o.memMiB) || o.memMiB < MIN_MEM_MIB || o.memMiB > MAX_MEM_MIB) {
      throw new ConfigError(`--memory ${o.memMiB}: must be a whole number of MiB from ${MIN_MEM_MIB} to ${MAX_MEM_MIB}`);
    }
    this.kvm = new Kvm(o.kvmPath);
    try {
      this.#build(o);
    } catch (e) {
      this.close();
      throw e;
    }
  }

  #build(o: VmOptions): void {
    // deno-lint-ignore no-explicit-any
    const self = this as any; // the readonly fields are set here, once
    const api = this.kvm.apiVersion();
    if (api !== KVM_API_VERSION) throw new ConfigError(`/dev/kvm speaks API version ${api}, vmm needs ${KVM_API_VERSION}`);
    for (const c of REQUIRED_CAPS) {
      if (this.kvm.checkExtension(CAP[c]) <= 0) throw new ConfigError(`/dev/kvm lacks KVM_CAP_${c}, which vmm needs`);
    }
    const maxCpus = this.kvm.checkExtension(CAP.MAX_VCPUS) || this.kvm.checkExtension(CAP.NR_VCPUS) || 1;
    if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > Math.min(maxCpus, 254)) {
      throw new ConfigError(`--cpus ${o.cpus}: must be a whole number from 1 to ${Math.min(maxCpus, 254)}`);
    }
    self.vm = new VmFd(this.kvm.createVm());
    self.runSize = this.kvm.vcpuMmapSize();
    self.supportedCpuid = this.kvm.supportedCpuid();

    // Intel VMX needs these pages for real mode; harmless elsewhere.
    this.vm.setTssAddr(KVM_TSS_ADDR);
    this.vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
    this.vm.createIrqchip();
    this.vm.createPit2();

    // One lazily-populated mapping for all of RAM, in huge pages where the
    // host has them (ffi/libc.ts mmapGuestRam): every thread reaches guest
    // memory by address; pages cost nothing until touched.
    self.memSize = o.memMiB * 1024 * 1024;
    self.memFromFile = o.memFd !== undefined;
    self.memAddr = o.memFd === undefined
      ? mmapGuestRam(this.memSize)
      : mmapGuestRamFrom(o.memFd, this.memSize);
    let offset = 0;
    self.regions = ramRegions(this.memSize).map((r) => {
      const m = { gpa: r.gpa, size: r.size, offset };
      offset += r.size;
      return m;
    });
    this.regions.forEach((r, slot) => this.vm.setUserMemoryRegion(slot, r.gpa, r.size, this.memAddr + BigInt(r.offset)));
    self.mem = new GuestMemory(hostView(this.memAddr, this.memSize), this.regions, this.memAddr);

    const host = { tscDeadline: this.kvm.checkExtension(CAP.TSC_DEADLINE_TIMER) > 0 };
    for (let id = 0; id < o.cpus; id++) {
      const fd = this.vm.createVcpu(id);
      this.vcpuFds.push(fd);
      new VcpuFd(fd).setCpuid(vcpuCpuid(this.supportedCpuid, id, o.cpus, host));
    }
  }

  /** Release the vCPU, VM and /dev/kvm fds and unmap guest RAM; no Worker may touch them any more. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.vcpuFds.forEach(close);
    this.vcpuFds.length = 0;
    if (this.vm) close(this.vm.fd);
    if (this.memAddr !== 0n) libc.munmap(this.memAddr, BigInt(this.memSize));
    if (this.kvm) close(this.kvm.fd);
  }
}
