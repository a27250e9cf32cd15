/**
 * What a device does with one of its virtqueues, seen from the queue's Worker.
 *
 * The Worker (loop/queue_worker.ts) owns the thread: it sleeps in poll(2)
 * on the queue's ioeventfd, its control eventfd and, when the handler asks,
 * one host fd (console input, later a TAP). It calls the handler when one
 * of them wakes it, then decides whether the guest needs an interrupt. The
 * handler only moves data between the ring and the host: the split Firecracker
 * keeps between `queue.rs` and its devices.
 */
import type { Chain, Virtqueue } from "./ring.ts";

export interface QueueHandler {
  /**
   * The guest made buffers available (a kick, or the queue just started).
   * Returns true when it stopped with work left (its budget ran out): the
   * Worker then comes back after checking its other fds.
   */
  kick(vq: Virtqueue): boolean | void;
  /** A host fd to wait on besides the ioeventfd, or -1 for none right now. */
  inputFd?(): number;
  /** `inputFd()` polled readable (or hung up). */
  input?(vq: Virtqueue): void;
  /** The queue stops (device reset or VM stop): make what was written durable. */
  drain?(): void;
  /**
   * The handler is discarded (after `drain`, at a reset or the VM's stop, or
   * when a new DRIVER_OK makes another): release what it opened on the host.
   * It is not called again, and no other method after it.
   */
  close?(): void;
}

/**
 * Serve available chains with `serve` (which returns the used length), with
 * notifications off meanwhile, until the ring stays empty after
 * notifications are back on (virtio 1.2 §2.7.10: the re-check closes the
 * window where the driver added a buffer without kicking).
 *
 * At most `budget` chains per call: a guest can keep a ring full forever
 * (even, with a disk read landing on its own avail ring, without running),
 * and the Worker must still get back to its wake fd to hear a reset or the
 * VM's stop. Returns true when the budget ran out with chains left.
 */
export function serveAll(vq: Virtqueue, serve: (chain: Chain) => number, budget = 4 * vq.size): boolean {
  let served = 0;
  do {
    vq.setNotification(false);
    for (let chain = vq.pop(); chain; chain = vq.pop()) {
      vq.pushUsed(chain.head, serve(chain));
      if (++served >= budget) return true;
    }
  } while (vq.enableNotificationAndCheck());
  return false;
}
