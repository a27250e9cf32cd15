/**
 * Where the Worker scripts are, and Workers made before they are needed.
 *
 * A Worker spends most of its start loading its script's modules, and on
 * Deno the `new Worker` call itself blocks its caller while Deno makes the
 * Worker's runtime (about 50 ms on a laptop-class host, 0.6 s in the nested
 * test host, against Bun's 5 ms). So vmm begins them early: a machine's
 * Workers while its thread still builds the VM (`SpareWorkers`), and the
 * command line's first vCPU Worker before vmm's own modules load
 * (`prestart`, from bin/vmm.ts), so that the two load side by side.
 *
 * This module imports nothing: bin/vmm.ts loads it before anything else.
 */

/**
 * The Worker entry points, by path from the repository root, but for the
 * queue Workers: each device kind has its own, in its folder
 * (queueWorkerPath), which loads that kind's modules and no other's. A
 * `bun build --compile` executable must list every one as an entry point
 * (devices/registry.ts workerScripts(), which scripts/build-exe.ts takes),
 * or it fails at run time with ModuleNotFound (PLATFORM.md).
 */
export const WORKER_ENTRIES = {
  vcpu: "loop/vcpu_worker.ts",
  control: "loop/control_worker.ts",
} as const;
/** A Worker script: the vCPU's, the control loop's, or the queue Worker of a device kind (`queue-blk`). */
export type WorkerKind = keyof typeof WORKER_ENTRIES | `queue-${string}`;

/** The Worker kind that serves queues of devices of `deviceKind` (a DeviceKind's `kind`: "blk"). */
export function queueWorker(deviceKind: string): WorkerKind {
  return `queue-${deviceKind}`;
}

/** Where the queue Worker script of `deviceKind` is: its folder's queue_worker.ts. */
export function queueWorkerPath(deviceKind: string): string {
  if (!/^[a-z0-9]+$/.test(deviceKind)) throw new RangeError(`Unknown virtio device kind '${deviceKind}'`);
  return `devices/${deviceKind}/queue_worker.ts`;
}

function entryPath(kind: WorkerKind): string {
  return kind.startsWith("queue-") ? queueWorkerPath(kind.slice("queue-".length)) : WORKER_ENTRIES[kind as keyof typeof WORKER_ENTRIES];
}

/**
 * In a compiled executable every module is bundled into the entry file at
 * the root of Bun's embedded file system, and each Worker entry keeps its
 * path from the repository root.
 */
const compiled = import.meta.url.includes("/$bunfs/");
export function workerUrl(kind: WorkerKind): URL {
  const path = entryPath(kind);
  return new URL(compiled ? `./${path}` : `../${path}`, import.meta.url);
}

/** A new Worker of `kind`, its script loading. */
export function newWorker(kind: WorkerKind): Worker {
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

  /** Start loading `n` Workers of `kind`, those `prestart()` began loading first; returns the `n` added. */
  add(kind: WorkerKind, n: number): Worker[] {
    const list = this.#spares.get(kind) ?? [];
    this.#spares.set(kind, list);
    const added: Worker[] = [];
    for (let i = 0; i < n; i++) {
      let spare = this === prestarted ? undefined : prestarted.take(kind);
      if (!spare) {
        const made: { worker: Worker; error?: string } = { worker: newWorker(kind) };
        made.worker.onerror = (ev) => {
          ev.preventDefault?.();
          made.error ??= ev.message;
        };
        spare = made;
      }
      list.push(spare);
      added.push(spare.worker);
    }
    return added;
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
 * Workers `prestart()` began before anything asked for them; the first
 * `SpareWorkers.add()` of their kind takes them over. Only the command line
 * fills it: a library's machines never find a Worker here they did not make.
 */
const prestarted = new SpareWorkers();

/**
 * Begin loading `n` Workers of `kind` now, for the next machine to take. The
 * command line calls it first thing for a command that boots, so that on
 * Deno the Worker's runtime is made and its modules load while vmm's own
 * load. A process that ends without using them needs nothing else done:
 * vmm always ends through exit(), which ends its Workers too.
 */
export function prestart(kind: WorkerKind, n = 1): Worker[] {
  return prestarted.add(kind, n);
}
