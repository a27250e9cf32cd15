/**
 * ffi/sys.ts against Node's own modules (which the tests may load: they are
 * not on a boot's path), and the promise it exists for: nothing `vmm boot`,
 * `vmm run` or a library's `import "mod.ts"` loads at start names a `node:` module
 * (the Workers' graphs: loop/workers_test.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { tmpdir as nodeTmpdir } from "node:os";
import { fileURLToPath as nodeFileURLToPath } from "node:url";
import * as sys from "./sys.ts";
import { close, O_RDONLY, open } from "./libc.ts";
import { fileExtents, hasHoles } from "../test/support/holes.ts";
import { graph } from "../test/support/module_graph.ts";

function withDir(f: (dir: string) => void): void {
  const dir = fs.mkdtempSync(path.join(nodeTmpdir(), "vmm-sys-"));
  try {
    f(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test("join() and normalize() give what node:path gives", () => {
  const joins = [["/a", "b", "../c"], ["a", "", "b/"], ["/", ".."], ["", ""], ["a/..", ".."], ["/x//y/", "./z"], ["rel", "../../up"], ["/a/b", "/c"]];
  for (const p of joins) assert.equal(sys.join(...p), path.join(...p), JSON.stringify(p));
  for (const p of ["/a/b/c", "/a/b/", "a", "/", "a/b", "//a", "", "/a//b//"]) {
    assert.equal(sys.normalize(p), path.normalize(p), `normalize ${JSON.stringify(p)}`);
  }
  assert.equal(sys.isAbsolute("/x"), true);
  assert.equal(sys.isAbsolute("x/y"), false);
});

test("statSync() and fstatSync() read what node:fs's statSync reads; a missing file throws ENOENT", () => {
  withDir((dir) => {
    const f = path.join(dir, "f");
    fs.writeFileSync(f, new Uint8Array(1234));
    const want = fs.statSync(f);
    const fd = open(f, O_RDONLY);
    try {
      for (const got of [sys.statSync(f), sys.fstatSync(fd)]) {
        assert.equal(got.size, 1234);
        assert.equal(got.dev, want.dev);
        assert.equal(got.ino, want.ino);
        assert.equal(got.mode, want.mode);
        assert.equal(got.uid, want.uid);
        assert.equal(Math.trunc(got.mtimeMs), Math.trunc(want.mtimeMs));
        assert.deepEqual([got.isFile, got.isDirectory], [true, false]);
      }
    } finally {
      close(fd);
    }
    assert.deepEqual([sys.statSync(dir).isFile, sys.statSync(dir).isDirectory], [false, true]);
    assert.throws(() => sys.statSync(path.join(dir, "missing")), (e: { code?: string }) => e.code === "ENOENT");
  });
});

test("files and directories: made, written, read, listed, renamed, touched and removed", () => {
  withDir((dir) => {
    const deep = sys.join(dir, "a", "b", "c");
    sys.mkdirSync(deep, { recursive: true });
    assert.equal(sys.existsSync(deep), true);
    assert.equal(sys.access(deep, sys.W_OK), true);
    sys.writeFileSync(sys.join(deep, "x"), new TextEncoder().encode("hello\n"));
    assert.equal(sys.readTextFileSync(sys.join(deep, "x")), "hello\n");
    assert.deepEqual([...sys.readFileSync(sys.join(deep, "x"))], [...new TextEncoder().encode("hello\n")]);
    sys.renameSync(sys.join(deep, "x"), sys.join(deep, "y"));
    assert.deepEqual(sys.readdirSync(deep), ["y"]);
    const then = new Date(1_000_000_000_000);
    sys.utimesSync(deep, then, then);
    assert.equal(fs.statSync(deep).mtimeMs, 1_000_000_000_000);
    sys.rmSync(sys.join(dir, "a"), { recursive: true, force: true });
    assert.equal(sys.existsSync(sys.join(dir, "a")), false);
    sys.rmSync(sys.join(dir, "a"), { recursive: true, force: true }); // gone already: no error with force
    assert.throws(() => sys.rmSync(sys.join(dir, "a")), (e: { code?: string }) => e.code === "ENOENT");
    assert.throws(() => sys.mkdirSync(sys.join(dir, "no", "parent")), (e: { code?: string }) => e.code === "ENOENT");
  });
});

test("symbolic links, real paths, a file's first bytes and truncation, as node:fs gives them", () => {
  withDir((dir) => {
    const f = sys.join(dir, "f"), link = sys.join(dir, "l"), sub = sys.join(dir, "sub");
    fs.writeFileSync(f, "0123456789");
    fs.symlinkSync("f", link);
    fs.mkdirSync(sub);
    const l = sys.lstatSync(link), t = sys.lstatSync(f);
    assert.deepEqual([l.isSymbolicLink, l.isFile, t.isSymbolicLink, t.isFile], [true, false, false, true]);
    assert.equal(sys.lstatSync(link).ino, fs.lstatSync(link).ino);
    assert.equal(sys.readlinkSync(link), "f");
    assert.equal(sys.realpathSync(sys.join(sub, "..", "l")), fs.realpathSync(f));
    assert.throws(() => sys.realpathSync(sys.join(dir, "missing")), (e: { code?: string }) => e.code === "ENOENT");
    assert.throws(() => sys.realpathSync(sys.join(f, "x")), (e: { code?: string }) => e.code === "ENOTDIR");
    assert.deepEqual(new TextDecoder().decode(sys.readHead(link, 4)), "0123");
    assert.deepEqual(new TextDecoder().decode(sys.readHead(f, 100)), "0123456789", "a file shorter than asked");
    sys.truncateSync(f, 3);
    assert.equal(fs.readFileSync(f, "utf8"), "012");
    sys.truncateSync(f, 5000);
    assert.equal(fs.statSync(f).size, 5000);
    assert.equal(sys.cwd(), process.cwd());
  });
});

test("resolve() and dirname() give what node:path gives", () => {
  for (const p of [["a"], ["/x", "y/../z"], ["/x", "/y", "z/"], [".."], ["", "a"], ["/"], ["a/", "./b/."]]) {
    assert.equal(sys.resolve(...p), path.resolve(...p), JSON.stringify(p));
  }
  for (const p of ["/a/b", "/a/b/", "/a", "/", "a", "a/b", "."]) assert.equal(sys.dirname(p), path.dirname(p), p);
});

test("fileURLToPath() gives what node:url gives for file: URLs, escapes and Bun's /$bunfs/ included", () => {
  for (const u of ["file:///a/b.ts", "file:///with%20space/x", "file:///%24bunfs/root/guest-image", "file:///$bunfs/root/x"]) {
    assert.equal(sys.fileURLToPath(new URL(u)), nodeFileURLToPath(new URL(u)), u);
  }
});

test("env(), args(), tmpdir() and uid(): the process's own", () => {
  assert.equal(sys.env().PATH, process.env.PATH);
  assert.ok(Array.isArray(sys.args()));
  assert.equal(sys.uid(), process.getuid!());
  assert.equal(sys.pid(), process.pid);
  assert.equal(sys.tmpdir({ TMPDIR: "/var/tmp/" }), "/var/tmp");
  assert.equal(sys.tmpdir({}), "/tmp");
});

test("vmm boot's and vmm run's modules, and mod.ts's, load no node: module before their code runs", () => {
  // bin/vmm.ts, cli/main.ts and mod.ts at start; then what `vmm run` imports when it
  // runs (bin/vmm.ts's dynamic imports): the root's checks, the run cache,
  // snapshots, and the default guest's search. Building or unpacking a
  // guest, and a kernel-cache miss, may load them: they are rare and slow anyway.
  for (const entry of ["bin/vmm.ts", "cli/main.ts", "mod.ts", "guest/root.ts", "loop/run_cache.ts", "loop/snapshot.ts", "guest/default_guest.ts"]) {
    const g = graph(entry);
    assert.ok(g.size > 1, `${entry}: its graph was read (${g.size} modules)`);
    const node = [...g].flatMap(([file, specs]) => specs.filter((s) => s.startsWith("node:")).map((s) => `${file} imports ${s}`));
    assert.deepEqual(node, [], entry);
  }
  // The walk sees a module that does import one.
  assert.ok(graph("guest/build.ts").get("guest/build.ts")?.includes("node:child_process"));
});

test("nonZeroRuns() gives the whole pages that hold any data, adjacent ones merged, the last cut at the data's end", () => {
  const page = 4096;
  const d = new Uint8Array(5 * page + 100);
  assert.deepEqual(sys.nonZeroRuns(d), [], "all zeros");
  d[page + 7] = 1; // page 1
  d[2 * page] = 2; // page 2, next to it
  d[5 * page + 99] = 3; // the short last page
  assert.deepEqual(sys.nonZeroRuns(d), [[page, 3 * page], [5 * page, 5 * page + 100]]);
  // A view that starts off an 8-byte boundary takes the byte-by-byte way, with the same answer.
  const odd = new Uint8Array(d.length + 3);
  odd.set(d, 3);
  assert.deepEqual(sys.nonZeroRuns(odd.subarray(3)), [[page, 3 * page], [5 * page, 5 * page + 100]]);
  assert.deepEqual(sys.nonZeroRuns(new Uint8Array(0)), []);
});

test("writeSparseFileSync() writes what reads back the same, its zero pages holes where the file system has them; it replaces a longer file", () => {
  withDir((dir) => {
    const f = path.join(dir, "vmlinux"), MiB = 1024 * 1024;
    fs.writeFileSync(f, new Uint8Array(8 * MiB).fill(0x55)); // longer, and no holes: all of it must go
    const d = new Uint8Array(4 * MiB + 10);
    d.fill(0xaa, 0, 4096);
    d.fill(0xbb, 3 * MiB, 3 * MiB + 5);
    d[d.length - 1] = 0xcc;
    sys.writeSparseFileSync(f, d);
    assert.deepEqual(new Uint8Array(fs.readFileSync(f)), d);
    // A file system without holes reports all of a file as data: then there is nothing more to check.
    if (hasHoles(dir)) {
      assert.deepEqual(fileExtents(f), [[0, 4096], [3 * MiB, 3 * MiB + 4096], [4 * MiB, d.length]]);
      assert.ok(fs.statSync(f).blocks * 512 < MiB, `${fs.statSync(f).blocks} blocks for 12 KiB of data`);
    }
  });
});
