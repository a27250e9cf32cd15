/**
 * Worker threads: where their scripts are, how one is started, and how one
 * runs and ends.
 *
 * Every Worker starts from one init message of plain data (loop/messages.ts),
 * answers `{ ok }` once it is set up, then runs its loop on its own thread
 * (blocking in KVM_RUN or poll(2)); when the loop returns it frees every
 * native buffer it allocated (malloc'd memory outlives a terminated Worker),
 * says `{ exited }` and closes itself. The owner waits for that before it
 * unmaps memory the Worker could still touch.
 */
import { NativeBuf } from "../ffi/libc.ts";
import type { WorkerReady } from "./messages.ts";
import { newWorker, type SpareWorkers, type WorkerKind } from "./spare_workers.ts";

export { prestart, queueWorker, SpareWorkers, type WorkerKind, workerUrl } from "./spare_workers.ts";

/** A started Worker and the promise of its end. */
export interface WorkerHandle {
  worker: Worker;
  /** Resolves when the Worker's loop returned and it freed its memory. */
  exited: Promise<void>;
  /** Messages the Worker posts after `{ ok }` (the control Worker's events). */
  onEvent?: (data: unknown) => void;
}


/**
 * Start a Worker of `kind` with `init`; resolves once it reports ready.
 * `spares` may hold one already loading (SpareWorkers).
 */
export function startWorker(kind: WorkerKind, init: unknown, onEvent?: (data: unknown) => void, spares?: SpareWorkers): Promise<WorkerHandle> {
  const spare = spares?.take(kind);
  const w = spare?.worker ?? newWorker(kind);
  let exited!: () => void;
  const handle: WorkerHandle = { worker: w, exited: new Promise<void>((r) => (exited = r)), onEvent };
  return new Promise((resolve, reject) => {
    let ready = false;
    w.onmessage = (ev: MessageEvent<WorkerReady & { exited?: boolean }>) => {
      const d = ev.data;
      if (d.exited) return exited();
      if (!ready) {
        ready = true;
        if (d.ok) resolve(handle);
        else reject(new Error(d.error ?? `${kind} Worker failed to start`));
        return;
      }
      handle.onEvent?.(d);
    };
    const failed = (message: string) => {
      if (!ready) reject(new Error(`${kind} Worker failed: ${message}`));
      exited(); // it will not run again
    };
    w.onerror = (ev) => {
      ev.preventDefault?.();
      failed(ev.message);
    };
    if (spare?.error !== undefined) return failed(spare.error);
    w.postMessage(init);
  });
}

/** Wait up to `ms` for each Worker to end its loop; terminate them all. Returns how many did not end in time. */
export async function joinWorkers(handles: readonly WorkerHandle[], ms: number): Promise<number> {
  let late = 0;
  await Promise.all(handles.map(async (h) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const inTime = await Promise.race([
      h.exited.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms))),
    ]);
    clearTimeout(timer);
    if (!inTime) late++;
    h.worker.terminate();
  }));
  return late;
}

// deno-lint-ignore no-explicit-any
const self_ = globalThis as any;

/**
 * The body of a Worker script: on the init message, `setup(init)` builds the
 * thread's state and returns its loop; the loop runs until it returns. What
 * `setup` throws goes back as `{ ok: false, error }`; the loop must not throw
 * (a Worker reports trouble through shared memory), but if it does the
 * Worker still ends cleanly.
 */
export function workerMain<I>(setup: (init: I, post: (data: unknown) => void) => () => void): void {
  self_.onmessage = (ev: MessageEvent<I>) => {
    self_.onmessage = null;
    let loop: () => void;
    try {
      loop = setup(ev.data, (d) => self_.postMessage(d));
    } catch (e) {
      self_.postMessage({ ok: false, error: (e as Error).message });
      end();
      return;
    }
    self_.postMessage({ ok: true });
    try {
      loop();
    } catch (e) {
      console.error(`vmm: Worker failed: ${(e as Error).message}`);
    }
    end();
  };
}

function end(): void {
  NativeBuf.freeAll();
  self_.postMessage({ exited: true });
  self_.close();
}
