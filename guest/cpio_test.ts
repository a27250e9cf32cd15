/**
 * writeCpio() checked against GNU cpio, the reference reader of the format,
 * and against the rules the kernel's unpacker relies on (`init/initramfs.c`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type CpioEntry,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  writeCpio,
} from "./cpio.ts";
import { hasProgram } from "../test/support/programs.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

const hasCpio = hasProgram("cpio");
const isRoot = process.getuid?.() === 0;

/** A member as the kernel's unpacker sees it. */
interface Parsed {
  path: string;
  mode: number;
  nlink: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Uint8Array;
}

/**
 * Reads every member of one or more concatenated newc archives, skipping the
 * zero padding between them the way `init/initramfs.c` does.
 */
function parseAll(buf: Uint8Array): Parsed[] {
  const out: Parsed[] = [];
  let off = 0;
  while (off < buf.length) {
    if (buf[off] === 0) {
      off += 4;
      continue;
    }
    assert.equal(off % 4, 0, "member starts at a 4-byte boundary");
    const hdr = dec.decode(buf.subarray(off, off + 110));
    assert.equal(hdr.slice(0, 6), "070701");
    const f = (i: number) => parseInt(hdr.slice(6 + i * 8, 14 + i * 8), 16);
    const namesize = f(11);
    const filesize = f(6);
    const path = dec.decode(buf.subarray(off + 110, off + 110 + namesize - 1));
    assert.equal(buf[off + 110 + namesize - 1], 0, "name is NUL-terminated");
    const dataOff = Math.ceil((off + 110 + namesize) / 4) * 4;
    const data = buf.subarray(dataOff, dataOff + filesize);
    off = Math.ceil((dataOff + filesize) / 4) * 4;
    if (path === "TRAILER!!!") continue;
    out.push({ path, mode: f(1), nlink: f(4), rdevMajor: f(9), rdevMinor: f(10), data });
  }
  return out;
}

const sample: CpioEntry[] = [
  { path: "/bin", mode: S_IFDIR | 0o755 },
  { path: "/bin/busybox", mode: S_IFREG | 0o755, data: enc.encode("#!/bin/true\nbinary\n") },
  { path: "bin/sh", mode: S_IFLNK | 0o777, target: "busybox" },
  { path: "dev/console", mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 },
  { path: "dev/fifo", mode: S_IFIFO | 0o644 },
  { path: "etc/vmm/modules", mode: S_IFREG | 0o644, data: enc.encode("a.ko\nb.ko\n") },
  { path: "empty", mode: S_IFREG | 0o600 },
  { path: "odd", mode: S_IFREG | 0o644, data: new Uint8Array([1, 2, 3, 4, 5]) },
];

test("writeCpio() pads every member and the archive to 4 bytes", () => {
  const a = writeCpio(sample);
  assert.equal(a.length % 4, 0);
  const members = parseAll(a);
  assert.deepEqual(
    members.map((m) => m.path),
    ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "dev/fifo", "etc", "etc/vmm", "etc/vmm/modules", "empty", "odd"],
  );
  assert.ok(dec.decode(a.subarray(a.length - 16)).includes("TRAILER!!!"));
});

test("writeCpio() adds missing parent directories before their first child", () => {
  const m = parseAll(writeCpio([{ path: "vmm/run.sh", mode: S_IFREG | 0o755, data: enc.encode("exit 0\n") }]));
  assert.deepEqual(m.map((x) => [x.path, x.mode.toString(8), x.nlink]), [
    ["vmm", "40755", 2],
    ["vmm/run.sh", "100755", 1],
  ]);
});

test("writeCpio() stores symlink targets as data and device numbers in rdev", () => {
  const m = parseAll(writeCpio(sample));
  const sh = m.find((x) => x.path === "bin/sh")!;
  assert.equal(sh.mode & S_IFMT, S_IFLNK);
  assert.equal(dec.decode(sh.data), "busybox");
  const con = m.find((x) => x.path === "dev/console")!;
  assert.deepEqual([con.mode & S_IFMT, con.rdevMajor, con.rdevMinor], [S_IFCHR, 5, 1]);
});

test("writeCpio() archives concatenate: a later member replaces an earlier one", () => {
  const base = writeCpio([{ path: "vmm/run.sh", mode: S_IFREG | 0o644, data: enc.encode("old\n") }]);
  const extra = writeCpio([{ path: "vmm/run.sh", mode: S_IFREG | 0o755, data: enc.encode("new!\n") }]);
  const both = new Uint8Array(base.length + 8 + extra.length); // the kernel also skips zero padding
  both.set(base, 0);
  both.set(extra, base.length + 8);
  const seen = new Map(parseAll(both).map((x) => [x.path, x]));
  assert.equal(dec.decode(seen.get("vmm/run.sh")!.data), "new!\n");
  assert.equal(seen.get("vmm/run.sh")!.mode, S_IFREG | 0o755);
});

test("writeCpio() rejects entries the kernel could not unpack", () => {
  assert.throws(() => writeCpio([{ path: "x", mode: 0o644 }]), RangeError);
  assert.throws(() => writeCpio([{ path: "a/../b", mode: S_IFREG | 0o644 }]), RangeError);
  assert.throws(() => writeCpio([{ path: "/", mode: S_IFDIR | 0o755 }]), RangeError);
  assert.throws(() => writeCpio([{ path: "l", mode: S_IFLNK | 0o777 }]), TypeError);
  assert.throws(() => writeCpio([{ path: "d", mode: S_IFDIR | 0o755, data: enc.encode("x") }]), TypeError);
});

test("writeCpio() output lists under GNU cpio -t", { skip: !hasCpio && "GNU cpio is not installed" }, () => {
  const out = execFileSync("cpio", ["-t", "-v", "--quiet"], { input: writeCpio(sample) }).toString();
  const lines = out.trim().split("\n");
  assert.equal(lines.length, 11);
  assert.match(lines[2], /^lrwxrwxrwx .* bin\/sh -> busybox$/);
  assert.match(lines[4], /^crw------- .* 5,\s+1 .* dev\/console$/);
  assert.match(lines[5], /^prw-r--r-- .* dev\/fifo$/);
});

test(
  "writeCpio() round-trips through GNU cpio -i: contents, modes, symlinks, devices",
  { skip: (!hasCpio && "GNU cpio is not installed") || (!isRoot && "device nodes need root") },
  () => {
    const dir = mkdtempSync(join(tmpdir(), "vmm-cpio-"));
    try {
      execFileSync("cpio", ["-i", "-d", "-m", "--quiet", "--no-absolute-filenames"], {
        cwd: dir,
        input: writeCpio(sample),
      });
      assert.equal(readFileSync(join(dir, "bin/busybox"), "utf8"), "#!/bin/true\nbinary\n");
      assert.equal(lstatSync(join(dir, "bin/busybox")).mode, S_IFREG | 0o755);
      assert.equal(readlinkSync(join(dir, "bin/sh")), "busybox");
      const con = lstatSync(join(dir, "dev/console"));
      assert.ok(con.isCharacterDevice());
      assert.equal(con.rdev, (5 << 8) | 1);
      assert.ok(lstatSync(join(dir, "dev/fifo")).isFIFO());
      assert.ok(lstatSync(join(dir, "etc/vmm")).isDirectory());
      assert.equal(readFileSync(join(dir, "etc/vmm/modules"), "utf8"), "a.ko\nb.ko\n");
      assert.equal(lstatSync(join(dir, "empty")).size, 0);
      assert.deepEqual([...readFileSync(join(dir, "odd"))], [1, 2, 3, 4, 5]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
