/**
 * The pieces of guest/build.ts, and the default guest image it builds.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync, zstdCompressSync } from "node:zlib";
import { ensureDefaultGuest, extractVmlinux, moduleName, outbElf, resolveModules, vmlinuxInProcess } from "./build.ts";
import { makeVmlinux } from "../test/support/tiny_kernel.ts";
import { S_IFCHR, S_IFLNK, S_IFMT, S_IFREG } from "./cpio.ts";

const dec = new TextDecoder();

test("moduleName() is the kernel's name for a module file", () => {
  assert.equal(moduleName("kernel/arch/x86/kvm/kvm-amd.ko"), "kvm_amd");
  assert.equal(moduleName("kernel/drivers/char/hw_random/virtio-rng.ko.xz"), "virtio_rng");
  assert.equal(moduleName("virtio-rng"), "virtio_rng");
});

test("resolveModules() puts dependencies first and skips missing modules", () => {
  // The shape of modules.dep: each module, then its whole dependency closure.
  const dep = [
    "kernel/drivers/virtio/virtio_ring.ko:",
    "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko " +
    "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko",
    "kernel/net/core/failover.ko:",
    "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
  ].join("\n");
  const order = resolveModules(dep, ["virtio_net", "virtio-rng", "virtio_blk", "virtio"]);
  assert.deepEqual(order, [
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/char/hw_random/virtio-rng.ko",
  ]);
});

test("outbElf() is a static ELF that runs and refuses a wrong argument count", () => {
  const elf = outbElf();
  const v = new DataView(elf.buffer);
  assert.deepEqual([...elf.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46]);
  assert.equal(v.getUint16(0x10, true), 2); // ET_EXEC
  assert.equal(v.getUint16(0x12, true), 62); // EM_X86_64
  assert.equal(v.getUint16(0x38, true), 1); // one program header: PT_LOAD, no PT_INTERP
  assert.equal(Number(v.getBigUint64(64 + 0x20, true)), elf.length); // p_filesz covers the file
  // Run it with no arguments: it must load, check argc and exit 1 without
  // touching a port (with two arguments it would write one on this host).
  const dir = mkdtempSync(join(tmpdir(), "vmm-outb-"));
  try {
    const exe = join(dir, "vmm-outb");
    writeFileSync(exe, elf);
    chmodSync(exe, 0o755);
    assert.equal(spawnSync(exe, [], { stdio: "ignore" }).status, 1);
    assert.equal(spawnSync(exe, ["244"], { stdio: "ignore" }).status, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A bzImage as far as extractVmlinux() reads it: setup header and payload. */
function fakeBzImage(payload: Uint8Array, setupSects = 1, payloadOffset = 16): Uint8Array {
  const start = (setupSects + 1) * 512;
  const b = new Uint8Array(start + payloadOffset + payload.length + 8);
  const v = new DataView(b.buffer);
  b[0x1f1] = setupSects; // setup_sects: real-mode code after the boot sector
  v.setUint32(0x202, 0x53726448, true); // "HdrS"
  v.setUint16(0x206, 0x020f, true); // boot protocol 2.15
  v.setUint32(0x248, payloadOffset, true); // payload_offset from the protected-mode code
  v.setUint32(0x24c, payload.length, true); // payload_length
  b.set(payload, start + payloadOffset);
  return b;
}

test("extractVmlinux() finds the ELF payload through the setup header", () => {
  const elf = new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, 9, 9, 9]);
  const dir = mkdtempSync(join(tmpdir(), "vmm-vmlinux-"));
  try {
    assert.deepEqual([...extractVmlinux(fakeBzImage(gzipSync(elf)), dir)], [...elf]);
    assert.throws(() => extractVmlinux(new Uint8Array(4096), dir), /HdrS/);
    assert.throws(() => extractVmlinux(fakeBzImage(gzipSync(new Uint8Array(16))), dir), /not an ELF/);
    assert.throws(() => extractVmlinux(fakeBzImage(new Uint8Array(64).fill(7)), dir), /compression/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("vmlinuxInProcess() decodes a zstd payload (the kernel's size appended) in this process, to the bytes the zstd program gives", () => {
  const elf = makeVmlinux(new Uint8Array([0xf4]), { bssBytes: 256 * 1024 });
  const sized = (z: Uint8Array, n: number) => {
    const p = new Uint8Array(z.length + 4);
    p.set(z);
    new DataView(p.buffer).setUint32(z.length, n, true); // the kernel Makefile's size_append
    return p;
  };
  const bz = fakeBzImage(sized(zstdCompressSync(elf), elf.length));
  assert.deepEqual(new Uint8Array(vmlinuxInProcess(bz)!), elf);
  if (spawnSync("zstd", ["--version"]).status === 0) {
    const dir = mkdtempSync(join(tmpdir(), "vmm-vmlinux-"));
    try {
      assert.deepEqual(new Uint8Array(extractVmlinux(bz, dir)), elf, "the zstd program agrees");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  // A size that does not match what the payload holds is refused, either way round.
  assert.throws(() => vmlinuxInProcess(fakeBzImage(sized(zstdCompressSync(elf), elf.length - 1))));
  assert.throws(() => vmlinuxInProcess(fakeBzImage(sized(zstdCompressSync(elf), elf.length + 1))), /zstd gave/);
});

test("guest/init.sh parses under busybox sh", () => {
  const init = fileURLToPath(new URL("./init.sh", import.meta.url));
  execFileSync("busybox", ["sh", "-n", init]);
});

/** Members of a newc archive by path (the last one wins, as in the kernel). */
function members(buf: Uint8Array): Map<string, { mode: number; rdev: [number, number]; data: Uint8Array }> {
  const out = new Map<string, { mode: number; rdev: [number, number]; data: Uint8Array }>();
  let off = 0;
  while (off + 110 <= buf.length) {
    const h = dec.decode(buf.subarray(off, off + 110));
    const f = (i: number) => parseInt(h.slice(6 + i * 8, 14 + i * 8), 16);
    const name = dec.decode(buf.subarray(off + 110, off + 110 + f(11) - 1));
    const at = Math.ceil((off + 110 + f(11)) / 4) * 4;
    out.set(name, { mode: f(1), rdev: [f(9), f(10)], data: buf.subarray(at, at + f(6)) });
    off = Math.ceil((at + f(6)) / 4) * 4;
    if (name === "TRAILER!!!") break;
  }
  return out;
}

test("ensureDefaultGuest() builds a bootable image once and then only finds it", { timeout: 600_000 }, async () => {
  const img = await ensureDefaultGuest();
  assert.ok(statSync(img.kernel).size > 1 << 20);
  if (img.vmlinux) assert.deepEqual([...readFileSync(img.vmlinux).subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46]);
  assert.match(img.kernelVersion, /^\d+\.\d+/);
  const m = members(new Uint8Array(readFileSync(img.initrd)));
  assert.equal(m.get("init")?.mode, S_IFREG | 0o755);
  assert.deepEqual(m.get("init")?.data, new Uint8Array(readFileSync(fileURLToPath(new URL("./init.sh", import.meta.url)))));
  assert.equal((m.get("bin/busybox")!.mode & S_IFMT), S_IFREG);
  assert.equal(dec.decode(m.get("bin/sh")!.data), "/bin/busybox");
  assert.equal((m.get("bin/sh")!.mode & S_IFMT), S_IFLNK);
  for (const applet of ["sbin/insmod", "bin/cttyhack", "usr/bin/setsid", "sbin/poweroff", "bin/dd"]) {
    assert.ok(m.has(applet), applet);
  }
  assert.deepEqual(m.get("bin/vmm-outb")?.data, outbElf());
  assert.deepEqual([m.get("dev/console")!.mode, ...m.get("dev/console")!.rdev], [S_IFCHR | 0o600, 5, 1]);
  // Every listed module is in the archive, virtio first among the virtio ones.
  const mods = dec.decode(m.get("etc/vmm/modules")!.data).trim().split("\n");
  for (const ko of mods) assert.ok(m.has(ko.slice(1)), ko);
  const names = mods.map(moduleName);
  for (const want of ["virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng"]) {
    assert.ok(names.includes(want), `${want} in ${names.join(" ")}`);
  }
  assert.ok(names.indexOf("virtio") < names.indexOf("virtio_mmio"));

  // Built: a second call returns the same files without rewriting them.
  const before = statSync(img.initrd).mtimeMs;
  const t = Date.now();
  const again = await ensureDefaultGuest();
  assert.deepEqual(again, img);
  assert.equal(statSync(img.initrd).mtimeMs, before);
  assert.ok(Date.now() - t < 1000, `second call took ${Date.now() - t} ms`);
});
