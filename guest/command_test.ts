/**
 * The files vmm hands the default guest for a command (guest/command.ts),
 * read back by a real sh: arguments and environment values keep every byte,
 * names sh cannot export are dropped, and too much for one exec argument is
 * refused before booting.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  concatInitrd, execScript, type HostRun, hostRunArchive, hostRunShares, MAX_EXEC_SCRIPT, runArchive, runConf, runPayload, shellQuote,
  type HostRunDevices, withHostRun,
} from "./command.ts";
import { settimeOf, stampClock } from "./settime.ts";

const ODD = ["plain", "", "it's", 'a "b" $HOME `id` \\ *', "new\nline", "tab\there", "ünï ☃", "'"];

function plan(over: Partial<HostRun> = {}): HostRun {
  return {
    argv: ["printf", "[%s]"],
    root: "/",
    cwd: "/",
    mounts: [],
    overlays: ["/etc", "/var"],
    env: { PATH: "/usr/bin:/bin" },
    id: { uid: 0, gid: 0, groups: [] },
    ...over,
  };
}

/** What `sh -c SCRIPT` prints, from an empty environment as the guest runs it (`env -i`: the runtimes do not all honour an empty `env` option). */
const sh = (script: string) => execFileSync("env", ["-i", "/bin/sh", "-c", script], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

test("shellQuote() gives sh back every argument unchanged", () => {
  const out = sh(`printf '[%s]' ${ODD.map(shellQuote).join(" ")}`);
  assert.equal(out, ODD.map((a) => `[${a}]`).join(""));
});

test("execScript() runs argv as given, in the directory, with exactly the environment", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-exec-"));
  try {
    const env: Record<string, string> = { PATH: "/usr/bin:/bin", ODD: ODD.join("|"), "not-a-name": "x", "1X": "y" };
    const argv = ["sh", "-c", 'printf "%s\\0" "$PWD" "$ODD" "$@"', "arg0", ...ODD];
    const out = sh(execScript(plan({ argv, cwd: dir, env }))).split("\0");
    assert.deepEqual(out, [dir, ODD.join("|"), ...ODD, ""]);
    // Only what sh itself adds (PWD, maybe SHLVL) joins PATH and ODD; `not-a-name` and `1X` cannot be exported.
    const names = sh(execScript(plan({ argv: ["env", "-0"], env }))).split("\0").map((l) => l.split("=")[0]).filter(Boolean);
    assert.deepEqual(names.filter((n) => !["PWD", "SHLVL", "_", "OLDPWD"].includes(n)).sort(), ["ODD", "PATH"]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("execScript() ends with 125 when the directory is missing, without running the command", () => {
  assert.throws(() => sh(execScript(plan({ argv: ["echo", "ran"], cwd: "/nonexistent-vmm-dir" }))), (e: { status?: number; stdout?: string }) => {
    assert.equal(e.status, 125);
    assert.equal(e.stdout, "");
    return true;
  });
});

test("runConf() gives init the overlays and the mounts as numbered variables", () => {
  const conf = runConf(plan({
    overlays: ["/etc", "/home/o'neil dir"],
    mounts: [{ tag: "vmm.cwd", path: "/w x", at: "/w x" }],
    env: { HOME: "/home/o'neil dir" },
    id: { uid: 1000, gid: 100, groups: [] },
  }));
  const out = sh(`${conf}\nprintf '%s|' "$root_tag" "$uid" "$gid" "$home" "$overlay_n" "$overlay_1" "$mount_n" "$mount_tag_0" "$mount_at_0"`);
  assert.equal(out, "vmm.root|1000|100|/home/o'neil dir|2|/home/o'neil dir|1|vmm.cwd|/w x|");
});

test("hostRunShares() shares the root read-only, cached as cache=always, and every mount read-write", () => {
  const shares = hostRunShares(plan({ root: "/srv/img", mounts: [{ tag: "vmm.cwd", path: "/w", at: "/w" }, { tag: "vmm.rw0", path: "/d", at: "/d" }] }));
  assert.deepEqual(shares, [
    { path: "/srv/img", tag: "vmm.root", readOnly: true, cache: "always" },
    { path: "/w", tag: "vmm.cwd", readOnly: false },
    { path: "/d", tag: "vmm.rw0", readOnly: false },
  ]);
});

test("hostRunArchive() holds only the mark that makes init wait for its command, the same for every command", () => {
  const text = new TextDecoder("latin1").decode(hostRunArchive());
  assert.ok(text.includes("vmm/run.stdin"));
  assert.ok(!text.includes("vmm/run.conf"));
});

test("runPayload() is read back by init's way (dd iflag=fullblock, cpio) exactly, with the host's stdin after it", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-payload-"));
  try {
    const seed = new Uint8Array(64).fill(7);
    const p = runPayload(plan({ argv: ["echo", "it's"] }), 1_000, seed);
    // What the stdin Worker does as it starts sending: the clock becomes the current time.
    stampClock(p.bytes, p.clockAt, 1_796_000_000_123);
    const stdin = new Uint8Array([...p.bytes, ...new TextEncoder().encode("the command's stdin")]);
    // guest/init.sh read_command, with the host's busybox (Debian's busybox-static, as the guest's).
    const script = `set -e; cd "$1"; exec 3<&0
      hdr=$(busybox dd bs=16 count=1 iflag=fullblock <&3 2>/dev/null)
      len=$((0x\${hdr#vmm-cmd1}))
      busybox dd bs="$len" count=1 iflag=fullblock of=command.cpio <&3 2>/dev/null
      busybox cpio -i -d -u <command.cpio 2>/dev/null
      busybox cat <&3 >rest`;
    execFileSync("sh", ["-c", script, "sh", dir], { input: stdin });
    assert.equal(readFileSync(join(dir, "rest"), "utf8"), "the command's stdin");
    assert.match(readFileSync(join(dir, "vmm/exec.sh"), "utf8"), /exec 'echo' 'it'\\''s'\n$/);
    assert.match(readFileSync(join(dir, "vmm/run.conf"), "utf8"), /^root_tag='vmm\.root'$/m);
    assert.deepEqual(new Uint8Array(readFileSync(join(dir, "vmm/seed"))), seed);
    assert.equal(settimeOf(new Uint8Array(readFileSync(join(dir, "vmm/settime")))), 1_796_000_000_123);
    assert.ok(readFileSync(join(dir, "vmm/setids")).length > 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("runPayload() refuses more than one exec argument holds", () => {
  assert.throws(() => runPayload(plan({ env: { BIG: "x".repeat(MAX_EXEC_SCRIPT) } })), /at most \d+ fit in one exec argument/);
});

test("withHostRun() adds the run's shares and puts its command ahead of stdin; without a stdio device it refuses", () => {
  const stdio = { inFd: 0, outFd: 1, errFd: 2 };
  const o: HostRunDevices = withHostRun({ hostRun: plan(), shares: [{ path: "/x", tag: "mine", readOnly: true }], stdio });
  assert.deepEqual(o.shares?.map((s) => s.tag), ["mine", "vmm.root"]);
  assert.equal(new TextDecoder().decode(o.stdio?.stdinPrefix?.subarray(0, 8)), "vmm-cmd1");
  assert.ok((o.stdio?.stdinClockAt ?? 0) > 16);
  assert.throws(() => withHostRun({ hostRun: plan() }), /needs the stdio device/);
  const plain = { shares: [] };
  assert.equal(withHostRun(plain), plain);
});

test("runArchive() holds run.sh with the command quoted", () => {
  const text = new TextDecoder().decode(runArchive(["echo", "it's"]));
  assert.ok(text.includes("vmm/run.sh"));
  assert.ok(text.includes(`'echo' 'it'\\''s'\n`));
});

test("concatInitrd() starts the second archive 4-byte aligned and pads the whole to 4 KiB pages with zeros", () => {
  const a = new Uint8Array(4097).fill(1), b = new Uint8Array(10).fill(2);
  const out = concatInitrd(a, b);
  assert.equal(out.length, 8192); // QEMU 10 loses the tail of a partial last page
  assert.deepEqual(out.subarray(0, 4097), a);
  assert.deepEqual([...out.subarray(4097, 4100)], [0, 0, 0]);
  assert.deepEqual(out.subarray(4100, 4110), b);
  assert.ok(out.subarray(4110).every((x) => x === 0));
  assert.equal(concatInitrd(new Uint8Array(4000), new Uint8Array(96)).length, 4096);
});
