/**
 * `--share` parsing against real directories (devices/fs/share_option.ts):
 * the tag rules and every one-line ConfigError, also through the kind's CLI.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError } from "../../vm/vm.ts";
import { checkShares, defaultShareTag, FS_TAG_BYTES, parseShareOption, parseShareOptions } from "./share_option.ts";
import { type FsOptions, fsKind } from "./mod.ts";

const isRoot = process.getuid?.() === 0;

/** A temp dir (real path) holding `a/`, `b/a/`, `file`; removed after `fn`. */
function withDirs(fn: (dir: string) => void): void {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), "vmm-share-")));
  try {
    mkdirSync(join(dir, "a"));
    mkdirSync(join(dir, "b/a"), { recursive: true });
    writeFileSync(join(dir, "file"), "x");
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function throwsConfig(fn: () => unknown, message: string | RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    if (typeof message === "string") assert.equal(e.message, message);
    else assert.match(e.message, message);
    assert.ok(!e.message.includes("\n"), "one line");
    return true;
  });
}

test("parseShareOption() takes the directory's real path and its name as the tag", () => {
  withDirs((dir) => {
    assert.deepEqual(parseShareOption(join(dir, "a")), { path: join(dir, "a"), tag: "a", readOnly: false });
    assert.deepEqual(parseShareOption(join(dir, "b/a/../a/")), { path: join(dir, "b/a"), tag: "a", readOnly: false });
    symlinkSync(join(dir, "b/a"), join(dir, "link"));
    assert.deepEqual(parseShareOption(join(dir, "link")), { path: join(dir, "b/a"), tag: "a", readOnly: false });
  });
});

test("parseShareOption() reads tag=, ro (or readonly) and cache= in any order", () => {
  withDirs((dir) => {
    const a = join(dir, "a");
    assert.deepEqual(parseShareOption(`${a},tag=src`), { path: a, tag: "src", readOnly: false });
    assert.deepEqual(parseShareOption(`${a},ro`), { path: a, tag: "a", readOnly: true });
    assert.deepEqual(parseShareOption(`${a},ro,tag=x=y`), { path: a, tag: "x=y", readOnly: true });
    assert.deepEqual(parseShareOption(`${a},cache=always,ro`), { path: a, tag: "a", readOnly: true, cache: "always" });
    assert.deepEqual(parseShareOption(`${a},cache=auto`), { path: a, tag: "a", readOnly: false, cache: "auto" });
    assert.deepEqual(parseShareOption(`${a},readonly,tag=${"t".repeat(FS_TAG_BYTES)}`), { path: a, tag: "t".repeat(36), readOnly: true });
  });
});

test("defaultShareTag() is the last component, and root for /", () => {
  assert.equal(defaultShareTag("/"), "root");
  assert.equal(defaultShareTag("/home/me/src"), "src");
  assert.equal(defaultShareTag("/srv/data/"), "data");
  assert.equal(parseShareOption("/").tag, "root");
});

test("parseShareOption() rejects an empty path, a missing directory and a file", () => {
  withDirs((dir) => {
    throwsConfig(() => parseShareOption(""), "--share : empty path");
    throwsConfig(() => parseShareOption(",ro"), "--share ,ro: empty path");
    throwsConfig(() => parseShareOption(join(dir, "nope")), `--share ${dir}/nope: no such directory`);
    throwsConfig(() => parseShareOption(`${dir}/nope,tag=x`), `--share ${dir}/nope,tag=x: no such directory`);
    throwsConfig(() => parseShareOption(join(dir, "file")), `--share ${dir}/file: not a directory`);
    throwsConfig(() => parseShareOption(join(dir, "file/sub")), `--share ${dir}/file/sub: not a directory`);
    symlinkSync("loop", join(dir, "loop"));
    throwsConfig(() => parseShareOption(join(dir, "loop")), `--share ${dir}/loop: too many levels of symbolic links`);
  });
});

test("parseShareOption() rejects a directory it cannot read", { skip: isRoot && "root reads every directory" }, () => {
  withDirs((dir) => {
    const a = join(dir, "a");
    chmodSync(a, 0o311);
    try {
      throwsConfig(() => parseShareOption(a), `--share ${a}: permission denied (vmm must be able to read the directory)`);
    } finally {
      chmodSync(a, 0o755);
    }
  });
});

test("parseShareOption() rejects bad tags and unknown, repeated or malformed options", () => {
  withDirs((dir) => {
    const a = join(dir, "a");
    throwsConfig(() => parseShareOption(`${a},tag=`), `--share ${a},tag=: empty tag`);
    throwsConfig(() => parseShareOption(`${a},tag`), `--share ${a},tag: option "tag" needs a value (tag=NAME)`);
    throwsConfig(() => parseShareOption(`${a},tag=${"t".repeat(37)}`), /: tag "t{37}" is 37 bytes, virtio-fs allows at most 36$/);
    throwsConfig(() => parseShareOption(`${a},tag=${"é".repeat(19)}`), /is 38 bytes, virtio-fs allows at most 36$/);
    throwsConfig(() => parseShareOption(`${a},tag=a\tb`), /: tag "a\\tb" has a control character$/);
    throwsConfig(() => parseShareOption(`${a},rw`), `--share ${a},rw: unknown option "rw" (tag=NAME, ro and cache=auto|always are known)`);
    throwsConfig(() => parseShareOption(`${a},cache=never`), `--share ${a},cache=never: option "cache" is auto or always, not "never"`);
    throwsConfig(() => parseShareOption(`${a},cache`), `--share ${a},cache: option "cache" is auto or always, not ""`);
    throwsConfig(() => parseShareOption(`${a},ro,readonly`), `--share ${a},ro,readonly: option "ro" given twice`);
    throwsConfig(() => parseShareOption(`${a},ro=1`), `--share ${a},ro=1: option "ro" takes no value`);
    throwsConfig(() => parseShareOption(`${a},,ro`), `--share ${a},,ro: empty option (a stray comma?)`);
  });
});

test("parseShareOption() asks for tag= when the directory's name is too long to be one", () => {
  withDirs((dir) => {
    const long = join(dir, "d".repeat(40));
    mkdirSync(long);
    throwsConfig(() => parseShareOption(long), /: tag "d{40}" is 40 bytes, virtio-fs allows at most 36; name the share with tag=NAME$/);
    assert.equal(parseShareOption(`${long},tag=d`).tag, "d");
  });
});

test("parseShareOptions() refuses two shares with one tag, named or by default", () => {
  withDirs((dir) => {
    throwsConfig(() => parseShareOptions([join(dir, "a"), join(dir, "b/a")]), `--share ${dir}/b/a: tag "a" is already the tag of ${dir}/a`);
    throwsConfig(() => parseShareOptions([`${dir}/a,tag=s`, `${dir}/b,tag=s`]), `--share ${dir}/b: tag "s" is already the tag of ${dir}/a`);
    assert.equal(parseShareOptions([join(dir, "a"), `${dir}/b/a,tag=a2`]).length, 2);
    // One directory twice under two tags is allowed: two devices, two mounts.
    assert.equal(parseShareOptions([`${dir}/a,tag=x`, `${dir}/a,tag=y,ro`]).length, 2);
  });
});

test("checkShares() checks shares a program put in the options itself", () => {
  withDirs((dir) => {
    throwsConfig(() => checkShares([{ path: join(dir, "nope"), tag: "n", readOnly: false }]), `--share ${dir}/nope: no such directory`);
    throwsConfig(() => checkShares([{ path: join(dir, "a"), tag: "", readOnly: false }]), `--share ${dir}/a: empty tag`);
    checkShares([{ path: join(dir, "a"), tag: "a", readOnly: true }]);
  });
});

test("the fs kind's --share puts every share, in order, into o.shares", () => {
  withDirs((dir) => {
    assert.equal(fsKind.cli?.flag, "share");
    assert.equal(fsKind.cli?.multiple, true);
    const o: FsOptions = {};
    fsKind.cli!.apply([`${dir}/a,ro`, `${dir}/b,tag=bee`], o);
    assert.deepEqual(o.shares, [{ path: `${dir}/a`, tag: "a", readOnly: true }, { path: `${dir}/b`, tag: "bee", readOnly: false }]);
    throwsConfig(() => fsKind.cli!.apply([`${dir}/a`, `${dir}/b/a`], {}), /tag "a" is already the tag of/);
  });
});
