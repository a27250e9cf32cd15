/**
 * Builds the guest images vmm and its tests boot, from Debian's packages.
 *
 * - The default guest: Debian's cloud kernel and an initramfs of busybox, the
 *   virtio modules and `guest/init.sh` as `/init`.
 * - The nested host ("L1"): Debian's generic kernel, which has kvm-amd and 9p,
 *   and the same kind of initramfs with those modules. `test/support/nested.ts`
 *   boots it under QEMU's TCG to get real KVM on a machine whose /dev/kvm is PVM.
 *
 * Kernels come from `apt-get download` (nothing is installed); the initramfs is
 * written with our own cpio writer. Everything lands in the cache directory and
 * is rebuilt only when missing or when its inputs (this file, init.sh, the
 * module lists in image_cache.ts: its `imageStamp()`) change. Both runtimes
 * run this: only `node:` built-ins, and every tool is a child process.
 */
import { execFileSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gunzipSync, zstdDecompressSync } from "node:zlib";
import { type CpioEntry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, writeCpio } from "./cpio.ts";
import { staticElf64 } from "./elf.ts";
import { LZ4_LEGACY_MAGIC, lz4LegacyDecode } from "./lz4.ts";
import { HDR, HDRS_MAGIC } from "../boot/bzimage.ts";
import { writeSparseFileSync } from "../ffi/sys.ts";
import {
  defaultCacheDir,
  type Flavour,
  GUEST,
  type GuestImage,
  imageStamp,
  isCurrent,
  type Manifest,
  NESTED,
  readIf,
  readManifest,
  type Source,
} from "./image_cache.ts";

// What the cache holds and how a current image is recognised live in
// image_cache.ts, which `vmm` reads on every start without loading this
// module's `node:` imports; the names stay importable from here.
export { builtImage, defaultCacheDir, type GuestImage } from "./image_cache.ts";

export interface BuildOptions {
  /** Where images are kept; default `$VMM_CACHE` or `${XDG_CACHE_HOME:-$HOME/.cache}/vmm`. */
  cacheDir?: string;
  /** Progress lines (downloads, builds); silent by default. */
  log?: (s: string) => void;
  /**
   * Ask apt again which kernel is current. Without it, an image once built
   * keeps its kernel version, and a complete image costs no child process.
   */
  refresh?: boolean;
}

/**
 * Returns the default guest image, building what is missing.
 *
 * @example
 * ```ts
 * import { ensureDefaultGuest } from "./build.ts";
 * const { kernel, initrd } = await ensureDefaultGuest({ log: console.error });
 * console.log(kernel, initrd);
 * ```
 */
export function ensureDefaultGuest(opts: BuildOptions = {}): Promise<GuestImage> {
  return Promise.resolve().then(() => ensure(GUEST, opts));
}

/** Returns the nested host (L1) image, building what is missing. */
export function ensureNestedHost(opts: BuildOptions = {}): Promise<GuestImage> {
  return Promise.resolve().then(() => ensure(NESTED, opts));
}

function ensure(fl: Flavour, opts: BuildOptions): GuestImage {
  const cache = opts.cacheDir ?? defaultCacheDir();
  const log = opts.log ?? (() => {});
  const stamp = imageStamp(fl);

  // The fast path runs no child process: vmm calls this (or, first,
  // image_cache.ts's currentImage(), the same test) on every start.
  const prev = readManifest(cache, fl.name);
  if (prev && !opts.refresh && isCurrent(prev.img, stamp)) return prev.img;
  mkdirSync(cache, { recursive: true });
  const src = prev && !opts.refresh ? prev.source : kernelSource(fl, log);

  const dir = join(cache, `${fl.name}-${src.version}`);
  const img: GuestImage = {
    kernel: join(dir, "vmlinuz"),
    initrd: join(dir, "initrd.cpio"),
    kernelVersion: src.version,
  };
  const stampFile = join(dir, "stamp");
  if (existsSync(join(dir, "vmlinux"))) img.vmlinux = join(dir, "vmlinux");
  if (isCurrent(img, stamp)) {
    writeManifest(cache, fl.name, { img, source: src });
    return img;
  }

  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(dir)) {
    // A build that was killed leaves its unpacked package behind.
    const pid = f.match(/^\.src-(\d+)$/)?.[1];
    if (pid && !existsSync(`/proc/${pid}`)) rmSync(join(dir, f), { recursive: true, force: true });
  }
  const tmp = join(dir, `.src-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  try {
    let root: string;
    if (src.kind === "deb") {
      const deb = download(src.pkg, join(cache, "debs"), log);
      log(`Unpacking ${deb}`);
      run("dpkg", ["-x", deb, tmp]);
      run("depmod", ["-b", tmp, src.version]); // the package ships no modules.dep
      root = tmp;
    } else {
      root = "/";
    }
    const modDir = join(root, "lib/modules", src.version);
    const init = readFileSync(fileURLToPath(new URL("./init.sh", import.meta.url)));
    const mods = resolveModules(readFileSync(join(modDir, "modules.dep"), "utf8"), fl.modules);
    log(`Building ${fl.name} initramfs for ${src.version}: ${mods.map(moduleName).join(" ")}`);
    const cpio = writeCpio(imageEntries(init, src.version, modDir, mods));
    writeAtomic(img.initrd, cpio);
    const kernel = readFileSync(join(root, "boot", `vmlinuz-${src.version}`));
    writeAtomic(img.kernel, kernel);
    const vmlinux = join(dir, "vmlinux");
    try {
      writeAtomic(vmlinux, extractVmlinux(kernel, dir), writeSparseFileSync); // zero pages as holes (ffi/libc.ts preadData)
      img.vmlinux = vmlinux;
    } catch (e) {
      rmSync(vmlinux, { force: true });
      delete img.vmlinux;
      log(`No vmlinux for ${src.version}: ${(e as Error).message}`);
    }
    writeAtomic(stampFile, new TextEncoder().encode(stamp));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  writeManifest(cache, fl.name, { img, source: src });
  return img;
}

/**
 * The kernel to build from: the one Debian's metapackage points at, else the
 * running host's (where apt has no Debian kernel).
 */
function kernelSource(fl: Flavour, log: (s: string) => void): Source {
  try {
    const version = debianKernelVersion(fl.meta);
    return { kind: "deb", version, pkg: `linux-image-${version}-unsigned` };
  } catch (e) {
    const host = execFileSync("uname", ["-r"]).toString().trim();
    if (!existsSync(`/boot/vmlinuz-${host}`) || !existsSync(`/lib/modules/${host}/modules.dep`)) {
      throw new Error(`${(e as Error).message}; and no host kernel /boot/vmlinuz-${host} to fall back on`);
    }
    log(`${(e as Error).message}: using the host kernel ${host}`);
    return { kind: "host", version: host };
  }
}

/**
 * The kernel version Debian's metapackage currently points at, e.g.
 * `6.1.0-56-cloud-amd64` from `Depends: linux-image-6.1.0-56-cloud-amd64`.
 */
function debianKernelVersion(meta: string): string {
  let out: string;
  try {
    out = execFileSync("apt-cache", ["depends", meta], { stdio: ["ignore", "pipe", "pipe"] }).toString();
  } catch (e) {
    throw new Error(`apt-cache depends ${meta}: ${reason(e)}`);
  }
  const m = out.match(/Depends:\s*linux-image-(\d[^\s]*)/);
  if (!m) throw new Error(`apt-cache depends ${meta}: names no linux-image package`);
  return m[1];
}

/** `apt-get download` into `dir`, unless the .deb is already there. */
function download(pkg: string, dir: string, log: (s: string) => void): string {
  mkdirSync(dir, { recursive: true });
  const have = () => readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith(".deb"));
  let deb = have();
  if (!deb) {
    log(`Downloading ${pkg}`);
    try {
      execFileSync("apt-get", ["download", "-q", pkg], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      throw new Error(`apt-get download ${pkg}: ${reason(e)}`);
    }
    deb = have();
    if (!deb) throw new Error(`apt-get download ${pkg}: no .deb appeared in ${dir}`);
  }
  return join(dir, deb);
}

/** Where a bzImage's compressed payload is (see extractVmlinux); throws RangeError when it has none. */
export function bzImagePayload(bzImage: Uint8Array): { payload: Uint8Array; len: number; start: number; v: DataView } {
  const v = new DataView(bzImage.buffer, bzImage.byteOffset, bzImage.byteLength);
  if (bzImage.length < 0x250 || v.getUint32(HDR.HEADER, true) !== HDRS_MAGIC) {
    throw new RangeError("Not a bzImage: no HdrS setup header");
  }
  if (v.getUint16(0x206, true) < 0x208) throw new RangeError("bzImage boot protocol is older than 2.08: no payload fields");
  const start = ((bzImage[0x1f1] || 4) + 1) * 512 + v.getUint32(0x248, true);
  const len = v.getUint32(0x24c, true);
  if (len < 8 || start + len > bzImage.length) throw new RangeError("bzImage payload runs past the end of the file");
  return { payload: bzImage.subarray(start, start + len), len, start, v };
}

/** The first four bytes of an xz and a zstd stream, little-endian (LZ4's legacy frame: LZ4_LEGACY_MAGIC). */
const XZ_MAGIC = 0x587a37fd, ZSTD_MAGIC = 0xfd2fb528;

/**
 * The ELF kernel inside a bzImage, where this process can decompress it
 * alone (gzip and zstd with node:zlib, LZ4 with guest/lz4.ts), else
 * undefined: what a packaged guest, which may not find the `lz4` program,
 * does on unpacking, and what loop/kernel_cache.ts unpacks. zstd is what
 * Ubuntu's, Fedora's and Arch's kernels use; Debian's use LZ4.
 */
export function vmlinuxInProcess(bzImage: Uint8Array): Uint8Array | undefined {
  const { payload, len } = bzImagePayload(bzImage);
  const v = new DataView(payload.buffer, payload.byteOffset, len);
  const magic = v.getUint32(0, true), size = v.getUint32(len - 4, true); // size_append (see extractVmlinux)
  let elf: Uint8Array;
  if (payload[0] === 0x1f && payload[1] === 0x8b) elf = gunzipSync(payload);
  else if (magic === LZ4_LEGACY_MAGIC) elf = lz4LegacyDecode(payload.subarray(0, len - 4), size);
  else if (magic === ZSTD_MAGIC) {
    elf = zstdDecompressSync(payload.subarray(0, len - 4), { maxOutputLength: size });
    if (elf.length !== size) throw new RangeError(`zstd gave ${elf.length} bytes, the bzImage says ${size}`);
  } else return undefined;
  return checkedElf(elf);
}

/** `elf` when it starts with the ELF magic; a bzImage whose payload does not is refused. */
function checkedElf(elf: Uint8Array): Uint8Array {
  if (elf[0] !== 0x7f || elf[1] !== 0x45 || elf[2] !== 0x4c || elf[3] !== 0x46) throw new RangeError("bzImage payload is not an ELF file");
  return elf;
}

/**
 * The ELF kernel inside a bzImage (what `scripts/extract-vmlinux` finds).
 *
 * The setup header (x86 `boot.rst`) gives the compressed payload's place:
 * `payload_offset` (0x248) and `payload_length` (0x24c), counted from the
 * protected-mode code, which starts after `setup_sects` (0x1f1) + 1 sectors.
 * For xz, zstd and lz4 the kernel's Makefile appends the uncompressed size as 4
 * little-endian bytes (`size_append`), which the decompressor must not see.
 */
export function extractVmlinux(bzImage: Uint8Array, tmpDir: string): Uint8Array {
  const { payload, len, start, v } = bzImagePayload(bzImage);
  if (payload[0] === 0x1f && payload[1] === 0x8b) return checkedElf(gunzipSync(payload));
  // LZ4 too goes to its program here: guest/lz4_test.ts checks lz4LegacyDecode against what it gives.
  const magic = v.getUint32(start, true);
  const tool = magic === XZ_MAGIC ? "xz" : magic === ZSTD_MAGIC ? "zstd" : magic === LZ4_LEGACY_MAGIC ? "lz4" : "";
  if (!tool) throw new RangeError(`bzImage payload compression is not gzip, xz, zstd or lz4 (magic ${magic.toString(16)})`);
  // Files, not pipes: Deno's execFileSync stalls when input and output are both large.
  // Names of this process's own: `tmpDir` is the image's directory, where a
  // `vmlinux` another vmm may be booting must not be cut short in place.
  const inFile = join(tmpDir, `payload.tmp-${process.pid}`);
  const outFile = join(tmpDir, `vmlinux.tmp-${process.pid}`);
  writeFileSync(inFile, payload.subarray(0, len - 4));
  let elf: Uint8Array;
  try {
    run("sh", ["-c", `${tool} -dc <"$1" >"$2"`, "sh", inFile, outFile]);
    elf = readFileSync(outFile);
  } finally {
    rmSync(inFile, { force: true });
    rmSync(outFile, { force: true });
  }
  const size = v.getUint32(start + len - 4, true);
  if (elf.length !== size) throw new RangeError(`${tool} gave ${elf.length} bytes, the bzImage says ${size}`);
  return checkedElf(elf);
}

/** A module's name as the kernel knows it: `kvm-amd.ko.xz` → `kvm_amd`. */
export function moduleName(path: string): string {
  return path.replace(/^.*\//, "").replace(/\.ko(\.(xz|zst|gz))?$/, "").replace(/-/g, "_");
}

/**
 * The module files to load, dependencies first, for the wanted module names
 * that exist in `modules.dep` (paths relative to `/lib/modules/<version>`).
 * Built-in or missing modules are skipped: the image then simply lacks them.
 */
export function resolveModules(modulesDep: string, wanted: string[]): string[] {
  const deps = new Map<string, { path: string; deps: string[] }>();
  for (const line of modulesDep.split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    deps.set(moduleName(path), { path, deps: line.slice(colon + 1).trim().split(/\s+/).filter(Boolean) });
  }
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    const m = deps.get(name);
    if (!m || seen.has(name)) return;
    seen.add(name);
    // modules.dep lists the whole closure; visiting each keeps dependencies first.
    for (const d of m.deps) visit(moduleName(d));
    order.push(m.path);
  };
  for (const w of wanted) visit(moduleName(w));
  return order;
}

/** Every file of the initramfs. */
function imageEntries(init: Uint8Array, version: string, modDir: string, mods: string[]): CpioEntry[] {
  const busybox = findBusybox();
  const dirs = ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "mnt", "etc/vmm"];
  const e: CpioEntry[] = dirs.map((d) => ({ path: d, mode: S_IFDIR | (d === "tmp" ? 0o1777 : 0o755) }));
  // The kernel opens /dev/console for init before anything is mounted.
  e.push({ path: "dev/console", mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 });
  e.push({ path: "dev/null", mode: S_IFCHR | 0o666, rdevMajor: 1, rdevMinor: 3 });
  e.push({ path: "bin/busybox", mode: S_IFREG | 0o755, data: readFileSync(busybox) });
  const applets = execFileSync(busybox, ["--list-full"]).toString().split("\n").filter(Boolean);
  for (const a of applets) {
    if (a === "linuxrc" || a === "bin/busybox") continue;
    e.push({ path: a, mode: S_IFLNK | 0o777, target: "/bin/busybox" });
  }
  e.push({ path: "bin/vmm-outb", mode: S_IFREG | 0o755, data: outbElf() });
  e.push({ path: "init", mode: S_IFREG | 0o755, data: init });
  const enc = new TextEncoder();
  e.push({ path: "etc/passwd", mode: S_IFREG | 0o644, data: enc.encode("root:x:0:0:root:/root:/bin/sh\n") });
  e.push({ path: "etc/group", mode: S_IFREG | 0o644, data: enc.encode("root:x:0:\n") });
  const list: string[] = [];
  for (const rel of mods) {
    const plain = rel.replace(/\.(xz|zst|gz)$/, "");
    const dest = `lib/modules/${version}/${plain}`;
    e.push({ path: dest, mode: S_IFREG | 0o644, data: readModule(join(modDir, rel)) });
    list.push(`/${dest}`);
  }
  e.push({ path: "etc/vmm/modules", mode: S_IFREG | 0o644, data: enc.encode(list.map((l) => l + "\n").join("")) });
  return e;
}

/** A module file, decompressed: busybox insmod takes plain `.ko` only. */
function readModule(path: string): Uint8Array {
  if (path.endsWith(".gz")) return gunzipSync(readFileSync(path));
  if (path.endsWith(".xz")) return execFileSync("xz", ["-dc", path], { maxBuffer: 1 << 28 });
  if (path.endsWith(".zst")) return execFileSync("zstd", ["-dc", path], { maxBuffer: 1 << 28 });
  return readFileSync(path);
}

/** The static busybox of `busybox-static`; a dynamic one cannot run in the guest. */
function findBusybox(): string {
  for (const p of ["/bin/busybox", "/usr/bin/busybox"]) {
    if (!existsSync(p)) continue;
    if (hasInterpreter(readFileSync(p))) {
      throw new Error(`${p} is dynamically linked: install busybox-static`);
    }
    return p;
  }
  throw new Error("busybox not found: install busybox-static");
}

/** True when an ELF64 file has a PT_INTERP program header (it is dynamically linked). */
function hasInterpreter(elf: Uint8Array): boolean {
  const v = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const phoff = Number(v.getBigUint64(0x20, true)); // e_phoff
  const phentsize = v.getUint16(0x36, true);
  const phnum = v.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    if (v.getUint32(phoff + i * phentsize, true) === 3) return true; // PT_INTERP
  }
  return false;
}

/**
 * `vmm-outb PORT VALUE`: writes one byte to an I/O port, both in decimal.
 *
 * Debian's cloud kernel lacks /dev/port, and busybox has no port I/O applet,
 * so the image carries this program: an ELF64 header, one PT_LOAD program
 * header, and 104 bytes of code that parse argv, call ioperm(port, 1, 1) and
 * execute `out dx, al`. It exits 1 on a wrong argument count or when ioperm
 * fails. Assembled once with GNU as; the listing is beside the bytes.
 */
export function outbElf(): Uint8Array {
  // deno-fmt-ignore
  const code = [
    0x48, 0x83, 0x3c, 0x24, 0x03,       // 00 cmp  qword [rsp], 3     argc
    0x75, 0x3d,                         // 05 jne  fail
    0x48, 0x8b, 0x7c, 0x24, 0x10,       // 07 mov  rdi, [rsp+16]      argv[1]: port
    0xe8, 0x3f, 0x00, 0x00, 0x00,       // 0c call parse
    0x41, 0x89, 0xc4,                   // 11 mov  r12d, eax
    0x48, 0x8b, 0x7c, 0x24, 0x18,       // 14 mov  rdi, [rsp+24]      argv[2]: value
    0xe8, 0x32, 0x00, 0x00, 0x00,       // 19 call parse
    0x41, 0x89, 0xc5,                   // 1e mov  r13d, eax
    0xb8, 0xad, 0x00, 0x00, 0x00,       // 21 mov  eax, 173           SYS_ioperm
    0x44, 0x89, 0xe7,                   // 26 mov  edi, r12d          from = port
    0xbe, 0x01, 0x00, 0x00, 0x00,       // 29 mov  esi, 1             num
    0xba, 0x01, 0x00, 0x00, 0x00,       // 2e mov  edx, 1             turn_on
    0x0f, 0x05,                         // 33 syscall
    0x85, 0xc0,                         // 35 test eax, eax
    0x75, 0x0b,                         // 37 jne  fail
    0x44, 0x89, 0xe2,                   // 39 mov  edx, r12d
    0x44, 0x89, 0xe8,                   // 3c mov  eax, r13d
    0xee,                               // 3f out  dx, al
    0x31, 0xff,                         // 40 xor  edi, edi
    0xeb, 0x05,                         // 42 jmp  exit
    0xbf, 0x01, 0x00, 0x00, 0x00,       // 44 fail: mov edi, 1
    0xb8, 0x3c, 0x00, 0x00, 0x00,       // 49 exit: mov eax, 60       SYS_exit
    0x0f, 0x05,                         // 4e syscall
    0x31, 0xc0,                         // 50 parse: xor eax, eax     decimal at rdi → eax
    0x0f, 0xb6, 0x0f,                   // 52 next: movzx ecx, byte [rdi]
    0x83, 0xe9, 0x30,                   // 55 sub  ecx, '0'
    0x83, 0xf9, 0x09,                   // 58 cmp  ecx, 9
    0x77, 0x0a,                         // 5b ja   done               not a digit (or NUL)
    0x6b, 0xc0, 0x0a,                   // 5d imul eax, eax, 10
    0x01, 0xc8,                         // 60 add  eax, ecx
    0x48, 0xff, 0xc7,                   // 62 inc  rdi
    0xeb, 0xeb,                         // 65 jmp  next
    0xc3,                               // 67 done: ret
  ];
  return staticElf64(code);
}

function writeManifest(cache: string, name: string, m: Manifest): void {
  const text = JSON.stringify(m, null, 2) + "\n";
  if (readIf(join(cache, `${name}.json`)) !== text) writeAtomic(join(cache, `${name}.json`), new TextEncoder().encode(text));
}

function writeAtomic(path: string, data: Uint8Array, write: (path: string, data: Uint8Array) => void = writeFileSync): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  write(tmp, data);
  renameSync(tmp, path);
}

function run(cmd: string, args: string[]): void {
  try {
    execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")}: ${reason(e)}`);
  }
}

/** The one line that says why a child process failed: its last `E:` or stderr line. */
function reason(e: unknown): string {
  const err = e as { code?: string; stderr?: Uint8Array; message?: string };
  if (err.code === "ENOENT") return "command not found";
  const lines = (err.stderr ? new TextDecoder().decode(err.stderr) : "").split("\n").map((l) => l.trim()).filter(Boolean);
  const line = lines.filter((l) => l.startsWith("E:")).pop() ?? lines.pop() ?? err.message ?? String(e);
  return line.replace(/^E:\s*/, "");
}
