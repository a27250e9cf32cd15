/**
 * The device kinds a thread has loaded, by name.
 *
 * The main thread loads every kind (devices/registry.ts registers them all
 * when it is imported). A Worker loads only the kinds it serves: a queue
 * Worker its device's, a vCPU Worker those of the machine's devices. A
 * Worker is a fresh JavaScript realm that compiles every module it imports,
 * and the heaviest kinds (virtio-fs's FUSE server, the TAP) would otherwise
 * be compiled again by each of a machine's dozen Workers: in the nested
 * host, where JIT-compiled code is itself emulated, that was seconds of a
 * `vmm run`'s start (issue 12's breakdown).
 *
 * `LOADERS` has one line per kind, beside its line in devices/registry.ts;
 * devices/kinds_test.ts checks that the two lists agree. The imports are
 * literal, so `bun build --compile` bundles each kind.
 */
import type { DeviceKind, DeviceSpec } from "./virtio/kind.ts";

// deno-lint-ignore no-explicit-any
type AnyKind = DeviceKind<any, any>;

export const LOADERS: Readonly<Record<string, () => Promise<AnyKind>>> = {
  blk: () => import("./blk/mod.ts").then((m) => m.blkKind),
  net: () => import("./net/mod.ts").then((m) => m.netKind),
  rng: () => import("./rng/mod.ts").then((m) => m.rngKind),
  console: () => import("./console/mod.ts").then((m) => m.consoleKind),
  fs: () => import("./fs/mod.ts").then((m) => m.fsKind),
  stdio: () => import("./stdio/mod.ts").then((m) => m.stdioKind),
};

const loaded = new Map<string, AnyKind>();

/** Make kinds already imported (the main thread's whole registry) known here. */
export function registerKinds(kinds: readonly AnyKind[]): void {
  for (const k of kinds) loaded.set(k.kind, k);
}

/** Load the named kinds into this thread; rejects for a name this build does not have. */
export async function loadKinds(names: Iterable<string>): Promise<void> {
  await Promise.all([...new Set(names)].map(async (name) => {
    if (loaded.has(name)) return;
    const load = LOADERS[name];
    if (!load) throw new RangeError(`Unknown virtio device kind '${name}'`);
    loaded.set(name, await load());
  }));
}

/** The kind of `spec`, loaded in this thread; throws for one that is not. */
export function kindOf(spec: DeviceSpec): AnyKind {
  const k = loaded.get(spec.kind);
  if (!k) {
    throw new RangeError(
      spec.kind in LOADERS ? `virtio device kind '${spec.kind}' is not loaded in this thread` : `Unknown virtio device kind '${spec.kind}'`,
    );
  }
  return k;
}
