/**
 * Entries of vmm's caches (run snapshots, loop/run_cache.ts; unpacked
 * kernels, loop/kernel_cache.ts): one directory each, published by a rename,
 * marked used by its modification time, and trimmed to the ones used last.
 */
import { access, env as processEnv, isAbsolute, join, mkdirSync, readdirSync, rmSync, statSync, tmpdir, uid, utimesSync, W_OK } from "../ffi/sys.ts";

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
    return access(cache, W_OK);
  } catch {
    return false;
  }
}

/**
 * Where vmm's caches may live, in order: `$VMM_CACHE`, else
 * `$XDG_CACHE_HOME/vmm` and `$HOME/.cache/vmm`; last a directory of this
 * user's in the temporary directory, for a clean environment (`env -i`, an
 * empty or read-only HOME, a container's nobody user). The default guest's
 * unpacked images (guest/packaged.ts) and unpacked kernels
 * (loop/kernel_cache.ts) use the first that works.
 */
export function cacheRoots(env: Record<string, string | undefined> = processEnv()): string[] {
  const roots: string[] = [];
  if (env.VMM_CACHE) roots.push(env.VMM_CACHE);
  // The XDG spec: a relative XDG_CACHE_HOME is invalid and must be ignored.
  if (env.XDG_CACHE_HOME && isAbsolute(env.XDG_CACHE_HOME)) roots.push(join(env.XDG_CACHE_HOME, "vmm"));
  if (env.HOME && isAbsolute(env.HOME)) roots.push(join(env.HOME, ".cache", "vmm"));
  roots.push(join(tmpdir(env), `vmm-${uid()}`));
  return roots;
}
