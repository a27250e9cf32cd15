/**
 * End to end: `vmm run -- CMD` over the host's own files, virtme-ng style,
 * with Debian's stock cloud kernel on real KVM.
 *
 * Like boot_test.ts, one shell script runs every scenario in turn, directly
 * where /dev/kvm is hardware KVM and inside the nested KVM host of
 * test/support/nested.ts elsewhere; each test below checks one scenario. The
 * script plays the host's part too (what vmm's host sees before and after),
 * printing `@@run NAME rc=N s=SECONDS`, then `@@NAME.out` (vmm's stdout: the
 * command's), `@@NAME.err` (vmm's stderr: the command's) and `@@NAME.host`.
 *
 * "The host" is the machine vmm runs on: the nested host (L1) in that tier.
 * Its root is this machine's, read-only; the fixture directory lives in the
 * checkout's dist/ (not /tmp: the guest gets its own tmpfs there, which would
 * hide it) and is shared read-write into L1, so the guest sees it twice: its
 * `cwd/` as the working directory, read-write, and everything else through
 * the read-only root.
 *
 * Each scenario is one boot (about 15–20 s under nested KVM), so the tier
 * takes several minutes per runtime; `seq` alone is SEQ_RUNS boots, and
 * prints its per-run times.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { e2eTier } from "../support/tier.ts";
import { field, type Outcome, parseScenarios, showOutcome } from "../support/scenarios.ts";
import { runNested } from "../support/nested.ts";
import { defaultCacheDir, ensureDefaultGuest } from "../../guest/build.ts";
import { isDeno } from "../../ffi/runtime.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const RUNTIME = isDeno ? "deno" : "bun";
/** vmm on this test's runtime, unless VMM_E2E_VMM names another command: by its full path, since scenarios change directory. */
const VMM = process.env.VMM_E2E_VMM || (isDeno ? `deno run -A --no-check ${REPO}/bin/vmm.ts` : `bun ${REPO}/bin/vmm.ts`);
/** Random bytes on stdout: many virtio-serial buffers, more than any pipe holds. */
const BIG = 8 * 1024 * 1024;
/**
 * Runs of `seq 1 3000` in a row: output lost at exit shows as a short count
 * in one of them. Each is a boot (20–40 s nested), so the suite runs 3 per
 * runtime; VMM_E2E_SEQ_RUNS=20 runs the issue's full count.
 */
const SEQ_RUNS = Number(process.env.VMM_E2E_SEQ_RUNS ?? 3);
const SEQ_LINES = 3000;
/** An environment value only exact quoting passes on. */
const ODD_VALUE = `it's "quoted" $HOME \\ *`;

/** The program the guest runs from the host's root; the host runs it too and the outputs must match. */
const PROGRAM = `git --version; if command -v python3 >/dev/null; then python3 -c 'print(6*7)'; fi`;

/** The whole tier's script. `$D` is the fixture directory. */
function scenarios(): string {
  return `
set -u
VMM="${VMM}"
D=$RUN_DIR
E=$D/e2e
rm -rf $E $D/cwd $D/ro $D/tiny # what a run in an L1 that froze left (runNested runs the script again)
mkdir -p $E $D/cwd $D/ro
begin() { t0=$(date +%s); cur=$1; }
say() { echo; echo "@@run $1 rc=$2 s=$(($(date +%s) - t0))"; for s in out err host console; do { cat $E/$1.$s 2>/dev/null; echo; } | sed "s/^/@@$1.$s /"; done; }
# vmm run, bounded, with the kernel's messages (warnings and worse) kept: a
# run that fails leaves the end of its guest's console in $E/$cur.console.
vrun() {
  timeout -k 30 300 $VMM run --console-log $E/last.console --append loglevel=5 "$@"
  r=$?
  [ $r -eq 0 ] || { echo "== a run ended with $r; its console's end:"; tail -n 40 $E/last.console; } >>$E/$cur.console
  # A triple fault (102) in the nested host: the end of L1's flight record of
  # it (test/support/nested.ts kvmRecorder writes it within a second).
  [ $r -eq 102 ] && [ -d /tmp/.vmm-nested/records ] && { sleep 2; f=$(ls /tmp/.vmm-nested/records/shutdown-* 2>/dev/null | tail -n 1)
    echo "== L1's last KVM events before it (\${f:-no record}):"; [ -n "$f" ] && tail -n 6 "$f" | sed 's/^ *[^ ]* *\[[0-9]*\] [^ ]* *//'; } >>$E/$cur.console
  return $r
}
ms() { echo $(( $(date +%s%N) / 1000000 )); }

# program: a host program busybox does not have, its output exact.
begin program
vrun -- sh -c ${q(PROGRAM)} >$E/program.out 2>$E/program.err
rc=$?
sh -c ${q(PROGRAM)} >$E/program.host 2>&1
say program $rc

# cwd: the working directory is shared read-write at the same path; the root is read-only.
begin cwd
echo keep >$D/ro/kept
cd $D/cwd
export VMM_E2E_VAR=${q(ODD_VALUE)}
vrun -- sh -c 'echo "pwd=$(pwd)"; echo "uid=$(id -u) gid=$(id -g)"; printf "var=%s\\n" "$VMM_E2E_VAR"
  echo from-the-guest >written && echo wrote=yes
  echo "ro=$( (echo changed >../ro/kept) 2>&1 | grep -o "Read-only file system" || echo written)"
  echo "ro-new=$( (echo new >../ro/new) 2>&1 | grep -o "Read-only file system" || echo written)"
  echo "etc=$(echo x >/etc/vmm-e2e && cat /etc/vmm-e2e)"' >$E/cwd.out 2>$E/cwd.err
rc=$?
unset VMM_E2E_VAR
cd - >/dev/null
{ echo "dir=$D/cwd"; echo "uid=$(id -u) gid=$(id -g)"; echo "written=$(cat $D/cwd/written 2>&1)"; echo "kept=$(cat $D/ro/kept)"
  echo "new=$(ls $D/ro/new 2>/dev/null || echo absent)"; echo "etc=$(ls /etc/vmm-e2e 2>/dev/null || echo absent)"; } >$E/cwd.host
say cwd $rc

# bytes: 8 MiB of random bytes on stdout, byte-exact; stderr apart, also when reopened.
begin bytes
vrun -- sh -c 'head -c ${BIG} /dev/urandom >/tmp/r; echo "guest-sha=$(sha256sum </tmp/r | cut -c1-64)" >&2; cat /tmp/r; echo to-stderr >&2; echo to-dev-stderr >/dev/stderr' >$E/bytes.bin 2>$E/bytes.err
rc=$?
{ echo "size=$(wc -c <$E/bytes.bin)"; echo "host-sha=$(sha256sum <$E/bytes.bin | cut -c1-64)"; } >$E/bytes.host
rm -f $E/bytes.bin
say bytes $rc

# stdin: piped input reaches the command, and so does its end.
begin stdin
printf x | vrun -- cat >$E/stdin.bin 2>$E/stdin.err
rc=$?
echo "bytes=$(od -An -c $E/stdin.bin | tr -d ' ')" >$E/stdin.host
say stdin $rc

# status: the command's exit status, and 128+N for a signal.
begin status
: >$E/status.host
for s in 0 1 7 255; do
  vrun -- sh -c "exit $s" </dev/null >>$E/status.out 2>>$E/status.err
  echo "status-$s=$?" >>$E/status.host
done
vrun -- sh -c 'kill -9 $$' </dev/null >>$E/status.out 2>>$E/status.err
echo "status-killed=$?" >>$E/status.host
say status 0

# seq: ${SEQ_RUNS} runs in a row each deliver all ${SEQ_LINES} lines.
begin seq
: >$E/seq.host
i=1
while [ $i -le ${SEQ_RUNS} ]; do
  a=$(ms)
  vrun -- seq 1 ${SEQ_LINES} </dev/null >$E/seq.txt 2>>$E/seq.err
  echo "run-$i=rc:$? lines:$(wc -l <$E/seq.txt) last:$(tail -n 1 $E/seq.txt) ms:$(( $(ms) - a ))" >>$E/seq.host
  i=$((i + 1))
done
say seq 0

# tinyroot: --root with a root that is busybox alone; it stays read-only.
# --cold: this run boots, though the cache has a snapshot of this guest.
begin tinyroot
T=$D/tiny
mkdir -p $T/bin $T/proc $T/sys $T/dev $T/tmp $T/run
cp "$(command -v busybox)" $T/bin/busybox && ln -sf busybox $T/bin/sh
vrun -v --cold --root $T -- sh -c 'echo "tiny=$((6*7))"; echo "ls=$(ls / | tr "\\n" " ")"; echo "ro=$( (touch /new) 2>&1 | grep -o "Read-only file system" || echo written)"' >$E/tinyroot.out 2>$E/tinyroot.err
rc=$?
echo "new=$(ls $T/new 2>/dev/null || echo absent)" >$E/tinyroot.host
say tinyroot $rc

# snapshot: the first run boots and snapshots its guest once init waits for
# its command; later runs restore it and send theirs; a damaged snapshot
# costs one line and a cold boot that writes a new one. (Runs racing to
# write one snapshot are loop/run_cache_test.ts's. Two guests at once in the
# nested host are what its TCG handles worst: one of two booting at once
# triple-faulted, one of two restored at once looped on a nested page fault
# at a guest address past its RAM.)
begin snapshot
outer_cache=\${VMM_SNAPSHOT_CACHE:-}
export VMM_SNAPSHOT_CACHE=$(mktemp -d /tmp/vmm-e2e-snapshots.XXXXXX)
vrun -v -- echo boot-a >$E/snapshot.a 2>&1; r1=$?
entries1=$(ls -A $VMM_SNAPSHOT_CACHE | tr '\n' ' ')
# Older than the next run by more than its start-up: a restored guest that
# kept the snapshot's wall clock would tell a time before that run began.
sleep 5
a=$(date +%s%N)
printf piped | vrun -v -- sh -c 'cat; echo; echo "guest-time=$(date +%s%N)"; exit 7' >$E/snapshot.out 2>$E/snapshot.err; r2=$?
b=$(date +%s%N)
for f in $VMM_SNAPSHOT_CACHE/*/state; do printf garbage | dd of=$f bs=1 seek=100 conv=notrunc 2>/dev/null; done
vrun -v -- echo after-damage >>$E/snapshot.out 2>>$E/snapshot.err; r3=$?
{ echo "rc=$r1,$r2,$r3"; echo "before=$a"; echo "after=$b"; echo "entries1=$entries1"; echo "entries2=$(ls -A $VMM_SNAPSHOT_CACHE | tr '\n' ' ')"
  echo "a=$(grep -c "^boot-a$" $E/snapshot.a) $(grep -c "restored the waiting guest" $E/snapshot.a) $(grep -c "guest init ready" $E/snapshot.a)"; } >$E/snapshot.host
sed "s/^/a: /" $E/snapshot.a >>$E/snapshot.err
rm -rf "$VMM_SNAPSHOT_CACHE" # 95 MiB of memory file, in L1's RAM
export VMM_SNAPSHOT_CACHE=$outer_cache
say snapshot 0

exit 0
`;
}

/** Single-quotes a string for sh. */
function q(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

describe(`end to end on ${RUNTIME}: vmm run over the host's root`, () => {
  const tier = e2eTier();
  console.log(`e2e tier: ${tier.tier} (${tier.why})`);
  let results = new Map<string, Outcome>();
  let raw = "";
  let dir = "";

  before(async () => {
    assert.notEqual(tier.tier, "none", `No end-to-end tier can run here: ${tier.why}`);
    await ensureDefaultGuest();
    mkdirSync(join(REPO, "dist"), { recursive: true });
    dir = mkdtempSync(join(REPO, "dist", `e2e-run-${RUNTIME}-`));
    const script = scenarios();
    if (tier.tier === "hardware") {
      raw = execFileSync("sh", ["-c", script], {
        cwd: REPO,
        env: { ...process.env, RUN_DIR: dir, PATH: `${REPO}/node_modules/.bin:${process.env.PATH}` },
        encoding: "utf8",
        timeout: 1_800_000,
      });
    } else {
      const r = await runNested(script, {
        cwd: REPO,
        timeoutMs: 1_800_000,
        shareRw: [dir],
        env: { VMM_CACHE: defaultCacheDir(), RUN_DIR: dir },
      });
      console.log(`nested: L1 boot ${r.ms.boot} ms, all scenarios ${r.ms.total} ms`);
      raw = r.output;
    }
    results = parseScenarios(raw, "run");
    console.log(`scenario seconds: ${[...results].map(([k, o]) => `${k} ${o.seconds}`).join(", ")}`);
    const seq = results.get("seq");
    if (seq) console.log(`seq runs:\n${seq.host}`);
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

  test("a host program that busybox lacks runs in the guest with the same output as on the host", () => {
    const o = outcome("program");
    assert.equal(o.rc, 0, show(o));
    assert.match(o.out, /^git version \d/, show(o));
    assert.equal(o.out, o.host, `the guest's output differs from the host's\n${show(o)}`);
    assert.equal(o.err, "", show(o));
  });

  test("the command starts in the working directory, as the caller, with the caller's environment", () => {
    const o = outcome("cwd");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.out, "pwd"), field(o.host, "dir"), show(o));
    assert.equal(field(o.out, "uid"), field(o.host, "uid"), `not the caller's uid and gid\n${show(o)}`);
    assert.equal(field(o.out, "var"), ODD_VALUE, `an environment value arrived changed\n${show(o)}`);
  });

  test("a file written in the working directory is on the host afterwards", () => {
    const o = outcome("cwd");
    assert.equal(field(o.out, "wrote"), "yes", show(o));
    assert.equal(field(o.host, "written"), "from-the-guest", show(o));
    // After the check: the file is on this machine too, whichever tier ran.
    assert.equal(readFileSync(join(dir, "cwd", "written"), "utf8"), "from-the-guest\n");
  });

  test("writes to the read-only root fail in the guest and change nothing on the host; /etc takes writes in the guest only", () => {
    const o = outcome("cwd");
    assert.equal(field(o.out, "ro"), "Read-only file system", show(o));
    assert.equal(field(o.out, "ro-new"), "Read-only file system", show(o));
    assert.equal(field(o.host, "kept"), "keep", show(o));
    assert.equal(field(o.host, "new"), "absent", show(o));
    assert.equal(existsSync(join(dir, "ro", "new")), false);
    assert.equal(field(o.out, "etc"), "x", `/etc is not writable in the guest (overlay)\n${show(o)}`);
    assert.equal(field(o.host, "etc"), "absent", `a write to /etc in the guest reached the host\n${show(o)}`);
  });

  test("8 MiB of random bytes on stdout arrive with the same sha256, and stderr arrives apart", () => {
    const o = outcome("bytes");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.host, "size"), String(BIG), show(o));
    assert.match(field(o.err, "guest-sha") ?? "", /^[0-9a-f]{64}$/, show(o));
    assert.equal(field(o.host, "host-sha"), field(o.err, "guest-sha"), `stdout's bytes differ from what the guest wrote\n${show(o)}`);
    assert.match(o.err, /^to-stderr$/m, show(o));
    assert.match(o.err, /^to-dev-stderr$/m, `a write reopening /dev/stderr did not arrive\n${show(o)}`);
  });

  test("printf x | vmm run -- cat gives x, and cat sees the end of its input", () => {
    const o = outcome("stdin");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.host, "bytes"), "x", show(o));
    assert.equal(o.err, "", show(o));
  });

  test("exit statuses 0, 1, 7 and 255 come back, and a command killed by SIGKILL gives 137", () => {
    const o = outcome("status");
    for (const s of [0, 1, 7, 255]) assert.equal(field(o.host, `status-${s}`), String(s), show(o));
    assert.equal(field(o.host, "status-killed"), "137", show(o));
    assert.equal(o.out, "", show(o));
    assert.equal(o.err, "", `the guest printed something of its own\n${show(o)}`);
  });

  test(`${SEQ_RUNS} runs in a row of seq 1 ${SEQ_LINES} each deliver all ${SEQ_LINES} lines`, () => {
    const o = outcome("seq");
    for (let i = 1; i <= SEQ_RUNS; i++) {
      const run = field(o.host, `run-${i}`);
      assert.match(run ?? "", new RegExp(`^rc:0 lines:${SEQ_LINES} last:${SEQ_LINES} `), `run ${i} of ${SEQ_RUNS}\n${show(o)}`);
    }
    assert.equal(o.err, "", show(o));
  });

  test("the first run boots and writes one snapshot; the next one restores it", () => {
    const o = outcome("snapshot");
    // CI prints an error's first lines only: each message starts with what it checked.
    assert.equal(field(o.host, "rc"), "0,7,0", `the three runs' statuses are ${field(o.host, "rc")}, not 0,7,0\n${show(o)}`);
    assert.equal(field(o.host, "a"), "1 0 1", `the first run's line, restore and boot counts are ${field(o.host, "a")}, not 1 0 1\n${show(o)}`);
    assert.match(field(o.host, "entries1") ?? "", /^[0-9a-f]{32}$/, `the cache after the first run holds ${field(o.host, "entries1")}, not one snapshot\n${show(o)}`);
    assert.match(o.err, /^a: vmm: snapshot of the waiting guest written to /m, `the first run did not say it wrote the snapshot\n${show(o)}`);
  });

  test("a restored guest runs its own command with its stdin and status, on the host's wall clock", () => {
    const o = outcome("snapshot");
    assert.match(o.err, /^vmm: restored the waiting guest from /m, show(o));
    assert.ok(o.out.startsWith("piped\nguest-time="), show(o));
    // The restored guest's wall clock is the host's (guest/settime.ts), not the snapshot's, seconds older.
    const [before, guest, after] = ["before", "guest-time", "after"].map((k) => BigInt(field(k === "guest-time" ? o.out : o.host, k) ?? "0"));
    assert.ok(before <= guest && guest <= after, `guest time ${guest} not within the run (${before}..${after})\n${show(o)}`);
  });

  test("a damaged snapshot gets one line and a cold boot that writes a new one in its place", () => {
    const o = outcome("snapshot");
    assert.match(o.out, /^after-damage$/m, show(o));
    assert.match(o.err, /^vmm: cannot start from the snapshot in \S+ \(\S+\/state: corrupted or tampered: its SHA-256 does not match\); booting the guest instead\nvmm: snapshot of the waiting guest written to /m, show(o));
    assert.equal(field(o.host, "entries2"), field(o.host, "entries1"), show(o));
  });

  test("--cold boots the guest though a snapshot of it is cached", () => {
    const o = outcome("tinyroot");
    assert.match(o.err, /^vmm: guest init ready after \d+ ms$/m, show(o));
    assert.doesNotMatch(o.err, /restored|snapshot/, show(o));
  });

  test("--root DIR runs the command over another root, read-only", () => {
    const o = outcome("tinyroot");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.out, "tiny"), "42", show(o));
    assert.equal(field(o.out, "ls"), "bin dev proc run sys tmp", show(o));
    assert.equal(field(o.out, "ro"), "Read-only file system", show(o));
    assert.equal(field(o.host, "new"), "absent", show(o));
  });
});
