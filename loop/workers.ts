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

/**
 * The Worker entry points, by path from the repository root. A
 * `bun build --compile` executable must list each as an entry point
 * (scripts/build-exe.ts takes this list), or it fails at run time with
 * ModuleNotFound (PLATFORM.md).
 */
export const WORKER_ENTRIES = {
  vcpu: "loop/vcpu_worker.ts",
  queue: "loop/queue_worker.ts",
  control: "loop/control_worker.ts",
} as const;
export type WorkerKind = keyof typeof WORKER_ENTRIES;

/**
 * In a compiled executable every module is bundled into the entry file at
 * the root of Bun's embedded file system, and each Worker entry keeps its
 * path from the repository root.
 */
const compiled = import.meta.url.includes("/$bunfs/");
export function workerUrl(kind: WorkerKind): URL {
  const path = WORKER_ENTRIES[kind];
  return new URL(compiled ? `./${path}` : `../${path}`, import.meta.url);
}

/** A started Worker and the promise of its end. */
export interface WorkerHandle {
  worker: Worker;
  /** Resolves when the Worker's loop returned and it freed its memory. */
  exited: Promise<void>;
  /** Messages the Worker posts after `{ ok }` (the control Worker's events). */
  onEvent?: (data: unknown) => void;
}

/** A new Worker of `kind`, its script loading. */
function newWorker(kind: WorkerKind): Worker {
  return new Worker(workerUrl(kind).href, { type: "module" });
}

/**
 * Workers made before their init exists: a Worker spends most of its start
 * loading its script's modules (0.1–0.5 s each on Bun in a nested host, more
 * on Deno), which it can do while the main thread still builds the machine
 * or reads a snapshot. `take()` hands one to startWorker(); `close()`
 * terminates those never taken. An error the script hits before then (it
 * failed to load) is kept for startWorker() to report, not lost.
 */
export class SpareWorkers {
  readonly #spares = new Map<WorkerKind, { worker: Worker; error?: string }[]>();

  /** Start loading `n` Workers of `kind`. */
  add(kind: WorkerKind, n: number): void {
    const list = this.#spares.get(kind) ?? [];
    this.#spares.set(kind, list);
    for (let i = 0; i < n; i++) {
      const spare: { worker: Worker; error?: string } = { worker: newWorker(kind) };
      spare.worker.onerror = (ev) => {
        ev.preventDefault?.();
        spare.error ??= ev.message;
      };
      list.push(spare);
    }
  }

  /** A spare Worker of `kind` (with the error its script hit, if any), or undefined when none is left. */
  take(kind: WorkerKind): { worker: Worker; error?: string } | undefined {
    return this.#spares.get(kind)?.shift();
  }

  /** Terminate every spare not taken. */
  close(): void {
    for (const list of this.#spares.values()) for (const s of list) s.worker.terminate();
    this.#spares.clear();
  }
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
