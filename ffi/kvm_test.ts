/**
 * The KVM API of ffi/kvm.ts: ioctl numbers pinned against the values
 * uapi/linux/kvm.h produces, then the wrappers driven against the real
 * /dev/kvm (no guest runs here; loop/control_test.ts boots guests).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { _IOC, CAP, EXIT, ioeventfd, irqfd, irqLine, Kvm, KVM, KVM_API_VERSION, REQUIRED_CAPS, VcpuFd, VmFd } from "./kvm.ts";
import { SysError } from "./errno.ts";
import { close, eventfd, libc, MAP_ANONYMOUS, MAP_SHARED, mmapAnon, NativeBuf, PROT_READ, PROT_WRITE } from "./libc.ts";
import { FPU_MXCSR, KVM_FPU_SIZE } from "./structs.ts";
import { vcpuCpuid } from "../vm/cpuid.ts";
import { BOOT_MSRS, longModeSregs, wireLint } from "../vm/regs.ts";
import { requireKvm } from "../test/support/require_kvm.ts";

const EEXIST = 17, ENOENT = 2;

/** A fresh VM fd with one vCPU; closed by the returned `done`. */
function vmWithVcpu(o: { irqchip?: boolean } = {}) {
  requireKvm();
  const kvm = new Kvm();
  const vm = new VmFd(kvm.createVm());
  if (o.irqchip) vm.createIrqchip();
  const vcpu = new VcpuFd(vm.createVcpu(0));
  return {
    kvm, vm, vcpu,
    done() {
      close(vcpu.fd);
      close(vm.fd);
      close(kvm.fd);
    },
  };
}

test("KVM ioctl numbers equal the kernel's _IO/_IOR/_IOW/_IOWR encodings", () => {
  const expected: Record<keyof typeof KVM, number> = {
    GET_API_VERSION: 0xae00,
    CREATE_VM: 0xae01,
    CHECK_EXTENSION: 0xae03,
    GET_VCPU_MMAP_SIZE: 0xae04,
    GET_SUPPORTED_CPUID: 0xc008ae05,
    CREATE_VCPU: 0xae41,
    SET_USER_MEMORY_REGION: 0x4020ae46,
    SET_TSS_ADDR: 0xae47,
    SET_IDENTITY_MAP_ADDR: 0x4008ae48,
    CREATE_IRQCHIP: 0xae60,
    IRQ_LINE: 0x4008ae61,
    IRQFD: 0x4020ae76,
    CREATE_PIT2: 0x4040ae77,
    IOEVENTFD: 0x4040ae79,
    RUN: 0xae80,
    GET_REGS: 0x8090ae81,
    SET_REGS: 0x4090ae82,
    GET_SREGS: 0x8138ae83,
    SET_SREGS: 0x4138ae84,
    SET_MSRS: 0x4008ae89,
    GET_FPU: 0x81a0ae8c,
    SET_FPU: 0x41a0ae8d,
    GET_LAPIC: 0x8400ae8e,
    SET_LAPIC: 0x4400ae8f,
    SET_CPUID2: 0x4008ae90,
    GET_TSC_KHZ: 0xaea3,
    GET_MSR_INDEX_LIST: 0xc004ae02,
    GET_IRQCHIP: 0xc208ae62,
    SET_IRQCHIP: 0x8208ae63,
    SET_CLOCK: 0x4030ae7b,
    GET_CLOCK: 0x8030ae7c,
    GET_MSRS: 0xc008ae88,
    GET_CPUID2: 0xc008ae91,
    GET_MP_STATE: 0x8004ae98,
    SET_MP_STATE: 0x4004ae99,
    GET_PIT2: 0x8070ae9f,
    SET_PIT2: 0x4070aea0,
    GET_VCPU_EVENTS: 0x8040ae9f,
    SET_VCPU_EVENTS: 0x4040aea0,
    GET_DEBUGREGS: 0x8080aea1,
    SET_DEBUGREGS: 0x4080aea2,
    SET_TSC_KHZ: 0xaea2,
    GET_XSAVE: 0x9000aea4,
    SET_XSAVE: 0x5000aea5,
    GET_XCRS: 0x8188aea6,
    SET_XCRS: 0x4188aea7,
    KVMCLOCK_CTRL: 0xaead,
    GET_XSAVE2: 0x9000aecf,
  };
  for (const [name, value] of Object.entries(expected)) {
    assert.equal(KVM[name as keyof typeof KVM].toString(16), value.toString(16), `KVM_${name}`);
  }
  assert.deepEqual(Object.keys(KVM).sort(), Object.keys(expected).sort(), "every ioctl vmm issues is pinned");
});

test("_IOC() packs direction, size, type and number as asm-generic/ioctl.h does", () => {
  assert.equal(_IOC(0, 0xae, 0x80, 0), 0xae80);
  assert.equal(_IOC(2, 0xae, 0x83, 312), 0x8138ae83); // read: bit 31, a positive number
  assert.equal(_IOC(3, 0xae, 0x05, 8), 0xc008ae05);
});

test("capability and exit-reason numbers match uapi/linux/kvm.h", () => {
  assert.deepEqual({ ...CAP }, {
    IRQCHIP: 0, HLT: 1, USER_MEMORY: 3, SET_TSS_ADDR: 4, EXT_CPUID: 7, PIT2: 33, IOEVENTFD: 36,
    SET_IDENTITY_MAP_ADDR: 37, IRQFD: 32, IMMEDIATE_EXIT: 136, GET_TSC_KHZ: 61, NR_VCPUS: 9, MAX_VCPUS: 66,
    MP_STATE: 14, PIT_STATE2: 35, ADJUST_CLOCK: 39, VCPU_EVENTS: 41, DEBUGREGS: 50, XSAVE: 55, XCRS: 56,
    TSC_CONTROL: 60, KVMCLOCK_CTRL: 76, TSC_DEADLINE_TIMER: 72, XSAVE2: 208, READONLY_MEM: 81,
  });
  assert.deepEqual({ ...EXIT }, {
    UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
    SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, SET_TPR: 11, TPR_ACCESS: 12, NMI: 16, INTERNAL_ERROR: 17,
    SYSTEM_EVENT: 24,
  });
});

test("new Kvm() on a missing device names the path and asks whether KVM is available", () => {
  assert.throws(() => new Kvm("/dev/no-such-kvm"), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.errno, ENOENT);
    assert.equal(e.message, "open /dev/no-such-kvm (is KVM available on this host?): ENOENT (no such file or directory)");
    return true;
  });
});

test("Kvm speaks API version 12 and has every capability vmm requires", () => {
  requireKvm();
  const kvm = new Kvm();
  assert.equal(kvm.apiVersion(), KVM_API_VERSION);
  for (const c of REQUIRED_CAPS) assert.ok(kvm.checkExtension(CAP[c]) > 0, `KVM_CAP_${c}`);
  assert.ok(kvm.vcpuMmapSize() >= 4096, "kvm_run is at least a page");
  const cpuid = kvm.supportedCpuid();
  assert.ok(cpuid.some((e) => e.function === 0) && cpuid.some((e) => e.function === 1), "leaves 0 and 1 are offered");
  close(kvm.fd);
});

test("VmFd.setUserMemoryRegion() maps RAM, and an overlapping slot fails as KVM_SET_USER_MEMORY_REGION: EEXIST", () => {
  const { vm, done } = vmWithVcpu();
  try {
    const ram = mmapAnon(0x20_0000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
    vm.setUserMemoryRegion(0, 0, 0x10_0000, ram);
    assert.throws(() => vm.setUserMemoryRegion(1, 0x8_0000, 0x10_0000, ram + 0x10_0000n), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.call, "KVM_SET_USER_MEMORY_REGION");
      assert.equal(e.code, "EEXIST");
      assert.equal(e.message, "KVM_SET_USER_MEMORY_REGION: EEXIST (file exists)");
      return true;
    });
    vm.setUserMemoryRegion(1, 0x10_0000, 0x10_0000, ram + 0x10_0000n); // adjacent is fine
  } finally {
    done();
  }
});

test("ioeventfd() registers a port once, refuses a duplicate with EEXIST, and deassigns", () => {
  const { vm, done } = vmWithVcpu();
  const efd = eventfd();
  try {
    ioeventfd(vm.fd, { fd: efd, addr: 0x510, len: 2, datamatch: 3, pio: true });
    assert.throws(
      () => ioeventfd(vm.fd, { fd: efd, addr: 0x510, len: 2, datamatch: 3, pio: true }),
      (e: unknown) => e instanceof SysError && e.call === "KVM_IOEVENTFD" && e.errno === EEXIST,
    );
    ioeventfd(vm.fd, { fd: efd, addr: 0x510, len: 2, datamatch: 3, pio: true, deassign: true });
    ioeventfd(vm.fd, { fd: efd, addr: 0x510, len: 2, datamatch: 3, pio: true }); // free again
  } finally {
    close(efd);
    done();
  }
});

test("with the in-kernel irqchip, irqfd() and irqLine() wire interrupts and KVM_CREATE_PIT2 succeeds", () => {
  const { vm, done } = vmWithVcpu({ irqchip: true });
  const efd = eventfd();
  try {
    vm.createPit2();
    irqfd(vm.fd, efd, 5);
    irqfd(vm.fd, efd, 5, true);
    const scratch = NativeBuf.alloc(16);
    irqLine(vm.fd, 4, 1, scratch);
    irqLine(vm.fd, 4, 0, scratch);
  } finally {
    close(efd);
    done();
  }
});

test("VcpuFd registers round-trip through KVM_SET_REGS and KVM_GET_REGS", () => {
  const { vcpu, done } = vmWithVcpu();
  try {
    vcpu.setRegs({ rip: 0x10_0200n, rsi: 0x7000n, rsp: 0x8ff0n, rflags: 2n, r15: 0x1234_5678_9abc_def0n });
    const r = vcpu.getRegs();
    assert.equal(r.rip, 0x10_0200n);
    assert.equal(r.rsi, 0x7000n);
    assert.equal(r.rsp, 0x8ff0n);
    assert.equal(r.r15, 0x1234_5678_9abc_def0n);
    assert.equal(r.rflags & 2n, 2n);
  } finally {
    done();
  }
});

test("VcpuFd special registers accept the long-mode state vm/regs.ts builds", () => {
  const { vcpu, done } = vmWithVcpu();
  try {
    vcpu.setSregs(longModeSregs(vcpu.getSregs()));
    const s = vcpu.getSregs();
    assert.equal(s.cr3, 0x9000n);
    assert.equal(s.efer & 0x500n, 0x500n, "EFER.LME and LMA");
    assert.equal(s.cr0 & 0x8000_0001n, 0x8000_0001n, "CR0.PG and PE");
    assert.equal(s.cs.l, 1);
    assert.equal(s.cs.selector, 8);
    assert.equal(s.gdt.base, 0x500n);
  } finally {
    done();
  }
});

test("VcpuFd takes the boot MSRs, per-vCPU CPUID and a rewired LAPIC", () => {
  const { kvm, vcpu, done } = vmWithVcpu({ irqchip: true });
  try {
    assert.equal(vcpu.setMsrs(BOOT_MSRS), BOOT_MSRS.length, "KVM set every boot MSR");
    vcpu.setCpuid(vcpuCpuid(kvm.supportedCpuid(), 0, 1));
    vcpu.setLapic(wireLint(vcpu.getLapic()));
    const lapic = new DataView(vcpu.getLapic().buffer);
    assert.equal((lapic.getUint32(0x350, true) >> 8) & 7, 7, "LINT0 is ExtINT");
    assert.equal((lapic.getUint32(0x360, true) >> 8) & 7, 4, "LINT1 is NMI");
  } finally {
    done();
  }
});

test("setFpuDefaults() leaves the x87 control word at its power-on 0x37f", () => {
  const { vcpu, done } = vmWithVcpu();
  try {
    vcpu.setFpuDefaults();
    const fpu = NativeBuf.alloc(KVM_FPU_SIZE);
    assert.equal(Number(libc.ioctl(vcpu.fd, BigInt(KVM.GET_FPU), fpu.addr)), 0);
    assert.equal(fpu.view.getUint16(128, true), 0x37f, "kvm_fpu.fcw");
    assert.deepEqual([...fpu.bytes.subarray(152, 152 + 16)], new Array(16).fill(0), "xmm0 is untouched");
    assert.ok(FPU_MXCSR > 152);
  } finally {
    done();
  }
});
