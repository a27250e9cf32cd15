/**
 * A queue Worker: the one thread that serves one virtqueue, the lguest
 * Launcher's model (one thread per virtqueue) and QEMU's dataplane.
 *
 * It sleeps in poll(2) on:
 * - the queue's ioeventfd, which KVM signals when the guest writes this
 *   queue's index to QueueNotify: a guest kick goes from the vCPU straight to
 *   this thread, never through the main thread or a vCPU Worker's JS;
 * - its wake eventfd, written when its state word changes (loop/shared.ts Q);
 * - the device's host fd when the device wants one (console input).
 * It processes the ring in guest memory, does the I/O, and raises the
 * guest's interrupt itself through the device's irqfd.
 *
 * The Worker exists from VM start, parked until the driver sets DRIVER_OK
 * (a vCPU moves its state to START); a device reset parks it again (STOP),
 * and the VM's stop ends it (EXIT), after it has drained: requests already
 * made available are served and writable disks are flushed.
 *
 * A queue the guest broke (a bad chain, rings outside RAM) marks the device
 * DEVICE_NEEDS_RESET, logs one line, and stops being served until the
 * driver resets the device. Nothing a guest writes makes this loop throw.
 */
import { eventfdRead, eventfdSignal, hostView, Poller } from "../ffi/libc.ts";
import { GuestMemory } from "../vm/memory.ts";
import { transportFor } from "../devices/virtio/device.ts";
import { deviceHandler, QueueService } from "./queue_service.ts";
import { Q, QUEUE_STATE_WORD, recordExit, SHARED_BYTES, VIRTIO_BLOCK_BYTES } from "./shared.ts";
import type { QueueInit } from "./messages.ts";

// deno-lint-ignore no-explicit-any
const self_ = globalThis as any;

self_.onmessage = (ev: MessageEvent<QueueInit>) => {
  let thread: QueueThread;
  try {
    thread = new QueueThread(ev.data);
  } catch (e) {
    self_.postMessage({ ok: false, error: (e as Error).message });
    return;
  }
  self_.postMessage({ ok: true });
  thread.run();
};

class QueueThread {
  readonly init: QueueInit;
  readonly sharedBytes: Uint8Array;
  readonly ctl: Int32Array;
  /** Index of this queue's state word in `ctl`. */
  readonly stateWord: number;
  readonly service: QueueService;
  readonly #idle: Poller;
  readonly #running: Poller;
  readonly #withInput = new Map<number, Poller>();

  constructor(init: QueueInit) {
    this.init = init;
    const { device, queue } = init;
    this.sharedBytes = hostView(init.shared, SHARED_BYTES);
    this.ctl = new Int32Array(this.sharedBytes.buffer, this.sharedBytes.byteOffset, SHARED_BYTES / 4);
    const state = new Int32Array(this.sharedBytes.buffer, this.sharedBytes.byteOffset + device.block, VIRTIO_BLOCK_BYTES / 4);
    this.stateWord = device.block / 4 + QUEUE_STATE_WORD + queue;
    const mem = new GuestMemory(hostView(init.memAddr, init.memSize), init.regions, init.memAddr);
    this.service = new QueueService({
      name: `${device.name}: queue ${queue}`,
      mem,
      transport: transportFor(device.spec, state),
      queue,
      handler: (features, log) =>
        deviceHandler(device.spec, queue, { mem, features, log, end: (kind, code, reason) => this.#end(kind, code, reason) }),
      interrupt: () => eventfdSignal(device.irqFd),
      running: () => Atomics.load(this.ctl, this.stateWord) === Q.RUNNING,
    });
    this.#idle = new Poller([device.wakeFds[queue]]);
    this.#running = new Poller([device.wakeFds[queue], device.ioFds[queue]]);
  }

  run(): void {
    const { ctl, stateWord, service } = this;
    const { device, queue } = this.init;
    for (;;) {
      const state = Atomics.load(ctl, stateWord);
      if (state === Q.EXIT) {
        service.stop(true);
        Atomics.store(ctl, stateWord, Q.GONE);
        eventfdSignal(device.ackFd);
        return;
      }
      if (state === Q.STOP) {
        service.stop(false);
        Atomics.compareExchange(ctl, stateWord, Q.STOP, Q.IDLE);
        eventfdSignal(device.ackFd);
        continue;
      }
      if (state === Q.START) {
        service.start();
        if (Atomics.compareExchange(ctl, stateWord, Q.START, Q.RUNNING) !== Q.START) continue;
        // Buffers made available before we started got no kick of their own.
        if (service.kick()) eventfdSignal(device.ioFds[queue]);
        continue;
      }
      if (state !== Q.RUNNING || !service.serving) {
        if (this.#idle.wait(-1)[0]) eventfdRead(device.wakeFds[queue]);
        continue;
      }
      const inFd = service.inputFd();
      const poller = inFd < 0 ? this.#running : this.#pollerWithInput(inFd);
      const [woken, kicked, input] = poller.wait(-1);
      if (woken) eventfdRead(device.wakeFds[queue]);
      if (kicked) {
        eventfdRead(device.ioFds[queue]);
        // Budget spent with work left: kick ourselves, so the next poll
        // returns at once yet still sees a stop on the wake fd.
        if (service.kick()) eventfdSignal(device.ioFds[queue]);
      }
      if (input) service.input();
    }
  }

  #pollerWithInput(fd: number): Poller {
    const { wakeFds, ioFds } = this.init.device;
    let p = this.#withInput.get(fd);
    if (!p) this.#withInput.set(fd, p = new Poller([wakeFds[this.init.queue], ioFds[this.init.queue], fd]));
    return p;
  }

  /** End the VM from this thread (a panic seen on hvc0, Ctrl-A x on its input). */
  #end(kind: number, code: number, reason: string): void {
    recordExit(this.ctl, this.sharedBytes, kind, code, reason);
    eventfdSignal(this.init.ctlFd);
  }
}
