/**
 * The `--share HOSTDIR[,tag=NAME][,ro][,cache=auto|always]` option: a host directory the guest
 * mounts with `mount -t virtiofs NAME DIR`.
 *
 * The tag is how the guest finds the share: the virtio-fs config space
 * carries it in 36 bytes, NUL padded when shorter (virtio 1.2 §5.11.4), and
 * Linux refuses a device whose tag is empty (virtio_fs.c
 * `virtio_fs_read_tag`). Two shares with one tag would leave the guest
 * mounting whichever it finds first, so that is an error too. Without
 * `tag=` the tag is the directory's own name after symlinks are resolved
 * (`--share .` in ~/src/vmm is "vmm"), and "root" for "/".
 *
 * Every way to get it wrong is one ConfigError line naming the option.
 *
 * @example
 * ```ts
 * import { parseShareOptions } from "./share_option.ts";
 *
 * const [s] = parseShareOptions(["/srv/data,ro"]);
 * console.log(s); // { path: "/srv/data", tag: "data", readOnly: true }
 * ```
 */
import { hostDirPath } from "../../ffi/fs.ts";
import { errnoName } from "../../ffi/errno.ts";
import { ConfigError } from "../../vm/errors.ts";
import type { CacheMode } from "./share.ts";

/** virtio_fs_config.tag: 36 bytes, not NUL-terminated when full (virtio 1.2 §5.11.4). */
export const FS_TAG_BYTES = 36;

/** One shared directory, as the machine's options hold it. */
export interface ShareOption {
  /** The host directory (the CLI stores its real path). */
  path: string;
  /** The name the guest mounts it by: 1 to 36 bytes of UTF-8. */
  tag: string;
  /** Refuse every change with EROFS. */
  readOnly: boolean;
  /** How long the guest may cache names and attributes (share.ts CACHE_TIMEOUT_S); default "auto". */
  cache?: CacheMode;
}

const utf8 = new TextEncoder();

/** Why `tag` cannot be a tag, or null when it can. */
export function tagProblem(tag: string): string | null {
  const n = utf8.encode(tag).length;
  if (n === 0) return "empty tag";
  if (n > FS_TAG_BYTES) return `tag "${tag}" is ${n} bytes, virtio-fs allows at most ${FS_TAG_BYTES}`;
  // A NUL would end the tag early in the guest; other control characters only confuse.
  if ([...tag].some((c) => c < " " || c === "\x7f")) return `tag "${JSON.stringify(tag).slice(1, -1)}" has a control character`;
  return null;
}

/** The tag a directory gets without `tag=`: its real path's last component, "root" for "/". */
export function defaultShareTag(realPath: string): string {
  return realPath.replace(/\/+$/, "").split("/").pop() || "root";
}

/**
 * The real path of `path` when it is a directory this process can list and
 * enter; otherwise throws ConfigError `--share WHAT: why`.
 */
export function checkShareDir(path: string, what = path): string {
  const fail = (why: string) => new ConfigError(`--share ${what}: ${why}`);
  const real = hostDirPath(path);
  if (typeof real === "string") return real;
  const code = errnoName(-real);
  if (code === "ENOENT") throw fail("no such directory");
  if (code === "ENOTDIR") throw fail("not a directory");
  if (code === "EACCES" || code === "EPERM") throw fail("permission denied (vmm must be able to read the directory)");
  if (code === "ELOOP") throw fail("too many levels of symbolic links");
  throw fail(code);
}

/**
 * Parse one `HOSTDIR[,tag=NAME][,ro]` (`readonly` is a synonym of `ro`). The
 * directory must exist and be readable; the path kept is its real path. A
 * path cannot contain a comma.
 */
export function parseShareOption(s: string): ShareOption {
  const fail = (why: string) => new ConfigError(`--share ${s}: ${why}`);
  const [path, ...opts] = s.split(",");
  if (path === "") throw fail("empty path");
  let tag: string | undefined;
  let readOnly = false;
  let cache: CacheMode | undefined;
  const seen = new Set<string>();
  for (const opt of opts) {
    if (opt === "") throw fail("empty option (a stray comma?)");
    const eq = opt.indexOf("=");
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const name = key === "readonly" ? "ro" : key;
    if (name !== "ro" && name !== "tag" && name !== "cache") throw fail(`unknown option "${key}" (tag=NAME, ro and cache=auto|always are known)`);
    if (seen.has(name)) throw fail(`option "${name}" given twice`);
    seen.add(name);
    if (name === "ro") {
      if (eq >= 0) throw fail(`option "${key}" takes no value`);
      readOnly = true;
    } else if (name === "cache") {
      const v = eq < 0 ? "" : opt.slice(eq + 1);
      if (v !== "auto" && v !== "always") throw fail(`option "cache" is auto or always, not "${v}"`);
      cache = v;
    } else {
      if (eq < 0) throw fail(`option "tag" needs a value (tag=NAME)`);
      tag = opt.slice(eq + 1);
      const bad = tagProblem(tag);
      if (bad) throw fail(bad);
    }
  }
  const real = checkShareDir(path, s);
  if (tag === undefined) {
    tag = defaultShareTag(real);
    const bad = tagProblem(tag);
    if (bad) throw fail(`${bad}; name the share with tag=NAME`);
  }
  return cache ? { path: real, tag, readOnly, cache } : { path: real, tag, readOnly };
}

/**
 * Check a list of shares as a whole: each tag valid, no tag twice, each
 * path a readable directory. The CLI's shares pass already; this is for
 * shares a program puts in the machine's options itself.
 */
export function checkShares(shares: readonly ShareOption[]): void {
  const byTag = new Map<string, string>();
  for (const s of shares) {
    const bad = tagProblem(s.tag);
    if (bad) throw new ConfigError(`--share ${s.path}: ${bad}`);
    const other = byTag.get(s.tag);
    if (other !== undefined) throw new ConfigError(`--share ${s.path}: tag "${s.tag}" is already the tag of ${other}`);
    byTag.set(s.tag, s.path);
    checkShareDir(s.path);
  }
}

/** Parse every `--share` given, in order, and check them together. */
export function parseShareOptions(values: readonly string[]): ShareOption[] {
  const shares = values.map(parseShareOption);
  checkShares(shares);
  return shares;
}
