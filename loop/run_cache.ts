/**
 * `vmm run` from a snapshot: the first run of a guest boots it cold and,
 * when its init is up and waiting for its command, snapshots it into a
 * cache; every later run with the same guest restores that snapshot and
 * sends the command to the init that is already waiting (Firecracker's
 * snapshot, put to a test runner's use).
 *
 * What makes this possible is that the guest is the same for every command
 * until it reads one: the command is not in the initramfs but comes on the
 * vmm.stdin port, ahead of the host's stdin (guest/command.ts runPayload),
 * and init reports ready (port 0xF5) after the driver found its ports and
 * before it opened vmm.stdin or mounted any share (guest/init.sh host_run).
 * The vCPU that hears that report parks at once (CTL.HOLD_AT_READY), so the
 * snapshot catches the guest blocked in that port write; the virtio-fs
 * servers have served nothing yet, so their inode tables, which a snapshot
 * does not carry, are empty on both sides.
 *
 * **The key** is a hash of everything that makes one waiting guest differ
 * from another: the kernel and initramfs files (device, inode, size,
 * mtime: a rebuilt image is a new file), the command line, CPUs, memory,
 * the console, the shares' tags and modes (their paths are the restoring
 * run's own), the rng device, the vmm version and the snapshot format. A
 * run with disks or network cards is not cached: a disk's blocks may sit in
 * the snapshot's page cache, and would not be those of the disk given next.
 *
 * **Concurrency.** A snapshot is written to a temporary directory and
 * renamed into place whole; one that loses the race to another run is
 * thrown away. A published snapshot is never changed, only replaced whole
 * (saveRun), and a reader opens both files before it trusts either, then
 * checks the directory still holds those two (SnapshotSource). Restoring
 * maps the memory file MAP_PRIVATE and never writes it; a replaced
 * snapshot's files live on for whoever has them open or mapped. So any
 * number of runs may restore one snapshot while another replaces it.
 */
import { env as processEnv, existsSync, join, pid, renameSync, rmSync, statSync } from "../ffi/sys.ts";
import { sha256Hex } from "../ffi/sha256.ts";
import { defaultCacheDir } from "../guest/image_cache.ts";
import { SNAPSHOT_FORMAT, VMM_VERSION } from "../vm/snapshot_file.ts";
import { SHARED_FINGERPRINT, STATE_FILE } from "./snapshot.ts";
import { cacheDirWritable, touchEntry, trimCache } from "./cache_entries.ts";
import { DEFAULT_CMDLINE, type MachineOptions } from "./machine.ts";

/** How many snapshots the cache keeps: the ones used last. */
export const KEEP_SNAPSHOTS = 4;

/** Where run snapshots live: $VMM_SNAPSHOT_CACHE, else `snapshots/` in vmm's cache. */
export function runCacheDir(env: Record<string, string | undefined> = processEnv()): string {
  return env.VMM_SNAPSHOT_CACHE || join(defaultCacheDir(), "snapshots");
}

/** What identifies a file without reading it (its mtime in whole milliseconds: what both runtimes give alike). */
function fileId(path: string): string {
  const st = statSync(path);
  return `${path} ${st.dev}:${st.ino} ${st.size} ${Math.trunc(st.mtimeMs)}`;
}

/**
 * The cache key of a run's waiting guest, or null when the run cannot use
 * the cache (no command over a root, a kernel or initrd given as bytes,
 * disks or network cards).
 */
export function runCacheKey(o: MachineOptions): string | null {
  if (!o.hostRun || !o.stdio || typeof o.kernel !== "string" || typeof o.initrd !== "string") return null;
  if (o.drives?.length || o.nets?.length) return null;
  const r = o.hostRun;
  const shares = [
    ...(o.shares ?? []).map((s) => typeof s === "string" ? `option ${s}` : `${s.tag} ${s.readOnly ? "ro" : "rw"}`),
    "vmm.root ro",
    ...r.mounts.map((m) => `${m.tag} rw`),
  ];
  const what = {
    vmm: VMM_VERSION,
    format: SNAPSHOT_FORMAT,
    layout: SHARED_FINGERPRINT,
    kernel: fileId(o.kernel),
    kernelAsIs: o.kernelAsIs ?? false, // the bzImage as it is, or the vmlinux inside it (loop/kernel_cache.ts)
    initrd: fileId(o.initrd),
    cmdline: o.cmdline ?? DEFAULT_CMDLINE, // a new default is a new guest
    append: o.append ?? null,
    virtioCmdline: o.virtioCmdline ?? false,
    cpus: o.cpus ?? 1,
    memMiB: o.memMiB ?? 512,
    console: o.console?.device ?? "serial",
    shares,
    rng: o.rng ?? false,
  };
  return sha256Hex(JSON.stringify(what)).slice(0, 32);
}


/** The snapshot directory of `key`, and whether a snapshot is there. */
export function cachedRun(key: string, cache = runCacheDir()): { dir: string; present: boolean } {
  const dir = join(cache, key);
  return { dir, present: existsSync(join(dir, STATE_FILE)) };
}


/**
 * Write a run's snapshot into `dir` through `snapshot` (Machine's ready
 * hook): into a temporary directory beside it, then renamed into place. A
 * published snapshot is never removed or changed under a reader: when `dir`
 * is there already (another run was first), this one is thrown away; with
 * `replace` (this run could not restore `dir`), the old one is first renamed
 * aside, so a reader finds either a whole snapshot or none. A reader holds
 * both files open before it trusts them (loop/snapshot.ts SnapshotSource),
 * so a swap between its two opens is caught. Then the cache is trimmed to
 * the KEEP_SNAPSHOTS used last. Returns whether this snapshot is the one
 * published.
 */
export function saveRun(dir: string, snapshot: (dir: string) => void, replace = false): boolean {
  const tmp = `${dir}.tmp-${pid()}`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    snapshot(tmp);
    if (replace) {
      const old = `${dir}.old-${pid()}`;
      try {
        renameSync(dir, old);
      } catch { /* gone already */ }
      rmSync(old, { recursive: true, force: true }); // a reader that mapped it keeps its pages
    }
    try {
      renameSync(tmp, dir);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code !== "ENOTEMPTY" && code !== "EEXIST") throw e;
      rmSync(tmp, { recursive: true, force: true }); // another run was first
      return false;
    }
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  trimCache(join(dir, ".."), dir, KEEP_SNAPSHOTS);
  return true;
}

/** Mark a snapshot used now (the cache keeps the ones used last). */
export const touchRun: (dir: string) => void = touchEntry;
export { trimCache };

/** Whether snapshots can be written to `cache` (made if missing): a read-only home, a container's read-only root, cannot. */
export function cacheWritable(cache = runCacheDir()): boolean {
  return cacheDirWritable(cache);
}
