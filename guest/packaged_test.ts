/**
 * guest/packaged.ts: a packaged guest is written, unpacked once into a
 * trusted cache keyed by its hash, and refused when damaged.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { findUnpacked, readPackagedManifest, unpackedName, unpackGuest, writePackagedGuest } from "./packaged.ts";
import { cacheRoots } from "../loop/cache_entries.ts";

/** A scratch directory with a fake kernel and initramfs (the format does not look inside). */
function scratch(): { dir: string; img: { kernel: string; initrd: string; kernelVersion: string } } {
  const dir = mkdtempSync(join(tmpdir(), "vmm-packaged-"));
  const kernel = join(dir, "vmlinuz");
  const initrd = join(dir, "initrd.cpio");
  writeFileSync(kernel, new Uint8Array(100_000).map((_, i) => i % 251));
  writeFileSync(initrd, "070701 an initramfs, or so it says\n".repeat(100));
  return { dir, img: { kernel, initrd, kernelVersion: "6.1.0-test" } };
}

test("writePackagedGuest() then unpackGuest() gives the same files, unpacked once", () => {
  const { dir, img } = scratch();
  try {
    const m = writePackagedGuest(img, join(dir, "guest-image"));
    assert.deepEqual(readdirSync(join(dir, "guest-image")).sort(), ["guest.json", "initrd.cpio.gz", "vmlinuz.gz"]);
    assert.equal(m.kernel.size, 100_000);
    const lines: string[] = [];
    const roots = [join(dir, "cache")];
    const got = unpackGuest(join(dir, "guest-image"), { roots, onUnpack: (l) => void lines.push(l) });
    assert.equal(got.kernel, join(dir, "cache", unpackedName(m), "vmlinuz"));
    assert.deepEqual(readFileSync(got.kernel), readFileSync(img.kernel));
    assert.deepEqual(readFileSync(got.initrd), readFileSync(img.initrd));
    assert.equal(got.kernelVersion, "6.1.0-test");
    assert.equal(lines.length, 1);
    assert.match(lines[0], /^first use: unpacking the default guest \(Linux 6\.1\.0-test, 0 MB\) into /);
    // The second time finds it: no line, and nothing but the unpacked directory in the cache.
    assert.deepEqual(unpackGuest(join(dir, "guest-image"), { roots, onUnpack: (l) => void lines.push(l) }), got);
    assert.equal(lines.length, 1);
    assert.deepEqual(readdirSync(join(dir, "cache")), [unpackedName(m)]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("findUnpacked() finds an unpacked guest in a root it trusts, by name and sizes, and nothing before", () => {
  const { dir, img } = scratch();
  try {
    const m = writePackagedGuest(img, join(dir, "guest-image"));
    const [a, b] = [join(dir, "a"), join(dir, "b")];
    assert.equal(findUnpacked(m, [a, b]), undefined);
    const got = unpackGuest(join(dir, "guest-image"), { roots: [b] });
    assert.deepEqual(findUnpacked(m, [a, b]), got);
    // A root that another user could write to is not trusted, even with our image in it.
    chmodSync(b, 0o777);
    assert.equal(findUnpacked(m, [a, b]), undefined);
    chmodSync(b, 0o700);
    // A file cut short (a full disk, say) is not the image.
    writeFileSync(got.initrd, "short");
    assert.equal(findUnpacked(m, [b]), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("unpackedName() changes when either file changes", () => {
  const { dir, img } = scratch();
  try {
    const a = unpackedName(writePackagedGuest(img, join(dir, "a")));
    writeFileSync(img.initrd, "another initramfs");
    const b = unpackedName(writePackagedGuest(img, join(dir, "b")));
    assert.notEqual(a, b);
    assert.match(a, /^guest-[0-9a-f]{16}$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("unpackGuest() skips a cache root it cannot use or trust and takes the next", () => {
  const { dir, img } = scratch();
  try {
    writePackagedGuest(img, join(dir, "guest-image"));
    const notDir = join(dir, "a-file");
    writeFileSync(notDir, "");
    const open = join(dir, "world-writable");
    mkdirSync(open);
    chmodSync(open, 0o777); // as /tmp/vmm-0 would be if someone else had made it for us
    const good = join(dir, "good");
    const got = unpackGuest(join(dir, "guest-image"), { roots: [notDir, open, good] });
    assert.ok(got.kernel.startsWith(good + "/"));
    assert.deepEqual(readdirSync(open), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("unpackGuest() skips a root where nothing can be written (a read-only cache) and takes the next", () => {
  const { dir, img } = scratch();
  try {
    writePackagedGuest(img, join(dir, "guest-image"));
    // /proc/sys: a real directory owned by root where even root cannot make one (the
    // EROFS of a read-only cache, as in the nested host, is met end to end in boot_test.ts).
    const good = join(dir, "good");
    const got = unpackGuest(join(dir, "guest-image"), { roots: ["/proc/sys", good] });
    assert.ok(got.kernel.startsWith(good + "/"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("unpackGuest() names every root it tried when none works", () => {
  const { dir, img } = scratch();
  try {
    writePackagedGuest(img, join(dir, "guest-image"));
    writeFileSync(join(dir, "f"), "");
    assert.throws(
      () => unpackGuest(join(dir, "guest-image"), { roots: [join(dir, "f"), join(dir, "f", "sub")] }),
      (e: Error) => /^Cannot unpack the default guest: .*\/f: .*\/f\/sub: ENOTDIR$/.test(e.message) && !e.message.includes("\n"),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("unpackGuest() refuses a damaged file, names it, and leaves no partial image", () => {
  const { dir, img } = scratch();
  try {
    writePackagedGuest(img, join(dir, "guest-image"));
    writeFileSync(join(dir, "guest-image", "initrd.cpio.gz"), gzipSync(new TextEncoder().encode("not the initramfs")));
    assert.throws(
      () => unpackGuest(join(dir, "guest-image"), { roots: [join(dir, "cache")] }),
      /initrd\.cpio\.gz: content does not match guest\.json/,
    );
    assert.deepEqual(readdirSync(join(dir, "cache")), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("readPackagedManifest() is undefined without guest.json and names a bad one", () => {
  const { dir, img } = scratch();
  try {
    assert.equal(readPackagedManifest(dir), undefined);
    const gi = join(dir, "guest-image");
    writePackagedGuest(img, gi);
    const good = JSON.parse(readFileSync(join(gi, "guest.json"), "utf8"));
    writeFileSync(join(gi, "guest.json"), JSON.stringify({ ...good, format: 99 }));
    assert.throws(() => readPackagedManifest(gi), /guest\.json: format 99, this vmm reads format 1$/);
    writeFileSync(join(gi, "guest.json"), JSON.stringify({ ...good, kernel: { file: "vmlinuz.gz" } }));
    assert.throws(() => readPackagedManifest(gi), /guest\.json: a file entry lacks its file, sha256 or size$/);
    writeFileSync(join(gi, "guest.json"), "{");
    assert.throws(() => readPackagedManifest(gi), /guest\.json: /);
    assert.ok(existsSync(gi));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("cacheRoots() puts VMM_CACHE, XDG and HOME first and a temporary directory last", () => {
  const last = (r: string[]) => r[r.length - 1];
  const all = cacheRoots({ VMM_CACHE: "/v", XDG_CACHE_HOME: "/x", HOME: "/h" });
  assert.deepEqual(all.slice(0, 3), ["/v", "/x/vmm", "/h/.cache/vmm"]);
  assert.match(last(all), /\/vmm-\w+$/);
  // `env -i` or an empty HOME: only the temporary directory; a relative XDG_CACHE_HOME is ignored (XDG spec).
  assert.deepEqual(cacheRoots({}), [last(all)]);
  assert.deepEqual(cacheRoots({ HOME: "", XDG_CACHE_HOME: "rel" }), [last(all)]);
});
