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
import {
  type ClockData, type DebugRegs, decodeClockData, decodeDebugRegs, decodeFpu, decodeIoapic, decodeMsrList, decodeMsrs,
  decodePic, decodePitState2, decodeXcrs, encodeClockData, encodeDebugRegs, encodeFpu, encodeIoapic, encodePic,
  encodePitState2, encodeXcrs, type Fpu, type IoapicState, KVM_CLOCK_DATA_SIZE, KVM_DEBUGREGS_SIZE, KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_SIZE, KVM_MP_STATE_SIZE, KVM_MSR_LIST_HEADER, KVM_MSRS_PER_CALL, KVM_PIT_STATE2_SIZE, KVM_VCPU_EVENTS_SIZE,
  KVM_XCRS_SIZE, KVM_XSAVE_SIZE, type PicState, type PitState2, type Xcr,
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
  // State for snapshots: each GET has its SET; the header declares KVM_SET_IRQCHIP _IOR, kept as is.
  GET_MSR_INDEX_LIST: iowr(0x02, KVM_MSR_LIST_HEADER), // /dev/kvm fd
  GET_IRQCHIP: iowr(0x62, KVM_IRQCHIP_SIZE), // KVM_CAP_IRQCHIP
  SET_IRQCHIP: ior(0x63, KVM_IRQCHIP_SIZE), // KVM_CAP_IRQCHIP
  SET_CLOCK: iow(0x7b, KVM_CLOCK_DATA_SIZE), // KVM_CAP_ADJUST_CLOCK
  GET_CLOCK: ior(0x7c, KVM_CLOCK_DATA_SIZE), // KVM_CAP_ADJUST_CLOCK
  GET_MSRS: iowr(0x88, KVM_MSRS_HEADER),
  GET_CPUID2: iowr(0x91, KVM_CPUID2_HEADER), // KVM_CAP_EXT_CPUID
  GET_MP_STATE: ior(0x98, KVM_MP_STATE_SIZE), // KVM_CAP_MP_STATE
  SET_MP_STATE: iow(0x99, KVM_MP_STATE_SIZE), // KVM_CAP_MP_STATE
  GET_PIT2: ior(0x9f, KVM_PIT_STATE2_SIZE), // KVM_CAP_PIT_STATE2 (VM fd; same number as GET_VCPU_EVENTS)
  SET_PIT2: iow(0xa0, KVM_PIT_STATE2_SIZE), // KVM_CAP_PIT_STATE2
  GET_VCPU_EVENTS: ior(0x9f, KVM_VCPU_EVENTS_SIZE), // KVM_CAP_VCPU_EVENTS (vCPU fd)
  SET_VCPU_EVENTS: iow(0xa0, KVM_VCPU_EVENTS_SIZE), // KVM_CAP_VCPU_EVENTS
  GET_DEBUGREGS: ior(0xa1, KVM_DEBUGREGS_SIZE), // KVM_CAP_DEBUGREGS
  SET_DEBUGREGS: iow(0xa2, KVM_DEBUGREGS_SIZE), // KVM_CAP_DEBUGREGS
  SET_TSC_KHZ: io(0xa2), // KVM_CAP_TSC_CONTROL
  GET_XSAVE: ior(0xa4, KVM_XSAVE_SIZE), // KVM_CAP_XSAVE
  SET_XSAVE: iow(0xa5, KVM_XSAVE_SIZE), // KVM_CAP_XSAVE
  GET_XCRS: ior(0xa6, KVM_XCRS_SIZE), // KVM_CAP_XCRS
  SET_XCRS: iow(0xa7, KVM_XCRS_SIZE), // KVM_CAP_XCRS
  KVMCLOCK_CTRL: io(0xad), // KVM_CAP_KVMCLOCK_CTRL
  GET_XSAVE2: ior(0xcf, KVM_XSAVE_SIZE), // KVM_CAP_XSAVE2 (the size in the number stays 4096)
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
  // State for snapshots.
  MP_STATE: 14,
  PIT_STATE2: 35,
  ADJUST_CLOCK: 39,
  VCPU_EVENTS: 41,
  DEBUGREGS: 50,
  XSAVE: 55,
  XCRS: 56,
  TSC_CONTROL: 60,
  KVMCLOCK_CTRL: 76,
  /** KVM emulates the LAPIC timer's TSC-deadline mode (vm/cpuid.ts sets the CPUID bit). */
  TSC_DEADLINE_TIMER: 72,
  /** Returns the size of struct kvm_xsave KVM_GET_XSAVE2 fills (>= 4096); ask the VM fd. */
  XSAVE2: 208,
  /** Memory slots may be KVM_MEM_READONLY: reads are memory, writes exit as MMIO. */
  READONLY_MEM: 81,
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
/** kvm_userspace_memory_region.flags: the guest reads the slot, its writes exit as MMIO (KVM_CAP_READONLY_MEM). */
export const KVM_MEM_READONLY = 2;

const ioctlScratch = NativeBuf.alloc(4096);

/**
 * Scratch for vCPU ioctls, one set per thread (each Worker has its own copy
 * of this module, and frees it as it ends): a VcpuFd is a thin handle that
 * holds no native memory, so the many short-lived ones cost nothing.
 * No call uses them across another, since JavaScript on a thread never re-enters.
 */
const vcpuScratch = NativeBuf.alloc(4096);
let cpuidScratch: NativeBuf | null = null;
let xsaveScratch: NativeBuf | null = null;
/** A per-thread buffer of at least `len` bytes, grown (and the old one freed) when too small. */
function grow(buf: NativeBuf | null, len: number): NativeBuf {
  if (buf && buf.bytes.length >= len) return buf;
  buf?.free();
  return NativeBuf.alloc(len);
}
/** asm-generic/errno-base.h: KVM_GET_MSR_INDEX_LIST's answer to a list too short. */
const E2BIG = 7;

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
    const buf = cpuidScratch = grow(cpuidScratch, KVM_CPUID2_HEADER + max * KVM_CPUID_ENTRY2_SIZE);
    buf.view.setUint32(0, max, true);
    ioctl(this.fd, KVM.GET_SUPPORTED_CPUID, buf.addr, "GET_SUPPORTED_CPUID");
    return decodeCpuid2(buf.view);
  }
  createVm(): number {
    return ioctl(this.fd, KVM.CREATE_VM, 0n, "CREATE_VM");
  }
  #msrIndexList: number[] | null = null;
  /**
   * The MSRs KVM can save and restore (KVM_GET_MSR_INDEX_LIST): what the host
   * supports of msrs_to_save plus the MSRs KVM emulates. Asked once: the answer
   * is fixed for the life of the module. A vCPU may still refuse some of them
   * (Hyper-V and KVM PV MSRs need their CPUID bits): VcpuFd.getMsrs() skips those.
   */
  msrIndexList(): number[] {
    if (this.#msrIndexList) return [...this.#msrIndexList];
    // A call with nmsrs 0 fails with E2BIG and writes back how many there are.
    const head = ioctlScratch;
    head.view.setUint32(0, 0, true);
    try {
      ioctl(this.fd, KVM.GET_MSR_INDEX_LIST, head.addr, "GET_MSR_INDEX_LIST");
    } catch (e) {
      if (!(e instanceof SysError && e.errno === E2BIG)) throw e;
    }
    const n = head.view.getUint32(0, true);
    const len = KVM_MSR_LIST_HEADER + n * 4;
    // The scratch holds 1023 indices; KVM lists a few hundred at most today.
    const b = len <= head.bytes.length ? head : NativeBuf.alloc(len);
    try {
      b.view.setUint32(0, n, true);
      ioctl(this.fd, KVM.GET_MSR_INDEX_LIST, b.addr, "GET_MSR_INDEX_LIST");
      this.#msrIndexList = decodeMsrList(b.view);
    } finally {
      if (b !== head) b.free();
    }
    return [...this.#msrIndexList];
  }
}

/** Operations on a VM fd. */
export class VmFd {
  constructor(readonly fd: number) {}
  setUserMemoryRegion(slot: number, gpa: number, size: number, hostAddr: bigint, flags = 0): void {
    const b = ioctlScratch;
    encodeMemoryRegion(b.view, { slot, flags, gpa: BigInt(gpa), size: BigInt(size), hostAddr });
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
  /** KVM_CHECK_EXTENSION on the VM: the answer for this VM (KVM_CAP_XSAVE2's size is per VM). */
  checkExtension(cap: number): number {
    return Number(libc.ioctl(this.fd, BigInt(KVM.CHECK_EXTENSION), BigInt(cap)));
  }
  /** KVM_GET_IRQCHIP for one chip: the union is read at IRQCHIP_CHIP by the caller's decoder. */
  #getIrqchip(chipId: number): DataView {
    const b = ioctlScratch;
    b.bytes.fill(0, 0, KVM_IRQCHIP_SIZE);
    b.view.setUint32(0, chipId, true);
    ioctl(this.fd, KVM.GET_IRQCHIP, b.addr, "GET_IRQCHIP");
    return b.view;
  }
  #setIrqchip(chipId: number, encode: (v: DataView) => void): void {
    const b = ioctlScratch;
    b.bytes.fill(0, 0, KVM_IRQCHIP_SIZE);
    b.view.setUint32(0, chipId, true);
    encode(b.view);
    ioctl(this.fd, KVM.SET_IRQCHIP, b.addr, "SET_IRQCHIP");
  }
  /** One 8259A of the in-kernel PIC pair: KVM_IRQCHIP_PIC_MASTER or KVM_IRQCHIP_PIC_SLAVE. */
  getPic(chipId: number): PicState {
    return decodePic(this.#getIrqchip(chipId));
  }
  setPic(chipId: number, p: PicState): void {
    this.#setIrqchip(chipId, (v) => encodePic(v, p));
  }
  getIoapic(): IoapicState {
    return decodeIoapic(this.#getIrqchip(KVM_IRQCHIP_IOAPIC));
  }
  /** KVM re-delivers the IRR bits of edge-triggered, unmasked pins it is given (kvm_set_ioapic). */
  setIoapic(s: IoapicState): void {
    this.#setIrqchip(KVM_IRQCHIP_IOAPIC, (v) => encodeIoapic(v, s));
  }
  getPit2(): PitState2 {
    ioctlScratch.bytes.fill(0, 0, KVM_PIT_STATE2_SIZE);
    ioctl(this.fd, KVM.GET_PIT2, ioctlScratch.addr, "GET_PIT2");
    return decodePitState2(ioctlScratch.view);
  }
  /** KVM reloads every channel's count, so count_load_time becomes "now" (kvm_vm_ioctl_set_pit2). */
  setPit2(s: PitState2): void {
    encodePitState2(ioctlScratch.view, s);
    ioctl(this.fd, KVM.SET_PIT2, ioctlScratch.addr, "SET_PIT2");
  }
  getClock(): ClockData {
    ioctlScratch.bytes.fill(0, 0, KVM_CLOCK_DATA_SIZE);
    ioctl(this.fd, KVM.GET_CLOCK, ioctlScratch.addr, "GET_CLOCK");
    return decodeClockData(ioctlScratch.view);
  }
  /**
   * KVM_SET_CLOCK: kvmclock reads `c.clock` now. With KVM_CLOCK_REALTIME in
   * `c.flags` (Linux 5.16+), KVM adds the wall time elapsed since `c.realtime`;
   * kernels before 5.16 refuse any flag with EINVAL.
   */
  setClock(c: ClockData): void {
    encodeClockData(ioctlScratch.view, c);
    ioctl(this.fd, KVM.SET_CLOCK, ioctlScratch.addr, "SET_CLOCK");
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
  get #buf(): NativeBuf {
    return vcpuScratch;
  }
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
    const b = cpuidScratch = grow(cpuidScratch, KVM_CPUID2_HEADER + Math.max(256, entries.length) * KVM_CPUID_ENTRY2_SIZE);
    encodeCpuid2(b.view, entries);
    ioctl(this.fd, KVM.SET_CPUID2, b.addr, "SET_CPUID2");
  }
  /** KVM_SET_MSRS; returns how many were set (KVM stops at the first it refuses). */
  setMsrs(msrs: [number, bigint][]): number {
    const b = NativeBuf.alloc(KVM_MSRS_HEADER + msrs.length * KVM_MSR_ENTRY_SIZE);
    try {
      encodeMsrs(b.view, msrs);
      return ioctl(this.fd, KVM.SET_MSRS, b.addr, "SET_MSRS");
    } finally {
      b.free();
    }
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
  /** KVM_SET_TSC_KHZ: the guest's TSC rate (scaled by hardware; needs KVM_CAP_TSC_CONTROL). */
  setTscKhz(khz: number): void {
    ioctl(this.fd, KVM.SET_TSC_KHZ, BigInt(khz), "SET_TSC_KHZ");
  }
  /**
   * KVM_GET_MSRS for `indexes`, in order. KVM stops at the first MSR it cannot
   * read and returns how many it read; that MSR is skipped (listed in
   * `unreadable`) and the read goes on from the next one.
   */
  getMsrs(indexes: number[]): { msrs: [number, bigint][]; unreadable: number[] } {
    const b = this.#buf; // 8 + 255 × 16 = 4088 bytes: one call's worth fits
    const msrs: [number, bigint][] = [], unreadable: number[] = [];
    for (let at = 0; at < indexes.length;) {
      const chunk = indexes.slice(at, at + KVM_MSRS_PER_CALL);
      encodeMsrs(b.view, chunk.map((i): [number, bigint] => [i, 0n]));
      const n = ioctl(this.fd, KVM.GET_MSRS, b.addr, "GET_MSRS");
      msrs.push(...decodeMsrs(b.view, n));
      if (n < chunk.length) unreadable.push(chunk[n]);
      at += Math.min(n + 1, chunk.length);
    }
    return { msrs, unreadable };
  }
  /**
   * KVM_SET_MSRS for every entry, in order, without stopping at a refusal:
   * KVM stops at the first MSR it refuses, which is skipped and returned.
   */
  setMsrsEach(msrs: [number, bigint][]): number[] {
    const b = this.#buf;
    const refused: number[] = [];
    for (let at = 0; at < msrs.length;) {
      const chunk = msrs.slice(at, at + KVM_MSRS_PER_CALL);
      encodeMsrs(b.view, chunk);
      const n = ioctl(this.fd, KVM.SET_MSRS, b.addr, "SET_MSRS");
      if (n < chunk.length) refused.push(chunk[n][0]);
      at += Math.min(n + 1, chunk.length);
    }
    return refused;
  }
  /**
   * KVM_GET_CPUID2: the CPUID this vCPU has. On KVM, the table KVM_SET_CPUID2
   * gave it; PVM's KVM answers with more features than it took (and than its
   * KVM_GET_SUPPORTED_CPUID lists).
   */
  getCpuid(): CpuidEntry[] {
    // KVM_MAX_CPUID_ENTRIES (arch/x86/include/asm/kvm_host.h) is 256; fewer fails with E2BIG.
    const max = 256;
    const b = cpuidScratch = grow(cpuidScratch, KVM_CPUID2_HEADER + max * KVM_CPUID_ENTRY2_SIZE);
    b.view.setUint32(0, max, true);
    ioctl(this.fd, KVM.GET_CPUID2, b.addr, "GET_CPUID2");
    return decodeCpuid2(b.view);
  }
  getFpu(): Fpu {
    ioctl(this.fd, KVM.GET_FPU, this.#buf.addr, "GET_FPU");
    return decodeFpu(this.#buf.view);
  }
  /**
   * KVM_SET_FPU writes the legacy area of the guest's XSAVE image but not its
   * XSTATE_BV, so where XSAVE exists KVM_SET_XSAVE is what makes state live.
   */
  setFpu(f: Fpu): void {
    encodeFpu(this.#buf.view, f);
    ioctl(this.fd, KVM.SET_FPU, this.#buf.addr, "SET_FPU");
  }
  /** The XSAVE scratch, at least `len` bytes: allocated on first use, replaced only if a bigger one is needed. */
  #xsave(len: number): NativeBuf {
    return xsaveScratch = grow(xsaveScratch, Math.max(len, KVM_XSAVE_SIZE));
  }
  /**
   * The guest's XSAVE image. `xsave2Size` is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)
   * on the VM: when above 0, KVM_GET_XSAVE2 fills that many bytes (AMX and
   * other big components need more than 4096); otherwise KVM_GET_XSAVE, which
   * fails with EINVAL where the guest's XSAVE image is bigger than 4096.
   */
  getXsave(xsave2Size = 0): Uint8Array {
    if (xsave2Size > 0) {
      const b = this.#xsave(xsave2Size);
      ioctl(this.fd, KVM.GET_XSAVE2, b.addr, "GET_XSAVE2");
      return b.bytes.slice(0, Math.max(xsave2Size, KVM_XSAVE_SIZE));
    }
    const b = this.#xsave(KVM_XSAVE_SIZE);
    ioctl(this.fd, KVM.GET_XSAVE, b.addr, "GET_XSAVE");
    return b.bytes.slice(0, KVM_XSAVE_SIZE);
  }
  /**
   * KVM_SET_XSAVE reads as many bytes as the guest's XSAVE image has (4096,
   * or KVM_CAP_XSAVE2's size), whatever `image.length` is: the rest of the
   * scratch is zeroed so a short image never carries stale bytes.
   */
  setXsave(image: Uint8Array): void {
    const b = this.#xsave(image.length);
    b.bytes.set(image);
    b.bytes.fill(0, image.length);
    ioctl(this.fd, KVM.SET_XSAVE, b.addr, "SET_XSAVE");
  }
  getXcrs(): Xcr[] {
    ioctl(this.fd, KVM.GET_XCRS, this.#buf.addr, "GET_XCRS");
    return decodeXcrs(this.#buf.view);
  }
  /** KVM checks XCR0 against the guest's CPUID leaf 0xD: set CPUID first. */
  setXcrs(xcrs: Xcr[]): void {
    encodeXcrs(this.#buf.view, xcrs);
    ioctl(this.fd, KVM.SET_XCRS, this.#buf.addr, "SET_XCRS");
  }
  /** KVM_GET_MP_STATE (MP_STATE.*); KVM first takes any INIT/SIPI the LAPIC latched. */
  getMpState(): number {
    ioctl(this.fd, KVM.GET_MP_STATE, this.#buf.addr, "GET_MP_STATE");
    return this.#buf.view.getUint32(0, true);
  }
  setMpState(mpState: number): void {
    this.#buf.view.setUint32(0, mpState, true);
    ioctl(this.fd, KVM.SET_MP_STATE, this.#buf.addr, "SET_MP_STATE");
  }
  /** struct kvm_vcpu_events as raw bytes (VCPU_EVENTS names the offsets). */
  getVcpuEvents(): Uint8Array {
    this.#buf.bytes.fill(0, 0, KVM_VCPU_EVENTS_SIZE);
    ioctl(this.fd, KVM.GET_VCPU_EVENTS, this.#buf.addr, "GET_VCPU_EVENTS");
    return this.#buf.bytes.slice(0, KVM_VCPU_EVENTS_SIZE);
  }
  setVcpuEvents(events: Uint8Array): void {
    if (events.length !== KVM_VCPU_EVENTS_SIZE) {
      throw new RangeError(`struct kvm_vcpu_events is ${KVM_VCPU_EVENTS_SIZE} bytes, not ${events.length}`);
    }
    this.#buf.bytes.set(events);
    ioctl(this.fd, KVM.SET_VCPU_EVENTS, this.#buf.addr, "SET_VCPU_EVENTS");
  }
  getDebugRegs(): DebugRegs {
    ioctl(this.fd, KVM.GET_DEBUGREGS, this.#buf.addr, "GET_DEBUGREGS");
    return decodeDebugRegs(this.#buf.view);
  }
  /** KVM refuses DR6/DR7 with bits set above bit 31 (EINVAL). */
  setDebugRegs(d: DebugRegs): void {
    encodeDebugRegs(this.#buf.view, d);
    ioctl(this.fd, KVM.SET_DEBUGREGS, this.#buf.addr, "SET_DEBUGREGS");
  }
  /**
   * KVM_KVMCLOCK_CTRL: tell a guest using kvmclock that the VM was paused, so
   * its soft-lockup watchdog does not fire on resume. EINVAL when the guest
   * has not enabled kvmclock.
   */
  kvmclockCtrl(): void {
    ioctl(this.fd, KVM.KVMCLOCK_CTRL, 0n, "KVMCLOCK_CTRL");
  }
}
