/**
 * guest/image_cache.ts: where the cache is, and that an image is current
 * exactly when guest/build.ts would return it without building, tried on a
 * scratch cache (the real one: guest/default_guest_test.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { currentImage, defaultCacheDir, GUEST, imageStamp, NESTED } from "./image_cache.ts";
import { ensureDefaultGuest } from "./build.ts";

test("defaultCacheDir() is VMM_CACHE, else XDG_CACHE_HOME/vmm, else ~/.cache/vmm, home from /etc/passwd without HOME", () => {
  assert.equal(defaultCacheDir({ VMM_CACHE: "/v", XDG_CACHE_HOME: "/x", HOME: "/h" }), "/v");
  assert.equal(defaultCacheDir({ XDG_CACHE_HOME: "/x", HOME: "/h" }), "/x/vmm");
  assert.equal(defaultCacheDir({ HOME: "/h" }), "/h/.cache/vmm");
  // os.userInfo() asks getpwuid(3), as os.homedir() does when HOME is unset.
  assert.equal(defaultCacheDir({ HOME: "" }), join(userInfo().homedir, ".cache", "vmm"));
});

test("imageStamp() is a SHA-256 that tells the flavours apart", () => {
  assert.match(imageStamp(GUEST), /^[0-9a-f]{64}$/);
  assert.equal(imageStamp(GUEST), imageStamp(GUEST));
  assert.notEqual(imageStamp(GUEST), imageStamp(NESTED));
});

test("currentImage() is what ensureDefaultGuest() returns without building, and undefined once anything is stale", async () => {
  const cache = mkdtempSync(join(tmpdir(), "vmm-image-cache-"));
  try {
    assert.equal(await currentImage(GUEST, cache), undefined, "nothing built");
    const dir = join(cache, "guest-6.1.0-test");
    mkdirSync(dir);
    const img = { kernel: join(dir, "vmlinuz"), initrd: join(dir, "initrd.cpio"), kernelVersion: "6.1.0-test" };
    writeFileSync(img.kernel, "a kernel");
    writeFileSync(img.initrd, "an initramfs");
    writeFileSync(join(dir, "stamp"), imageStamp(GUEST));
    // A package apt cannot find: were ensure() to disagree and build, it would fail, not download.
    const source = { kind: "deb", version: "6.1.0-test", pkg: "vmm-test-no-such-package" };
    writeFileSync(join(cache, "guest.json"), JSON.stringify({ img, source }));
    assert.deepEqual(await currentImage(GUEST, cache), img);
    assert.deepEqual(await ensureDefaultGuest({ cacheDir: cache }), img);
    assert.equal(await currentImage(NESTED, cache), undefined, "another flavour's manifest");

    writeFileSync(join(dir, "stamp"), imageStamp(NESTED));
    assert.equal(await currentImage(GUEST, cache), undefined, "built from other sources");
    writeFileSync(join(dir, "stamp"), imageStamp(GUEST));
    rmSync(img.initrd);
    assert.equal(await currentImage(GUEST, cache), undefined, "a file is missing");
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});
