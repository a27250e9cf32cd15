/**
 * Seeded fuzz of the virtio-fs server (devices/fs/passthrough.ts): random,
 * half-valid and mutated FUSE requests, as descriptor chains in host-backed
 * guest memory, against a real share on the host, with a guard directory
 * and canary files beside it. Each case is a short run of requests from a
 * guest that learns nodeids and file handles from the replies and reuses
 * them, forges others, and uses names like "..", "a/b", "../guard", a
 * symlink to the guard, 256 bytes of "x". Even shards serve the share
 * read-write, odd ones read-only.
 *
 * After every request:
 * - `serve` returned a used length that fits the chain's writable space, or
 *   threw GuestError only for a chain that truly has no header or no reply
 *   space; a reply's header has the length, the unique and an errno in range;
 *   FORGET, BATCH_FORGET and INTERRUPT got no reply;
 * - guest memory changed only inside the chain's writable buffers;
 * - no reply carries the inode number of anything outside the share.
 * After every case: the server's tables are consistent, no exception became
 * EIO (each would be a vmm bug), and every fd it holds (inodes and handles)
 * resolves, through /proc/self/fd, to a path inside the share.
 * After every shard: the guard tree (names, types, modes, owners, sizes,
 * mtimes, contents, link targets) hashes as before; inotify saw no event on
 * the guard, its subdirectory or the base directory (other than on the
 * share's own entry), so nothing outside was opened, read, written, created,
 * removed or changed; a read-only share's tree is unchanged too; and after
 * `close()` no fd of the process points into the base directory.
 *
 * FUZZ_SEED and FUZZ_CASES override the defaults; a failure names its
 * shard, case and seed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { createHash } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runtime } from "../../ffi/runtime.ts";
import { errno, NativeBuf } from "../../ffi/libc.ts";
import { HIGH_GPA, hostGuestMemory } from "../../test/support/host_memory.ts";
import { type DriverBuffer, DriverQueue } from "../../test/support/driver_queue.ts";
import { Rng } from "../../test/support/fuzz_rng.ts";
import { GuestError, Virtqueue } from "../virtio/ring.ts";
import * as F from "./fuse.ts";
import { cstr, le } from "./fuse_driver.ts";
import { FsServer } from "./passthrough.ts";

/** Cases in the whole run (FUZZ_CASES overrides): each is 1–8 requests. */
const CASES = Number(process.env.FUZZ_CASES ?? 3000);
const SEED = Number(process.env.FUZZ_SEED ?? 0xf5_f022);
/** Shards keep each test well under Bun's 5 s default timeout. */
const SHARDS = 6;

// ---- guest memory: readable buffers in the low region, writable in the high one ----

const QUEUE = 0x1000, QUEUE_SIZE = 64;
const RD = 0x40000, RD_LEN = 0x1_8000;
const WR = HIGH_GPA, WR_LEN = 0x1_8000;

// ---- inotify, to see any touch outside the share ----

const sys = runtime.dlopen("libc.so.6", {
  inotify_init1: { args: ["i32"], result: "i32" },
  inotify_add_watch: { args: ["i32", "u64", "u32"], result: "i32" },
  read: { args: ["i32", "u64", "u64"], result: "i64" },
  close: { args: ["i32"], result: "i32" },
  readlink: { args: ["u64", "u64", "u64"], result: "i64" },
  setxattr: { args: ["u64", "u64", "u64", "u64", "i32"], result: "i32" },
});
const linkBuf = NativeBuf.alloc(4096);

/** Where /proc/self/fd/`fd` points, as bytes decoded leniently (a guest's names need not be UTF-8). */
const pathBuf = NativeBuf.alloc(64);
function fdPath(fd: number | string): string | null {
  const p = new TextEncoder().encode(`/proc/self/fd/${fd}\0`);
  pathBuf.bytes.set(p);
  const n = Number(sys.readlink(pathBuf.addr, linkBuf.addr, 4096n));
  return n < 0 ? null : new TextDecoder().decode(linkBuf.bytes.subarray(0, n));
}
const IN_ALL_EVENTS = 0xfff, IN_NONBLOCK = 0o4000, IN_CLOEXEC = 0o2000000, EAGAIN = 11;

/** Events on watched directories since the last call: "dir/name mask" strings, the share's own entry left out. */
class Watch {
  readonly #fd: number;
  readonly #dirs = new Map<number, string>();
  readonly #buf = NativeBuf.alloc(65536);
  constructor(dirs: string[]) {
    this.#fd = sys.inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (this.#fd < 0) throw new Error(`inotify_init1 failed: errno ${errno()}`);
    for (const d of dirs) {
      const wd = sys.inotify_add_watch(this.#fd, NativeBuf.cstring(d).addr, IN_ALL_EVENTS);
      if (wd < 0) throw new Error(`inotify_add_watch ${d} failed: errno ${errno()}`);
      this.#dirs.set(wd, d);
    }
  }
  events(ignore: string): string[] {
    const out: string[] = [];
    for (;;) {
      const n = Number(sys.read(this.#fd, this.#buf.addr, 65536n));
      if (n < 0) {
        if (errno() === EAGAIN) return out;
        throw new Error(`inotify read failed: errno ${errno()}`);
      }
      const v = this.#buf.view;
      // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[len]; }
      for (let p = 0; p < n;) {
        const wd = v.getInt32(p, true), mask = v.getUint32(p + 4, true), len = v.getUint32(p + 12, true);
        const raw = this.#buf.bytes.subarray(p + 16, p + 16 + len);
        const name = new TextDecoder().decode(raw.subarray(0, raw.indexOf(0) < 0 ? len : raw.indexOf(0)));
        if (name !== ignore) out.push(`${this.#dirs.get(wd)}/${name} mask 0x${mask.toString(16)}`);
        p += 16 + len;
      }
    }
  }
  close(): void {
    sys.close(this.#fd);
  }
}

/** A tree's names, types, modes, owners, sizes, mtimes, contents and link targets, hashed. */
function hashTree(root: string): string {
  const h = createHash("sha256");
  const walk = (p: string) => {
    const st = lstatSync(p, { bigint: true });
    h.update(`${p.slice(root.length)}\0${st.mode}\0${st.uid}\0${st.gid}\0${st.size}\0${st.mtimeMs}\0${st.nlink}\0`);
    if (st.isSymbolicLink()) h.update(readlinkSync(p));
    else if (st.isFile()) h.update(readFileSync(p));
    else if (st.isDirectory()) for (const n of readdirSync(p).sort()) walk(join(p, n));
  };
  walk(root);
  return h.digest("hex");
}

// ---- the world: a base directory with the share, a guard and a canary beside it ----

interface World {
  base: string;
  share: string;
  guard: string;
  /** Inode numbers outside the share that no reply may carry. */
  forbidden: Set<bigint>;
}

function makeWorld(rng: Rng): World {
  // On tmpfs when there is one: FSYNC is free there, and nothing reaches a disk.
  const base = realpathSync(mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "vmm-fsfuzz-")));
  const share = join(base, "share"), guard = join(base, "guard");
  mkdirSync(share);
  mkdirSync(guard);
  mkdirSync(join(guard, "sub"));
  writeFileSync(join(guard, "secret"), "the guard's secret\n");
  writeFileSync(join(guard, "sub", "deeper"), rng.bytes(3000));
  symlinkSync("/etc/passwd", join(guard, "passwd"));
  writeFileSync(join(base, "canary"), "canary\n");
  for (let i = 0; i < 6; i++) writeFileSync(join(share, `f${i}`), rng.bytes(rng.int(20000)));
  for (let i = 0; i < 2; i++) {
    mkdirSync(join(share, `d${i}`));
    writeFileSync(join(share, `d${i}`, "f0"), rng.bytes(100));
  }
  // A user xattr for GETXATTR to find, where the file system keeps them (tmpfs since Linux 6.6).
  sys.setxattr(NativeBuf.cstring(join(share, "f0")).addr, NativeBuf.cstring("user.a").addr, NativeBuf.cstring("value").addr, 5n, 0);
  symlinkSync("../guard/secret", join(share, "ln_guard"));
  symlinkSync("/etc/passwd", join(share, "ln_abs"));
  symlinkSync("../../../../../..", join(share, "ln_up"));
  symlinkSync(guard, join(share, "d0", "ln_dir"));
  const forbidden = new Set<bigint>();
  // Only inode numbers of the share's file system mean something in a reply.
  const dev = lstatSync(share, { bigint: true }).dev;
  for (const p of [base, guard, join(guard, "sub"), join(guard, "secret"), join(guard, "sub", "deeper"), join(base, "canary"), "/", "/etc", "/etc/passwd"]) {
    const st = lstatSync(p, { bigint: true });
    if (st.dev === dev) forbidden.add(st.ino);
  }
  return { base, share, guard, forbidden };
}

// ---- the guest ----

const NAMES = [
  "f0", "f1", "f2", "f3", "f4", "f5", "d0", "d1", "ln_guard", "ln_abs", "ln_up", "ln_dir", "n0", "n1", "n2", "n3", "n4", "fifo", "sock",
];
/** Names that are no names: dots, slashes, NULs, too long, or the names of things beside the share. */
const ODD = ["..", ".", "", "a/b", "guard", "share", "canary", "..\u0000x", "x".repeat(255), "x".repeat(256), "d0/..", "d0/ln_dir"];
/** Ways out of the share, each as if it were one name. */
const ESCAPES = ["../guard", "../guard/secret", "../guard/sub", "../canary", "../x", "../../x", "/etc/passwd", "/tmp/x", "ln_guard/x", "ln_up/etc"];
const U64 = 0xffff_ffff_ffff_ffffn;

interface Guest {
  rng: Rng;
  /** How hostile this case's guest is: 0 sends what a kernel would, 1 the worst; scales every `bad()` chance. */
  evil: number;
  /** The guest's own count of lookups per nodeid it was given (the kernel's nlookup), and whether it is a directory. */
  known: Map<bigint, { count: number; type: number }>;
  /** Open file and directory handles. */
  files: bigint[];
  dirs: bigint[];
  cookies: bigint[];
  unique: bigint;
}

/** A mistake made with probability `p` by the worst guest, never by a kind one. */
function bad(g: Guest, p: number): boolean {
  return g.evil > 0 && g.rng.chance(p * g.evil);
}

function name(g: Guest): Uint8Array {
  const { rng } = g;
  if (!bad(g, 0.5)) return cstr(rng.pick(NAMES));
  const r = rng.int(10);
  if (r < 4) return cstr(rng.pick(ESCAPES));
  if (r < 8) return cstr(rng.pick(ODD));
  const b = rng.bytes(1 + rng.int(40));
  return rng.chance(0.5) ? cstr(b.map((c) => c === 0 ? 0x41 : c)) : b; // random bytes, sometimes without a NUL
}

/** A nodeid: one the guest holds (a directory, a non-directory or either), the root, or a forged one. */
function nodeid(g: Guest, want: "dir" | "file" | "any" = "any"): bigint {
  const { rng } = g;
  if (!bad(g, 0.3)) {
    const type = want === "dir" ? 0o040000 : 0o100000;
    const ids = [...g.known].filter(([, k]) => want === "any" || k.type === type).map(([id]) => id);
    if (want === "dir") ids.push(F.FUSE_ROOT_ID, F.FUSE_ROOT_ID);
    if (ids.length) return rng.pick(ids);
  } else if (g.known.size && rng.chance(0.5)) {
    // Of the wrong type: a symlink, FIFO or socket to OPEN, a file to look names up in.
    const odd = [...g.known].filter(([, k]) => k.type !== 0o040000 && k.type !== 0o100000).map(([id]) => id);
    return rng.pick(odd.length && rng.chance(0.5) ? odd : [...g.known.keys()]);
  }
  if (!bad(g, 0.6)) return F.FUSE_ROOT_ID;
  return rng.pick([0n, 2n, 3n, 50n, 1n << 53n, U64, rng.u64(), BigInt(rng.int(100))]);
}

function fh(g: Guest, dir: boolean): bigint {
  const { rng } = g;
  const known = dir ? g.dirs : g.files;
  if (known.length && !bad(g, 0.5)) return rng.pick(known);
  if (rng.chance(0.5) && (dir ? g.files : g.dirs).length) return rng.pick(dir ? g.files : g.dirs);
  return rng.pick([0n, 1n, 7n, 1000n, U64, rng.u64()]);
}

const pickU64 = (g: Guest, xs: (bigint | number)[]) => bad(g, 0.2) ? g.rng.u64() : BigInt(g.rng.pick(xs));
const size = (g: Guest) => bad(g, 0.2) ? g.rng.u32() : g.rng.pick([0, 1, 100, 4096, 4096, 8192, 65536]);

/** One request's opcode, nodeid, args and WRITE data; mostly well formed, its fields from the interesting values. */
function request(g: Guest): { op: number; nodeid: bigint; args: Uint8Array[]; data: Uint8Array } {
  const { rng } = g;
  // Weighted like a busy guest: lookups and I/O often, the rest now and then.
  const ops = [
    F.FUSE_LOOKUP, F.FUSE_LOOKUP, F.FUSE_LOOKUP, F.FUSE_FORGET, F.FUSE_BATCH_FORGET, F.FUSE_GETATTR, F.FUSE_SETATTR,
    F.FUSE_READLINK, F.FUSE_SYMLINK, F.FUSE_MKNOD, F.FUSE_MKDIR, F.FUSE_UNLINK, F.FUSE_RMDIR, F.FUSE_RENAME, F.FUSE_RENAME2,
    F.FUSE_LINK, F.FUSE_OPEN, F.FUSE_OPEN, F.FUSE_CREATE, F.FUSE_READ, F.FUSE_READ, F.FUSE_READ, F.FUSE_WRITE, F.FUSE_WRITE,
    F.FUSE_WRITE, F.FUSE_FLUSH, F.FUSE_RELEASE, F.FUSE_FSYNC, F.FUSE_OPENDIR, F.FUSE_READDIR, F.FUSE_READDIRPLUS,
    F.FUSE_RELEASEDIR, F.FUSE_FSYNCDIR, F.FUSE_STATFS, F.FUSE_GETXATTR, F.FUSE_LISTXATTR, F.FUSE_FALLOCATE, F.FUSE_LSEEK,
    F.FUSE_INTERRUPT,
  ];
  const r = bad(g, 0.15) ? rng.int(100) : 0;
  const op = r < 50 ? rng.pick(ops) : r < 75 ? rng.pick([F.FUSE_INIT, F.FUSE_SETXATTR, F.FUSE_GETLK, F.FUSE_IOCTL, F.FUSE_TMPFILE, 0]) : rng.u32();
  // The nodeid the op acts on: a directory for ops on names, a file for OPEN.
  const onNames = [F.FUSE_LOOKUP, F.FUSE_SYMLINK, F.FUSE_MKNOD, F.FUSE_MKDIR, F.FUSE_UNLINK, F.FUSE_RMDIR, F.FUSE_RENAME, F.FUSE_RENAME2, F.FUSE_LINK, F.FUSE_CREATE, F.FUSE_OPENDIR];
  const id = bad(g, 0.05) ? rng.u64() : nodeid(g, onNames.includes(op) ? "dir" : op === F.FUSE_OPEN ? "file" : "any");
  let data: Uint8Array = new Uint8Array(0);
  const mode = () => rng.chance(0.8) ? rng.pick([0o100644, 0o010644, 0o140755, 0o020666, 0o060600, 0o040755, 0o644, 0o4755]) : rng.u32();
  const args: Uint8Array[] = (() => {
    switch (op) {
      case F.FUSE_LOOKUP: case F.FUSE_UNLINK: case F.FUSE_RMDIR: return [name(g)];
      case F.FUSE_FORGET: return [le(8).u64(0, bad(g, 0.3) ? pickU64(g, [2, 100, U64]) : BigInt(1 + rng.int(g.known.get(id)?.count ?? 1))).bytes];
      case F.FUSE_BATCH_FORGET: {
        const n = rng.int(6);
        const b = le(8 + 16 * n).u32(0, rng.chance(0.8) ? n : rng.u32());
        for (let i = 0; i < n; i++) b.u64(8 + 16 * i, nodeid(g)).u64(16 + 16 * i, bad(g, 0.3) ? pickU64(g, [2, U64]) : 1n);
        return [b.bytes];
      }
      case F.FUSE_GETATTR: return [le(16).u32(0, rng.int(2)).u64(8, fh(g, false)).bytes];
      case F.FUSE_SETATTR: {
        const valid = rng.chance(0.8) ? rng.pick([1, 2, 4, 6, 8, 16, 32, 48, 0x30 | 0x180, 8 | 64, 1 | 8 | 16, 0]) : rng.u32();
        return [le(88).u32(0, valid).u64(8, fh(g, false)).u64(16, pickU64(g, [0, 1, 4096, 100000, 1n << 40n, (1n << 63n) - 1n, U64]))
          .u64(32, pickU64(g, [0, 1e9, U64])).u64(40, pickU64(g, [0, 2e9, -1])).u32(56, rng.pick([0, 5, 1e9, 0x3ffffffe]))
          .u32(60, rng.pick([0, 7, 1e9])).u32(68, mode()).u32(76, rng.pick([0, 1000, 65534, 0xffffffff])).u32(80, rng.pick([0, 1000, 0xffffffff])).bytes];
      }
      case F.FUSE_SYMLINK: return [name(g), cstr(rng.pick(["/etc", "../guard/secret", "f0", "x".repeat(5000), "", "../../..", "d0"]))];
      case F.FUSE_MKNOD: return [le(16).u32(0, mode()).u32(4, rng.pick([0, 0x103, 0x800, rng.u32()])).bytes, name(g)];
      case F.FUSE_MKDIR: return [le(8).u32(0, mode()).bytes, name(g)];
      case F.FUSE_RENAME: return [le(8).u64(0, nodeid(g, "dir")).bytes, name(g), name(g)];
      case F.FUSE_RENAME2: return [le(16).u64(0, nodeid(g, "dir")).u32(8, rng.pick([0, 1, 2, 3, 4, rng.u32()])).bytes, name(g), name(g)];
      case F.FUSE_LINK: return [le(8).u64(0, nodeid(g, "file")).bytes, name(g)];
      case F.FUSE_OPEN: case F.FUSE_OPENDIR: return [le(8).u32(0, rng.chance(0.8) ? rng.pick([0, 1, 2, 0o1002, 0o2001, 0o200000, 3]) : rng.u32()).bytes];
      case F.FUSE_CREATE: return [le(16).u32(0, rng.chance(0.8) ? rng.pick([0o102, 0o302, 0o1102, 0o101, 3]) : rng.u32()).u32(4, mode()).bytes, name(g)];
      case F.FUSE_READ: case F.FUSE_READDIR: case F.FUSE_READDIRPLUS: {
        const dir = op !== F.FUSE_READ;
        const off = dir && g.cookies.length && rng.chance(0.5) ? rng.pick(g.cookies) : pickU64(g, [0, 1, 4096, 20000, (1n << 63n) - 1n, 1n << 63n]);
        return [le(40).u64(0, fh(g, dir)).u64(8, off).u32(16, size(g)).bytes];
      }
      case F.FUSE_WRITE: {
        data = rng.bytes(rng.pick([0, 1, 100, 4096, 5000, 65536]));
        const n = rng.chance(0.9) ? data.length : rng.u32();
        return [le(40).u64(0, fh(g, false)).u64(8, pickU64(g, [0, 1, 4095, 100000, 1n << 40n, (1n << 63n) - 1n])).u32(16, n).bytes];
      }
      case F.FUSE_FLUSH: case F.FUSE_RELEASE: case F.FUSE_RELEASEDIR:
        return [le(24).u64(0, fh(g, op === F.FUSE_RELEASEDIR)).bytes];
      case F.FUSE_FSYNC: case F.FUSE_FSYNCDIR: return [le(16).u64(0, fh(g, op === F.FUSE_FSYNCDIR)).u32(8, rng.int(3)).bytes];
      case F.FUSE_GETXATTR:
        return [le(8).u32(0, size(g)).bytes, cstr(rng.pick(["user.a", "security.capability", "trusted.x", "", "user." + "x".repeat(300), "system.posix_acl_access"]))];
      case F.FUSE_LISTXATTR: return [le(8).u32(0, size(g)).bytes];
      case F.FUSE_FALLOCATE:
        // Bounded, so a case never allocates much of the host's disk.
        return [le(32).u64(0, fh(g, false)).u64(8, rng.int(1 << 24)).u64(16, rng.int(1 << 20)).u32(24, rng.pick([0, 1, 3, 0x10, 0x11, 8, 0x20, 0x80])).bytes];
      case F.FUSE_LSEEK: return [le(24).u64(0, fh(g, false)).u64(8, pickU64(g, [0, 1, 4096, U64])).u32(16, rng.int(7)).bytes];
      case F.FUSE_INTERRUPT: return [le(8).u64(0, g.unique - 1n).bytes];
      case F.FUSE_INIT: return [le(64).u32(0, 7).u32(4, 38).bytes];
      case F.FUSE_STATFS: case F.FUSE_READLINK: return [];
      default: return [rng.bytes(rng.int(100))];
    }
  })();
  return { op, nodeid: id, args, data };
}

/** `n` bytes of the area [base, base + len) as 1–4 disjoint buffers in increasing order with gaps. */
function place(rng: Rng, base: number, len: number, n: number, write: boolean): DriverBuffer[] {
  const pieces = n < 2 ? 1 : 1 + rng.int(4);
  const cuts = [0, ...Array.from({ length: pieces - 1 }, () => rng.int(n + 1)).sort((a, b) => a - b), n];
  const slack = len - n;
  const gaps = Array.from({ length: pieces }, () => rng.int(Math.floor(slack / pieces) + 1));
  const out: DriverBuffer[] = [];
  let at = base;
  for (let i = 0; i < pieces; i++) {
    at += gaps[i];
    out.push({ gpa: at, len: cuts[i + 1] - cuts[i], write });
    at += cuts[i + 1] - cuts[i];
  }
  return out;
}

// ---- the run ----

interface Totals {
  cases: number;
  requests: number;
  replies: number;
  errors: number;
  guestErrors: number;
  ms: number;
}

function fuzzShard(shard: number, seed: number, cases: number, totals: Totals): void {
  const rng = new Rng(seed);
  const w = makeWorld(rng);
  try {
    runShard(shard, seed, cases, totals, rng, w);
  } finally {
    rmSync(w.base, { recursive: true, force: true });
  }
}

function runShard(shard: number, seed: number, cases: number, totals: Totals, rng: Rng, w: World): void {
  const readOnly = shard % 2 === 1;
  const guardHash = hashTree(w.guard);
  const shareHash = readOnly ? hashTree(w.share) : "";
  const watch = new Watch([w.base, w.guard, join(w.guard, "sub")]);
  const lines: string[] = [];
  const server = new FsServer({ root: w.share, readOnly, log: (l) => lines.push(l) });
  const mem = hostGuestMemory();
  const dq = new DriverQueue(mem, DriverQueue.layout(QUEUE, QUEUE_SIZE));
  const vq = new Virtqueue(mem, dq.config(false));
  const seen = new Set<string>();
  const g: Guest = { rng, evil: 0, known: new Map(), files: [], dirs: [], cookies: [], unique: 1n };
  const rd = mem.slice(RD, RD_LEN), wr = mem.slice(WR, WR_LEN);
  // Snapshots of the two areas, and Buffer views (no copies) for memcmp.
  const rdSnap = new Uint8Array(RD_LEN), wrSnap = new Uint8Array(WR_LEN);
  const asBuf = (a: Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  const [rdB, wrB, rdSnapB, wrSnapB] = [rd, wr, rdSnap, wrSnap].map(asBuf);
  const t0 = performance.now();
  let where = "";

  /** Send one request as a chain and check everything about its reply. */
  const one = (op: number, id: bigint, args: Uint8Array[], data: Uint8Array, clean = false) => {
    const unique = g.unique++;
    const body = [...args, data];
    const bodyLen = body.reduce((n, a) => n + a.length, 0);
    const msg = new Uint8Array(F.IN_HEADER.SIZE + bodyLen);
    msg.set(le(40).u32(0, msg.length).u32(4, op).u64(8, unique).u64(16, id).u32(24, rng.pick([0, 1000])).u32(28, 0).u32(32, 1).bytes);
    let o = F.IN_HEADER.SIZE;
    for (const a of body) {
      msg.set(a, o);
      o += a.length;
    }
    // Mutations: a shorter message, a wrong len, flipped bits (never into an unbounded FALLOCATE).
    let send = msg;
    const evil = (p: number) => !clean && bad(g, p);
    if (evil(0.08)) send = msg.subarray(0, rng.int(msg.length + 1));
    if (evil(0.06) && send.length >= 4) new DataView(send.buffer).setUint32(0, rng.chance(0.5) ? rng.u32() : rng.int(200), true);
    if (evil(0.1)) for (let i = 1 + rng.int(4); i > 0 && send.length; i--) send[rng.int(send.length)] ^= 1 << rng.int(8);
    if (send.length >= 8 && new DataView(send.buffer).getUint32(4, true) === F.FUSE_FALLOCATE && op !== F.FUSE_FALLOCATE) send[4] ^= 0x80;
    const replyLen = !evil(0.3) ? F.OUT_HEADER.SIZE + rng.pick([4096, 4096, 8192, 65536 + 4096])
      : rng.chance(0.8) ? F.OUT_HEADER.SIZE + rng.pick([0, 8, 16, 64, 104, 128, 144]) : rng.int(200);
    const bufs = [...place(rng, RD, RD_LEN, send.length, false), ...place(rng, WR, WR_LEN, replyLen, true)];
    let at = 0;
    for (const b of bufs) {
      if (b.write) continue;
      mem.write(b.gpa, send.subarray(at, at + b.len));
      at += b.len;
    }
    rdSnap.set(rd);
    wrSnap.set(wr);
    dq.add(bufs.filter((b) => b.len > 0 || rng.chance(0.5)).concat(bufs.every((b) => b.len === 0) ? [{ gpa: RD, len: 0 }] : []));
    const chain = vq.pop()!;
    totals.requests++;
    let used = 0;
    try {
      used = server.serve(chain);
    } catch (e) {
      const kind = e instanceof GuestError ? (e as GuestError<string>).kind : "";
      const ok = (kind === "ShortRequest" && chain.readableLength < F.IN_HEADER.SIZE) || (kind === "NoReplySpace" && chain.writableLength < F.OUT_HEADER.SIZE);
      if (!ok) assert.fail(`${where}: serve threw ${(e as Error)?.stack ?? e}`);
      totals.guestErrors++;
      vq.pushUsed(chain.head, 0);
      dq.popUsed();
      return null;
    }
    vq.pushUsed(chain.head, used);
    dq.popUsed();
    // Guest memory: nothing readable changed; writable areas only inside the chain's buffers.
    assert.ok(rdB.equals(rdSnapB), `${where}: the readable area changed`);
    let prev = 0;
    for (const s of chain.writable.map((s) => [s.gpa - WR, s.gpa - WR + s.len]).concat([[WR_LEN, WR_LEN]])) {
      assert.ok(wrB.subarray(prev, s[0]).equals(wrSnapB.subarray(prev, s[0])), `${where}: wrote outside the writable buffers`);
      prev = s[1];
    }
    assert.ok(used <= chain.writableLength, `${where}: used ${used} > writable ${chain.writableLength}`);
    const hop = send.length >= 8 ? new DataView(send.buffer, send.byteOffset).getUint32(4, true) : -1;
    if (hop === F.FUSE_FORGET || hop === F.FUSE_BATCH_FORGET || hop === F.FUSE_INTERRUPT) {
      assert.equal(used, 0, `${where}: a reply to a no-reply opcode`);
      forgot(send);
      return null;
    }
    assert.ok(used >= F.OUT_HEADER.SIZE, `${where}: no reply header (used ${used})`);
    const reply = new Uint8Array(used);
    let got = 0;
    for (const s of chain.writable) {
      const n = Math.min(s.len, used - got);
      if (n <= 0) break;
      reply.set(mem.slice(s.gpa, n), got);
      got += n;
    }
    const v = new DataView(reply.buffer);
    assert.equal(v.getUint32(0, true), used, `${where}: header len`);
    assert.equal(v.getBigUint64(8, true), new DataView(send.buffer, send.byteOffset).getBigUint64(8, true), `${where}: unique`);
    const error = v.getInt32(4, true);
    assert.ok(error <= 0 && error > -4096, `${where}: error ${error}`);
    assert.ok(error === 0 || used === F.OUT_HEADER.SIZE, `${where}: an error reply with a body`);
    totals.replies++;
    if (error) totals.errors++;
    return { op: hop, error, body: reply.subarray(F.OUT_HEADER.SIZE), view: new DataView(reply.buffer, F.OUT_HEADER.SIZE), sent: send === msg };
  };

  const noLeak = (ino: bigint, what: string) => assert.ok(!w.forbidden.has(ino), `${where}: ${what} has inode ${ino} from outside the share`);
  const learnEntry = (view: DataView, at: number, what: string) => {
    const id = view.getBigUint64(at + F.ENTRY_OUT.NODEID, true);
    noLeak(view.getBigUint64(at + F.ENTRY_OUT.ATTR + F.ATTR.INO, true), what);
    const type = view.getUint32(at + F.ENTRY_OUT.ATTR + F.ATTR.MODE, true) & 0o170000;
    if (id !== 0n && id !== F.FUSE_ROOT_ID) g.known.set(id, { count: (g.known.get(id)?.count ?? 0) + 1, type });
  };
  /** What the guest gave back: FORGET and BATCH_FORGET of the request as sent. */
  const forgot = (send: Uint8Array) => {
    const v = new DataView(send.buffer, send.byteOffset, send.byteLength);
    const drop = (id: bigint, n: bigint) => {
      const k = g.known.get(id);
      if (!k) return;
      k.count = n >= BigInt(k.count) ? 0 : k.count - Number(n);
      if (k.count === 0) g.known.delete(id);
    };
    // The server reads fuse_in_header.len bytes less the extensions, and ignores a message whose len is too long.
    if (send.length < F.IN_HEADER.SIZE) return;
    const len = v.getUint32(0, true), op = v.getUint32(4, true), body = len - F.IN_HEADER.SIZE - 8 * v.getUint16(36, true);
    if (len > send.length || body < 0) return;
    if (op === F.FUSE_FORGET && body >= 8) drop(v.getBigUint64(16, true), v.getBigUint64(40, true));
    if (op === F.FUSE_BATCH_FORGET && body >= 8) {
      const count = Math.min(v.getUint32(40, true), Math.floor((body - 8) / 16));
      for (let i = 0; i < count; i++) drop(v.getBigUint64(48 + 16 * i, true), v.getBigUint64(56 + 16 * i, true));
    }
  };

  try {
    assert.equal(one(F.FUSE_INIT, 0n, [le(64).u32(0, 7).u32(4, 38).u32(12, 0xffffffff).bytes], new Uint8Array(0), true)?.error, 0);
    for (let c = 0; c < cases; c++) {
      g.evil = rng.pick([0, 0, 0.3, 1]);
      for (let k = 1 + rng.int(8); k > 0; k--) {
        const q = request(g);
        where = `shard ${shard} (seed ${seed}), case ${c}, ${F.FUSE_OPCODE_NAMES[q.op] ?? `opcode ${q.op}`}`;
        const r = one(q.op, q.nodeid, q.args, q.data);
        if (!r || r.error) continue;
        switch (r.op) {
          case F.FUSE_DESTROY: // flipped bits made one: the guest mounts again
            g.known.clear();
            g.files = [];
            g.dirs = [];
            assert.equal(one(F.FUSE_INIT, 0n, [le(64).u32(0, 7).u32(4, 38).bytes], new Uint8Array(0), true)?.error, 0);
            break;
          case F.FUSE_LOOKUP: case F.FUSE_MKDIR: case F.FUSE_MKNOD: case F.FUSE_SYMLINK: case F.FUSE_LINK:
            learnEntry(r.view, 0, "an entry");
            break;
          case F.FUSE_CREATE:
            learnEntry(r.view, 0, "CREATE's entry");
            g.files.push(r.view.getBigUint64(F.ENTRY_OUT.SIZE, true));
            break;
          case F.FUSE_OPEN: g.files.push(r.view.getBigUint64(0, true)); break;
          case F.FUSE_OPENDIR: g.dirs.push(r.view.getBigUint64(0, true)); break;
          case F.FUSE_RELEASE: case F.FUSE_RELEASEDIR: {
            if (!r.sent) break;
            const list = r.op === F.FUSE_RELEASE ? g.files : g.dirs;
            const i = list.indexOf(new DataView(q.args[0].buffer).getBigUint64(0, true));
            if (i >= 0) list.splice(i, 1);
            break;
          }
          case F.FUSE_GETATTR: case F.FUSE_SETATTR:
            noLeak(r.view.getBigUint64(F.ATTR_OUT.ATTR + F.ATTR.INO, true), "an attr_out");
            break;
          case F.FUSE_READDIR: case F.FUSE_READDIRPLUS: {
            const plus = r.op === F.FUSE_READDIRPLUS;
            for (let p = 0; p < r.body.length;) {
              if (plus) learnEntry(r.view, p, "a READDIRPLUS entry");
              const d = plus ? p + F.DIRENTPLUS.DIRENT : p;
              noLeak(r.view.getBigUint64(d + F.DIRENT.INO, true), "a dirent");
              if (g.cookies.length < 100) g.cookies.push(r.view.getBigUint64(d + F.DIRENT.OFF, true));
              p = d + F.direntAlign(F.DIRENT.NAME + r.view.getUint32(d + F.DIRENT.NAMELEN, true));
            }
            break;
          }
        }
      }
      // Now and then the guest unmounts and mounts again.
      if (rng.chance(0.01)) {
        where = `shard ${shard} (seed ${seed}), case ${c}, DESTROY`;
        assert.equal(one(F.FUSE_DESTROY, 0n, [], new Uint8Array(0), true)?.error, 0);
        g.known.clear();
        g.files = [];
        g.dirs = [];
        assert.equal(one(F.FUSE_INIT, 0n, [le(64).u32(0, 7).u32(4, 38).bytes], new Uint8Array(0), true)?.error, 0);
      }
      where = `shard ${shard} (seed ${seed}), case ${c}`;
      server.checkConsistent();
      assert.equal(server.internalErrors, 0, `${where}: an op threw (answered EIO): ${lines[0]}`);
      const { inodes, handles } = server.tables();
      const all = c === cases - 1;
      // The server's lookup counts are the guest's own, nodeid for nodeid.
      for (const i of inodes) {
        if (i.nodeid !== 1) assert.equal(i.nlookup, g.known.get(BigInt(i.nodeid))?.count ?? 0, `${where}: lookups of nodeid ${i.nodeid}`);
      }
      for (const id of g.known.keys()) assert.ok(inodes.some((i) => BigInt(i.nodeid) === id), `${where}: nodeid ${id} the guest holds is gone`);
      // Each fd the first time it is seen (renames cannot take it out of the share), and all of them at the end.
      for (const [key, fd] of [...inodes.map((i) => [`i${i.nodeid}`, i.fd] as const), ...handles.map((h) => [`h${h.fh}`, h.fd] as const)]) {
        if (!all && seen.has(key)) continue;
        seen.add(key);
        const p = fdPath(fd) ?? "(unreadable)";
        assert.ok(p === w.share || p.startsWith(w.share + "/"), `${where}: fd ${fd} holds ${p}, outside the share`);
      }
    }
    totals.cases += cases;
    totals.ms += performance.now() - t0;
    where = `shard ${shard} (seed ${seed}), at the end`;
    const events = watch.events("share");
    assert.deepEqual(events, [], `${where}: something outside the share was touched`);
  } finally {
    server.close();
    watch.close();
  }
  assert.equal(hashTree(w.guard), guardHash, `${where}: the guard changed`);
  if (readOnly) assert.equal(hashTree(w.share), shareHash, `${where}: the read-only share changed`);
  const leaked = readdirSync("/proc/self/fd").filter((fd) => fdPath(fd)?.startsWith(w.base));
  assert.deepEqual(leaked, [], `${where}: fds left open after close()`);
}

const totals: Totals = { cases: 0, requests: 0, replies: 0, errors: 0, guestErrors: 0, ms: 0 };
for (let shard = 0; shard < SHARDS; shard++) {
  test(`FsServer survives hostile guests: seeded fuzz of FUSE requests, ${shard % 2 ? "read-only" : "read-write"} share (${shard + 1}/${SHARDS})`, () => {
    fuzzShard(shard, SEED + shard, Math.ceil(CASES / SHARDS), totals);
    if (shard === SHARDS - 1) {
      console.log(
        `virtio-fs fuzz: ${totals.cases} cases, ${totals.requests} requests, ${totals.replies} replies (${totals.errors} errno), ` +
          `${totals.guestErrors} GuestError, seeds ${SEED}..${SEED + SHARDS - 1}, ${totals.ms.toFixed(0)} ms`,
      );
      assert.ok(totals.replies - totals.errors > totals.cases, "most requests should succeed; the generator is too hostile");
    }
  });
}
