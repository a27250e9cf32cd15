/**
 * libc through the runtime's FFI (ffi/libc.ts): files, eventfds, pipes,
 * poll, memory mappings and pidfds as vmm's threads use them, and the
 * SysError every failed call becomes (ffi/errno.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  check, close, EFD_CLOEXEC, EFD_NONBLOCK, errno, eventfd, eventfdRead, eventfdSignal, fdLimit, getrandom, hostView, libc,
  dataBlocks, MAP_ANONYMOUS, MAP_SHARED, mmapAnon, mmapGuestRam, mmapGuestRamFrom, NativeBuf, O_CREAT, O_RDONLY, O_RDWR, O_WRONLY, open, pidfdOpen, pipe, POLLIN,
  Poller, preadData, preadFile, raiseFdLimit, read, writeAll,
} from "./libc.ts";
import { errnoName, SysError } from "./errno.ts";
import { runtime } from "./runtime.ts";

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "vmm-libc-"));
}

test("open() + writeAll() write a file that read() and node:fs read back", () => {
  const dir = tempDir();
  try {
    const path = join(dir, "f");
    const data = new Uint8Array(1000).map((_, i) => i & 0xff); // more than the 64-byte scratch
    const w = open(path, O_WRONLY | O_CREAT, 0o600);
    writeAll(w, data);
    writeAll(w, new TextEncoder().encode("end"));
    close(w);
    assert.deepEqual(new Uint8Array(readFileSync(path)), new Uint8Array([...data, 0x65, 0x6e, 0x64]));

    const r = open(path, O_RDONLY);
    const buf = NativeBuf.alloc(2048);
    assert.equal(read(r, buf), 1003);
    assert.equal(read(r, buf), 0, "end of file");
    assert.deepEqual(buf.bytes.subarray(0, 1000), data);
    close(r);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("open() of a missing file throws SysError naming the path and errno", () => {
  assert.throws(() => open("/nonexistent-dir/file", O_RDONLY), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.message, "open /nonexistent-dir/file: ENOENT (no such file or directory)");
    assert.equal(e.call, "open /nonexistent-dir/file");
    assert.equal(e.code, "ENOENT");
    return true;
  });
  assert.throws(() => open("/nonexistent-dir/file", O_RDONLY, 0, "--disk /nonexistent-dir/file"), {
    message: "--disk /nonexistent-dir/file: ENOENT (no such file or directory)",
  });
});

test("check() passes results through and turns -1 into SysError with errno", () => {
  assert.equal(check("getpid", libc.getpid()), Number(libc.getpid()));
  assert.equal(check("read", 5n), 5);
  assert.throws(() => check("close", libc.close(-1)), {
    name: "SysError",
    message: "close: EBADF (bad file descriptor)",
  });
  libc.close(-1);
  assert.equal(errno(), 9, "errno() is EBADF right after the failed call");
});

test("SysError names an errno it does not know by number", () => {
  assert.equal(new SysError("KVM_RUN", 4).message, "KVM_RUN: EINTR (interrupted system call)");
  assert.equal(new SysError("frob", 999).message, "frob: errno 999");
  assert.equal(errnoName(999), "errno 999");
});

test("eventfd: signals add up until eventfdRead() takes and resets the count", () => {
  const fd = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
  try {
    eventfdSignal(fd);
    eventfdSignal(fd);
    assert.equal(eventfdRead(fd), 2n);
    assert.equal(eventfdRead(fd), 0n, "a non-blocking read of an idle eventfd returns 0, not EAGAIN");
  } finally {
    close(fd);
  }
});

test("Poller reports POLLIN only for the fds that have data", () => {
  const [r, w] = pipe();
  const efd = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
  try {
    const poller = new Poller([r, efd]);
    assert.deepEqual(poller.wait(0), [0, 0]);
    writeAll(w, new Uint8Array([15]));
    assert.deepEqual(poller.wait(0), [POLLIN, 0]);
    eventfdSignal(efd);
    assert.deepEqual(poller.wait(-1), [POLLIN, POLLIN]);
    const buf = NativeBuf.alloc(4);
    assert.equal(read(r, buf), 1);
    assert.equal(buf.bytes[0], 15);
  } finally {
    close(r);
    close(w);
    close(efd);
  }
});

test("mmapAnon() memory is shared by every view of its address", () => {
  const addr = mmapAnon(8192, undefined, MAP_SHARED | MAP_ANONYMOUS);
  const a = hostView(addr, 8192);
  const b = new NativeBuf(addr + 4096n, 4096);
  a[4096] = 0x5a;
  assert.equal(b.bytes[0], 0x5a);
  b.view.setUint32(4, 0xdeadbeef, true);
  assert.deepEqual([...a.subarray(4100, 4104)], [0xef, 0xbe, 0xad, 0xde]);
  assert.equal(Number(libc.munmap(addr, 8192n)), 0);
});

test("NativeBuf.cstring() copies a string NUL-terminated; alloc() zeroes", () => {
  const s = NativeBuf.cstring("/dev/kvm");
  assert.deepEqual([...s.bytes], [...new TextEncoder().encode("/dev/kvm"), 0]);
  assert.ok(NativeBuf.alloc(100).bytes.every((b) => b === 0));
});

test("pidfdOpen() gives an fd that polls readable once the child exits", async () => {
  const child = spawn("sleep", ["0.2"]);
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const fd = pidfdOpen(child.pid!);
  try {
    const poller = new Poller([fd]);
    assert.deepEqual(poller.wait(0), [0], "still running");
    await exited;
    const [revents] = poller.wait(2000);
    assert.equal(revents & POLLIN, POLLIN, "readable (POLLHUP too, once the child is reaped)");
  } finally {
    close(fd);
  }
});

test("getrandom() fills the buffer", () => {
  const b = NativeBuf.alloc(64);
  assert.equal(getrandom(b.addr, 64), 64);
  assert.ok(b.bytes.some((x) => x !== 0));
});

test("open() with O_RDWR | O_CREAT makes a file another reader sees as it is written", () => {
  const dir = tempDir();
  try {
    const path = join(dir, "console.txt");
    writeFileSync(path, "");
    const fd = open(path, O_RDWR | O_CREAT);
    writeAll(fd, new TextEncoder().encode("hello\n"));
    assert.equal(readFileSync(path, "utf8"), "hello\n");
    close(fd);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("raiseFdLimit() lifts the soft open-file limit to the hard one or beyond, and that many fds open", () => {
  const before = fdLimit();
  const now = raiseFdLimit();
  const after = fdLimit();
  assert.equal(after.soft, now);
  assert.ok(now >= before.hard, `soft limit ${now} is below the hard limit ${before.hard} it started with`);
  assert.ok(after.hard >= before.hard);
  // Past the usual soft limit of 1024, where the virtio-fs server ran out: 1100 more fds.
  if (now < 1200n) return;
  const fds: number[] = [];
  try {
    for (let i = 0; i < 1100; i++) fds.push(open("/dev/null", O_RDONLY));
    assert.equal(fds.length, 1100);
  } finally {
    fds.forEach(close);
  }
});

/** VmFlags of each mapping in /proc/self/smaps that overlaps [addr, addr + len). */
function vmFlags(addr: bigint, len: number): string[][] {
  const out: string[][] = [];
  let inside = false;
  for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (range) inside = BigInt(`0x${range[1]}`) < addr + BigInt(len) && BigInt(`0x${range[2]}`) > addr;
    else if (inside && line.startsWith("VmFlags:")) out.push(line.slice(8).trim().split(" "));
  }
  return out;
}

test("dataBlocks() gives the 2 MiB blocks of a sparse file that hold data; mmapGuestRamFrom() maps them from the file, zeroes elsewhere, and never writes the file", () => {
  const dir = tempDir();
  const MiB = 1024 * 1024, len = 8 * MiB;
  try {
    const path = join(dir, "memory");
    const fd = open(path, O_RDWR | O_CREAT, 0o600);
    const put = (at: number, byte: number) => {
      const b = NativeBuf.alloc(4096);
      b.bytes.fill(byte);
      assert.equal(Number(libc.pwrite(fd, b.addr, 4096n, BigInt(at))), 4096);
      b.free();
    };
    put(4096, 0xaa); // block 0
    put(3 * MiB, 0xbb); // block 1, next to block 0: one range
    put(7 * MiB, 0xcc); // block 3; block 2 stays a hole
    close(fd);
    truncateSync(path, len);
    const r = open(path, O_RDWR);
    try {
      // A file system that reports no holes at all makes the whole file one range, which maps correctly too.
      const holes = Number(libc.lseek(r, 0n, 4 /* SEEK_HOLE */)) < len;
      assert.deepEqual(dataBlocks(r, len, 2 * MiB), holes ? [[0, 4 * MiB], [6 * MiB, 8 * MiB]] : [[0, len]]);
      assert.deepEqual(dataBlocks(r, 2 * MiB, 2 * MiB), [[0, 2 * MiB]], "ranges end at len");
      const before = new Uint8Array(readFileSync(path));
      const addr = mmapGuestRamFrom(r, len);
      try {
        assert.equal(addr % BigInt(2 * MiB), 0n);
        const v = new Uint8Array(runtime.view(addr, len));
        assert.deepEqual([v[0], v[4096], v[3 * MiB + 4095], v[5 * MiB], v[7 * MiB], v[len - 1]], [0, 0xaa, 0xbb, 0, 0xcc, 0]);
        v[4096] = 1; // a page from the file
        v[5 * MiB] = 2; // anonymous memory in a hole block
        assert.deepEqual([v[4096], v[5 * MiB]], [1, 2]);
        const maps = readFileSync("/proc/self/maps", "utf8");
        if (holes) assert.match(maps, new RegExp(`^${(addr + BigInt(4 * MiB)).toString(16)}-${(addr + BigInt(6 * MiB)).toString(16)} rw-p 00000000 00:00 0 `, "m"), "block 2 is anonymous");
        const flags = vmFlags(addr, len);
        assert.ok(flags.length >= (holes ? 3 : 1), `file and anonymous mappings: ${JSON.stringify(flags)}`);
        assert.ok(flags.every((f) => f.includes("dc")), `every mapping of the guest's RAM is MADV_DONTFORK (dc): ${JSON.stringify(flags)}`);
      } finally {
        assert.equal(libc.munmap(addr, BigInt(len)), 0);
      }
      assert.deepEqual(new Uint8Array(readFileSync(path)), before, "the guest's writes reached the file");
    } finally {
      close(r);
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("mmapGuestRam() gives writable, 2 MiB-aligned memory of the size asked", () => {
  const len = 6 * 1024 * 1024 + 4096;
  const addr = mmapGuestRam(len);
  try {
    assert.equal(addr % (2n * 1024n * 1024n), 0n);
    const v = new Uint8Array(runtime.view(addr, len));
    v[0] = 1;
    v[len - 1] = 2;
    assert.equal(v[0] + v[len - 1], 3);
    const maps = readFileSync("/proc/self/maps", "utf8").split("\n").filter((l) => l).map((l) => l.split(" ")[0].split("-").map((h) => BigInt(`0x${h}`)));
    assert.ok(maps.some(([s, e]) => s <= addr && e >= addr + BigInt(len)), "no mapping covers the guest RAM");
    const flags = vmFlags(addr, len);
    assert.ok(flags.length > 0 && flags.every((f) => f.includes("dc")), `guest RAM is MADV_DONTFORK (dc): ${JSON.stringify(flags)}`);
  } finally {
    assert.equal(libc.munmap(addr, BigInt(len)), 0);
  }
});

test("preadData() reads a file's data into memory and leaves the memory under its holes as it was; preadFile() reads it all; a file too short is an error naming it", () => {
  const dir = tempDir();
  const MiB = 1024 * 1024, len = 3 * MiB;
  try {
    const path = join(dir, "vmlinux");
    const fd = open(path, O_RDWR | O_CREAT, 0o600);
    const b = NativeBuf.alloc(4096);
    b.bytes.fill(0xaa);
    assert.equal(Number(libc.pwrite(fd, b.addr, 4096n, BigInt(MiB))), 4096); // data at 1 MiB, holes around it
    b.free();
    close(fd);
    truncateSync(path, len);
    const holes = (() => {
      const r = open(path, O_RDONLY);
      try {
        return Number(libc.lseek(r, 0n, 4 /* SEEK_HOLE */)) < len;
      } finally {
        close(r);
      }
    })();
    const mem = NativeBuf.alloc(2 * MiB);
    try {
      // From 512 KiB of the file, 2 MiB: the data lands 512 KiB into mem.
      mem.bytes.fill(0xee);
      preadData(path, mem.addr, 2 * MiB, MiB / 2, "the kernel");
      const at = MiB / 2;
      assert.deepEqual([mem.bytes[at], mem.bytes[at + 4095]], [0xaa, 0xaa], "the data is read");
      if (holes) assert.deepEqual([mem.bytes[0], mem.bytes[at - 1], mem.bytes[at + 4096], mem.bytes[2 * MiB - 1]], [0xee, 0xee, 0xee, 0xee], "holes are not read");
      mem.bytes.fill(0xee);
      preadFile(path, mem.addr, 2 * MiB, MiB / 2, "the kernel");
      assert.deepEqual([mem.bytes[0], mem.bytes[at], mem.bytes[at + 4096], mem.bytes[2 * MiB - 1]], [0, 0xaa, 0, 0], "preadFile reads the holes' zeros");
      mem.bytes.fill(0);
      preadData(path, mem.addr, 2 * MiB, MiB / 2, "the kernel");
      assert.deepEqual(mem.bytes, new Uint8Array(readFileSync(path)).subarray(MiB / 2, MiB / 2 + 2 * MiB), "into zeros, the file's bytes");
      assert.throws(() => preadData(path, mem.addr, 2 * MiB, 2 * MiB, "the kernel"), /^Error: read the kernel: the file ends at byte 3145728, before the 4194304 it had$/);
    } finally {
      mem.free();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
