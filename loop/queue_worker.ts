/**
 * A queue Worker: the one thread that serves one virtqueue, the lguest
 * Launcher's model (one thread per virtqueue) and QEMU's dataplane. A
 * device kind whose queues carry little and belong together (the stdio
 * console's eight) has all of its queues served by one Worker instead
 * (DeviceKind.oneWorker): each queue keeps its own state machine below,
 * and one poll(2) waits on all their fds.
 *
 * It sleeps in poll(2) on:
 * - the queue's ioeventfd, which KVM signals when the guest writes this
 *   queue's index to QueueNotify: a guest kick goes from the vCPU straight to
 *   this thread, never through the main thread or a vCPU Worker's JS;
 * - its wake eventfd, written when its state word changes (loop/shared.ts Q);
 * - the device's host fd when the device wants one (console input, a TAP).
 * It processes the ring in guest memory, does the I/O, and raises the
 * guest's interrupt itself through the device's irqfd.
 *
 * The Worker exists from VM start, parked until the driver sets DRIVER_OK
 * (a vCPU moves its state to START); a device reset parks it again (STOP);
 * a pause parks it with its queue kept (PAUSE → PAUSED, after the request in
 * hand and a flush); the VM's stop ends it (EXIT), after it has drained:
 * requests already made available are served and writable disks are flushed.
 *
 * A queue the guest broke (a bad chain, rings outside RAM) marks the device
 * DEVICE_NEEDS_RESET, logs one line, and stops being served until the
 * driver resets the device. Nothing a guest writes makes this loop throw.
 *
 * This module is the body, not a Worker script: each device kind's folder
 * has the script of its queue Workers, `devices/<kind>/queue_worker.ts`,
 * which calls serveQueues() with that kind alone. So a Worker loads its own
 * kind's modules and no other's: 19 to 32 modules where one script for every
 * kind loaded 55 (loop/spare_workers.ts queueWorker).
 */
import { eventfdRead, eventfdSignal, hostView, Poller } from "../ffi/libc.ts";
import { GuestMemory } from "../vm/memory.ts";
import { deviceTransport } from "../devices/virtio/device.ts";
import { DEV, DEVICE_STATE_WORDS, Q, queuePosWord, queueRunWord, recordExit, SHARED_BYTES, sharedViews, VIRTIO_BLOCK_BYTES } from "./shared.ts";
import { QueueService } from "./queue_service.ts";
import { workerMain } from "./workers.ts";
import type { QueueInit } from "./messages.ts";
import type { DeviceKind } from "../devices/virtio/kind.ts";

/** Run this Worker as the queue Worker of devices of `kind`: the body of each devices/<kind>/queue_worker.ts. */
export function serveQueues(kind: DeviceKind): void {
  workerMain((init: QueueInit) => {
    if (init.device.spec.kind !== kind.kind) {
      throw new Error(`a ${kind.kind} queue Worker was given a ${init.device.spec.kind} device`);
    }
    const threads = init.queues.map((q) => new QueueThread(init, q, kind));
    return () => serve(threads);
  });
}

/**
 * Serve the Worker's queues until each has ended: usually one queue, or
 * every queue of a device whose kind asks for one Worker (DeviceKind
 * oneWorker). One poll(2) waits on what all of them wait on; after it,
 * each queue moves on from its own fds' events.
 *
 * This loop turns once per kick, so it allocates nothing as it turns: each
 * queue waits on one of three fd lists of its own (settle()), and the poll
 * set for each combination of them is made once and kept, under a number
 * that says which list each queue waits on.
 */
function serve(threads: QueueThread[]): void {
  const pollers = new Map<number, Poller>();
  const forget = () => {
    for (const p of pollers.values()) p.close();
    pollers.clear();
  };
  let live = threads;
  let lists = 0;
  for (;;) {
    let ended = false;
    for (const t of live) if (t.settle() === null) ended = true;
    if (ended) {
      live = live.filter((t) => t.waitingOn !== null);
      forget();
    }
    if (!live.length) break;
    let key = 0, made = 0;
    for (const t of live) {
      key = key * 3 + t.waitKind;
      made += t.listsMade;
    }
    if (made !== lists) {
      forget(); // a queue made a new list (a new input fd): the kept sets may name old fds
      lists = made;
    }
    let poller = pollers.get(key);
    if (!poller) pollers.set(key, poller = new Poller(live.flatMap((t) => t.waitingOn!)));
    const revents = poller.wait(-1);
    let at = 0;
    for (const t of live) {
      t.wake(revents, at);
      at += t.waitingOn!.length;
    }
  }
  forget();
}

class QueueThread {
  readonly init: QueueInit;
  readonly queue: number;
  readonly sharedBytes: Uint8Array;
  readonly ctl: Int32Array;
  /** Index of this queue's state word in `ctl`. */
  readonly stateWord: number;
  readonly service: QueueService;
  /** What settle() last said to wait on: one of the three lists below, or null once the queue ended. */
  waitingOn: readonly number[] | null = [];
  /** Which: 0 the wake fd alone, 1 with the kick, 2 with the handler's input fd too. */
  waitKind = 0;
  /** How many fd lists this queue has made: a new input fd makes a new third list. */
  listsMade = 2;
  readonly #idle: readonly number[];
  readonly #running: readonly number[];
  #withInput: readonly number[] = [];
  /** The queue was paused and has not been resumed (taken over from a snapshot starts so, see the constructor). */
  #paused = false;

  constructor(init: QueueInit, queue: number, kind: DeviceKind) {
    this.init = init;
    this.queue = queue;
    const { device } = init;
    const shared = sharedViews(hostView(init.shared, SHARED_BYTES));
    this.sharedBytes = shared.bytes;
    this.ctl = shared.ctl;
    const block = this.sharedBytes.subarray(device.block, device.block + VIRTIO_BLOCK_BYTES);
    this.stateWord = queueRunWord(device.block, queue);
    this.#idle = [device.wakeFds[queue]];
    this.#running = [device.wakeFds[queue], device.ioFds[queue]];
    const mem = new GuestMemory(hostView(init.memAddr, init.memSize), init.regions, init.memAddr);
    const transport = deviceTransport(device, this.sharedBytes);
    const state = new Int32Array(block.buffer, block.byteOffset + DEV.STATE, DEVICE_STATE_WORDS);
    const config = block.subarray(DEV.CONFIG, DEV.CONFIG + transport.device.config.length);
    const pos = queuePosWord(device.block, queue);
    this.service = new QueueService({
      name: `${device.name}: queue ${queue}`,
      mem,
      transport,
      queue,
      handler: (features, log, restored) =>
        kind.handler(device.spec, {
          mem, features, queue, log, state, config, restored,
          end: (kind, code, reason) => this.#end(kind, code, reason),
          configChanged: () => {
            if (transport.configChanged()) eventfdSignal(device.irqFd);
          },
        }),
      interrupt: () => eventfdSignal(device.irqFd),
      running: () => Atomics.load(this.ctl, this.stateWord) === Q.RUNNING,
      positions: this.ctl.subarray(pos, pos + 4),
    });
    // A restored machine (loop/snapshot.ts) hands over each queue that was
    // running at the snapshot as PAUSED: take it back at its saved ring
    // position, still paused, as if this Worker had paused it. Here, not in
    // settle(): this runs before the Worker says it is ready, so no resume()
    // can come first and find a queue nobody holds.
    if (Atomics.load(this.ctl, this.stateWord) === Q.PAUSED) {
      this.service.start(true);
      this.#paused = true;
    }
  }

  /**
   * Act on the queue's state word until the queue must wait for something:
   * returns the fds to poll (its wake eventfd; when it runs, its ioeventfd
   * and the handler's input fd too), or null once the queue has ended; the
   * same in `waitingOn`.
   */
  settle(): readonly number[] | null {
    const { ctl, stateWord, service, queue } = this;
    const { device } = this.init;
    for (;;) {
      const state = Atomics.load(ctl, stateWord);
      if (state === Q.EXIT) {
        service.stop(true);
        Atomics.store(ctl, stateWord, Q.GONE);
        eventfdSignal(device.ackFd);
        return this.waitingOn = null;
      }
      if (state === Q.STOP) {
        service.stop(false);
        this.#paused = false;
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
      if (state === Q.PAUSE) {
        // The request in hand is done (we are here, not serving it); flush and keep the ring.
        service.pause();
        this.#paused = true;
        Atomics.compareExchange(ctl, stateWord, Q.PAUSE, Q.PAUSED);
        eventfdSignal(device.ackFd);
        continue;
      }
      if (state === Q.RUNNING && this.#paused) {
        // Resumed: serve what the guest left in the ring while we slept
        // (its kicks, if any, are still counted in the ioeventfd too).
        this.#paused = false;
        if (service.kick()) eventfdSignal(device.ioFds[queue]);
        continue;
      }
      if (state !== Q.RUNNING || !service.serving) return this.#waitOn(0, this.#idle);
      const inFd = service.inputFd();
      if (inFd < 0) return this.#waitOn(1, this.#running);
      if (this.#withInput[2] !== inFd) {
        this.#withInput = [device.wakeFds[queue], device.ioFds[queue], inFd];
        this.listsMade++;
      }
      return this.#waitOn(2, this.#withInput);
    }
  }

  #waitOn(kind: number, fds: readonly number[]): readonly number[] {
    this.waitKind = kind;
    return this.waitingOn = fds;
  }

  /** poll(2)'s revents for the fds settle() returned: `revents[at]` onwards. */
  wake(revents: readonly number[], at: number): void {
    const { ctl, stateWord, service, queue } = this;
    const { device } = this.init;
    const n = this.waitingOn!.length;
    const woken = revents[at], kicked = revents[at + 1], input = n === 3 ? revents[at + 2] : 0;
    if (woken) eventfdRead(device.wakeFds[queue]);
    if (n === 1) return;
    // A pause or stop that woke us comes first: serve nothing new.
    if (Atomics.load(ctl, stateWord) !== Q.RUNNING) return;
    if (kicked) {
      eventfdRead(device.ioFds[queue]);
      // Budget spent with work left: kick ourselves, so the next poll
      // returns at once yet still sees a stop on the wake fd.
      if (service.kick()) eventfdSignal(device.ioFds[queue]);
    }
    if (input) service.input();
  }

  /** End the VM from this thread (a panic seen on hvc0, Ctrl-A x on its input). */
  #end(kind: number, code: number, reason: string): void {
    recordExit(this.ctl, this.sharedBytes, kind, code, reason);
    eventfdSignal(this.init.ctlFd);
  }
}
