/**
 * The process and the host's files as the main thread sees them on its way
 * to a guest's first instruction: arguments, environment, exit, stderr, and
 * the file operations vmm makes there (a kernel's size, the kernel cache,
 * the run's root and snapshots). Node's names and meanings (`statSync`,
 * `mkdirSync`, …), so a module switches by its import line, but not Node's
 * modules on Deno.
 *
 * Why: the first `node:` module a Deno process loads starts Deno's whole
 * Node compatibility layer. On this project's hosts that costs 13 MiB of RSS
 * and 50–70 ms for `node:fs` alone (6 MiB for the smallest, `node:path`),
 * a third of vmm's own memory; in the nested test host, where every
 * instruction of the runtime is emulated, it costs seconds. Deno's own
 * `Deno.*` calls cost nothing of the kind. Bun's `node:` modules are its
 * native ones, cheap to load, so on Bun this module is `node:fs`.
 *
 * What it covers is what `vmm boot` and `vmm run` need, the snapshot cache
 * and the root's checks included (ffi/sha256.ts stands in for
 * `node:crypto`'s hash). Building or unpacking the default guest imports
 * `node:` modules itself, lazily, and pays the layer on the run that does it.
 */
import { isDeno } from "./runtime.ts";
import { type FileStat, libc, NativeBuf, writeAll } from "./libc.ts";

export { type FileStat, fstatSync } from "./libc.ts";

// deno-lint-ignore no-explicit-any
const g = globalThis as any;
const D = g.Deno;
/** Bun's node:fs; never loaded on Deno (a dynamic import behind the check does not start the layer). */
const nodeFs: typeof import("node:fs") | null = isDeno ? null : await import("node:fs");

/** The command-line arguments after the script's name. */
export function args(): string[] {
  return isDeno ? [...D.args] : g.process.argv.slice(2);
}

/** The environment, as a plain record (a copy on Deno: changing it changes nothing). */
export function env(): Record<string, string | undefined> {
  return isDeno ? D.env.toObject() : g.process.env;
}

/** End the process with `code`. */
export function exit(code: number): never {
  if (isDeno) D.exit(code);
  g.process.exit(code);
  throw new Error("unreachable");
}

/** This process's ID and real user ID. */
export const pid = (): number => libc.getpid();
export const uid = (): number => (isDeno ? D.uid() : g.process.getuid());

/** Node's os.tmpdir(): $TMPDIR, $TMP or $TEMP, else /tmp, without a trailing slash. */
export function tmpdir(e = env()): string {
  const t = e.TMPDIR || e.TMP || e.TEMP || "/tmp";
  return t.length > 1 && t.endsWith("/") ? t.slice(0, -1) : t;
}

/** Write all of `text` to `fd` now (no buffering: vmm may exit right after). */
export function writeSync(fd: number, text: string): void {
  writeAll(fd, new TextEncoder().encode(text), `write fd ${fd}`);
}

export function isatty(fd: number): boolean {
  return libc.isatty(fd) === 1;
}

/** stat(2); throws an Error whose `code` is the errno's name (ENOENT, …), as Node's does. */
export function statSync(path: string): FileStat {
  if (nodeFs) {
    const s = nodeFs.statSync(path);
    return { dev: s.dev, ino: s.ino, size: s.size, mode: s.mode, uid: s.uid, mtimeMs: s.mtimeMs, isFile: s.isFile(), isDirectory: s.isDirectory() };
  }
  const s = D.statSync(path);
  return { dev: s.dev, ino: s.ino, size: s.size, mode: s.mode, uid: s.uid, mtimeMs: s.mtime?.getTime() ?? 0, isFile: s.isFile, isDirectory: s.isDirectory };
}

/** lstat(2): as statSync(), of a symbolic link itself. */
export function lstatSync(path: string): FileStat & { isSymbolicLink: boolean } {
  if (nodeFs) {
    const s = nodeFs.lstatSync(path);
    return { dev: s.dev, ino: s.ino, size: s.size, mode: s.mode, uid: s.uid, mtimeMs: s.mtimeMs, isFile: s.isFile(), isDirectory: s.isDirectory(), isSymbolicLink: s.isSymbolicLink() };
  }
  const s = D.lstatSync(path);
  return { dev: s.dev, ino: s.ino, size: s.size, mode: s.mode, uid: s.uid, mtimeMs: s.mtime?.getTime() ?? 0, isFile: s.isFile, isDirectory: s.isDirectory, isSymbolicLink: s.isSymlink };
}

/** A symbolic link's target. */
export function readlinkSync(path: string): string {
  return nodeFs ? nodeFs.readlinkSync(path, "utf8") : D.readLinkSync(path);
}

/** realpath(3): the absolute path with every symbolic link, "." and ".." resolved. */
export function realpathSync(path: string): string {
  return nodeFs ? nodeFs.realpathSync(path) : D.realPathSync(path);
}

/** Cut or extend a file to `len` bytes. */
export function truncateSync(path: string, len: number): void {
  if (nodeFs) nodeFs.truncateSync(path, len);
  else D.truncateSync(path, len);
}

/** The process's working directory. */
export function cwd(): string {
  return isDeno ? D.cwd() : g.process.cwd();
}

/** Up to `len` bytes from the start of a file. */
export function readHead(path: string, len: number): Uint8Array {
  if (nodeFs) {
    const fd = nodeFs.openSync(path, "r");
    try {
      const b = new Uint8Array(len);
      return b.subarray(0, nodeFs.readSync(fd, b, 0, len, 0));
    } finally {
      nodeFs.closeSync(fd);
    }
  }
  const f = D.openSync(path, { read: true });
  try {
    const b = new Uint8Array(len);
    let n = 0;
    while (n < len) {
      const got = f.readSync(b.subarray(n));
      if (got === null || got === 0) break;
      n += got;
    }
    return b.subarray(0, n);
  } finally {
    f.close();
  }
}

export function existsSync(path: string): boolean {
  return access(path, F_OK);
}

/** access(2): whether this process may use `path` as `mode` says (F_OK, W_OK, …). */
export function access(path: string, mode: number): boolean {
  const p = NativeBuf.cstring(path);
  try {
    return libc.access(p.addr, mode) === 0;
  } finally {
    p.free();
  }
}
export const F_OK = 0, W_OK = 2;

export function readFileSync(path: string): Uint8Array {
  return nodeFs ? new Uint8Array(nodeFs.readFileSync(path)) : D.readFileSync(path);
}

export function readTextFileSync(path: string): string {
  return nodeFs ? nodeFs.readFileSync(path, "utf8") : D.readTextFileSync(path);
}

export function writeFileSync(path: string, data: Uint8Array): void {
  if (nodeFs) nodeFs.writeFileSync(path, data);
  else D.writeFileSync(path, data);
}

/**
 * The runs of `data` that are not all zeros, as [start, end) byte ranges, in
 * whole `page`s (the last may be short: it ends with the data).
 */
export function nonZeroRuns(data: Uint8Array, page = 4096): [number, number][] {
  // Four bytes at a time where the data is aligned to allow it (all of it, for a fresh buffer).
  const words = data.byteOffset % 4 === 0 ? new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2) : null;
  const zero = (start: number, end: number) => {
    let i = start;
    if (words) for (; i + 4 <= end; i += 4) if (words[i >>> 2] !== 0) return false;
    for (; i < end; i++) if (data[i] !== 0) return false;
    return true;
  };
  const out: [number, number][] = [];
  for (let at = 0; at < data.length; at += page) {
    const end = Math.min(data.length, at + page);
    if (zero(at, end)) continue;
    const last = out[out.length - 1];
    if (last && last[1] === at) last[1] = end;
    else out.push([at, end]);
  }
  return out;
}

/**
 * writeFileSync() that leaves each all-zero page of `data` a hole in the
 * file: the data is written run by run at its own offset, and a final
 * truncate gives the file its size. It reads back the same; what it saves is
 * disk, and reading zeros: a loader that knows its memory is zero reads the
 * data alone (ffi/libc.ts preadData). vmm keeps its kernels this way.
 */
export function writeSparseFileSync(path: string, data: Uint8Array): void {
  const runs = nonZeroRuns(data);
  if (nodeFs) {
    const fd = nodeFs.openSync(path, "w");
    try {
      for (const [start, end] of runs) {
        for (let at = start; at < end;) at += nodeFs.writeSync(fd, data, at, end - at, at);
      }
      nodeFs.ftruncateSync(fd, data.length);
    } finally {
      nodeFs.closeSync(fd);
    }
    return;
  }
  const f = D.openSync(path, { write: true, create: true, truncate: true });
  try {
    for (const [start, end] of runs) {
      f.seekSync(start, D.SeekMode.Start);
      for (let at = start; at < end;) at += f.writeSync(data.subarray(at, end));
    }
    f.truncateSync(data.length);
  } finally {
    f.close();
  }
}

export function mkdirSync(path: string, o: { recursive?: boolean; mode?: number } = {}): void {
  if (nodeFs) nodeFs.mkdirSync(path, o);
  else D.mkdirSync(path, o);
}

export function renameSync(from: string, to: string): void {
  if (nodeFs) nodeFs.renameSync(from, to);
  else D.renameSync(from, to);
}

/** Remove a file or (recursive) a tree; `force`: a missing one is no error. */
export function rmSync(path: string, o: { recursive?: boolean; force?: boolean } = {}): void {
  if (nodeFs) return nodeFs.rmSync(path, o);
  try {
    D.removeSync(path, { recursive: o.recursive ?? false });
  } catch (e) {
    if (!(o.force && (e as { code?: string }).code === "ENOENT")) throw e;
  }
}

/** The names in a directory. */
export function readdirSync(path: string): string[] {
  if (nodeFs) return nodeFs.readdirSync(path);
  return [...D.readDirSync(path)].map((e: { name: string }) => e.name);
}

export function utimesSync(path: string, atime: Date, mtime: Date): void {
  if (nodeFs) nodeFs.utimesSync(path, atime, mtime);
  else D.utimeSync(path, atime, mtime);
}

// Paths: POSIX only, as vmm runs on Linux only.

export function isAbsolute(p: string): boolean {
  return p.startsWith("/");
}

/**
 * Node's url.fileURLToPath() for the file: URLs modules are loaded from, Bun's
 * `file:///$bunfs/root/…` included (`$` is not escaped in a path).
 */
export function fileURLToPath(url: URL): string {
  return decodeURIComponent(url.pathname);
}

/** Node's path.resolve(): the parts from the last absolute one (else the working directory) on, joined; no trailing slash. */
export function resolve(...parts: string[]): string {
  let p = "";
  for (const part of [cwd(), ...parts]) if (part !== "") p = isAbsolute(part) ? part : `${p}/${part}`;
  const r = normalize(p);
  return r.length > 1 && r.endsWith("/") ? r.slice(0, -1) : r;
}

/** Node's path.dirname() for POSIX paths. */
export function dirname(p: string): string {
  const t = p.length > 1 ? p.replace(/\/+$/, "") : p;
  const i = t.lastIndexOf("/");
  if (i < 0) return ".";
  return i === 0 ? "/" : t.slice(0, i);
}

/** Node's path.join(): the parts joined by "/", then normalised ("." and ".." resolved, no double slashes). */
export function join(...parts: string[]): string {
  return normalize(parts.filter((p) => p !== "").join("/") || ".");
}

/** Node's path.normalize() for POSIX paths. */
export function normalize(p: string): string {
  if (p === "") return ".";
  const abs = p.startsWith("/"), trailing = p.endsWith("/");
  const out: string[] = [];
  for (const s of p.split("/")) {
    if (s === "" || s === ".") continue;
    if (s === "..") {
      if (out.length && out[out.length - 1] !== "..") out.pop();
      else if (!abs) out.push("..");
    } else out.push(s);
  }
  let r = (abs ? "/" : "") + out.join("/");
  if (r === "") r = abs ? "/" : ".";
  return trailing && r !== "/" ? `${r}/` : r;
}
