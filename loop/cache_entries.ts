/**
 * Entries of vmm's caches (run snapshots, loop/run_cache.ts; unpacked
 * kernels, loop/kernel_cache.ts): one directory each, published by a rename,
 * marked used by its modification time, and trimmed to the ones used last.
 */
import { accessSync, constants, mkdirSync, readdirSync, rmSync, statSync, utimesSync } from "node:fs";
import { join } from "node:path";

/** Mark an entry used now: its directory's modification time says when (trimCache keeps the ones used last). */
export function touchEntry(dir: string): void {
  try {
    const now = new Date();
    utimesSync(dir, now, now);
  } catch { /* a cache we cannot write to still restores */ }
}

/**
 * Remove all but the `count` entries of `cache` used last (never `keep`, nor
 * one used within `graceMs`), and temporary directories a killed run left a
 * day ago. The snapshot cache and the kernel cache (loop/kernel_cache.ts)
 * are trimmed this way.
 */
export function trimCache(cache: string, keep: string, count: number, graceMs = 0): void {
  let entries: { path: string; used: number; tmp: boolean }[];
  try {
    entries = readdirSync(cache).map((name) => {
      const path = join(cache, name);
      return { path, used: statSync(path).mtimeMs, tmp: name.includes(".tmp-") || name.includes(".old-") };
    });
  } catch {
    return;
  }
  const now = Date.now(), old = now - 24 * 3600_000;
  for (const e of entries) if (e.tmp && e.used < old) rmSync(e.path, { recursive: true, force: true });
  const done = entries.filter((e) => !e.tmp && e.path !== keep).sort((a, b) => b.used - a.used);
  for (const e of done.slice(count - 1)) if (now - e.used >= graceMs) rmSync(e.path, { recursive: true, force: true });
}

/** Whether entries can be written to `cache` (made if missing): a read-only home, a container's read-only root, cannot. */
export function cacheDirWritable(cache: string): boolean {
  try {
    mkdirSync(cache, { recursive: true });
    accessSync(cache, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
