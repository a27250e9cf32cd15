/**
 * The control loop (loop/control.ts) on a Worker of its own, for vmm as a
 * library: the loop blocks in poll(2), so on the embedder's thread it would
 * freeze that thread's event loop (timers, I/O, promises) while the guest
 * runs. Here it blocks this thread instead and reports each event with
 * postMessage, which needs no event loop on this side.
 */
import { Controller } from "./control.ts";
import { workerMain } from "./workers.ts";
import type { ControlInit } from "./messages.ts";

workerMain((init: ControlInit, post) => {
  const c = new Controller(init);
  return () => c.run(post);
});
