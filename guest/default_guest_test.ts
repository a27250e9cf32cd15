/**
 * guest/default_guest.ts: the lookup order embedded → package → checkout →
 * error, each step with a scratch tree standing in for the real place; and
 * once for real, in an executable compiled with the guest embedded.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import process from "node:process";
import { checkoutGuest, findDefaultGuest, guestImageDirs } from "./default_guest.ts";
import { writePackagedGuest } from "./packaged.ts";
import { builtImage, ensureDefaultGuest } from "./build.ts";
import { currentImage, GUEST } from "./image_cache.ts";
import { buildExe } from "../scripts/build-exe.ts";
import { graph } from "../test/support/module_graph.ts";

/** A package tree: `<dir>/pkg/guest/default_guest.ts`'s URL, and a fake image to pack. */
function tree(): { dir: string; moduleUrl: string; img: { kernel: string; initrd: string; kernelVersion: string } } {
  const dir = mkdtempSync(join(tmpdir(), "vmm-default-guest-"));
  mkdirSync(join(dir, "pkg", "guest"), { recursive: true });
  writeFileSync(join(dir, "vmlinuz"), "a kernel");
  writeFileSync(join(dir, "initrd.cpio"), "an initramfs");
  const img = { kernel: join(dir, "vmlinuz"), initrd: join(dir, "initrd.cpio"), kernelVersion: "6.1.0-test" };
  return { dir, moduleUrl: pathToFileURL(join(dir, "pkg", "guest", "default_guest.ts")).href, img };
}

const noBuild = () => Promise.reject(new Error("the checkout build must not run"));

test("guestImageDirs() looks beside the bundle in an executable and at the package root otherwise", () => {
  assert.deepEqual(guestImageDirs("file:///$bunfs/root/vmm"), [{ dir: "/$bunfs/root/guest-image", source: "embedded" }]);
  assert.deepEqual(guestImageDirs("file:///opt/node_modules/vmm/guest/default_guest.ts"), [
    { dir: "/opt/node_modules/vmm/guest-image", source: "package" },
  ]);
});

test("what findDefaultGuest() runs on every start loads no node: module before its code runs", () => {
  const g = graph("guest/default_guest.ts");
  const node = [...g].flatMap(([file, specs]) => specs.filter((s) => s.startsWith("node:")).map((s) => `${file} imports ${s}`));
  assert.deepEqual(node, []);
  // The fast paths' modules are in the graph; the ones that unpack and build are imported when there is that to do.
  for (const m of ["guest/image_cache.ts", "guest/unpacked.ts", "ffi/sha256.ts"]) assert.ok(g.has(m), m);
  for (const m of ["guest/build.ts", "guest/packaged.ts"]) assert.ok(!g.has(m), m);
});

test("findDefaultGuest() takes a packaged guest before building anything, and unpacks it once", async () => {
  const { dir, moduleUrl, img } = tree();
  try {
    writePackagedGuest(img, join(dir, "pkg", "guest-image"));
    const lines: string[] = [];
    const opts = { moduleUrl, roots: [join(dir, "cache")], build: noBuild, onUnpack: (l: string) => void lines.push(l) };
    const g = await findDefaultGuest(opts);
    assert.equal(g.source, "package");
    assert.ok(g.kernel.startsWith(join(dir, "cache") + "/"));
    assert.equal(lines.length, 1);
    // Unpacked: found by guest.json alone (the compressed files are not read, so not needed) and said nothing.
    rmSync(join(dir, "pkg", "guest-image", "vmlinuz.gz"));
    rmSync(join(dir, "pkg", "guest-image", "initrd.cpio.gz"));
    assert.deepEqual(await findDefaultGuest(opts), g);
    assert.equal(lines.length, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("in a checkout with a current image, findDefaultGuest() finds what ensureDefaultGuest() returns", { timeout: 600_000 }, async (t) => {
  if (!builtImage("guest")) return t.skip("the default guest is not built (bash scripts/setup.sh)");
  const { dir, moduleUrl } = tree();
  try {
    // Builds once if this checkout's sources changed since the cache's image was built.
    const img = await ensureDefaultGuest();
    assert.deepEqual(await currentImage(GUEST), img);
    assert.deepEqual(await checkoutGuest(), img);
    assert.deepEqual(await findDefaultGuest({ moduleUrl }), { ...img, source: "checkout" });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("findDefaultGuest() builds in the checkout when nothing is packaged", async () => {
  const { dir, moduleUrl, img } = tree();
  try {
    let logged: unknown;
    const g = await findDefaultGuest({ moduleUrl, log: console.log, build: (log) => ((logged = log), Promise.resolve(img)) });
    assert.deepEqual(g, { ...img, source: "checkout" });
    assert.equal(logged, console.log);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("findDefaultGuest() in an executable without a guest uses a built one, else says what to do", async () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-default-guest-"));
  const saved = process.env.VMM_CACHE;
  try {
    process.env.VMM_CACHE = join(dir, "empty-cache");
    await assert.rejects(
      findDefaultGuest({ moduleUrl: "file:///$bunfs/root/vmm", build: noBuild }),
      /^Error: This executable carries no default guest and none is built in .*empty-cache: pass --kernel/,
    );
  } finally {
    if (saved === undefined) delete process.env.VMM_CACHE;
    else process.env.VMM_CACHE = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an executable from scripts/build-exe.ts finds its embedded guest, alone in a clean environment", { timeout: 120_000 }, (t) => {
  const img = builtImage("guest");
  if (!img) return t.skip("the default guest is not built (bash scripts/setup.sh)");
  const dir = mkdtempSync(join(tmpdir(), "vmm-exe-guest-"));
  try {
    // This module as the entry: its main prints the guest it finds, as JSON.
    const built = buildExe(join(dir, "built"), { entry: "guest/default_guest.ts" });
    mkdirSync(join(dir, "alone"));
    copyFileSync(built, join(dir, "alone", "exe"));
    rmSync(built);
    mkdirSync(join(dir, "tmp"));
    const run = () => {
      // `env -i` itself: Deno's spawnSync adds an `env` option to the parent's environment.
      const args = ["-i", `TMPDIR=${join(dir, "tmp")}`, join(dir, "alone", "exe")];
      const r = spawnSync("env", args, { cwd: join(dir, "alone"), stdio: ["ignore", "pipe", "pipe"] });
      assert.equal(r.status, 0, String(r.stderr));
      return { g: JSON.parse(r.stdout.toString()), err: r.stderr.toString() };
    };
    const first = run();
    assert.equal(first.g.source, "embedded");
    assert.equal(first.g.kernelVersion, img.kernelVersion);
    assert.ok(first.g.kernel.startsWith(join(dir, "tmp") + "/vmm-"), first.g.kernel);
    // First use says so in one line; the second run finds the unpacked guest and says nothing.
    assert.match(first.err, /^vmm: first use: unpacking the default guest \(Linux [^)]*\) into \S+\n$/);
    const second = run();
    assert.deepEqual(second.g, first.g);
    assert.equal(second.err, "");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
