/**
 * How the default guest learns its command: vmm appends a second initramfs
 * archive to the image's, and Linux unpacks concatenated archives one after
 * another, so the files below simply appear in the guest's initramfs beside
 * guest/init.sh, which looks for them.
 *
 * - `vmm run --busybox -- CMD`: `/vmm/run.sh` holds CMD, quoted; init runs it
 *   in the initramfs with the console as its terminal.
 * - `vmm run -- CMD` (over a root): the archive holds only `/vmm/run.stdin`,
 *   the same for every command, which tells init to wait for its command on
 *   the vmm.stdin port. The command comes there, ahead of the host's stdin,
 *   as `runPayload()`: a 16-byte header, then a cpio archive init unpacks.
 *   `/vmm/run.conf` tells init what to mount (shell assignments it sources),
 *   `/vmm/exec.sh` is what the root's own /bin/sh runs as the caller
 *   (environment, directory, then `exec CMD`), `/vmm/setids` enters the root
 *   and takes on the caller's ids (guest/setids.ts), `/vmm/settime` sets the
 *   wall clock (guest/settime.ts) and `/vmm/seed` is mixed into the guest's
 *   random pool. The shares those files name are in `hostRunShares()`.
 *   Because the command is not in the image, a guest whose init is up and
 *   waiting is the same for every command: `vmm run` snapshots it once and
 *   restores it for every later run (loop/run_cache.ts).
 *
 * Everything the caller controls (arguments, environment values, paths) is
 * single-quoted for sh, which keeps every byte but NUL, and no argument,
 * environment string or path can hold a NUL anyway.
 */
import { S_IFDIR, S_IFREG, writeCpio } from "./cpio.ts";
import { initrdLayout } from "../boot/loader.ts";
import { type Identity, setidsElf } from "./setids.ts";
import { SETTIME_CLOCK_BYTES, settimeElf } from "./settime.ts";
import type { StdioOptions } from "../devices/stdio/mod.ts";
import type { CacheMode } from "../devices/fs/share.ts";

/** Quote one argument for sh. */
export function shellQuote(arg: string): string {
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** The extra initramfs archive that makes the default guest run `command` in its busybox initramfs. */
export function runArchive(command: string[]): Uint8Array {
  const script = `${command.map(shellQuote).join(" ")}\n`;
  return writeCpio([
    { path: "vmm", mode: S_IFDIR | 0o755 },
    { path: "vmm/run.sh", mode: S_IFREG | 0o755, data: new TextEncoder().encode(script) },
  ]);
}

/** Share tags of `vmm run` (the guest's init mounts them by these names). */
export const ROOT_TAG = "vmm.root";
export const CWD_TAG = "vmm.cwd";
export const rwTag = (i: number): string => `vmm.rw${i}`;

/**
 * `vmm run -- CMD` over a root. Paths are absolute; `mounts` are where the
 * read-write shares appear in the guest, which is where they are on the host.
 */
export interface HostRun {
  argv: string[];
  /** The host directory that becomes the guest's root, shared read-only ("/": the host's own). */
  root: string;
  /** Where the command starts. */
  cwd: string;
  /**
   * Host directories shared read-write, each mounted at `at` inside the root
   * (normally its own path): the working directory first, then each `--rw`.
   */
  mounts: { tag: string; path: string; at: string }[];
  /** Directories of the root the guest may write to, over a tmpfs (overlayfs): /etc, /var, the home directory. */
  overlays: string[];
  /** The command's whole environment. */
  env: Record<string, string>;
  id: Identity;
}

/** A share as the fs device takes it (devices/fs MachineOptions.shares). */
export interface RunShare {
  path: string;
  tag: string;
  readOnly: boolean;
  cache?: CacheMode;
}

/** The virtio-fs shares a host run needs: the root read-only, the rest read-write. */
export function hostRunShares(r: HostRun): RunShare[] {
  return [
    // Only the guest's reads reach the root: it may trust what it looked up (devices/fs/share.ts CACHE_TIMEOUT_S).
    { path: r.root, tag: ROOT_TAG, readOnly: true, cache: "always" },
    ...r.mounts.map((m) => ({ path: m.path, tag: m.tag, readOnly: false })),
  ];
}

/** An environment name sh can export: others (`a-b`, `1x`) are dropped, as env(1) would keep but sh cannot pass them on. */
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Linux refuses a single argument (or environment string) longer than
 * MAX_ARG_STRLEN, 32 pages: exec.sh travels as one `sh -c` argument.
 */
export const MAX_EXEC_SCRIPT = 32 * 4096 - 1;

/**
 * What the root's /bin/sh runs, as the caller: a fresh environment (it starts
 * empty), the working directory, then CMD in place of the shell, so CMD's
 * status and signals are its own.
 */
export function execScript(r: HostRun): string {
  const lines = ["# vmm run: the command's environment, directory and argv (guest/command.ts)"];
  for (const [k, v] of Object.entries(r.env)) if (ENV_NAME.test(k)) lines.push(`export ${k}=${shellQuote(v)}`);
  // A missing directory is the runner's failure (125, as env(1) and chroot(8) use), not the command's.
  lines.push(`cd ${shellQuote(r.cwd)} || exit 125`);
  lines.push(`exec ${r.argv.map(shellQuote).join(" ")}`);
  return lines.join("\n") + "\n";
}

/** `/vmm/run.conf`: what init mounts, as sh assignments (numbered lists: paths may hold spaces). */
export function runConf(r: HostRun): string {
  const lines = [
    "# vmm run: what guest/init.sh mounts (guest/command.ts)",
    `root_tag=${shellQuote(ROOT_TAG)}`,
    `uid=${r.id.uid} gid=${r.id.gid}`,
    `home=${shellQuote(r.env.HOME?.startsWith("/") ? r.env.HOME : "")}`,
    `overlay_n=${r.overlays.length}`,
    ...r.overlays.map((d, i) => `overlay_${i}=${shellQuote(d)}`),
    `mount_n=${r.mounts.length}`,
    ...r.mounts.flatMap((m, i) => [`mount_tag_${i}=${shellQuote(m.tag)}`, `mount_at_${i}=${shellQuote(m.at)}`]),
  ];
  return lines.join("\n") + "\n";
}

/** The extra initramfs archive of a run over a root: only the mark that makes init wait for its command on vmm.stdin. */
export function hostRunArchive(): Uint8Array {
  return writeCpio([
    { path: "vmm", mode: S_IFDIR | 0o755 },
    { path: "vmm/run.stdin", mode: S_IFREG | 0o644, data: new Uint8Array(0) },
  ]);
}

/** The payload header: this magic, then the archive's length as 8 hex digits. */
export const PAYLOAD_MAGIC = "vmm-cmd1";
export const PAYLOAD_HEADER = 16;

/**
 * What `vmm run` sends on vmm.stdin before the host's stdin: the header,
 * then the cpio archive of the command's files (see the top of this file).
 * `now` is the wall clock the guest takes; `seed` goes into its random pool
 * (a restored guest would otherwise start from the snapshot's pool every
 * time). Throws RangeError when the environment and arguments are too big.
 */
export function runPayload(r: HostRun, now = Date.now(), seed = crypto.getRandomValues(new Uint8Array(64))): RunPayload {
  const enc = new TextEncoder();
  const exec = enc.encode(execScript(r));
  if (exec.length > MAX_EXEC_SCRIPT) {
    throw new RangeError(`The command and its environment take ${exec.length} bytes; at most ${MAX_EXEC_SCRIPT} fit in one exec argument`);
  }
  const settime = settimeElf(now);
  const archive = writeCpio([
    { path: "vmm", mode: S_IFDIR | 0o755 },
    { path: "vmm/run.conf", mode: S_IFREG | 0o644, data: enc.encode(runConf(r)) },
    { path: "vmm/exec.sh", mode: S_IFREG | 0o644, data: exec },
    { path: "vmm/setids", mode: S_IFREG | 0o755, data: setidsElf(r.id) },
    { path: "vmm/seed", mode: S_IFREG | 0o600, data: seed },
    // Last, so its clock (its last 16 bytes) sits at a known place: before the archive's trailer.
    { path: "vmm/settime", mode: S_IFREG | 0o755, data: settime },
  ]);
  const bytes = new Uint8Array(PAYLOAD_HEADER + archive.length);
  bytes.set(enc.encode(PAYLOAD_MAGIC + archive.length.toString(16).padStart(8, "0")));
  bytes.set(archive, PAYLOAD_HEADER);
  const clockAt = PAYLOAD_HEADER + lastIndexOf(archive, settime) + settime.length - SETTIME_CLOCK_BYTES;
  return { bytes, clockAt };
}

/** A command as sent: its bytes, and where in them the guest's wall clock is (a timespec: u64 seconds, u64 nanoseconds). */
export interface RunPayload {
  bytes: Uint8Array;
  clockAt: number;
}

function lastIndexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = hay.length - needle.length; i >= 0; i--) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  throw new Error("settime is not in the payload");
}

/** What a run over a root adds to a machine's options: its shares, and its command on vmm.stdin. */
export interface HostRunDevices {
  hostRun?: HostRun;
  shares?: RunShare[];
  stdio?: StdioOptions["stdio"];
}

/**
 * Options with `hostRun` turned into devices: the shares it needs join the
 * caller's, and its payload goes ahead of stdin. The same for a cold boot
 * and a restore (loop/snapshot.ts), whose guest waits at the same point.
 * Throws RangeError when the command is too big to send, or there is no stdio device.
 */
export function withHostRun<O extends HostRunDevices>(o: O): O {
  if (!o.hostRun) return o;
  if (!o.stdio) throw new RangeError("A command over a root needs the stdio device (MachineOptions.stdio) for its stdin, stdout and stderr");
  const p = runPayload(o.hostRun);
  return {
    ...o,
    shares: [...(o.shares ?? []), ...hostRunShares(o.hostRun)],
    stdio: { ...o.stdio, stdinPrefix: p.bytes, stdinClockAt: p.clockAt },
  };
}

/**
 * Concatenate two initramfs archives as `initrdLayout` says: the second
 * 4-byte aligned, the whole padded with zeros to 4 KiB pages. QEMU 10's
 * PVH and microvm loaders lose the tail of an initrd whose size is not a
 * page multiple: the nested host's init found no
 * /vmm/run.sh after a 10 KB script and stopped with status 125, every time,
 * where QEMU 7.2 loaded it whole. vmm loads either.
 */
export function concatInitrd(a: Uint8Array, b: Uint8Array): Uint8Array {
  const { extraAt, size } = initrdLayout(a.length, b.length);
  const out = new Uint8Array(size);
  out.set(a);
  out.set(b, extraAt);
  return out;
}
