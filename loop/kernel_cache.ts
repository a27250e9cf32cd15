/**
 * A bzImage given with `--kernel` boots as the ELF kernel inside it, unpacked
 * once on the host and kept in vmm's cache (kernelCacheDir): the guest skips
 * its decompressor on every boot after the first.
 *
 * Why: a bzImage's first act is to decompress the real kernel, some 45 MB,
 * with the guest's CPU alone (boot/vmlinux.ts). That is tens of milliseconds
 * on hardware, and seconds where the guest's instructions are emulated one
 * level down, as in this project's nested test host. The default guest has
 * long booted its vmlinux for that reason (guest/build.ts); this gives a
 * kernel of the user's own the same start. Firecracker asks its users for
 * the vmlinux instead; vmm takes either and does the unpacking itself.
 *
 * What changes for the guest: the vmlinux runs at its link address, so the
 * decompressor's KASLR does not happen (as with `nokaslr`), and the kernel
 * starts in 4-level paging where the decompressor might have turned on 5-level
 * paging. `--kernel-as-is` (MachineOptions.kernelAsIs) boots the bzImage as
 * it is, for a test of either.
 *
 * **What is unpacked:** payloads this process decodes alone: gzip, LZ4 and
 * zstd (guest/build.ts vmlinuxInProcess; Debian's kernels are LZ4, Ubuntu's
 * and Fedora's zstd). A bzImage compressed otherwise (xz, bzip2, lzma, lzo),
 * or one whose payload does not decode to an x86-64 ELF kernel, boots as it
 * is. The first boot of a bzImage pays for the decoding (0.3–0.6 s for a
 * 53 MB kernel on the machines measured), and its vmlinux takes as much disk.
 *
 * **The key** is the bzImage's identity without reading it: device, inode,
 * size and modification time, as the run cache keys its files
 * (loop/run_cache.ts). A rebuilt kernel is a new file and gets a new entry.
 *
 * **Concurrency:** an entry is written into a temporary directory and
 * renamed into place whole; a run that loses the race throws its copy away.
 * The cache keeps the KEEP_KERNELS entries used last, and never removes one
 * used in the last EVICT_GRACE_MS: the loader opens the file again for each
 * piece it reads, so another vmm may still be reading it.
 */
import { env as processEnv, existsSync, join, mkdirSync, pid, readFileSync, renameSync, rmSync, statSync, writeSparseFileSync } from "../ffi/sys.ts";
import { close, NativeBuf, O_RDONLY, open, read } from "../ffi/libc.ts";
import { HDR, HDRS_MAGIC } from "../boot/bzimage.ts";
import { KERNEL_START } from "../boot/layout.ts";
import { isElf, parseVmlinux } from "../boot/vmlinux.ts";
import { sha256HexAsync } from "../ffi/sha256.ts";
import { cacheDirWritable, cacheRoots, touchEntry, trimCache } from "./cache_entries.ts";

/** How many unpacked kernels the cache keeps: the ones used last. */
export const KEEP_KERNELS = 4;
/** An entry used this recently is never removed. */
export const EVICT_GRACE_MS = 10 * 60_000;
/** Bumped when what an entry holds changes: older entries are then not used. */
const FORMAT = 1;
const VMLINUX = "vmlinux";

/**
 * Where unpacked kernels live: $VMM_KERNEL_CACHE, else `kernels/` in the
 * first of vmm's cache roots that can be written (loop/cache_entries.ts
 * cacheRoots: $VMM_CACHE, $XDG_CACHE_HOME/vmm, ~/.cache/vmm, then a
 * directory of this user's in the temporary directory); null when none
 * can. A read-only $VMM_CACHE (the benchmarks' nested host shares the
 * host's) or home thus still gets a kernel cache.
 */
export function kernelCacheDir(env: Record<string, string | undefined> = processEnv()): string | null {
  const dirs = env.VMM_KERNEL_CACHE ? [env.VMM_KERNEL_CACHE] : cacheRoots(env).map((r) => join(r, "kernels"));
  return dirs.find(cacheDirWritable) ?? null;
}

/** What unpackedKernel found: the file to boot, and whether it was unpacked by this call. */
export interface Unpacked {
  path: string;
  fresh: boolean;
}

/**
 * The cached vmlinux of the bzImage at `path`, unpacked now if it is not
 * cached yet, in `cacheDir` (default kernelCacheDir(); null: none);
 * undefined when `path` is not a bzImage vmm can unpack, or the cache cannot
 * be written (the caller then boots `path` as it is).
 *
 * @example
 * ```ts
 * import { unpackedKernel } from "./kernel_cache.ts";
 * const k = await unpackedKernel("/boot/vmlinuz-6.1.0-57-cloud-amd64");
 * console.log(k?.path); // ~/.cache/vmm/kernels/3f1c…/vmlinux
 * ```
 */
export async function unpackedKernel(path: string, cacheDir?: string | null): Promise<Unpacked | undefined> {
  let id: string;
  try {
    const st = statSync(path);
    if (!st.isFile || !looksLikeBzImage(path)) return undefined;
    // Whole milliseconds: Deno gives no more, Bun gives fractions, and both runtimes should find one entry.
    id = `${st.dev}:${st.ino} ${st.size} ${Math.trunc(st.mtimeMs)}`;
  } catch {
    return undefined; // the loader names what is wrong with the file
  }
  // Looked for only now: an ELF kernel (the default guest's) makes no cache directory.
  const cache = cacheDir === undefined ? kernelCacheDir() : cacheDir;
  if (cache === null) return undefined;
  const key = (await sha256HexAsync(JSON.stringify({ format: FORMAT, id }))).slice(0, 32);
  const dir = join(cache, key), file = join(dir, VMLINUX);
  if (existsSync(file)) {
    touchEntry(dir);
    return { path: file, fresh: false };
  }
  // Decoding costs a second or more where vmm runs emulated: not for a cache it cannot keep.
  if (!cacheDirWritable(cache)) return undefined;
  const elf = await decode(path);
  if (!elf) return undefined;
  const tmp = join(cache, `.${key}.tmp-${pid()}`);
  try {
    mkdirSync(tmp, { recursive: true });
    writeSparseFileSync(join(tmp, VMLINUX), elf); // zero pages as holes: the loader skips them (ffi/libc.ts preadData)
    try {
      renameSync(tmp, dir);
    } catch (e) {
      if (!existsSync(file)) throw e; // else another vmm published the same bytes first
    }
  } catch {
    return undefined; // a cache we cannot write to: boot the bzImage
  } finally {
    try {
      rmSync(tmp, { recursive: true, force: true });
    } catch { /* Bun's rmSync throws even with force where the path cannot exist (ENOTDIR, EROFS) */ }
  }
  trimCache(cache, dir, KEEP_KERNELS, EVICT_GRACE_MS);
  return { path: file, fresh: true };
}

/** Whether the file starts with a bzImage's setup header ("HdrS" at 0x202). */
function looksLikeBzImage(path: string): boolean {
  const head = NativeBuf.alloc(0x210);
  try {
    const fd = open(path, O_RDONLY);
    try {
      if (read(fd, head) < head.bytes.length) return false;
    } finally {
      close(fd);
    }
    return head.view.getUint32(HDR.HEADER, true) === HDRS_MAGIC;
  } finally {
    head.free();
  }
}

/** The bzImage's ELF kernel, or undefined when its payload is not one this process decodes to an x86-64 vmlinux. */
async function decode(path: string): Promise<Uint8Array | undefined> {
  try {
    // Loaded on a miss only: the decoders and guest/build.ts's `node:` modules.
    const { vmlinuxInProcess } = await import("../guest/build.ts");
    const elf = vmlinuxInProcess(readFileSync(path));
    if (!elf || !isElf(elf)) return undefined;
    // What the loader checks of an ELF kernel: one it would refuse boots as the bzImage instead.
    return parseVmlinux(elf.subarray(0, 4096), elf.length).start >= KERNEL_START ? elf : undefined;
  } catch {
    return undefined;
  }
}

