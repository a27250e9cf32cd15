/**
 * `vmm run` over a root, the host's side: the checks made before booting (a
 * root without a shell or without the loader its shell needs would otherwise
 * show only as a command that cannot start), and the plan the guest follows.
 *
 * Paths are resolved the way the guest will see them once the directory is its
 * root: an absolute symlink (`/bin/sh -> /usr/bin/dash`, `/lib64 -> usr/lib64`
 * in a merged-/usr image) points inside the root, never at the host's files,
 * and `..` stops at the root.
 */
import { cwd as processCwd, env as processEnv, join, lstatSync, readHead, readlinkSync, realpathSync, resolve, statSync } from "../ffi/sys.ts";
import { ConfigError } from "../vm/vm.ts";
import { CWD_TAG, ENV_NAME, type HostRun, rwTag } from "./command.ts";
import { callerIdentity, type Identity } from "./setids.ts";

/** Linux follows at most 40 symlinks in one lookup (MAXSYMLINKS). */
const MAX_LINKS = 40;

/**
 * Where `path` leads inside `root`, as an absolute path relative to it, or
 * null when a component is missing (or a symlink loop).
 *
 * @example
 * ```ts
 * import { resolveIn } from "./root.ts";
 * console.log(resolveIn("/", "/bin/sh")); // "/usr/bin/dash" on Debian
 * ```
 */
export function resolveIn(root: string, path: string): string | null {
  const done: string[] = [];
  let todo = path.split("/").filter((c) => c && c !== ".");
  let links = 0;
  while (todo.length) {
    const c = todo.shift()!;
    if (c === "..") {
      done.pop(); // at the root, `..` is the root
      continue;
    }
    const host = join(root, ...done, c);
    let st;
    try {
      st = lstatSync(host);
    } catch {
      return null;
    }
    if (!st.isSymbolicLink) {
      done.push(c);
      continue;
    }
    if (++links > MAX_LINKS) return null;
    const target = readlinkSync(host);
    if (target.startsWith("/")) done.length = 0;
    todo = [...target.split("/").filter((t) => t && t !== "."), ...todo];
  }
  return "/" + done.join("/");
}

/** PT_INTERP's path in an ELF file's first bytes, "" for a static ELF, null when it is no ELF. */
export function elfInterp(head: Uint8Array): string | null {
  if (head.length < 64 || head[0] !== 0x7f || head[1] !== 0x45 || head[2] !== 0x4c || head[3] !== 0x46) return null;
  if (head[4] !== 2 || head[5] !== 1) return null; // only ELFCLASS64 little-endian runs on x86-64 here
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const phoff = Number(v.getBigUint64(0x20, true)), phentsize = v.getUint16(0x36, true), phnum = v.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > head.length) return null;
    if (v.getUint32(ph, true) !== 3) continue; // PT_INTERP
    const off = Number(v.getBigUint64(ph + 8, true)), size = Number(v.getBigUint64(ph + 0x20, true));
    if (off + size > head.length) return null;
    return new TextDecoder().decode(head.subarray(off, off + size)).replace(/\0+$/, "");
  }
  return "";
}

/**
 * Throws ConfigError `WHAT: why` unless `root` is a directory whose /bin/sh
 * exists, is executable, and finds its dynamic loader inside `root`.
 * `what` names the input (`--root /srv/img`).
 *
 * @example
 * ```ts
 * import { checkRunRoot } from "./root.ts";
 * checkRunRoot("/", "the host root");
 * ```
 */
export function checkRunRoot(root: string, what: string): void {
  const fail = (why: string) => new ConfigError(`${what}: ${why}`);
  try {
    if (!statSync(root).isDirectory) throw fail("not a directory");
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw fail((e as { code?: string }).code === "ENOENT" ? "no such directory" : (e as Error).message);
  }
  const sh = resolveIn(root, "/bin/sh");
  if (!sh) throw fail("no /bin/sh");
  const host = join(root, sh);
  const st = statSync(host);
  if (!st.isFile) throw fail(`/bin/sh is not a file`);
  if ((st.mode & 0o111) === 0) throw fail(`/bin/sh is not executable`);
  const interp = elfInterp(readHead(host, 4096));
  if (interp && !resolveIn(root, interp)) throw fail(`no dynamic loader: /bin/sh needs ${interp}`);
}

/** Where a tmpfs is mounted in the guest's root: a directory there can always be made. */
const TMPFS_DIRS = ["/tmp", "/run"];
/** What the guest may write to over a tmpfs, besides the home directory. */
const OVERLAY_DIRS = ["/etc", "/var"];
/** PATH when the caller has none. */
const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const under = (p: string, dir: string) => p === dir || p.startsWith(dir + "/");

/** What `vmm run` was asked for, before any check. */
export interface RunRequest {
  argv: string[];
  /** `--root DIR`; undefined: the host's own root. */
  root?: string;
  /** `--rw DIR`, in order. */
  rw?: string[];
  /** Default: this process's working directory. */
  cwd?: string;
  /** Default: this process's environment. */
  env?: Record<string, string | undefined>;
  /** Default: this process's ids. */
  id?: Identity;
}

function realDir(path: string, what: string): string {
  const fail = (why: string) => new ConfigError(`${what}: ${why}`);
  let real: string;
  try {
    real = realpathSync(resolve(path));
  } catch (e) {
    const code = (e as { code?: string }).code;
    throw fail(code === "ENOENT" ? "no such directory" : code === "ENOTDIR" ? "not a directory" : code ?? (e as Error).message);
  }
  if (!statSync(real).isDirectory) throw fail("not a directory");
  return real;
}

/**
 * Checks a `vmm run` request on the host and turns it into the plan the guest
 * follows (guest/command.ts `HostRun`). Every problem is a ConfigError line
 * naming the option: `--root DIR: no /bin/sh`, `--rw DIR: no such directory`.
 *
 * The working directory is shared read-write at its own path unless it is
 * "/" (the root stays read-only) or, with `--root`, the root has no such
 * directory and it is not under /tmp or /run: then the command starts in "/".
 */
export function planHostRun(q: RunRequest): HostRun {
  const root = q.root === undefined ? "/" : realDir(q.root, `--root ${q.root}`);
  checkRunRoot(root, q.root === undefined ? "the host root /" : `--root ${q.root}`);
  /** Where `dir` can be mounted in the guest's root, or null. */
  const mountPoint = (dir: string): string | null => {
    if (TMPFS_DIRS.some((t) => under(dir, t))) return dir;
    const at = resolveIn(root, dir);
    if (at === null || !statSync(join(root, at)).isDirectory) return null;
    return at;
  };

  const mounts: HostRun["mounts"] = [];
  const cwdReal = realDir(q.cwd ?? processCwd(), "The working directory");
  let cwd = "/";
  if (cwdReal !== "/") {
    const at = mountPoint(cwdReal);
    if (at !== null) {
      mounts.push({ tag: CWD_TAG, path: cwdReal, at });
      cwd = at;
    }
  }
  for (const dir of q.rw ?? []) {
    const what = `--rw ${dir}`;
    const real = realDir(dir, what);
    if (real === "/") throw new ConfigError(`${what}: the root stays read-only; share a directory below it`);
    if (mounts.some((m) => m.path === real)) continue; // the working directory, or given twice
    const at = mountPoint(real);
    if (at === null) throw new ConfigError(`${what}: the root ${root} has no directory ${real} to mount it on`);
    mounts.push({ tag: rwTag(mounts.filter((m) => m.tag !== CWD_TAG).length), path: real, at });
  }
  // Parents before children, so that a share inside another stays visible.
  mounts.sort((a, b) => a.at.split("/").length - b.at.split("/").length);

  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(q.env ?? processEnv())) if (v !== undefined && ENV_NAME.test(k)) env[k] = v;
  env.PATH ??= DEFAULT_PATH;

  const overlays: string[] = [];
  const home = env.HOME;
  for (const d of [...OVERLAY_DIRS, ...(home?.startsWith("/") ? [home] : [])]) {
    const at = resolveIn(root, d);
    if (at === null || at === "/" || !statSync(join(root, at)).isDirectory) continue;
    if ([...TMPFS_DIRS, ...overlays].some((o) => under(at, o))) continue; // already writable
    if (/[,:\\]/.test(at)) continue; // overlayfs options cannot name such a path
    overlays.push(at);
  }
  return { argv: q.argv, root, cwd, mounts, overlays, env, id: q.id ?? callerIdentity() };
}
