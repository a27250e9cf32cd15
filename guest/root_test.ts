/**
 * The host's side of `vmm run` over a root (guest/root.ts), on small trees
 * built in a temporary directory: paths resolve as the guest will see them,
 * a root without a shell or its loader is one line naming `--root`, and the
 * plan shares and overlays what it should.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkRunRoot, elfInterp, planHostRun, resolveIn } from "./root.ts";
import { setidsElf } from "./setids.ts";
import { ConfigError } from "../vm/vm.ts";

const top = mkdtempSync(join(tmpdir(), "vmm-root-"));
after(() => rmSync(top, { recursive: true, force: true }));
let n = 0;
/** A fresh directory holding `files` (path → "dir", a "-> target" symlink, or contents). */
function tree(files: Record<string, string | Uint8Array>): string {
  const root = join(top, String(n++));
  mkdirSync(root);
  for (const [p, v] of Object.entries(files)) {
    const at = join(root, p);
    mkdirSync(join(at, ".."), { recursive: true });
    if (v === "dir") mkdirSync(at, { recursive: true });
    else if (typeof v === "string" && v.startsWith("-> ")) symlinkSync(v.slice(3), at);
    else writeFileSync(at, v, { mode: 0o755 });
  }
  return root;
}
const STATIC_SH = setidsElf({ uid: 0, gid: 0, groups: [] }); // any static ELF stands in for a shell here
const id = { uid: 0, gid: 0, groups: [] };

test("resolveIn() follows symlinks inside the root: absolute ones from the root, and `..` stops there", () => {
  const r = tree({ "usr/bin/dash": "x", "bin": "-> usr/bin", "usr/bin/sh": "-> /usr/bin/dash", "up": "-> ../../..", "loop": "-> loop" });
  assert.equal(resolveIn(r, "/bin/sh"), "/usr/bin/dash");
  assert.equal(resolveIn(r, "/up/usr/bin/sh"), "/usr/bin/dash", "`..` above the root stays at the root");
  assert.equal(resolveIn(r, "/../../usr/./bin"), "/usr/bin");
  assert.equal(resolveIn(r, "/nope/sh"), null);
  assert.equal(resolveIn(r, "/loop"), null, "a loop ends");
});

test("elfInterp() reads PT_INTERP of a dynamic ELF, \"\" for a static one, null for other files", () => {
  assert.equal(elfInterp(STATIC_SH), "");
  assert.equal(elfInterp(new TextEncoder().encode("#!/bin/sh\n".padEnd(100))), null);
  const dyn = new Uint8Array(readFileSync("/bin/sh").subarray(0, 4096));
  assert.match(elfInterp(dyn) ?? "", /^\/lib.*\/ld-linux-x86-64\.so\.2$/);
});

test("checkRunRoot() names the option and what is missing, in one line", () => {
  const fails = (root: string, why: string) => assert.throws(() => checkRunRoot(root, `--root ${root}`), (e: Error) => {
    assert.ok(e instanceof ConfigError);
    assert.equal(e.message, `--root ${root}: ${why}`);
    return true;
  });
  fails(join(top, "missing"), "no such directory");
  const empty = tree({});
  fails(empty, "no /bin/sh");
  fails(tree({ "bin/sh": "-> /bin/dash" }), "no /bin/sh"); // a dangling link, even though the host has /bin/dash
  const dyn = tree({});
  mkdirSync(join(dyn, "bin"));
  copyFileSync("/bin/sh", join(dyn, "bin/sh"));
  fails(dyn, `no dynamic loader: /bin/sh needs ${elfInterp(new Uint8Array(readFileSync("/bin/sh").subarray(0, 4096)))}`);
  checkRunRoot(tree({ "bin/busybox": STATIC_SH, "bin/sh": "-> busybox" }), "--root tiny");
  checkRunRoot("/", "the host root /");
});

test("planHostRun() over the host's root: the cwd read-write at its path, /etc, /var and HOME over tmpfs", () => {
  const cwd = tree({ "sub": "dir" });
  const p = planHostRun({ argv: ["true"], cwd, rw: [join(cwd, "sub"), cwd], env: { HOME: cwd, "a-b": "x", A: "1" }, id });
  assert.equal(p.root, "/");
  assert.equal(p.cwd, cwd);
  assert.deepEqual(p.mounts, [
    { tag: "vmm.cwd", path: cwd, at: cwd },
    { tag: "vmm.rw0", path: join(cwd, "sub"), at: join(cwd, "sub") },
  ]);
  assert.deepEqual(p.overlays.slice(0, 2), ["/etc", "/var"]);
  assert.deepEqual(p.env, { HOME: cwd, A: "1", PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" });
});

test("planHostRun() over --root: the cwd is shared only where the root has it or a tmpfs is; --rw must have a place", () => {
  const root = tree({ "bin/sh": STATIC_SH, "etc": "dir" });
  // This checkout's guest/ is not in that root (unless the checkout is under /tmp or /run, where a tmpfs can hold it).
  const cwd = realpathSync(fileURLToPath(new URL(".", import.meta.url)));
  const onTmpfs = /^\/(tmp|run)\//.test(cwd);
  const p = planHostRun({ argv: ["true"], root, cwd, env: {}, id });
  assert.equal(p.cwd, onTmpfs ? cwd : "/", "the root has no such directory: start in /");
  assert.deepEqual(p.mounts, onTmpfs ? [{ tag: "vmm.cwd", path: cwd, at: cwd }] : []);
  assert.deepEqual(p.overlays, ["/etc"], "only what the root has");
  const inTmp = planHostRun({ argv: ["true"], root, cwd: top, env: {}, id });
  assert.deepEqual(inTmp.mounts, [{ tag: "vmm.cwd", path: top, at: top }], "a directory under /tmp can always be made");
  if (!onTmpfs) {
    assert.throws(() => planHostRun({ argv: ["true"], root, cwd: "/", rw: [cwd], env: {}, id }), {
      message: `--rw ${cwd}: the root ${root} has no directory ${cwd} to mount it on`,
    });
  }
});

test("planHostRun() refuses a missing --rw, a file and the root itself, naming the option", () => {
  const file = join(tree({ f: "x" }), "f");
  const msg = (rw: string) => {
    try {
      planHostRun({ argv: ["true"], rw: [rw], env: {}, id });
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      return e.message;
    }
    return "no error";
  };
  assert.equal(msg("/nonexistent-vmm-dir"), "--rw /nonexistent-vmm-dir: no such directory");
  assert.equal(msg(file), `--rw ${file}: not a directory`);
  assert.equal(msg("/"), "--rw /: the root stays read-only; share a directory below it");
});
