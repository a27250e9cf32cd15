/**
 * The KVM API: ioctl numbers, capabilities, exit reasons, and thin typed
 * wrappers over the /dev/kvm, VM and vCPU file descriptors.
 *
 * Numbers come from uapi/linux/kvm.h; `_IOC` reproduces the kernel's encoding
 * so each request is written as the header writes it, and the tests pin the
 * results. A failed ioctl throws SysError named after the ioctl
 * (`KVM_CREATE_VM: EACCES (permission denied)`).
 */
import { check, libc, NativeBuf, open, O_RDWR } from "./libc.ts";
import { SysError } from "./errno.ts";
import {
  CpuidEntry, decodeCpuid2, FPU_FCW, FPU_MXCSR, decodeRegs, decodeSregs, encodeCpuid2, encodeMemoryRegion, encodeMsrs, encodeRegs,
  encodeSregs, KVM_CPUID2_HEADER, KVM_CPUID_ENTRY2_SIZE, KVM_FPU_SIZE, KVM_IOEVENTFD_SIZE, KVM_IRQ_LEVEL_SIZE,
  KVM_IRQFD_SIZE, KVM_LAPIC_STATE_SIZE, KVM_MSR_ENTRY_SIZE, KVM_MSRS_HEADER, KVM_PIT_CONFIG_SIZE, KVM_REGS_SIZE,
  KVM_SREGS_SIZE, KVM_USERSPACE_MEMORY_REGION_SIZE, Regs, Sregs,
} from "./structs.ts";

const IOC_NONE = 0, IOC_WRITE = 1, IOC_READ = 2;
/** The kernel's _IOC(dir, type, nr, size) (include/uapi/asm-generic/ioctl.h). */
export function _IOC(dir: number, type: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
const KVMIO = 0xae;
const io = (nr: number) => _IOC(IOC_NONE, KVMIO, nr, 0);
const iow = (nr: number, size: number) => _IOC(IOC_WRITE, KVMIO, nr, size);
const ior = (nr: number, size: number) => _IOC(IOC_READ, KVMIO, nr, size);
const iowr = (nr: number, size: number) => _IOC(IOC_READ | IOC_WRITE, KVMIO, nr, size);

/** Every ioctl vmm issues, with the capability it needs noted. */
export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, KVM_CPUID2_HEADER),
  CREATE_VCPU: io(0x41),
  SET_USER_MEMORY_REGION: iow(0x46, KVM_USERSPACE_MEMORY_REGION_SIZE),
  SET_TSS_ADDR: io(0x47),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_IRQCHIP: io(0x60), // KVM_CAP_IRQCHIP
  IRQ_LINE: iow(0x61, KVM_IRQ_LEVEL_SIZE), // KVM_CAP_IRQCHIP
  IRQFD: iow(0x76, KVM_IRQFD_SIZE), // KVM_CAP_IRQFD
  CREATE_PIT2: iow(0x77, KVM_PIT_CONFIG_SIZE), // KVM_CAP_PIT2
  IOEVENTFD: iow(0x79, KVM_IOEVENTFD_SIZE), // KVM_CAP_IOEVENTFD
  RUN: io(0x80),
  GET_REGS: ior(0x81, KVM_REGS_SIZE),
  SET_REGS: iow(0x82, KVM_REGS_SIZE),
  GET_SREGS: ior(0x83, KVM_SREGS_SIZE),
  SET_SREGS: iow(0x84, KVM_SREGS_SIZE),
  SET_MSRS: iow(0x89, KVM_MSRS_HEADER),
  GET_FPU: ior(0x8c, KVM_FPU_SIZE),
  SET_FPU: iow(0x8d, KVM_FPU_SIZE),
  GET_LAPIC: ior(0x8e, KVM_LAPIC_STATE_SIZE), // KVM_CAP_IRQCHIP
  SET_LAPIC: iow(0x8f, KVM_LAPIC_STATE_SIZE),
  SET_CPUID2: iow(0x90, KVM_CPUID2_HEADER),
  GET_TSC_KHZ: io(0xa3), // KVM_CAP_GET_TSC_KHZ
} as const;

/** Capabilities (KVM_CHECK_EXTENSION arguments). */
export const CAP = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  PIT2: 33,
  IOEVENTFD: 36,
  SET_IDENTITY_MAP_ADDR: 37,
  IRQFD: 32,
  IMMEDIATE_EXIT: 136,
  GET_TSC_KHZ: 61,
  NR_VCPUS: 9,
  MAX_VCPUS: 66,
} as const;

/** What vmm cannot run without. */
export const REQUIRED_CAPS = [
  "IRQCHIP", "USER_MEMORY", "SET_TSS_ADDR", "EXT_CPUID", "PIT2", "IOEVENTFD", "IRQFD", "IMMEDIATE_EXIT",
] as const;

/** kvm_run.exit_reason values. */
export const EXIT = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, SET_TPR: 11, TPR_ACCESS: 12, NMI: 16, INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;
export const EXIT_NAMES: Record<number, string> = Object.fromEntries(Object.entries(EXIT).map(([k, v]) => [v, k]));
export const KVM_EXIT_IO_IN = 0, KVM_EXIT_IO_OUT = 1;
export const KVM_API_VERSION = 12;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1, KVM_IOEVENTFD_FLAG_PIO = 2, KVM_IOEVENTFD_FLAG_DEASSIGN = 4;
export const KVM_PIT_SPEAKER_DUMMY = 1;

const ioctlScratch = NativeBuf.alloc(4096);

function ioctl(fd: number, req: number, arg: bigint, name: string): number {
  return check(`KVM_${name}`, libc.ioctl(fd, BigInt(req), arg));
}

/** The /dev/kvm system fd. */
export class Kvm {
  readonly fd: number;
  constructor(path = "/dev/kvm") {
    try {
      this.fd = open(path, O_RDWR, 0, `open ${path}`);
    } catch (e) {
      if (e instanceof SysError && (e.errno === 2 || e.errno === 19)) {
        throw new SysError(`open ${path} (is KVM available on this host?)`, e.errno);
      }
      throw e;
    }
  }
  apiVersion(): number {
    return ioctl(this.fd, KVM.GET_API_VERSION, 0n, "GET_API_VERSION");
  }
  checkExtension(cap: number): number {
    return Number(libc.ioctl(this.fd, BigInt(KVM.CHECK_EXTENSION), BigInt(cap)));
  }
  vcpuMmapSize(): number {
    return ioctl(this.fd, KVM.GET_VCPU_MMAP_SIZE, 0n, "GET_VCPU_MMAP_SIZE");
  }
  /** The CPUID leaves KVM can offer (KVM_GET_SUPPORTED_CPUID). */
  supportedCpuid(): CpuidEntry[] {
    const max = 256;
    const buf = NativeBuf.alloc(KVM_CPUID2_HEADER + max * KVM_CPUID_ENTRY2_SIZE);
    buf.view.setUint32(0, max, true);
    ioctl(this.fd, KVM.GET_SUPPORTED_CPUID, buf.addr, "GET_SUPPORTED_CPUID");
    return decodeCpuid2(buf.view);
  }
  createVm(): number {
    return ioctl(this.fd, KVM.CREATE_VM, 0n, "CREATE_VM");
  }
}

/** Operations on a VM fd. */
export class VmFd {
  constructor(readonly fd: number) {}
  setUserMemoryRegion(slot: number, gpa: number, size: number, hostAddr: bigint): void {
    const b = ioctlScratch;
    encodeMemoryRegion(b.view, { slot, gpa: BigInt(gpa), size: BigInt(size), hostAddr });
    ioctl(this.fd, KVM.SET_USER_MEMORY_REGION, b.addr, "SET_USER_MEMORY_REGION");
  }
  setTssAddr(addr: number): void {
    ioctl(this.fd, KVM.SET_TSS_ADDR, BigInt(addr), "SET_TSS_ADDR");
  }
  setIdentityMapAddr(addr: number): void {
    ioctlScratch.view.setBigUint64(0, BigInt(addr), true);
    ioctl(this.fd, KVM.SET_IDENTITY_MAP_ADDR, ioctlScratch.addr, "SET_IDENTITY_MAP_ADDR");
  }
  createIrqchip(): void {
    ioctl(this.fd, KVM.CREATE_IRQCHIP, 0n, "CREATE_IRQCHIP");
  }
  createPit2(flags = KVM_PIT_SPEAKER_DUMMY): void {
    ioctlScratch.bytes.fill(0, 0, KVM_PIT_CONFIG_SIZE);
    ioctlScratch.view.setUint32(0, flags, true);
    ioctl(this.fd, KVM.CREATE_PIT2, ioctlScratch.addr, "CREATE_PIT2");
  }
  createVcpu(id: number): number {
    return ioctl(this.fd, KVM.CREATE_VCPU, BigInt(id), "CREATE_VCPU");
  }
}

/** Set an interrupt line on a VM fd; usable from any thread that has its own scratch. */
export function irqLine(vmFd: number, irq: number, level: number, scratch: NativeBuf): void {
  scratch.view.setUint32(0, irq, true);
  scratch.view.setUint32(4, level, true);
  ioctl(vmFd, KVM.IRQ_LINE, scratch.addr, "IRQ_LINE");
}

/** KVM_IRQFD: writes to `fd` raise `gsi` in the guest. */
export function irqfd(vmFd: number, fd: number, gsi: number, deassign = false): void {
  const b = ioctlScratch;
  b.bytes.fill(0, 0, KVM_IRQFD_SIZE);
  b.view.setUint32(0, fd, true);
  b.view.setUint32(4, gsi, true);
  b.view.setUint32(8, deassign ? 1 : 0, true);
  ioctl(vmFd, KVM.IRQFD, b.addr, "IRQFD");
}

/** KVM_IOEVENTFD: a guest write of `len` bytes at `addr` (optionally == datamatch) signals `fd`. */
export function ioeventfd(
  vmFd: number,
  o: { fd: number; addr: number; len: number; datamatch?: number; pio?: boolean; deassign?: boolean },
): void {
  const b = ioctlScratch;
  b.bytes.fill(0, 0, KVM_IOEVENTFD_SIZE);
  let flags = 0;
  if (o.datamatch !== undefined) flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
  if (o.pio) flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (o.deassign) flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  b.view.setBigUint64(0, BigInt(o.datamatch ?? 0), true);
  b.view.setBigUint64(8, BigInt(o.addr), true);
  b.view.setUint32(16, o.len, true);
  b.view.setInt32(20, o.fd, true);
  b.view.setUint32(24, flags, true);
  ioctl(vmFd, KVM.IOEVENTFD, b.addr, "IOEVENTFD");
}

/** Operations on a vCPU fd. Each thread that uses one makes its own (its own scratch). */
export class VcpuFd {
  readonly #buf = NativeBuf.alloc(4096);
  constructor(readonly fd: number) {}
  getRegs(): Regs {
    ioctl(this.fd, KVM.GET_REGS, this.#buf.addr, "GET_REGS");
    return decodeRegs(this.#buf.view);
  }
  setRegs(r: Partial<Regs>): void {
    encodeRegs(this.#buf.view, r);
    ioctl(this.fd, KVM.SET_REGS, this.#buf.addr, "SET_REGS");
  }
  getSregs(): Sregs {
    ioctl(this.fd, KVM.GET_SREGS, this.#buf.addr, "GET_SREGS");
    return decodeSregs(this.#buf.view);
  }
  setSregs(s: Sregs): void {
    encodeSregs(this.#buf.view, s);
    ioctl(this.fd, KVM.SET_SREGS, this.#buf.addr, "SET_SREGS");
  }
  setCpuid(entries: CpuidEntry[]): void {
    const b = NativeBuf.alloc(KVM_CPUID2_HEADER + entries.length * KVM_CPUID_ENTRY2_SIZE);
    encodeCpuid2(b.view, entries);
    ioctl(this.fd, KVM.SET_CPUID2, b.addr, "SET_CPUID2");
  }
  /** KVM_SET_MSRS; returns how many were set (KVM stops at the first it refuses). */
  setMsrs(msrs: [number, bigint][]): number {
    const b = NativeBuf.alloc(KVM_MSRS_HEADER + msrs.length * KVM_MSR_ENTRY_SIZE);
    encodeMsrs(b.view, msrs);
    return ioctl(this.fd, KVM.SET_MSRS, b.addr, "SET_MSRS");
  }
  getLapic(): Uint8Array {
    ioctl(this.fd, KVM.GET_LAPIC, this.#buf.addr, "GET_LAPIC");
    return this.#buf.bytes.slice(0, KVM_LAPIC_STATE_SIZE);
  }
  setLapic(regs: Uint8Array): void {
    this.#buf.bytes.set(regs);
    ioctl(this.fd, KVM.SET_LAPIC, this.#buf.addr, "SET_LAPIC");
  }
  /** Reset the FPU to its power-on control words (fcw 0x37f, mxcsr 0x1f80). */
  setFpuDefaults(): void {
    this.#buf.bytes.fill(0, 0, KVM_FPU_SIZE);
    this.#buf.view.setUint16(FPU_FCW, 0x37f, true);
    this.#buf.view.setUint32(FPU_MXCSR, 0x1f80, true);
    ioctl(this.fd, KVM.SET_FPU, this.#buf.addr, "SET_FPU");
  }
  tscKhz(): number {
    return Number(libc.ioctl(this.fd, BigInt(KVM.GET_TSC_KHZ), 0n));
  }
}
