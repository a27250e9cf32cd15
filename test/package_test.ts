/**
 * The npm package, as a user gets it: `npm pack` (whose prepack script puts
 * the prebuilt default guest in `guest-image/`), installed offline into an
 * empty directory with `bun add ./vmm-*.tgz`, then `bunx vmm`. Booting it
 * needs real KVM and is in test/e2e/dist_test.ts; here it must start, find
 * its guest without building one (no apt, no root, no network), and stay
 * lean. Deno does not strip types under node_modules, so Deno runs the
 * unpacked tarball instead (README).
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { builtImage } from "../guest/build.ts";
import { type PackedInstall, packAndInstall } from "./support/pack.ts";

const BIN = fileURLToPath(new URL("../node_modules/.bin", import.meta.url));
/** What the package may weigh, packed: the guest is 12.7 MB of it. */
const MAX_PACKED = 16e6;

describe("npm package from a tarball", { skip: builtImage("guest") ? false : "the default guest is not built (bash scripts/setup.sh)" }, () => {
  let dir = "";
  let p: PackedInstall;
  /** A clean environment for the installed vmm: a PATH, and a private TMPDIR as its only cache. */
  let env: Record<string, string> = {};

  /**
   * Packs and installs once, on first use by a test: Bun gives a hook 5 s
   * whatever its options say, and a test the timeout it asks for.
   */
  function setup(): void {
    if (dir) return;
    dir = mkdtempSync(join(tmpdir(), "vmm-package-"));
    p = packAndInstall(dir);
    console.log(`npm pack: ${basename(p.tgz)} ${(p.size / 1e6).toFixed(1)} MB packed, ${(p.unpackedSize / 1e6).toFixed(1)} MB ` +
      `unpacked, ${p.files.length} files; pack ${p.ms.pack} ms, bun add ${p.ms.install} ms`);
    mkdirSync(join(dir, "tmp"));
    env = { PATH: `${BIN}:/usr/bin:/bin`, TMPDIR: join(dir, "tmp") };
  }
  const SLOW = { timeout: 120_000 };
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** `env -i` and then the command: Deno's spawnSync adds an `env` option to the parent's environment. */
  function clean(cmd: string[], cwd: string) {
    const r = spawnSync("env", ["-i", ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...cmd], { cwd, stdio: ["ignore", "pipe", "pipe"] });
    return { status: r.status, out: r.stdout.toString(), err: r.stderr.toString() };
  }

  test("it carries the prebuilt guest and no tests, scripts or checkout files, and is lean", SLOW, () => {
    setup();
    const paths = p.files;
    for (const p of ["bin/vmm.ts", "guest-image/guest.json", "guest-image/vmlinuz.gz", "guest-image/initrd.cpio.gz", "loop/vcpu_worker.ts"]) {
      assert.ok(paths.includes(p), `${p} is missing from the package`);
    }
    assert.deepEqual(paths.filter((p) => /_test\.ts$|^test\/|^scripts\/|^dist\/|^node_modules\//.test(p)), []);
    assert.ok(p.size < MAX_PACKED, `the package weighs ${p.size} bytes packed`);
    // postpack took guest-image/ away again: a checkout builds its own guest.
    assert.ok(p.postpackCleaned, "guest-image/ is still there after npm pack");
  });

  test("bunx vmm --help runs from the installed package", SLOW, () => {
    setup();
    const r = clean(["bunx", "vmm", "--help"], p.app);
    assert.equal(r.status, 0, r.err);
    assert.match(r.out, /^vmm: a KVM virtual machine monitor/);
  });

  test("the installed package finds its packaged guest, unpacking it once with one line on stderr", SLOW, () => {
    setup();
    const find = () => clean(["bun", "node_modules/vmm/guest/default_guest.ts"], p.app);
    const first = find();
    assert.equal(first.status, 0, first.err);
    const g = JSON.parse(first.out);
    assert.equal(g.source, "package");
    assert.ok(g.kernel.startsWith(join(dir, "tmp") + "/"), g.kernel);
    assert.match(first.err, /^vmm: first use: unpacking the default guest \(Linux [^)]*\) into \S+\n$/);
    const again = find();
    assert.deepEqual(JSON.parse(again.out), g);
    assert.equal(again.err, "");
  });

  test("Deno runs vmm from the unpacked tarball and finds the same guest", SLOW, () => {
    setup();
    mkdirSync(join(dir, "deno"));
    execFileSync("tar", ["xzf", p.tgz, "-C", join(dir, "deno"), "--strip-components=1"]);
    const v = clean(["deno", "run", "-A", "bin/vmm.ts", "--version"], join(dir, "deno"));
    assert.equal(v.status, 0, v.err);
    assert.match(v.out, /^vmm \d+\.\d+\.\d+/);
    const r = clean(["deno", "run", "-A", "guest/default_guest.ts"], join(dir, "deno"));
    assert.equal(r.status, 0, r.err);
    assert.equal(JSON.parse(r.out).source, "package");
  });
});
