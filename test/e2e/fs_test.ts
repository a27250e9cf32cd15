/**
 * End to end: `--share` directories over virtio-fs, served by vmm, mounted
 * by Debian's stock cloud kernel on real KVM.
 *
 * Like blk_test.ts, one shell script runs every scenario in turn, directly
 * where /dev/kvm is hardware KVM and inside the nested KVM host of
 * test/support/nested.ts elsewhere, and plays the host's part: it fills the
 * shares before a guest sees them and reads them back after. Each scenario
 * prints `@@fs NAME rc=N s=SECONDS`, then `@@NAME.out` (the guest console),
 * `@@NAME.err` (vmm's stderr) and `@@NAME.host` lines.
 *
 * A guest boot costs about half a minute under nested KVM, so one VM does
 * everything one VM can show (`one`: reads, writes, directory ops, 8 MiB
 * both ways, escapes, a read-only share); `two` runs two VMs on one
 * directory at once; `cli` boots nothing. The shares live in the nested
 * host's /tmp (its own tmpfs), or in a temporary directory on a hardware host.
 *
 * The command runs in the default guest's busybox initramfs, as root, with
 * the console as its output: `vmm run --busybox` where vmm has that flag
 * (`vmm run` alone runs over the host's root there), plain `vmm run` before.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { e2eTier } from "../support/tier.ts";
import { field, type Outcome, parseScenarios, shaOf, showOutcome } from "../support/scenarios.ts";
import { runNested } from "../support/nested.ts";
import { defaultCacheDir, ensureDefaultGuest } from "../../guest/build.ts";
import { isDeno } from "../../ffi/runtime.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const RUNTIME = isDeno ? "deno" : "bun";
const VMM = process.env.VMM_E2E_VMM || (isDeno ? "deno run -A --no-check bin/vmm.ts" : "bun bin/vmm.ts");
/** 8 MiB: many 1 MiB FUSE READs and WRITEs, each straight between guest RAM and the host file. */
const BIG = 8 * 1024 * 1024;

/** The guest's side of `one`: each line `key=value`, for the test to check one at a time. */
const ONE_GUEST = `
mkdir -p /mnt/t /mnt/r
mount -t virtiofs t /mnt/t && echo mounted-t=yes
mount -t virtiofs r /mnt/r && echo mounted-r=yes
echo "fstype=$(grep ' /mnt/t ' /proc/mounts | cut -d' ' -f3)"
sha256sum /mnt/t/host.bin
echo "hello=$(cat /mnt/t/hello.txt)"
echo guest-wrote-42 >/mnt/t/from-guest.txt && echo wrote=yes
head -c ${BIG} /dev/urandom >/mnt/t/big.bin && echo 3 >/proc/sys/vm/drop_caches && sha256sum /mnt/t/big.bin
mkdir /mnt/t/d && echo moved >/mnt/t/d/a && mv /mnt/t/d/a /mnt/t/d/b && echo "renamed=$(cat /mnt/t/d/b)"
echo doomed >/mnt/t/doomed && rm /mnt/t/doomed && mkdir /mnt/t/gone && rmdir /mnt/t/gone && echo "ls=$(ls /mnt/t | tr '\\n' ' ')"
cat /mnt/t/out-link >/dev/null 2>&1 && echo rel-link=read || echo rel-link=refused
cat /mnt/t/../guard/secret >/dev/null 2>&1 && echo dotdot=read || echo dotdot=refused
cat /mnt/t/d/../../guard/secret >/dev/null 2>&1 && echo dotdot2=read || echo dotdot2=refused
echo "abs-link=$(cat /mnt/t/abs-link 2>/dev/null || echo refused)"
ln -s ../guard/secret /mnt/t/evil && { echo pwned >/mnt/t/evil 2>/dev/null && echo evil=written || echo evil=refused; }
echo "ro-read=$(cat /mnt/r/keep.txt)"
echo "ro-create=$( (echo x >/mnt/r/new) 2>&1 | grep -o 'Read-only file system' || echo allowed)"
echo "ro-rm=$(rm /mnt/r/keep.txt 2>&1 | grep -o 'Read-only file system' || echo allowed)"
echo "ro-mkdir=$(mkdir /mnt/r/dir 2>&1 | grep -o 'Read-only file system' || echo allowed)"
echo "ro-append=$( (echo more >>/mnt/r/keep.txt) 2>&1 | grep -o 'Read-only file system' || echo allowed)"
umount /mnt/t && umount /mnt/r && echo umounted=yes
`;

/** One of the two VMs of `two`: write ours, wait for the other's, read it. */
function twoGuest(me: string, other: string): string {
  return `mkdir -p /mnt/s && mount -t virtiofs both /mnt/s && echo vm-${me} >/mnt/s/${me}.txt && ` +
    `i=0; while [ ! -s /mnt/s/${other}.txt ] && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done; ` +
    `echo "${me}-sees=$(cat /mnt/s/${other}.txt)"; umount /mnt/s`;
}

/** The whole tier's script. */
function scenarios(run: string): string {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return `
set -u
VMM="${VMM} ${run}"
E=/tmp/e2e-fs
rm -rf $E; mkdir -p $E
begin() { t0=$(date +%s); }
say() { echo; echo "@@fs $1 rc=$2 s=$(($(date +%s) - t0))"; for s in out err host; do { cat $E/$1.$s 2>/dev/null; echo; } | tr -d '\\r' | sed "s/^/@@$1.$s /"; done; }
hsha() { sha256sum <"$1" | cut -c1-64; }
# A digest of a whole tree: names, types, sizes and contents.
tsha() { (cd "$1" && find . -printf '%p %y %s %l\\n' | sort && find . -type f -print0 | sort -z | xargs -0 cat) | sha256sum | cut -c1-64; }

D=\${FS_DIR:-$E/dirs}; mkdir -p $D

# one: a read-write share t beside a guard directory, and a read-only share r.
begin
mkdir -p $D/t $D/r $D/guard
head -c ${BIG} /dev/urandom >$D/t/host.bin
echo hello-from-host >$D/t/hello.txt
echo keep >$D/r/keep.txt
echo SECRET >$D/guard/secret
ln -s ../guard/secret $D/t/out-link
ln -s $D/guard/secret $D/t/abs-link
guard_before=$(tsha $D/guard); ro_before=$(tsha $D/r)
timeout -k 30 600 $VMM --share $D/t,tag=t --share $D/r,tag=r,ro -- sh -c ${q(ONE_GUEST)} >$E/one.out 2>$E/one.err
rc=$?
{
  echo "host-sha=$(hsha $D/t/host.bin)"
  echo "big-sha=$(hsha $D/t/big.bin 2>/dev/null)"
  echo "from-guest=$(cat $D/t/from-guest.txt 2>/dev/null)"
  echo "d-b=$(cat $D/t/d/b 2>/dev/null)"
  echo "gone=$(ls -d $D/t/d/a $D/t/doomed $D/t/gone 2>/dev/null | wc -l)"
  echo "evil=$(readlink $D/t/evil)"
  echo "guard-before=$guard_before"; echo "guard-after=$(tsha $D/guard)"
  echo "ro-before=$ro_before"; echo "ro-after=$(tsha $D/r)"
} >$E/one.host 2>&1
say one $rc

# two: two VMs at once on one directory; each sees the file the other wrote.
begin
mkdir -p $D/both
timeout -k 30 600 $VMM --share $D/both -- sh -c ${q(twoGuest("a", "b"))} >$E/two.out 2>$E/two.err &
pa=$!
timeout -k 30 600 $VMM --share $D/both -- sh -c ${q(twoGuest("b", "a"))} >$E/two-b.out 2>$E/two-b.err &
pb=$!
wait $pa; ra=$?; wait $pb; rb=$?
cat $E/two-b.out >>$E/two.out; cat $E/two-b.err >>$E/two.err
{ echo "rcs=$ra $rb"; echo "files=$(cat $D/both/a.txt $D/both/b.txt | tr '\\n' ' ')"; } >$E/two.host
say two $((ra | rb))

# cli: option errors are one line naming the option, before any boot.
begin
mkdir -p $D/c/x $D/c/y/x; echo f >$D/c/file
{
  $VMM --share $D/c/missing -- true; echo "missing-rc=$?"
  $VMM --share $D/c/file -- true; echo "file-rc=$?"
  $VMM --share $D/c/x --share $D/c/y/x -- true; echo "dup-rc=$?"
} >$E/cli.out 2>$E/cli.err
say cli 0

rm -rf $E
exit 0
`;
}

const SHA = /^[0-9a-f]{64}$/;

describe(`end to end on ${RUNTIME}: virtio-fs shares under vmm`, () => {
  const tier = e2eTier();
  console.log(`e2e tier: ${tier.tier} (${tier.why})`);
  let results = new Map<string, Outcome>();
  let raw = "";
  let dir = "";

  before(async () => {
    assert.notEqual(tier.tier, "none", `No end-to-end tier can run here: ${tier.why}`);
    await ensureDefaultGuest();
    const env = { ...process.env, PATH: `${REPO}/node_modules/.bin:${process.env.PATH}` };
    const help = execFileSync("sh", ["-c", `${VMM} --help`], { cwd: REPO, env, encoding: "utf8" });
    const run = help.includes("--busybox") ? "run --busybox" : "run";
    console.log(`vmm ${run}`);
    const script = scenarios(run);
    if (tier.tier === "hardware") {
      dir = mkdtempSync(join(tmpdir(), "vmm-e2e-fs-"));
      raw = execFileSync("sh", ["-c", script], {
        cwd: REPO,
        env: { ...env, FS_DIR: dir },
        encoding: "utf8",
        timeout: 1_400_000,
      });
    } else {
      const r = await runNested(script, { cwd: REPO, timeoutMs: 1_400_000, env: { VMM_CACHE: defaultCacheDir() } });
      console.log(`nested: L1 boot ${r.ms.boot} ms, all scenarios ${r.ms.total} ms`);
      raw = r.output;
    }
    results = parseScenarios(raw, "fs");
    console.log(`scenario seconds: ${[...results].map(([k, o]) => `${k} ${o.seconds}`).join(", ")}`);
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function outcome(name: string): Outcome {
    const o = results.get(name);
    assert.ok(o, `scenario ${name} did not run; output was:\n${raw.slice(-3000)}`);
    return o;
  }
  const show = showOutcome;

  test("the guest mounts --share DIR,tag=t with mount -t virtiofs t and reads a host file with the same sha256", () => {
    const o = outcome("one");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.out, "mounted-t"), "yes", show(o));
    assert.equal(field(o.out, "fstype"), "virtiofs", show(o));
    assert.match(field(o.host, "host-sha") ?? "", SHA, show(o));
    assert.equal(shaOf(o.out, "/mnt/t/host.bin"), field(o.host, "host-sha"), `the guest read other bytes than the host file holds\n${show(o)}`);
    assert.equal(field(o.out, "hello"), "hello-from-host", show(o));
    assert.equal(field(o.out, "umounted"), "yes", show(o));
  });

  test("files the guest writes are on the host, 8 MiB of them byte for byte, read back after the guest dropped its cache", () => {
    const o = outcome("one");
    assert.equal(field(o.host, "from-guest"), "guest-wrote-42", show(o));
    const guest = shaOf(o.out, "/mnt/t/big.bin");
    assert.match(guest ?? "", SHA, `the guest printed no sha256sum of big.bin\n${show(o)}`);
    assert.equal(field(o.host, "big-sha"), guest, `the host file differs from what the guest wrote\n${show(o)}`);
  });

  test("mkdir, rename, unlink and rmdir in the guest happen on the host", () => {
    const o = outcome("one");
    assert.equal(field(o.out, "renamed"), "moved", show(o));
    assert.equal(field(o.host, "d-b"), "moved", show(o));
    assert.equal(field(o.host, "gone"), "0", `a renamed, unlinked or removed entry is still on the host\n${show(o)}`);
    const ls = (field(o.out, "ls") ?? "").split(" ");
    assert.ok(ls.includes("d") && !ls.includes("doomed") && !ls.includes("gone"), show(o));
  });

  test("symlinks and .. lead nowhere outside the share, and the guard directory beside it is unchanged", () => {
    const o = outcome("one");
    assert.equal(field(o.out, "rel-link"), "refused", `a relative symlink out of the share was followed\n${show(o)}`);
    assert.equal(field(o.out, "dotdot"), "refused", show(o));
    assert.equal(field(o.out, "dotdot2"), "refused", show(o));
    assert.equal(field(o.out, "abs-link"), "refused", `an absolute symlink reached the host's file\n${show(o)}`);
    assert.equal(field(o.out, "evil"), "refused", `a write through a guest-made symlink got out\n${show(o)}`);
    assert.equal(field(o.host, "evil"), "../guard/secret", `the guest's symlink is not a plain symlink on the host\n${show(o)}`);
    assert.doesNotMatch(o.out, /SECRET/, show(o));
    assert.match(field(o.host, "guard-before") ?? "", SHA, show(o));
    assert.equal(field(o.host, "guard-after"), field(o.host, "guard-before"), `the guard directory changed\n${show(o)}`);
  });

  test("a ,ro share reads, refuses every change with EROFS, and the host directory is unchanged", () => {
    const o = outcome("one");
    assert.equal(field(o.out, "mounted-r"), "yes", show(o));
    assert.equal(field(o.out, "ro-read"), "keep", show(o));
    for (const k of ["ro-create", "ro-rm", "ro-mkdir", "ro-append"]) {
      assert.equal(field(o.out, k), "Read-only file system", `${k} was not refused with EROFS\n${show(o)}`);
    }
    assert.equal(field(o.host, "ro-after"), field(o.host, "ro-before"), `the read-only share changed\n${show(o)}`);
  });

  test("vmm's stderr stays empty while a guest uses its shares", () => {
    const o = outcome("one");
    assert.equal(o.err, "", show(o));
  });

  test("two VMs share one directory at the same time, each seeing the other's file", () => {
    const o = outcome("two");
    assert.equal(field(o.host, "rcs"), "0 0", show(o));
    assert.equal(field(o.out, "a-sees"), "vm-b", show(o));
    assert.equal(field(o.out, "b-sees"), "vm-a", show(o));
    assert.equal(field(o.host, "files"), "vm-a vm-b", show(o));
  });

  test("--share errors are one line each naming the option: missing, not a directory, duplicate tag", () => {
    const o = outcome("cli");
    for (const k of ["missing-rc", "file-rc", "dup-rc"]) assert.equal(field(o.out, k), "1", `${k}\n${show(o)}`);
    const lines = o.err.trim().split("\n");
    assert.equal(lines.length, 3, show(o));
    assert.match(lines[0], /^vmm: --share \S+\/c\/missing: no such directory$/, show(o));
    assert.match(lines[1], /^vmm: --share \S+\/c\/file: not a directory$/, show(o));
    assert.match(lines[2], /^vmm: --share \S+\/c\/y\/x: tag "x" is already the tag of \S+\/c\/x$/, show(o));
  });
});
