/**
 * A vCPU Worker: one thread blocking in KVM_RUN, handling the exits of the
 * few registers vmm emulates in user space.
 *
 * Timers and interrupt controllers live in the kernel (KVM irqchip, PIT), so
 * an idle guest leaves this thread asleep inside KVM_RUN: no polling.
 * The control loop stops or pauses it by setting STOP or RUN.PAUSE, then
 * `immediate_exit` in kvm_run, then sending SIGUSR1 to this thread:
 * whichever moment the signal lands, KVM_RUN returns EINTR, before or during
 * the guest's run. A paused vCPU first lets KVM finish the instruction whose
 * I/O it was handling (one KVM_RUN with immediate_exit set completes it and
 * returns at once), so its registers are a consistent state to resume or
 * save, then sleeps in poll(2) on its wake eventfd: no CPU while paused.
 */
import { errno, EINTR, EAGAIN, eventfdRead, hostView, libc, NativeBuf, eventfdSignal, Poller } from "../ffi/libc.ts";
import { EXIT, EXIT_NAMES, irqLine, KVM, KVM_EXIT_IO_OUT, VcpuFd } from "../ffi/kvm.ts";
import { RUN } from "../ffi/structs.ts";
import { errnoName } from "../ffi/errno.ts";
import { Bus } from "../devices/bus.ts";
import { COM1_BASE, COM1_IRQ, Serial } from "../devices/serial.ts";
import { I8042_COMMAND, I8042_DATA, I8042 } from "../devices/i8042.ts";
import { GuestPorts } from "../devices/guest_ports.ts";
import { PanicWatch } from "../devices/panic_watch.ts";
import { ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_PORT, decodeSleepWrite } from "../boot/acpi.ts";
import { deviceTransport } from "../devices/virtio/device.ts";
import { type MmioTransport, VIRTIO_MMIO_STATUS } from "../devices/virtio/mmio.ts";
import { VIRTIO_MMIO_SIZE } from "../boot/layout.ts";
import { startQueues, stopQueues } from "./virtio.ts";
import {
  CTL, CTL_READY_TIME, CTL_TIDS, EXIT_KIND, recordExit, RUN as RUN_STATE, SERIAL_BYTES, SERIAL_OFFSET, SHARED_BYTES, sharedViews,
  VCPU, VCPU_STATE_WORD,
} from "./shared.ts";
import { workerMain } from "./workers.ts";
import type { VcpuInit, VirtioDeviceInit } from "./messages.ts";

workerMain((init: VcpuInit) => {
  const vcpu = new VcpuThread(init);
  return () => vcpu.run();
});

const KVM_RUN = BigInt(KVM.RUN);
/** How long a device reset waits for its queue Workers to finish the request in hand. */
const RESET_TIMEOUT_MS = 10_000;
const KVM_SYSTEM_EVENT_SHUTDOWN = 1, KVM_SYSTEM_EVENT_RESET = 2, KVM_SYSTEM_EVENT_CRASH = 3;

class VcpuThread {
  readonly init: VcpuInit;
  readonly run_: Uint8Array;
  readonly runView: DataView;
  readonly sharedBytes: Uint8Array;
  readonly ctl: Int32Array;
  readonly pio = new Bus();
  readonly mmio = new Bus();
  readonly out = NativeBuf.alloc(64);
  readonly panic = new PanicWatch();
  readonly #wake: Poller;
  done = false;

  constructor(init: VcpuInit) {
    this.init = init;
    this.run_ = hostView(init.runAddr, init.runSize);
    this.runView = new DataView(this.run_.buffer, this.run_.byteOffset, init.runSize);
    const shared = sharedViews(hostView(init.shared, SHARED_BYTES));
    this.sharedBytes = shared.bytes;
    this.ctl = shared.ctl;
    this.#wake = new Poller([init.wakeFd]);
    new DataView(this.sharedBytes.buffer, this.sharedBytes.byteOffset).setBigUint64(
      CTL_TIDS + init.id * 8, BigInt(libc.pthread_self()), true,
    );

    const irqScratch = NativeBuf.alloc(16);
    const serial = new Serial(new Int32Array(this.sharedBytes.buffer, this.sharedBytes.byteOffset + SERIAL_OFFSET, SERIAL_BYTES / 4), {
      output: (b) => this.#console(b),
      irq: (level) => irqLine(init.vmFd, COM1_IRQ, level, irqScratch),
    });
    this.pio.add(COM1_BASE, 8, { read: (o) => serial.read(o), write: (o, _s, v) => serial.write(o, v) });
    const kbd = new I8042(() => this.#end(EXIT_KIND.RESET, 0, "guest reset (keyboard controller)"));
    this.pio.add(I8042_DATA, 1, { read: () => kbd.read(I8042_DATA), write: (_o, _s, v) => kbd.write(I8042_DATA, v) });
    this.pio.add(I8042_COMMAND, 1, { read: () => kbd.read(I8042_COMMAND), write: (_o, _s, v) => kbd.write(I8042_COMMAND, v) });
    const ports = new GuestPorts({
      exit: (code) => this.#end(EXIT_KIND.EXIT_CODE, code, `guest command exited with ${code}`),
      ready: () => {
        new DataView(this.sharedBytes.buffer, this.sharedBytes.byteOffset).setFloat64(CTL_READY_TIME, Date.now(), true);
        // Held: this vCPU parks as soon as this exit is handled, so the guest
        // is caught at the very instruction that said "ready" (its init
        // blocked in the port write); the control loop parks the others.
        if (Atomics.load(this.ctl, CTL.HOLD_AT_READY) === 1) Atomics.store(this.ctl, CTL.RUN, RUN_STATE.PAUSE);
        Atomics.store(this.ctl, CTL.READY, 1);
        eventfdSignal(init.ctlFd);
      },
    });
    this.pio.add(ports.base, ports.len, ports);
    this.pio.add(ACPI_SLEEP_PORT, 1, {
      read: () => 0,
      write: (_o, _s, v) => {
        if (decodeSleepWrite(v) === "poweroff") this.#end(EXIT_KIND.POWEROFF, 0, "guest powered off");
      },
    });
    this.pio.add(ACPI_RESET_PORT, 1, {
      read: () => 0,
      write: (_o, _s, v) => {
        if (v === ACPI_RESET_VALUE) this.#end(EXIT_KIND.RESET, 0, "guest reset (ACPI)");
      },
    });
    for (const dev of init.virtio) this.#addVirtio(dev);
  }

  /**
   * A virtio-mmio window. Register accesses land here; queue kicks do not
   * (KVM hands them to the queue Worker's ioeventfd), except a notify the
   * ioeventfd did not match (a 1- or 2-byte write), passed on by hand.
   */
  #addVirtio(dev: VirtioDeviceInit): void {
    const t: MmioTransport = deviceTransport(dev, this.sharedBytes);
    this.mmio.add(dev.base, VIRTIO_MMIO_SIZE, {
      read: (o, size) => t.read(o, size),
      write: (o, size, v) => {
        // virtio 1.2 §2.4: after a reset the device must not touch the old
        // queues, so their Workers stop before the registers clear.
        if (o === VIRTIO_MMIO_STATUS && size === 4 && v === 0) this.#stopQueues(dev);
        const ev = t.write(o, size, v);
        if (ev?.kind === "driverOk") startQueues(this.ctl, dev);
        else if (ev?.kind === "notify") eventfdSignal(dev.ioFds[ev.queue]);
      },
    });
  }

  #stopQueues(dev: VirtioDeviceInit): void {
    const late = stopQueues(this.ctl, [dev], "reset", RESET_TIMEOUT_MS);
    if (late.length) this.#end(EXIT_KIND.ERROR, 1, `device reset: ${late.join(", ")} did not stop`);
  }

  /** Output one console byte, watching the text for a kernel panic. */
  #console(b: number): void {
    this.out.bytes[0] = b;
    libc.write(this.init.outFd, this.out.addr, 1n);
    const verdict = this.panic.push(b);
    if (verdict === "ended") this.#end(EXIT_KIND.PANIC, 0, this.panic.reason);
  }

  /** Record why the VM ends, wake the main thread and leave the run loop. */
  #end(kind: number, code: number, reason: string): void {
    // A reset right after a panic message is the panic's reboot (panic=-1).
    if ((kind === EXIT_KIND.RESET || kind === EXIT_KIND.TRIPLE_FAULT) && this.panic.reason) {
      kind = EXIT_KIND.PANIC;
      reason = this.panic.reason;
    }
    recordExit(this.ctl, this.sharedBytes, kind, code, reason);
    eventfdSignal(this.init.ctlFd);
    this.done = true;
  }

  run(): void {
    const { ctl, runView, run_ } = this;
    const fd = this.init.vcpuFd, stateWord = VCPU_STATE_WORD + this.init.id;
    Atomics.store(ctl, stateWord, VCPU.RUNNING);
    try {
      while (!this.done && Atomics.load(ctl, CTL.STOP) === 0) {
        if (Atomics.load(ctl, CTL.RUN) === RUN_STATE.PAUSE) {
          this.#park(stateWord);
          continue;
        }
        const r = libc.ioctl(fd, KVM_RUN, 0n);
        if (r < 0) {
          const e = errno();
          if (e === EINTR || e === EAGAIN) {
            Atomics.store(run_, RUN.IMMEDIATE_EXIT, 0);
            continue;
          }
          this.#end(EXIT_KIND.ERROR, 1, `vCPU ${this.init.id}: KVM_RUN: ${errnoName(e)}`);
          break;
        }
        this.#exit(runView.getUint32(RUN.EXIT_REASON, true));
      }
    } catch (e) {
      this.#end(EXIT_KIND.ERROR, 1, `vCPU ${this.init.id}: ${(e as Error).message}`);
    }
    Atomics.store(ctl, stateWord, VCPU.STOPPED);
    eventfdSignal(this.init.ctlFd);
  }

  /**
   * Pause: finish the instruction in flight, then sleep until resumed or stopped.
   * KVM completes a pending port or MMIO read on the next KVM_RUN, before it
   * looks at immediate_exit (x86 kvm_arch_vcpu_ioctl_run: complete_userspace_io
   * first), so one KVM_RUN with the flag set leaves no half-done exit behind.
   */
  #park(stateWord: number): void {
    const { ctl, run_ } = this;
    Atomics.store(run_, RUN.IMMEDIATE_EXIT, 1);
    for (;;) {
      const r = libc.ioctl(this.init.vcpuFd, KVM_RUN, 0n);
      if (r < 0) break; // EINTR: nothing in flight any more
      this.#exit(this.runView.getUint32(RUN.EXIT_REASON, true)); // an exit that completing I/O caused
      if (this.done) break;
    }
    Atomics.store(run_, RUN.IMMEDIATE_EXIT, 0);
    if (this.done) return;
    Atomics.store(ctl, stateWord, VCPU.PAUSED);
    eventfdSignal(this.init.ctlFd);
    while (Atomics.load(ctl, CTL.RUN) === RUN_STATE.PAUSE && Atomics.load(ctl, CTL.STOP) === 0) {
      if (this.#wake.wait(-1)[0]) eventfdRead(this.init.wakeFd);
    }
    // Resumed. The guest's clock went on while it slept (after a restore,
    // through every Worker's start-up too): tell a kvmclock guest it was
    // stopped (PVCLOCK_GUEST_STOPPED), as QEMU does at every resume, or its
    // soft-lockup watchdog takes the gap for a stuck CPU. EINVAL, for a
    // guest without kvmclock, is nothing to act on.
    if (Atomics.load(ctl, CTL.STOP) === 0) libc.ioctl(this.init.vcpuFd, KVM.KVMCLOCK_CTRL, 0n);
    Atomics.store(ctl, stateWord, VCPU.RUNNING);
  }

  #exit(reason: number): void {
    const v = this.runView;
    switch (reason) {
      case EXIT.IO: {
        const out = v.getUint8(RUN.IO_DIRECTION) === KVM_EXIT_IO_OUT;
        const size = v.getUint8(RUN.IO_SIZE), port = v.getUint16(RUN.IO_PORT, true);
        const count = v.getUint32(RUN.IO_COUNT, true);
        const off = Number(v.getBigUint64(RUN.IO_DATA_OFFSET, true));
        // The data area lies inside the kvm_run mapping; KVM sets the offset.
        if (off + size * count > this.init.runSize || ![1, 2, 4].includes(size)) return;
        for (let i = 0; i < count && !this.done; i++) {
          const at = off + i * size;
          if (out) this.pio.write(port, size, readN(v, at, size));
          else writeN(v, at, size, this.pio.read(port, size));
        }
        return;
      }
      case EXIT.MMIO: {
        const gpa = Number(v.getBigUint64(RUN.MMIO_PHYS_ADDR, true));
        const len = v.getUint32(RUN.MMIO_LEN, true);
        if (![1, 2, 4, 8].includes(len)) return;
        const n = Math.min(len, 4);
        if (v.getUint8(RUN.MMIO_IS_WRITE)) this.mmio.write(gpa, n, readN(v, RUN.MMIO_DATA, n));
        else {
          writeN(v, RUN.MMIO_DATA, n, this.mmio.read(gpa, n));
          if (len === 8) writeN(v, RUN.MMIO_DATA + 4, 4, this.mmio.read(gpa + 4, 4));
        }
        return;
      }
      case EXIT.HLT:
      case EXIT.IRQ_WINDOW_OPEN:
      case EXIT.INTR:
        return;
      case EXIT.SHUTDOWN:
        // A triple fault: the guest crashed; a guest that wants a reset asks
        // through the i8042 or the ACPI reset register instead.
        // On AMD, KVM has already reset the vCPU (the VMCB is undefined after
        // a shutdown), so its rip is the reset vector, not where it faulted.
        const rip = this.#rip();
        const where = rip === "fff0" ? "(where is lost: KVM reset the vCPU)" : `at rip 0x${rip}`;
        this.#end(EXIT_KIND.TRIPLE_FAULT, 0, `vCPU ${this.init.id}: the guest triple-faulted (KVM_EXIT_SHUTDOWN) ${where}`);
        return;
      case EXIT.SYSTEM_EVENT: {
        const t = v.getUint32(RUN.SYSTEM_EVENT_TYPE, true);
        if (t === KVM_SYSTEM_EVENT_SHUTDOWN) this.#end(EXIT_KIND.POWEROFF, 0, "guest powered off");
        else if (t === KVM_SYSTEM_EVENT_RESET) this.#end(EXIT_KIND.RESET, 0, "guest reset");
        else if (t === KVM_SYSTEM_EVENT_CRASH) this.#end(EXIT_KIND.PANIC, 0, "guest crashed (KVM system event)");
        return;
      }
      case EXIT.INTERNAL_ERROR: {
        const sub = v.getUint32(RUN.INTERNAL_SUBERROR, true);
        this.#end(EXIT_KIND.ERROR, 1, `vCPU ${this.init.id}: KVM internal error ${sub}${sub === 1 ? " (emulation failure)" : ""} at rip 0x${this.#rip()}`);
        return;
      }
      case EXIT.FAIL_ENTRY:
        this.#end(EXIT_KIND.ERROR, 1, `vCPU ${this.init.id}: KVM could not enter the guest (hardware reason 0x${v.getBigUint64(RUN.FAIL_ENTRY_REASON, true).toString(16)})`);
        return;
      default:
        this.#end(EXIT_KIND.ERROR, 1, `vCPU ${this.init.id}: unexpected exit ${EXIT_NAMES[reason] ?? reason} at rip 0x${this.#rip()}`);
    }
  }

  #rip(): string {
    try {
      return new VcpuFd(this.init.vcpuFd).getRegs().rip.toString(16);
    } catch {
      return "?";
    }
  }
}

function readN(v: DataView, at: number, size: number): number {
  return size === 1 ? v.getUint8(at) : size === 2 ? v.getUint16(at, true) : v.getUint32(at, true);
}
function writeN(v: DataView, at: number, size: number, value: number): void {
  if (size === 1) v.setUint8(at, value & 0xff);
  else if (size === 2) v.setUint16(at, value & 0xffff, true);
  else v.setUint32(at, value >>> 0, true);
}
