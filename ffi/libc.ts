/**
 * libc, through the runtime's FFI: the system calls a VMM needs.
 *
 * Each thread (the main thread and every Worker) imports this module and so
 * opens libc itself: FFI functions cannot be posted between threads.
 * The raw functions return -1 on failure like C; the `check*` helpers turn
 * that into a SysError naming the call and errno.
 */
import { runtime } from "./runtime.ts";
import { E, SysError } from "./errno.ts";

const u64 = "u64" as const, i32 = "i32" as const, i64 = "i64" as const, u32 = "u32" as const;

/** The raw libc functions. Pointers are bigint addresses. */
export const libc = runtime.dlopen("libc.so.6", {
  open: { args: [u64, i32, u32], result: i32 },
  close: { args: [i32], result: i32 },
  read: { args: [i32, u64, u64], result: i64 },
  write: { args: [i32, u64, u64], result: i64 },
  pread: { args: [i32, u64, u64, i64], result: i64 },
  pwrite: { args: [i32, u64, u64, i64], result: i64 },
  preadv: { args: [i32, u64, i32, i64], result: i64 },
  pwritev: { args: [i32, u64, i32, i64], result: i64 },
  lseek: { args: [i32, i64, i32], result: i64 },
  ioctl: { args: [i32, u64, u64], result: i32 },
  socket: { args: [i32, i32, i32], result: i32 },
  socketpair: { args: [i32, i32, i32, u64], result: i32 },
  readv: { args: [i32, u64, i32], result: i64 },
  writev: { args: [i32, u64, i32], result: i64 },
  mmap: { args: [u64, u64, i32, i32, i32, i64], result: u64 },
  munmap: { args: [u64, u64], result: i32 },
  madvise: { args: [u64, u64, i32], result: i32 },
  mprotect: { args: [u64, u64, i32], result: i32 },
  mincore: { args: [u64, u64, u64], result: i32 },
  fstat: { args: [i32, u64], result: i32 },
  access: { args: [u64, i32], result: i32 },
  eventfd: { args: [u32, i32], result: i32 },
  pipe2: { args: [u64, i32], result: i32 },
  poll: { args: [u64, u64, i32], result: i32 },
  fcntl: { args: [i32, i32, u64], result: i32 },
  sigaction: { args: [i32, u64, u64], result: i32 },
  pthread_sigmask: { args: [i32, u64, u64], result: i32 },
  pthread_self: { args: [], result: u64 },
  pthread_kill: { args: [u64, i32], result: i32 },
  syscall: { args: [i64, i64, i64, i64], result: i64 },
  isatty: { args: [i32], result: i32 },
  tcgetattr: { args: [i32, u64], result: i32 },
  tcsetattr: { args: [i32, i32, u64], result: i32 },
  cfmakeraw: { args: [u64], result: "void" },
  fsync: { args: [i32], result: i32 },
  fdatasync: { args: [i32], result: i32 },
  flock: { args: [i32, i32], result: i32 },
  fallocate: { args: [i32, i32, i64, i64], result: i32 },
  getrandom: { args: [u64, u64, u32], result: i64 },
  malloc: { args: [u64], result: u64 },
  free: { args: [u64], result: "void" },
  getrlimit: { args: [i32, u64], result: i32 },
  setrlimit: { args: [i32, u64], result: i32 },
  getpid: { args: [], result: i32 },
  gettid: { args: [], result: i32 },
  __errno_location: { args: [], result: u64 },
});

// errno lives at a per-thread address that never changes for this thread.
const errnoView = new Int32Array(runtime.view(BigInt(libc.__errno_location()), 4));

/** errno of the last failed call on this thread. Read it right after the call. */
export function errno(): number {
  return errnoView[0];
}

/** Throw SysError(call, errno) when `r` is negative; return `r` as a number. */
export function check(call: string, r: number | bigint): number {
  const n = Number(r);
  if (n < 0) throw new SysError(call, errno());
  return n;
}

/**
 * Every NativeBuf this thread allocated and has not freed. Each Worker has
 * its own copy of this module, so a Worker that ends calls
 * `NativeBuf.freeAll()` and gives back everything it allocated, its modules'
 * scratch buffers included: malloc'd memory outlives a terminated Worker.
 */
const live = new Set<bigint>();

/** Host memory that never moves: safe to hand to the kernel by address. */
export class NativeBuf {
  readonly addr: bigint;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  constructor(addr: bigint, len: number) {
    this.addr = addr;
    // Bun's toArrayBuffer() reads a length of 0 as "unknown": never ask for it.
    this.bytes = len > 0 ? new Uint8Array(runtime.view(addr, len)) : new Uint8Array(0);
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, len);
  }
  /** Allocate `len` zeroed bytes; the caller frees them with `free()` (or the thread's `freeAll()`). */
  static alloc(len: number): NativeBuf {
    const n = Math.max(16, (len + 15) & ~15);
    const addr = BigInt(libc.malloc(BigInt(n)));
    if (addr === 0n) throw new SysError("malloc", E.ENOMEM);
    live.add(addr);
    const b = new NativeBuf(addr, len);
    b.bytes.fill(0);
    return b;
  }
  /** A NUL-terminated copy of `s`. */
  static cstring(s: string): NativeBuf {
    const enc = new TextEncoder().encode(s);
    const b = NativeBuf.alloc(enc.length + 1);
    b.bytes.set(enc);
    return b;
  }
  /** Give the memory back. The views must not be used afterwards. */
  free(): void {
    if (live.delete(this.addr)) libc.free(this.addr);
  }
  /** Free every buffer this thread allocated: the last call of a Worker that ends. */
  static freeAll(): void {
    for (const a of live) libc.free(a);
    live.clear();
  }
  /** How many buffers this thread holds (for leak tests). */
  static get liveCount(): number {
    return live.size;
  }
}

/** View `len` bytes of host memory at `addr` (for memory mapped by another thread). */
export function hostView(addr: bigint, len: number): Uint8Array {
  return len > 0 ? new Uint8Array(runtime.view(addr, len)) : new Uint8Array(0);
}

export const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CREAT = 0o100, O_TRUNC = 0o1000, O_CLOEXEC = 0o2000000,
  O_NONBLOCK = 0o4000;
export const PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4;
export const MAP_SHARED = 1, MAP_PRIVATE = 2, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
const SEEK_END = 2, SEEK_DATA = 3, SEEK_HOLE = 4;
export const EFD_CLOEXEC = 0o2000000, EFD_NONBLOCK = 0o4000;
export const POLLIN = 1, POLLOUT = 4, POLLERR = 8, POLLHUP = 16;
export const SIGINT = 2, SIGKILL = 9, SIGUSR1 = 10, SIGUSR2 = 12, SIGTERM = 15, SIGCHLD = 17;
export const LOCK_EX = 2, LOCK_NB = 4;
export const EINTR = E.EINTR, EAGAIN = E.EAGAIN;
const SYS_pidfd_open = 434;

const scratch = NativeBuf.alloc(64);

/** open(2); throws SysError naming `what` (usually the path). */
export function open(path: string, flags: number, mode = 0o644, what = `open ${path}`): number {
  const p = NativeBuf.cstring(path);
  try {
    return check(what, libc.open(p.addr, flags | O_CLOEXEC, mode));
  } finally {
    p.free();
  }
}

export function close(fd: number): void {
  libc.close(fd);
}

/**
 * A small host file (a /proc or /sys entry) as text: its first `max` bytes.
 * Throws SysError when it cannot be opened or read.
 *
 * Not node:fs, on purpose: every Worker imports this module, and a Worker
 * whose module graph names a `node:` module makes Deno load its whole Node
 * layer into that Worker first (about 1 s each in the nested test host,
 * 36 ms on hardware; Bun pays little). No module a Worker imports names one.
 */
export function readSmallFile(path: string, max = 4096): string {
  const buf = NativeBuf.alloc(max);
  try {
    const fd = open(path, O_RDONLY);
    try {
      return new TextDecoder().decode(buf.bytes.subarray(0, read(fd, buf, max, `read ${path}`)));
    } finally {
      close(fd);
    }
  } finally {
    buf.free();
  }
}

/** read(2) into a NativeBuf; returns bytes read (0 at end of file). */
export function read(fd: number, buf: NativeBuf, len = buf.bytes.length, call = "read"): number {
  return check(call, libc.read(fd, buf.addr, BigInt(len)));
}

/** write(2) all of `data` (copied through a native buffer), retrying short writes and EINTR. */
export function writeAll(fd: number, data: Uint8Array, call = "write"): void {
  const buf = data.length <= scratch.bytes.length ? scratch : NativeBuf.alloc(data.length);
  try {
    buf.bytes.set(data);
    writeAllAt(fd, buf.addr, data.length, call);
  } finally {
    if (buf !== scratch) buf.free();
  }
}

/**
 * Read `len` bytes of the file at `path`, from `offset`, straight into host
 * memory at `addr` (pread(2), retrying short reads and EINTR): how a kernel
 * or initrd reaches guest RAM with no copy in between. A file shorter than
 * that is an error naming it.
 */
export function preadFile(path: string, addr: bigint, len: number, offset: number, what = path): void {
  const fd = open(path, O_RDONLY | O_CLOEXEC, 0, `open ${what}`);
  try {
    preadAll(fd, addr, len, offset, what);
  } finally {
    close(fd);
  }
}

/**
 * preadFile() for memory that is all zeros still, as a new VM's RAM is:
 * only the file's data is read (dataExtents), and where the file has holes
 * the memory is left as it is. The kernels vmm keeps in its caches are
 * written with their zero pages as holes (ffi/sys.ts writeSparseFileSync):
 * a third of the Debian kernel's 46 MB, none of which then needs copying
 * into guest RAM, nor its pages faulting in before the guest wants them.
 */
export function preadData(path: string, addr: bigint, len: number, offset: number, what = path): void {
  const fd = open(path, O_RDONLY | O_CLOEXEC, 0, `open ${what}`);
  try {
    const size = Number(libc.lseek(fd, 0n, SEEK_END));
    if (size < 0) throw new SysError(`lseek SEEK_END in ${what}`, errno());
    if (size < offset + len) throw new Error(`read ${what}: the file ends at byte ${size}, before the ${offset + len} it had`);
    for (const [data, hole] of dataExtents(fd, offset, offset + len, what)) preadAll(fd, addr + BigInt(data - offset), hole - data, data, what);
  } finally {
    close(fd);
  }
}

function preadAll(fd: number, addr: bigint, len: number, offset: number, what: string): void {
  for (let done = 0; done < len;) {
    const r = Number(libc.pread(fd, addr + BigInt(done), BigInt(len - done), BigInt(offset + done)));
    if (r < 0) {
      const e = errno();
      if (e === EINTR) continue;
      throw new SysError(`read ${what}`, e);
    }
    if (r === 0) throw new Error(`read ${what}: the file ends at byte ${offset + done}, before the ${offset + len} it had`);
    done += r;
  }
}

const writablePollers = new Map<number, Poller>();

/**
 * Write `len` bytes of host memory at `addr` to `fd`, all of them: retries
 * short writes and EINTR, and waits in poll(2) when the fd is non-blocking
 * and full (Bun leaves the standard fds non-blocking).
 */
export function writeAllAt(fd: number, addr: bigint, len: number, call = "write"): void {
  let off = 0;
  while (off < len) {
    const r = Number(libc.write(fd, addr + BigInt(off), BigInt(len - off)));
    if (r < 0) {
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) {
        let p = writablePollers.get(fd);
        if (!p) writablePollers.set(fd, p = new Poller([fd], [POLLOUT]));
        p.wait(1000);
        continue;
      }
      throw new SysError(call, e);
    }
    off += r;
  }
}

/** An eventfd: a counter threads use to wake each other. */
export function eventfd(flags = EFD_CLOEXEC): number {
  return check("eventfd", libc.eventfd(0, flags));
}

/** Add 1 to an eventfd's counter, waking whoever polls it. */
export function eventfdSignal(fd: number): void {
  scratch.view.setBigUint64(0, 1n, true);
  libc.write(fd, scratch.addr, 8n);
}

/** Read and reset an eventfd's counter (blocks unless the fd is non-blocking). */
export function eventfdRead(fd: number): bigint {
  const r = Number(libc.read(fd, scratch.addr, 8n));
  if (r < 0) {
    if (errno() === EAGAIN) return 0n;
    throw new SysError("read eventfd", errno());
  }
  return scratch.view.getBigUint64(0, true);
}

/** pipe2(2): returns [readFd, writeFd]. */
export function pipe(flags = O_CLOEXEC): [number, number] {
  check("pipe2", libc.pipe2(scratch.addr, flags));
  return [scratch.view.getInt32(0, true), scratch.view.getInt32(4, true)];
}

const RLIMIT_NOFILE = 7;

/** This process's open-file limits (RLIMIT_NOFILE): soft and hard; RLIM_INFINITY is 2^64-1. */
export function fdLimit(): { soft: bigint; hard: bigint } {
  check("getrlimit", libc.getrlimit(RLIMIT_NOFILE, scratch.addr));
  return { soft: scratch.view.getBigUint64(0, true), hard: scratch.view.getBigUint64(8, true) };
}

/**
 * Raise this process's open-file limit as far as it may go, as virtiofsd
 * does: a virtio-fs server holds an O_PATH fd for every host file the
 * guest's kernel keeps an inode of, until the guest forgets it, and a
 * `find` over 10,000 files outgrows the usual soft limit of 1024. The soft
 * limit goes up to the hard one; a privileged process (root in a container
 * or the nested host) lifts the hard limit to fs.nr_open too. Returns the
 * soft limit now in force. The limit is the process's: every Worker shares it.
 */
export function raiseFdLimit(): bigint {
  const { soft, hard } = fdLimit();
  let nrOpen = 0n;
  try {
    nrOpen = BigInt(readSmallFile("/proc/sys/fs/nr_open").trim());
  } catch { /* no procfs: the hard limit is as far as it goes */ }
  for (const lim of nrOpen > hard ? [nrOpen, hard] : [hard]) {
    if (lim <= soft) break;
    scratch.view.setBigUint64(0, lim, true);
    scratch.view.setBigUint64(8, lim, true);
    if (libc.setrlimit(RLIMIT_NOFILE, scratch.addr) === 0) return lim;
  }
  return soft;
}

/**
 * poll(2) on fds for POLLIN; returns the revents of each, in order.
 * `timeoutMs` -1 waits forever. EINTR returns all zeros.
 */
export class Poller {
  readonly #buf: NativeBuf;
  readonly #fds: number[];
  /** wait()'s answer, one array for the Poller's life: nothing is allocated per poll. */
  readonly #revents: number[];
  constructor(fds: number[], events: number[] = fds.map(() => POLLIN)) {
    this.#fds = fds;
    this.#revents = fds.map(() => 0);
    this.#buf = NativeBuf.alloc(8 * fds.length);
    fds.forEach((fd, i) => {
      this.#buf.view.setInt32(i * 8, fd, true);
      this.#buf.view.setInt16(i * 8 + 4, events[i], true);
    });
  }
  /** Free the poll array; the Poller must not be used afterwards. */
  close(): void {
    this.#buf.free();
  }
  /**
   * poll(2) for up to `timeoutMs` (-1: no limit); each fd's revents, in the
   * fds' order (all 0 after a timeout or EINTR). The array is the Poller's
   * own and the next wait() overwrites it: read it before then.
   */
  wait(timeoutMs: number): readonly number[] {
    const n = this.#fds.length, view = this.#buf.view;
    for (let i = 0; i < n; i++) view.setInt16(i * 8 + 6, 0, true);
    const r = libc.poll(this.#buf.addr, BigInt(n), timeoutMs);
    if (r < 0 && errno() !== EINTR) throw new SysError("poll", errno());
    for (let i = 0; i < n; i++) this.#revents[i] = view.getInt16(i * 8 + 6, true);
    return this.#revents;
  }
}

/** What vmm reads of a file's status (struct stat; ffi/sys.ts statSync gives the same by path). */
export interface FileStat {
  dev: number;
  ino: number;
  size: number;
  mode: number;
  uid: number;
  /** Modification time, milliseconds since the epoch (whole on Deno). */
  mtimeMs: number;
  isFile: boolean;
  isDirectory: boolean;
}

/** fstat(2) of an open fd (struct stat on x86-64: 144 bytes). */
export function fstatSync(fd: number): FileStat {
  const st = NativeBuf.alloc(144);
  try {
    check("fstat", libc.fstat(fd, st.addr));
    const v = st.view, u64 = (o: number) => Number(v.getBigUint64(o, true));
    const mode = v.getUint32(24, true), fmt = mode & S_IFMT;
    return {
      dev: u64(0), ino: u64(8), mode, uid: v.getUint32(28, true), size: u64(48),
      mtimeMs: u64(88) * 1000 + Math.trunc(u64(96) / 1e6), isFile: fmt === S_IFREG, isDirectory: fmt === S_IFDIR,
    };
  } finally {
    st.free();
  }
}
const S_IFMT = 0o170000, S_IFREG = 0o100000, S_IFDIR = 0o040000;

/** The file an fd is open on, as (device, inode): how a path is checked to still name it. */
export function fileIdOf(fd: number): string {
  const { dev, ino } = fstatSync(fd);
  return `${dev}:${ino}`;
}

/** mmap(2) anonymous memory; returns its address. */
export function mmapAnon(len: number, prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS, call = "mmap"): bigint {
  const a = BigInt.asIntN(64, BigInt(libc.mmap(0n, BigInt(len), prot, flags, -1, 0n)));
  if (a === -1n) throw new SysError(call, errno());
  return a;
}

/** madvise(2) advice: back this range with transparent huge pages where the kernel can. */
export const MADV_HUGEPAGE = 14;
/** madvise(2) advice: a child made by fork(2) does not get this range. */
export const MADV_DONTFORK = 10;
const HUGE_PAGE = 2 * 1024 * 1024;

/**
 * Guest RAM: private anonymous memory, populated lazily, its start aligned to
 * 2 MiB and advised MADV_HUGEPAGE, so the host backs it with huge pages and
 * KVM maps the guest's RAM with 2 MiB entries in its nested page tables: one
 * fault where 512 would be (each a VM exit, and one level down in a nested
 * host, a very expensive one) and fewer TLB misses. The mapping is reserved
 * 2 MiB larger and trimmed to the aligned `len` bytes, so munmap(addr, len)
 * releases all of it. Where the kernel has no THP the advice fails and is
 * ignored: the memory works the same, in small pages.
 *
 * It is also MADV_DONTFORK, as QEMU's guest RAM is: should the process fork
 * (a library user spawning a helper, say), the child does not share the
 * guest's pages copy-on-write, which would write-protect all of guest RAM in
 * the parent, split its huge pages on the next guest write and make KVM
 * drop its mappings of them, all while the guest runs.
 */
export function mmapGuestRam(len: number, call = "mmap guest RAM"): bigint {
  const reserve = len + HUGE_PAGE;
  const base = mmapAnon(reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, call);
  const huge = BigInt(HUGE_PAGE);
  const addr = (base + huge - 1n) & ~(huge - 1n);
  const head = addr - base, tail = BigInt(reserve) - head - BigInt(len);
  if (head > 0n) libc.munmap(base, head);
  if (tail > 0n) libc.munmap(addr + BigInt(len), tail);
  try {
    adviseGuestRam(addr, len, call);
  } catch (e) {
    libc.munmap(addr, BigInt(len));
    throw e;
  }
  return addr;
}

/** The advice every guest RAM mapping gets (see mmapGuestRam). */
function adviseGuestRam(addr: bigint, len: number, call: string): void {
  libc.madvise(addr, BigInt(len), MADV_HUGEPAGE); // no THP: small pages, same memory
  if (libc.madvise(addr, BigInt(len), MADV_DONTFORK) !== 0) throw new SysError(`${call}: madvise MADV_DONTFORK`, errno());
}

/**
 * Guest RAM from a snapshot's memory file, whose holes are pages the guest
 * never wrote: the RAM of mmapGuestRam(), and over it, MAP_PRIVATE|MAP_FIXED,
 * the file wherever a 2 MiB block of it holds data. Pages are read from the
 * file only when touched and the guest's writes never reach it, as with one
 * private mapping of the whole file; but the blocks that were all holes,
 * most of RAM after a boot (58 of 256 blocks held data in a 512 MiB default
 * guest's snapshot), are anonymous memory in huge pages again, where a
 * private file mapping would fault each 4 KiB page in on its own: the
 * memory a restored guest takes for its page cache and new processes. A
 * file system without SEEK_DATA reports all of the file as data, which maps
 * it whole.
 */
export function mmapGuestRamFrom(fd: number, len: number, call = "mmap guest RAM from the snapshot"): bigint {
  const addr = mmapGuestRam(len, call);
  try {
    for (const [start, end] of dataBlocks(fd, len, HUGE_PAGE)) {
      const at = BigInt(start), size = BigInt(end - start);
      const a = BigInt.asIntN(64, BigInt(libc.mmap(addr + at, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, at)));
      if (a === -1n) throw new SysError(call, errno());
    }
    // The file's mappings are new VMAs, without the anonymous ones' advice.
    adviseGuestRam(addr, len, call);
  } catch (e) {
    libc.munmap(addr, BigInt(len));
    throw e;
  }
  return addr;
}

/**
 * The `block`-aligned ranges of the first `len` bytes of `fd` that hold any
 * data (lseek(2) SEEK_DATA / SEEK_HOLE), adjacent ones merged, in order.
 */
export function dataBlocks(fd: number, len: number, block: number): [number, number][] {
  const out: [number, number][] = [];
  for (const [data, hole] of dataExtents(fd, 0, len, "the snapshot's memory")) {
    const start = Math.floor(data / block) * block, end = Math.min(len, Math.ceil(hole / block) * block);
    const last = out[out.length - 1];
    if (last && start <= last[1]) last[1] = Math.max(last[1], end);
    else out.push([start, end]);
  }
  return out;
}

/**
 * The byte ranges of `fd` between `from` and `to` that hold data, in order:
 * lseek(2) SEEK_DATA, then SEEK_HOLE from there, until no data is left
 * before `to`. What lies between them is holes, which read as zeros. A file
 * system without SEEK_DATA reports one range, all of it.
 */
export function dataExtents(fd: number, from: number, to: number, what: string): [number, number][] {
  const out: [number, number][] = [];
  for (let off = from; off < to;) {
    const data = Number(libc.lseek(fd, BigInt(off), SEEK_DATA));
    if (data < 0) {
      if (errno() === E.ENXIO) break; // no data after off
      throw new SysError(`lseek SEEK_DATA in ${what}`, errno());
    }
    if (data >= to) break;
    const hole = Number(libc.lseek(fd, BigInt(data), SEEK_HOLE));
    if (hole < 0) throw new SysError(`lseek SEEK_HOLE in ${what}`, errno());
    out.push([data, Math.min(hole, to)]);
    off = Math.max(hole, data + 1);
  }
  return out;
}

/** mmap(2) of a file descriptor (for example a vCPU's kvm_run). */
export function mmapFd(fd: number, len: number, call = "mmap"): bigint {
  const a = BigInt.asIntN(64, BigInt(libc.mmap(0n, BigInt(len), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n)));
  if (a === -1n) throw new SysError(call, errno());
  return a;
}

/** pidfd_open(2): an fd that polls readable when the process exits. */
export function pidfdOpen(pid: number): number {
  return check("pidfd_open", libc.syscall(BigInt(SYS_pidfd_open), BigInt(pid), 0n, 0n));
}

/** Fill `len` bytes at `addr` from the kernel's random source. */
export function getrandom(addr: bigint, len: number): number {
  return check("getrandom", libc.getrandom(addr, BigInt(len), 0));
}
