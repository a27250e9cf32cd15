/**
 * Wiring virtio devices to KVM and to their queue Workers.
 *
 * The main thread, before the guest runs, gives each device an irqfd on its
 * GSI and each queue an ioeventfd on QueueNotify matching the queue's index
 * (`wireVirtio`). From then on a guest kick is a write KVM turns into an
 * eventfd signal, and an interrupt is an eventfd write KVM turns into an
 * IOAPIC pulse: neither passes through user space on the vCPU.
 *
 * `startQueues` and `stopQueues` move the queue Workers' state words
 * (loop/shared.ts Q). A vCPU calls them when the driver sets DRIVER_OK or
 * resets the device; the main thread calls `stopQueues(…, "exit")` when the
 * VM stops. Waiting uses poll(2) on the device's ack eventfd with a timeout,
 * since Atomics.wait is not available on memory mapped through FFI.
 */
import { EFD_CLOEXEC, EFD_NONBLOCK, eventfd, eventfdRead, eventfdSignal, Poller } from "../ffi/libc.ts";
import { ioeventfd, irqfd } from "../ffi/kvm.ts";
import { deviceNames, describe, virtioSlot, type VirtioSpec } from "../devices/virtio/device.ts";
import { mmioStateWords, VIRTIO_MMIO_QUEUE_NOTIFY } from "../devices/virtio/mmio.ts";
import { Q, QUEUE_STATE_WORD, VIRTIO_MAX_DEVICES, VIRTIO_MAX_QUEUES, virtioBlock } from "./shared.ts";
import type { VirtioDeviceInit } from "./messages.ts";

/** Create the eventfds of every device and register them with KVM. */
export function wireVirtio(vmFd: number, specs: readonly VirtioSpec[]): VirtioDeviceInit[] {
  if (specs.length > VIRTIO_MAX_DEVICES) throw new RangeError(`vmm supports at most ${VIRTIO_MAX_DEVICES} virtio devices`);
  const names = deviceNames(specs);
  return specs.map((spec, index) => {
    const { base, irq } = virtioSlot(index);
    const queues = describe(spec).queueSizes.length;
    if (queues > VIRTIO_MAX_QUEUES || mmioStateWords(queues) > QUEUE_STATE_WORD) {
      throw new RangeError(`${names[index]}: too many queues (${queues})`);
    }
    const irqFd = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
    irqfd(vmFd, irqFd, irq);
    const ioFds: number[] = [], wakeFds: number[] = [];
    for (let q = 0; q < queues; q++) {
      const fd = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
      // virtio 1.2 §4.2.2: without VIRTIO_F_NOTIFICATION_DATA the driver
      // writes the queue index, 32 bits wide, to QueueNotify.
      ioeventfd(vmFd, { fd, addr: base + VIRTIO_MMIO_QUEUE_NOTIFY, len: 4, datamatch: q });
      ioFds.push(fd);
      wakeFds.push(eventfd(EFD_CLOEXEC | EFD_NONBLOCK));
    }
    return { spec, name: names[index], base, block: virtioBlock(index), ioFds, wakeFds, ackFd: eventfd(EFD_CLOEXEC | EFD_NONBLOCK), irqFd };
  });
}

function stateWord(dev: VirtioDeviceInit, q: number): number {
  return dev.block / 4 + QUEUE_STATE_WORD + q;
}

/** DRIVER_OK: wake every parked queue Worker of `dev`. */
export function startQueues(ctl: Int32Array, dev: VirtioDeviceInit): void {
  dev.wakeFds.forEach((fd, q) => {
    if (Atomics.compareExchange(ctl, stateWord(dev, q), Q.IDLE, Q.START) === Q.IDLE) eventfdSignal(fd);
  });
}

/**
 * Stop the queue Workers of `devs` and wait until each has drained:
 * "reset" parks them (a device reset), "exit" ends them (the VM stops).
 * Returns the names of queues that did not answer within `timeoutMs`.
 */
export function stopQueues(ctl: Int32Array, devs: readonly VirtioDeviceInit[], how: "reset" | "exit", timeoutMs: number): string[] {
  const waits: { dev: VirtioDeviceInit; q: number }[] = [];
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
  const done = (x: { dev: VirtioDeviceInit; q: number }) => {
    const s = Atomics.load(ctl, stateWord(x.dev, x.q));
    return how === "exit" ? s === Q.GONE : s !== Q.STOP;
  };
  const deadline = Date.now() + timeoutMs;
  const pollers = new Map<number, Poller>();
  for (;;) {
    const left = waits.filter((x) => !done(x));
    if (left.length === 0 || Date.now() >= deadline) return left.map((x) => `${x.dev.name}: queue ${x.q}`);
    const ack = left[0].dev.ackFd;
    let p = pollers.get(ack);
    if (!p) pollers.set(ack, p = new Poller([ack]));
    if (p.wait(Math.min(50, Math.max(1, deadline - Date.now())))[0]) eventfdRead(ack);
  }
}
