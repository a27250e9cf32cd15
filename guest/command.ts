/**
 * How the default guest learns its command: vmm appends a second initramfs
 * archive to the image's, and Linux unpacks concatenated archives one after
 * another, so the files below simply appear in the guest's initramfs beside
 * guest/init.sh, which looks for them.
 *
 * - `vmm run --busybox -- CMD`: `/vmm/run.sh` holds CMD, quoted; init runs it
 *   in the initramfs with the console as its terminal.
 * - `vmm run -- CMD` (over a root): `/vmm/run.conf` tells init what to mount
 *   (shell assignments it sources), `/vmm/exec.sh` is what the root's own
 *   /bin/sh runs as the caller (environment, directory, then `exec CMD`), and
 *   `/vmm/setids` enters the root and takes on the caller's ids
 *   (guest/setids.ts). The shares those files name are in `hostRunShares()`.
 *
 * Everything the caller controls (arguments, environment values, paths) is
 * single-quoted for sh, which keeps every byte but NUL, and no argument,
 * environment string or path can hold a NUL anyway.
 */
import { S_IFDIR, S_IFREG, writeCpio } from "./cpio.ts";
import { type Identity, setidsElf } from "./setids.ts";

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
}

/** The virtio-fs shares a host run needs: the root read-only, the rest read-write. */
export function hostRunShares(r: HostRun): RunShare[] {
  return [
    { path: r.root, tag: ROOT_TAG, readOnly: true },
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

/**
 * The extra initramfs archive for a run over a root. Throws RangeError when
 * the environment and arguments are too big to pass.
 */
export function hostRunArchive(r: HostRun): Uint8Array {
  const enc = new TextEncoder();
  const exec = enc.encode(execScript(r));
  if (exec.length > MAX_EXEC_SCRIPT) {
    throw new RangeError(`The command and its environment take ${exec.length} bytes; at most ${MAX_EXEC_SCRIPT} fit in one exec argument`);
  }
  return writeCpio([
    { path: "vmm", mode: S_IFDIR | 0o755 },
    { path: "vmm/run.conf", mode: S_IFREG | 0o644, data: enc.encode(runConf(r)) },
    { path: "vmm/exec.sh", mode: S_IFREG | 0o644, data: exec },
    { path: "vmm/setids", mode: S_IFREG | 0o755, data: setidsElf(r.id) },
  ]);
}

/**
 * Concatenate initramfs archives, each starting 4-byte aligned, and pad the
 * whole with zeros to 4 KiB pages (the kernel skips zeros between and after
 * archives). QEMU 10's PVH and microvm loaders lose the tail of an initrd
 * whose size is not a page multiple: the nested host's init found no
 * /vmm/run.sh after a 10 KB script and stopped with status 125, every time,
 * where QEMU 7.2 loaded it whole. vmm loads either.
 */
export function concatInitrd(a: Uint8Array, b: Uint8Array): Uint8Array {
  const at = a.length + (4 - (a.length % 4)) % 4;
  const out = new Uint8Array(Math.ceil((at + b.length) / 4096) * 4096);
  out.set(a);
  out.set(b, at);
  return out;
}
