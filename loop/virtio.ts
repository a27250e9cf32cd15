/**
 * Wiring virtio devices to KVM and to their queue Workers.
 *
 * The main thread, before the guest runs, gives each device an irqfd on its
 * GSI and each queue an ioeventfd on QueueNotify matching the queue's index
 * (`wireVirtio`), and puts the device's reset-time configuration space into
 * its shared block. From then on a guest kick is a write KVM turns into an
 * eventfd signal, and an interrupt is an eventfd write KVM turns into an
 * IOAPIC pulse: neither passes through user space on the vCPU.
 *
 * Nor, where KVM can map memory read-only (KVM_CAP_READONLY_MEM, which
 * x86 KVM has had for over a decade), do the driver's register reads: each device's
 * window is its register page (loop/shared.ts MMIO_PAGES), which the
 * transports keep equal to the registers (devices/virtio/mmio.ts
 * MmioOptions.page). KVM maps it into the guest read-only, so a read is a
 * plain memory load and only writes exit. Its InterruptStatus keeps VRING
 * set, so the driver's ACK of it clears nothing, and KVM swallows an ACK of
 * exactly VRING into an eventfd nobody reads: an interrupt, status read and
 * ACK included, costs the vCPU no exit to user space, as on QEMU's
 * virtio-pci with MSI-X. Without read-only memory, every register read is
 * an exit; a read of InterruptStatus then takes the bits, so KVM swallows
 * every ACK, and an interrupt costs the vCPU one exit, the status read.
 * QEMU's virtio-mmio (and kvmtool's, and Firecracker's) take two.
 *
 * `startQueues`, `stopQueues`, `pauseQueues` and `resumeQueues` move the
 * queue Workers' state words (loop/shared.ts Q). A vCPU starts and resets
 * them as the driver sets DRIVER_OK or writes 0 to Status; the control loop
 * pauses, resumes and ends them. Waiting uses poll(2) on the device's ack
 * eventfd with a timeout, since Atomics.wait is not available on memory
 * mapped through FFI.
 */
import { close, EFD_CLOEXEC, EFD_NONBLOCK, eventfd, eventfdRead, eventfdSignal, Poller } from "../ffi/libc.ts";
import { ioeventfd, irqfd, KVM_MEM_READONLY, VmFd } from "../ffi/kvm.ts";
import { deviceTransport, initConfig, virtioSlot } from "../devices/virtio/device.ts";
import {
  VIRTIO_MMIO_INT_VRING,
  VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_PAGE_SIZE,
  VIRTIO_MMIO_QUEUE_NOTIFY,
} from "../devices/virtio/mmio.ts";
import { mmioPage, Q, queueRunWord, VIRTIO_MAX_DEVICES, virtioBlock } from "./shared.ts";
import type { VirtioDeviceInit } from "./messages.ts";

/** Where the register pages are: the shared block's host address, and the first free KVM memory slot. */
export interface RegisterPages {
  sharedAddr: bigint;
  firstSlot: number;
}

/**
 * Create the eventfds of every device (`devices`: devices/registry.ts
 * describeAll), register them with KVM, and write each device's
 * configuration space into `shared` (the whole shared block).
 * With `pages`, also map each device's register page read-only over its
 * window (memory slots `firstSlot`, `firstSlot + 1`, …); then call
 * `syncPages` before the guest runs. On failure, closes what it made.
 */
export function wireVirtio(
  vmFd: number,
  devices: readonly Pick<VirtioDeviceInit, "spec" | "model" | "name">[],
  shared: Uint8Array,
  pages?: RegisterPages,
): VirtioDeviceInit[] {
  if (devices.length > VIRTIO_MAX_DEVICES) throw new RangeError(`vmm supports at most ${VIRTIO_MAX_DEVICES} virtio devices`);
  const made: number[] = [];
  const fd = () => {
    const f = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
    made.push(f);
    return f;
  };
  try {
    return devices.map(({ spec, model, name }, index) => {
      const { base, irq } = virtioSlot(index);
      const queues = model.queueSizes.length;
      const block = virtioBlock(index);
      initConfig(model, shared.subarray(block));
      const irqFd = fd();
      irqfd(vmFd, irqFd, irq);
      const page = pages ? mmioPage(index) : -1;
      if (pages) {
        new VmFd(vmFd).setUserMemoryRegion(
          pages.firstSlot + index, base, VIRTIO_MMIO_PAGE_SIZE, pages.sharedAddr + BigInt(page), KVM_MEM_READONLY,
        );
      }
      // The driver writes back the bits it read: any of them without a
      // register page, where reading took them; with one, VRING alone has
      // nothing to clear, and an ACK with CONFIG goes on to the vCPU.
      const intAckFd = fd();
      const match = pages ? { datamatch: VIRTIO_MMIO_INT_VRING } : {};
      ioeventfd(vmFd, { fd: intAckFd, addr: base + VIRTIO_MMIO_INTERRUPT_ACK, len: 4, ...match });
      const ioFds: number[] = [], wakeFds: number[] = [];
      for (let q = 0; q < queues; q++) {
        const io = fd();
        // virtio 1.2 §4.2.2: without VIRTIO_F_NOTIFICATION_DATA the driver
        // writes the queue index, 32 bits wide, to QueueNotify.
        ioeventfd(vmFd, { fd: io, addr: base + VIRTIO_MMIO_QUEUE_NOTIFY, len: 4, datamatch: q });
        ioFds.push(io);
        wakeFds.push(fd());
      }
      return { spec, model, name, base, block, page, ioFds, wakeFds, ackFd: fd(), irqFd, intAckFd };
    });
  } catch (e) {
    made.forEach(close);
    throw e;
  }
}

/**
 * Fill each device's register page from its registers: once the state is
 * final before the guest runs (after a snapshot's state went back in).
 */
export function syncPages(devs: readonly VirtioDeviceInit[], shared: Uint8Array): void {
  for (const dev of devs) deviceTransport(dev, shared).syncPage();
}

/** Close every eventfd of `devs` (KVM drops its irqfds and ioeventfds with the VM fd). */
export function unwireVirtio(devs: readonly VirtioDeviceInit[]): void {
  for (const d of devs) [d.irqFd, d.intAckFd, d.ackFd, ...d.ioFds, ...d.wakeFds].forEach(close);
}

function stateWord(dev: VirtioDeviceInit, q: number): number {
  return queueRunWord(dev.block, q);
}

/** DRIVER_OK: wake every parked queue Worker of `dev`. */
export function startQueues(ctl: Int32Array, dev: VirtioDeviceInit): void {
  dev.wakeFds.forEach((fd, q) => {
    if (Atomics.compareExchange(ctl, stateWord(dev, q), Q.IDLE, Q.START) === Q.IDLE) eventfdSignal(fd);
  });
}

type Waiting = { dev: VirtioDeviceInit; q: number };

/**
 * Poll the ack eventfds of `waits` until `done` holds for each or the
 * deadline passes; returns the names of the queues still waiting.
 */
function waitQueues(waits: Waiting[], done: (x: Waiting) => boolean, timeoutMs: number, retry?: (x: Waiting) => void): string[] {
  const deadline = Date.now() + timeoutMs;
  const pollers = new Map<number, Poller>();
  try {
    for (;;) {
      const left = waits.filter((x) => !done(x));
      if (left.length === 0 || Date.now() >= deadline) return left.map((x) => `${x.dev.name}: queue ${x.q}`);
      if (retry) left.forEach(retry);
      const ack = left[0].dev.ackFd;
      let p = pollers.get(ack);
      if (!p) pollers.set(ack, p = new Poller([ack]));
      if (p.wait(Math.min(50, Math.max(1, deadline - Date.now())))[0]) eventfdRead(ack);
    }
  } finally {
    pollers.forEach((p) => p.close());
  }
}

/**
 * Stop the queue Workers of `devs` and wait until each has drained:
 * "reset" parks them (a device reset), "exit" ends them (the VM stops).
 * Returns the names of queues that did not answer within `timeoutMs`.
 */
export function stopQueues(ctl: Int32Array, devs: readonly VirtioDeviceInit[], how: "reset" | "exit", timeoutMs: number): string[] {
  const waits: Waiting[] = [];
  for (const dev of devs) {
    dev.wakeFds.forEach((fd, q) => {
      const w = stateWord(dev, q);
      if (how === "exit") {
        if (Atomics.exchange(ctl, w, Q.EXIT) === Q.GONE) Atomics.store(ctl, w, Q.GONE);
      } else if (
        Atomics.compareExchange(ctl, w, Q.RUNNING, Q.STOP) !== Q.RUNNING &&
        Atomics.compareExchange(ctl, w, Q.START, Q.STOP) !== Q.START
      ) return; // parked already, or the VM is stopping
      eventfdSignal(fd);
      waits.push({ dev, q });
    });
  }
  return waitQueues(waits, (x) => {
    const s = Atomics.load(ctl, stateWord(x.dev, x.q));
    return how === "exit" ? s === Q.GONE : s !== Q.STOP;
  }, timeoutMs);
}

/**
 * Pause every running queue of `devs`: each Worker finishes the request in
 * hand, flushes, keeps its ring position and answers PAUSED. Call it with
 * every vCPU parked, so no driver starts or resets a queue meanwhile (a
 * queue caught in START, just after DRIVER_OK, is paused once its Worker
 * took it). Returns the names of queues that did not pause within `timeoutMs`.
 */
export function pauseQueues(ctl: Int32Array, devs: readonly VirtioDeviceInit[], timeoutMs: number): string[] {
  const waits: Waiting[] = [];
  const ask = (x: Waiting) => {
    if (Atomics.compareExchange(ctl, stateWord(x.dev, x.q), Q.RUNNING, Q.PAUSE) === Q.RUNNING) eventfdSignal(x.dev.wakeFds[x.q]);
  };
  for (const dev of devs) {
    dev.wakeFds.forEach((_, q) => {
      const s = Atomics.load(ctl, stateWord(dev, q));
      if (s === Q.RUNNING || s === Q.START) waits.push({ dev, q });
    });
  }
  waits.forEach(ask);
  return waitQueues(waits, (x) => {
    const s = Atomics.load(ctl, stateWord(x.dev, x.q));
    return s === Q.PAUSED || s === Q.GONE || s === Q.EXIT;
  }, timeoutMs, ask);
}

/** Resume every paused queue of `devs`; each Worker serves what arrived meanwhile. */
export function resumeQueues(ctl: Int32Array, devs: readonly VirtioDeviceInit[]): void {
  for (const dev of devs) {
    dev.wakeFds.forEach((fd, q) => {
      if (Atomics.compareExchange(ctl, stateWord(dev, q), Q.PAUSED, Q.RUNNING) === Q.PAUSED) eventfdSignal(fd);
    });
  }
}
