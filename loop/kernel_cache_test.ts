/**
 * loop/kernel_cache.ts on real files: which bzImages are unpacked, what the
 * entry holds, when it is used again, and what is left as it is. That a
 * machine boots the unpacked kernel is bin/vmm_test.ts's (on /dev/kvm).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync, zstdCompressSync } from "node:zlib";
import { makeBzImage, makeVmlinux } from "../test/support/tiny_kernel.ts";
import { fileExtents, hasHoles } from "../test/support/holes.ts";
import { EVICT_GRACE_MS, KEEP_KERNELS, kernelCacheDir, unpackedKernel } from "./kernel_cache.ts";

const ELF = makeVmlinux(new Uint8Array([0xf4]));

async function withDir(f: (dir: string) => void | Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "vmm-kernel-cache-"));
  try {
    await f(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A bzImage file carrying `payload` as its compressed kernel. */
function bzImage(dir: string, name: string, payload: Uint8Array = gzipSync(ELF)): string {
  const path = join(dir, name);
  writeFileSync(path, makeBzImage(new Uint8Array([0xf4]), { payload }));
  return path;
}

test("unpackedKernel(): a bzImage's gzip'd ELF kernel is unpacked once, then used from the cache", async () => {
  await withDir(async (dir) => {
    const cache = join(dir, "cache"), k = bzImage(dir, "vmlinuz");
    const first = await unpackedKernel(k, cache);
    assert.ok(first, "unpacked");
    assert.equal(first.fresh, true);
    assert.deepEqual(new Uint8Array(readFileSync(first.path)), ELF, "the entry holds the ELF kernel, byte for byte");
    const ino = statSync(first.path).ino;

    const again = await unpackedKernel(k, cache);
    assert.deepEqual(again, { path: first.path, fresh: false });
    assert.equal(statSync(again.path).ino, ino, "not written again");
    assert.deepEqual(readdirSync(cache), [readdirSync(cache)[0]], "one entry, no temporary directory left");
  });
});

test("unpackedKernel(): the cached kernel's zero pages are holes, which the loader need not read (ffi/libc.ts preadData)", async () => {
  await withDir(async (dir) => {
    const padded = new Uint8Array(ELF.length + 64 * 1024); // the ELF, then 16 pages of zeros
    padded.set(ELF);
    const k = await unpackedKernel(bzImage(dir, "vmlinuz", gzipSync(padded)), join(dir, "cache"));
    assert.ok(k);
    assert.deepEqual(new Uint8Array(readFileSync(k.path)), padded, "byte for byte");
    // A file system without holes reports all of a file as data: then there is nothing to check.
    if (hasHoles(dir)) assert.deepEqual(fileExtents(k.path), [[0, Math.ceil(ELF.length / 4096) * 4096]], "data only where the ELF is");
  });
});

test("unpackedKernel(): a zstd payload (Ubuntu's, Fedora's kernels) is unpacked too", async () => {
  await withDir(async (dir) => {
    const z = zstdCompressSync(ELF), payload = new Uint8Array(z.length + 4);
    payload.set(z);
    new DataView(payload.buffer).setUint32(z.length, ELF.length, true); // the kernel Makefile's size_append
    const u = await unpackedKernel(bzImage(dir, "vmlinuz", payload), join(dir, "cache"));
    assert.deepEqual(new Uint8Array(readFileSync(u!.path)), ELF);
  });
});

test("unpackedKernel(): a rebuilt bzImage (new mtime) is a new entry; another file of the same bytes too", async () => {
  await withDir(async (dir) => {
    const cache = join(dir, "cache"), k = bzImage(dir, "vmlinuz");
    const a = (await unpackedKernel(k, cache))!;
    utimesSync(k, new Date(), new Date(Date.now() + 5000));
    const b = (await unpackedKernel(k, cache))!;
    assert.notEqual(b.path, a.path);
    assert.equal(b.fresh, true);
    const c = (await unpackedKernel(bzImage(dir, "copy"), cache))!;
    assert.notEqual(c.path, a.path);
    assert.notEqual(c.path, b.path);
  });
});

test("unpackedKernel(): what it cannot or should not unpack boots as it is (undefined), and nothing is cached", async () => {
  await withDir(async (dir) => {
    const cache = join(dir, "cache");
    const none = async (path: string, why: string) => assert.equal(await unpackedKernel(path, cache), undefined, why);
    const write = (name: string, bytes: Uint8Array) => (writeFileSync(join(dir, name), bytes), join(dir, name));
    await none(write("vmlinux", ELF), "an ELF kernel already is one");
    await none(write("tiny", makeBzImage(new Uint8Array([0xf4]))), "a bzImage with no payload");
    // xz's magic: decoded only by the xz program, which vmm does not run at boot.
    await none(bzImage(dir, "xz", new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 0, 0, 0, 0, 0, 0])), "an xz payload");
    await none(bzImage(dir, "garbage", gzipSync(new Uint8Array(4096).fill(0x41))), "a payload that is not an ELF file");
    const arm = ELF.slice();
    new DataView(arm.buffer).setUint16(18, 183, true); // EM_AARCH64
    await none(bzImage(dir, "arm", gzipSync(arm)), "an ELF kernel the loader would refuse");
    const low = makeVmlinux(new Uint8Array([0xf4]), { paddr: 0x8000 });
    await none(bzImage(dir, "low", gzipSync(low)), "an ELF kernel that loads below the boot tables");
    const cut = gzipSync(ELF);
    await none(bzImage(dir, "cut", cut.subarray(0, cut.length - 40)), "a truncated payload");
    await none(join(dir, "missing"), "no such file: the loader says so");
    await none(dir, "a directory");
    await none(write("short", new Uint8Array(16)), "a file too short for a header");
    assert.equal(existsSync(cache) ? readdirSync(cache).length : 0, 0);
  });
});

test("unpackedKernel(): a cache that cannot be written leaves the bzImage to boot as it is", async () => {
  await withDir(async (dir) => {
    const k = bzImage(dir, "vmlinuz");
    writeFileSync(join(dir, "file"), "not a directory");
    assert.equal(await unpackedKernel(k, join(dir, "file", "cache")), undefined);
  });
});

test("unpackedKernel(): the cache keeps the kernels used last, but not one used within the grace period", async () => {
  await withDir(async (dir) => {
    const cache = join(dir, "cache");
    const old = new Date(Date.now() - EVICT_GRACE_MS - 60_000);
    const paths: string[] = [];
    for (let i = 0; i < KEEP_KERNELS + 2; i++) {
      const u = (await unpackedKernel(bzImage(dir, `k${i}`), cache))!;
      paths.push(u.path);
      if (i < 2) utimesSync(join(u.path, ".."), old, new Date(old.getTime() + i)); // k0 and k1 were used long ago
    }
    // The last one trimmed the cache to KEEP_KERNELS: k0 and k1 went, the rest
    // (used within the grace period, though more than KEEP_KERNELS - 1 of them) stayed.
    assert.deepEqual(paths.map((p) => existsSync(p)), [false, false, ...Array(KEEP_KERNELS).fill(true)]);

    // Leftovers of a run that died while unpacking go once a day old.
    const tmp = join(cache, ".deadbeef.tmp-1");
    mkdirSync(tmp);
    utimesSync(tmp, old, new Date(Date.now() - 25 * 3600_000));
    await unpackedKernel(bzImage(dir, "one-more"), cache);
    assert.equal(existsSync(tmp), false);
  });
});

test("kernelCacheDir(): $VMM_KERNEL_CACHE, else kernels/ in the first cache root that can be written", async () => {
  await withDir((dir) => {
    writeFileSync(join(dir, "file"), "not a directory");
    const ro = join(dir, "file", "cache"); // cannot be made: a path through a file
    assert.equal(kernelCacheDir({ VMM_KERNEL_CACHE: join(dir, "k") }), join(dir, "k"));
    assert.equal(kernelCacheDir({ VMM_KERNEL_CACHE: ro, HOME: dir }), null, "an explicit cache that cannot be written: none");
    assert.equal(kernelCacheDir({ VMM_CACHE: join(dir, "v") }), join(dir, "v", "kernels"));
    // The benchmarks' nested host: $VMM_CACHE is the host's, read-only there; HOME is writable.
    assert.equal(kernelCacheDir({ VMM_CACHE: ro, HOME: join(dir, "home") }), join(dir, "home", ".cache", "vmm", "kernels"));
  });
});

test("unpackedKernel(): no cache to write to (kernelCacheDir found none), the bzImage as it is", async () => {
  await withDir(async (dir) => assert.equal(await unpackedKernel(bzImage(dir, "vmlinuz"), null), undefined));
});
