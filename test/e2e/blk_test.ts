/**
 * End to end: vmm's virtio devices (block, entropy, console) with Debian's
 * stock cloud kernel on real KVM.
 *
 * Like boot_test.ts, one shell script runs every scenario in turn, directly
 * where /dev/kvm is hardware KVM and inside the nested KVM host of
 * test/support/nested.ts elsewhere; each test below checks one scenario's
 * result. The script also plays the host's part: it makes ext4 images with
 * mkfs.ext4 before a guest sees them and reads them back with debugfs after,
 * so each scenario's guest output and host findings come back together:
 * `@@blk NAME rc=N s=SECONDS`, then `@@NAME.out` (vmm's stdout: the guest console),
 * `@@NAME.err` (vmm's stderr) and `@@NAME.host` lines.
 *
 * Images live in the nested host's /tmp (tmpfs), or in a temporary directory
 * on a hardware host. Guest output is kept to a few lines per scenario: a
 * console byte costs about 3 ms under nested KVM.
 *
 * The guests run `vmm run --busybox`: the command runs in the default guest's
 * busybox initramfs, where /mnt is writable and the console is its output
 * (plain `vmm run` runs over the host's read-only root).
 *
 * VMM_E2E_VMM replaces the vmm command line under test (default: bin/vmm.ts on
 * this test's runtime), e.g. to check the scenarios themselves against a
 * wrapper that runs the same options on QEMU.
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
import { BLK_QUEUE_SIZE } from "../../devices/blk/mod.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const RUNTIME = isDeno ? "deno" : "bun";
/** vmm on this test's runtime, unless VMM_E2E_VMM names another command. */
const VMM = process.env.VMM_E2E_VMM || (isDeno ? "deno run -A --no-check bin/vmm.ts" : "bun bin/vmm.ts");
/** What a guest writes and reads: 3 MiB of random bytes, more than one virtio request and one ext4 extent. */
const FILE_BYTES = 3 * 1024 * 1024;
/** Image sizes: small, since every byte of a whole-image checksum is emulated twice over in the nested host. */
const IMG_MIB = 32;
const IMG2_MIB = 16;
/** The second drive's serial (virtio-blk's VIRTIO_BLK_T_GET_ID: at most 20 bytes). */
const SERIAL = "blk-e2e-two";

/** The whole tier's script: each scenario prints `@@blk NAME rc=N s=SECONDS`, then its out, err and host lines. */
function scenarios(): string {
  return `
set -u
VMM="${VMM}"
E=/tmp/e2e-blk
mkdir -p $E
# begin: a scenario starts; say NAME RC: its status, seconds taken and output.
begin() { t0=$(date +%s); }
say() { echo; echo "@@blk $1 rc=$2 s=$(($(date +%s) - t0))"; for s in out err host; do { cat $E/$1.$s 2>/dev/null; echo; } | tr -d '\\r' | sed "s/^/@@$1.$s /"; done; }
# wait_for TEXT FILE: until FILE holds TEXT, at most 180 s (wall time: each poll costs a fork in the nested host).
wait_for() { timeout 180 sh -c 'until grep -q "$1" "$2" 2>/dev/null; do sleep 0.2; done' sh "$1" "$2"; }
# send FIFO LINE: LINE into the FIFO a background vmm reads, at most 30 s. Opening a FIFO to
# write waits for a reader: a vmm that already died must fail its scenario, not hang the run.
send() { timeout 30 sh -c 'printf "%s\\n" "$2" >"$1"' sh "$1" "$2"; }
# wait_exit PID: its status; a watchdog kills it after 180 s (status 137), so a hang fails one scenario, not the run.
wait_exit() { ( sleep 180; kill -9 $1 2>/dev/null ) & wd=$!; wait $1; rc=$?; kill $wd 2>/dev/null; return $rc; }
# mkimg FILE SIZE [DIR]: a fresh ext4 image, holding DIR's files if given. Eager
# inode table and journal init: no lazy-init writes from the guest's kernel.
mkimg() { rm -f "$1"; truncate -s "$2" "$1" && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 \${3:+-d "$3"} "$1" >/dev/null 2>&1; }
hsha() { sha256sum <"$1" | cut -c1-64; }
# dump IMG PATH: that file of an ext4 image to $E/dump (absent if the image lacks it).
dump() { rm -f $E/dump; debugfs -R "dump $2 $E/dump" "$1" >/dev/null 2>&1; }

# Images live in BLK_DIR on a hardware host, in the nested host's /tmp (tmpfs) otherwise.
D=\${BLK_DIR:-$E/img}; mkdir -p $D
mkdir -p $E/src && head -c ${FILE_BYTES} /dev/urandom >$E/src/g

# write: the guest writes a file to a fresh ext4 image and unmounts; the host reads it back.
begin
mkimg $D/write.img ${IMG_MIB}M
timeout -k 30 300 $VMM run --busybox --drive $D/write.img -- sh -c 'mount -t ext4 /dev/vda /mnt && head -c ${FILE_BYTES} /dev/urandom >/mnt/f && sha256sum /mnt/f && sync && umount /mnt && echo unmounted' >$E/write.out 2>$E/write.err
rc=$?
{ dump $D/write.img /f; echo "host-sha=$(hsha $E/dump)"; e2fsck -fn $D/write.img >/dev/null 2>&1; echo "fsck=$?"; } >$E/write.host 2>&1
say write $rc

# read: the host puts a file into a fresh image; the guest reads 1 MiB with O_DIRECT, counting the
# requests it took (/sys/block/vda/stat's first field), then the whole device, then the file.
begin
mkimg $D/read.img ${IMG_MIB}M $E/src
{ echo "host-sha=$(hsha $E/src/g)"; echo "host-img=$(hsha $D/read.img)"; } >$E/read.host 2>&1
timeout -k 30 300 $VMM run --busybox --drive $D/read.img -- sh -c 'echo "maxseg=$(cat /sys/block/vda/queue/max_segments)"; n() { read r _ </sys/block/vda/stat; echo $r; }; r0=$(n); dd if=/dev/vda of=/dev/null bs=1M count=1 iflag=direct 2>/dev/null; echo "reqs1m=$(($(n) - r0))"; echo "dev=$(sha256sum </dev/vda | cut -c1-64)"; mount -o ro /dev/vda /mnt && sha256sum /mnt/g && umount /mnt' >$E/read.out 2>$E/read.err
say read $?

# readonly: the guest sees a read-only disk it can mount and read, but not write; the image is unchanged.
begin
mkimg $D/ro.img ${IMG_MIB}M $E/src
before=$(hsha $D/ro.img)
timeout -k 30 300 $VMM run --busybox --drive $D/ro.img,readonly -- sh -c 'echo "getro=$(blockdev --getro /dev/vda)"; mount -o ro /dev/vda /mnt && sha256sum /mnt/g; umount /mnt; if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>/dev/null; then echo dd=written; else echo dd=failed; fi; if mount /dev/vda /mnt 2>/dev/null && touch /mnt/new 2>/dev/null; then echo touch=written; else echo touch=failed; fi; sync' >$E/readonly.out 2>$E/readonly.err
rc=$?
{ echo "host-sha=$(hsha $E/src/g)"; echo "before=$before"; echo "after=$(hsha $D/ro.img)"; } >$E/readonly.host 2>&1
say readonly $rc

# two: two drives in the order given, each its own image; the second has a serial.
begin
mkdir -p $E/one $E/two && echo first >$E/one/name && echo second >$E/two/name
mkimg $D/one.img ${IMG_MIB}M $E/one && mkimg $D/two.img ${IMG2_MIB}M $E/two
timeout -k 30 300 $VMM run --busybox --drive $D/one.img --drive $D/two.img,id=${SERIAL} -- sh -c 'mkdir -p /mnt/a /mnt/b && mount /dev/vda /mnt/a && mount /dev/vdb /mnt/b && echo "names=$(cat /mnt/a/name) $(cat /mnt/b/name)" && echo "sectors=$(cat /sys/block/vda/size) $(cat /sys/block/vdb/size)" && echo "serial=$(cat /sys/block/vdb/serial)" && echo to-a >/mnt/a/w && echo to-b >/mnt/b/w && sync && umount /mnt/a /mnt/b' >$E/two.out 2>$E/two.err
rc=$?
{ dump $D/one.img /w; echo "one-w=$(cat $E/dump)"; dump $D/two.img /w; echo "two-w=$(cat $E/dump)"; } >$E/two.host 2>&1
say two $rc

# mq: with 2 vCPUs a drive has a request queue per vCPU (VIRTIO_BLK_F_MQ), queues=1 keeps one.
# blk-mq maps each CPU to its own queue (cpu_list), so direct I/O from a writer pinned
# to each CPU goes down that CPU's virtqueue: had either queue's Worker not served it,
# that writer would hang. The host checks both regions. Kept small: 2-vCPU guests under
# load sometimes stall in the nested test host, under QEMU as under vmm (issue 12 note).
begin
rm -f $D/mq.img $D/mq1.img; truncate -s ${IMG_MIB}M $D/mq.img; truncate -s ${IMG2_MIB}M $D/mq1.img
timeout -k 30 300 $VMM run --busybox --cpus 2 --drive $D/mq.img --drive $D/mq1.img,queues=1 -- sh -c 'echo "hctx=$(ls /sys/block/vda/mq | wc -l) $(ls /sys/block/vdb/mq | wc -l)"; head -c 262144 /dev/urandom >/tmp/a; head -c 262144 /dev/urandom >/tmp/b; taskset -c 0 dd if=/tmp/a of=/dev/vda bs=64k oflag=direct 2>/dev/null & taskset -c 1 dd if=/tmp/b of=/dev/vda bs=64k seek=16 oflag=direct 2>/dev/null & wait; echo "a=$(sha256sum </tmp/a | cut -c1-64)"; echo "b=$(sha256sum </tmp/b | cut -c1-64)"; echo "back=$(taskset -c 1 dd if=/dev/vda bs=64k count=4 iflag=direct 2>/dev/null | sha256sum | cut -c1-64)"; echo "cpus=$(cat /sys/block/vda/mq/0/cpu_list) $(cat /sys/block/vda/mq/1/cpu_list)"' >$E/mq.out 2>$E/mq.err
rc=$?
{ echo "a=$(head -c 262144 $D/mq.img | sha256sum | cut -c1-64)"; echo "b=$(tail -c +1048577 $D/mq.img | head -c 262144 | sha256sum | cut -c1-64)"; } >$E/mq.host 2>&1
say mq $rc

# rng: /dev/hwrng is virtio-rng, gives whole reads, and two reads differ.
begin
timeout -k 30 300 $VMM run --busybox --rng -- sh -c 'echo "current=$(cat /sys/class/misc/hw_random/rng_current)"; echo "bytes=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)"; a=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | sha256sum); b=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | sha256sum); [ "$a" != "$b" ] && echo distinct' >$E/rng.out 2>$E/rng.err
say rng $?

# hvc: with --console hvc the command's output comes through virtio-console's hvc0.
begin
timeout -k 30 300 $VMM run --busybox --console hvc -- sh -c 'echo "hello active=$(cat /sys/class/tty/console/active)"' >$E/hvc.out 2>$E/hvc.err
say hvc $?

# hvcboot: an interactive guest on hvc0 takes input from vmm's stdin.
begin
rm -f $E/in; mkfifo $E/in
$VMM boot --console hvc <>$E/in >$E/hvcboot.out 2>$E/hvcboot.err &
pid=$!
wait_for 'vmm-guest: ready' $E/hvcboot.out
sleep 1
send $E/in 'echo hvc-says-$((6*7)) on $(tty); poweroff -f'
wait_exit $pid
say hvcboot $?

# sigkill: what the guest synced survives a SIGKILL of vmm right after the sync returned.
begin
mkimg $D/kill.img ${IMG_MIB}M
rm -f $E/in; mkfifo $E/in
$VMM boot --drive $D/kill.img <>$E/in >$E/sigkill.out 2>$E/sigkill.err &
pid=$!
wait_for 'vmm-guest: ready' $E/sigkill.out
sleep 1
send $E/in 'mount /dev/vda /mnt && head -c ${FILE_BYTES} /dev/urandom >/mnt/f && sha256sum /mnt/f && sync && echo synced-$((6*7))'
wait_for 'synced-42' $E/sigkill.out
kill -9 $pid
wait_exit $pid
rc=$?
{
  # As written, without journal replay (what debugfs sees), then after e2fsck's replay (what a mount sees).
  dump $D/kill.img /f; echo "raw-sha=$(hsha $E/dump)"
  cp $D/kill.img $D/kill-fsck.img; e2fsck -fy $D/kill-fsck.img >/dev/null 2>&1; echo "fsck=$?"
  dump $D/kill-fsck.img /f; echo "host-sha=$(hsha $E/dump)"
} >$E/sigkill.host 2>&1
say sigkill $rc

rm -rf $E
exit 0
`;
}


const SHA = /^[0-9a-f]{64}$/;

describe(`end to end on ${RUNTIME}: virtio block, rng and console under vmm`, () => {
  const tier = e2eTier();
  console.log(`e2e tier: ${tier.tier} (${tier.why})`);
  let results = new Map<string, Outcome>();
  let raw = "";
  let dir = "";

  before(async () => {
    assert.notEqual(tier.tier, "none", `No end-to-end tier can run here: ${tier.why}`);
    await ensureDefaultGuest();
    const script = scenarios();
    if (tier.tier === "hardware") {
      dir = mkdtempSync(join(tmpdir(), "vmm-e2e-blk-"));
      raw = execFileSync("sh", ["-c", script], {
        cwd: REPO,
        env: { ...process.env, BLK_DIR: dir, PATH: `${REPO}/node_modules/.bin:${process.env.PATH}` },
        encoding: "utf8",
        timeout: 1_400_000,
      });
    } else {
      const r = await runNested(script, { cwd: REPO, timeoutMs: 1_400_000, env: { VMM_CACHE: defaultCacheDir() } });
      console.log(`nested: L1 boot ${r.ms.boot} ms, all scenarios ${r.ms.total} ms`);
      raw = r.output;
    }
    results = parseScenarios(raw, "blk");
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

  /** Everything a scenario left, for failure messages. */
  const show = showOutcome;

  test("a file the guest writes to an ext4 image on --drive reads back on the host with the same sha256", () => {
    const o = outcome("write");
    assert.equal(o.rc, 0, `the guest's mount/write/sync/umount failed\n${show(o)}`);
    const guest = shaOf(o.out, "/mnt/f");
    assert.ok(guest, `the guest printed no sha256sum of /mnt/f\n${show(o)}`);
    assert.match(o.out, /^unmounted$/m, show(o));
    assert.equal(field(o.host, "host-sha"), guest, `debugfs read back other bytes than the guest wrote\n${show(o)}`);
    assert.equal(field(o.host, "fsck"), "0", `e2fsck -fn finds the image unclean after the guest's umount\n${show(o)}`);
    assert.equal(o.err, "", show(o));
  });

  test("a file the host put into an image reads in the guest with the same sha256, and so does the whole device", () => {
    const o = outcome("read");
    assert.equal(o.rc, 0, `the guest's read failed\n${show(o)}`);
    const hostSha = field(o.host, "host-sha");
    assert.match(hostSha ?? "", SHA, show(o));
    assert.equal(shaOf(o.out, "/mnt/g"), hostSha, `the guest read other bytes than the host put in /g\n${show(o)}`);
    assert.equal(field(o.out, "dev"), field(o.host, "host-img"), `sha256 of /dev/vda in the guest differs from the image's\n${show(o)}`);
  });

  test("a 1 MiB O_DIRECT read is one request: seg_max leaves room for every page of it", () => {
    const o = outcome("read");
    // BLK_QUEUE_SIZE 512 less header and status; with 254 (a queue of 256) Linux splits 1 MiB of scattered pages in two.
    assert.equal(field(o.out, "maxseg"), String(BLK_QUEUE_SIZE - 2), `the guest's max_segments is not the seg_max vmm offered\n${show(o)}`);
    assert.equal(field(o.out, "reqs1m"), "1", `a 1 MiB read reached the device as more than one request\n${show(o)}`);
  });

  test("a readonly drive mounts and reads, refuses writes, and leaves the image unchanged", () => {
    const o = outcome("readonly");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.out, "getro"), "1", `blockdev --getro /dev/vda is not 1: VIRTIO_BLK_F_RO not offered?\n${show(o)}`);
    assert.equal(shaOf(o.out, "/mnt/g"), field(o.host, "host-sha"), `mount -o ro and read failed\n${show(o)}`);
    assert.equal(field(o.out, "dd"), "failed", `dd to the read-only /dev/vda succeeded\n${show(o)}`);
    assert.equal(field(o.out, "touch"), "failed", `a file was created on the read-only drive\n${show(o)}`);
    assert.match(field(o.host, "before") ?? "", SHA, show(o));
    assert.equal(field(o.host, "after"), field(o.host, "before"), `the read-only image changed\n${show(o)}`);
  });

  test("two drives are /dev/vda and /dev/vdb in the order given, each its own image, with id= as vdb's serial", () => {
    const o = outcome("two");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.out, "names"), "first second", `vda/vdb are not the first/second --drive\n${show(o)}`);
    assert.equal(field(o.out, "sectors"), `${IMG_MIB * 2048} ${IMG2_MIB * 2048}`, `capacities (512-byte sectors) are not ${IMG_MIB} MiB and ${IMG2_MIB} MiB\n${show(o)}`);
    assert.equal(field(o.out, "serial"), SERIAL, `/sys/block/vdb/serial is not the id= given\n${show(o)}`);
    assert.equal(field(o.host, "one-w"), "to-a", `the write to vda did not land in the first image\n${show(o)}`);
    assert.equal(field(o.host, "two-w"), "to-b", `the write to vdb did not land in the second image\n${show(o)}`);
  });

  test("with 2 vCPUs a drive has two request queues, both serve writes at once and the data lands; queues=1 has one", () => {
    const o = outcome("mq");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.out, "hctx"), "2 1", `blk-mq hardware queues of vda (default) and vdb (queues=1)\n${show(o)}`);
    assert.equal(field(o.out, "cpus"), "0 1", `blk-mq should map CPU 0 to queue 0 and CPU 1 to queue 1, so each pinned writer has its own\n${show(o)}`);
    assert.match(field(o.out, "a") ?? "", SHA, show(o));
    assert.equal(field(o.host, "a"), field(o.out, "a"), `the image's first 256 KiB are not what the CPU 0 writer wrote\n${show(o)}`);
    assert.equal(field(o.host, "b"), field(o.out, "b"), `the 256 KiB at 1 MiB are not what the CPU 1 writer wrote\n${show(o)}`);
    assert.equal(field(o.out, "back"), field(o.out, "a"), `a direct read from CPU 1 returned other bytes than CPU 0 wrote\n${show(o)}`);
    assert.equal(o.err, "", show(o));
  });

  test("--rng gives the guest virtio-rng as /dev/hwrng: full 64-byte reads, two reads differ", () => {
    const o = outcome("rng");
    assert.equal(o.rc, 0, show(o));
    assert.match(field(o.out, "current") ?? "", /^virtio_rng/, `rng_current does not name virtio_rng\n${show(o)}`);
    assert.equal(field(o.out, "bytes"), "64", `dd bs=64 count=1 from /dev/hwrng gave another count\n${show(o)}`);
    assert.match(o.out, /^distinct$/m, `two reads of /dev/hwrng were equal\n${show(o)}`);
  });

  test("vmm run --console hvc prints the command's output through hvc0", () => {
    const o = outcome("hvc");
    assert.equal(o.rc, 0, show(o));
    assert.match(o.out, /^hello active=/m, `no output from the command\n${show(o)}`);
    assert.match(field(o.out, "hello active") ?? "", /\bhvc0\b/, `the guest's console is not hvc0\n${show(o)}`);
    assert.equal(o.err, "", show(o));
  });

  test("vmm boot --console hvc reaches the init marker, takes input on hvc0, and ends with 0 on poweroff", () => {
    const o = outcome("hvcboot");
    assert.match(o.out, /vmm-guest: ready/, `no init marker on hvc0\n${show(o)}`);
    assert.match(o.out, /hvc-says-42 on \/dev\/hvc0/, `the shell on hvc0 did not run the typed command\n${show(o)}`);
    assert.equal(o.rc, 0, show(o));
  });

  test("data the guest synced survives a SIGKILL of vmm right after sync returned", () => {
    const o = outcome("sigkill");
    const guest = shaOf(o.out, "/mnt/f");
    assert.ok(guest, `the guest printed no sha256sum of /mnt/f\n${show(o)}`);
    assert.match(o.out, /synced-42/, `the guest's sync did not return\n${show(o)}`);
    assert.equal(o.rc, 137, `vmm was not ended by the SIGKILL (status ${o.rc})\n${show(o)}`);
    assert.equal(field(o.host, "raw-sha"), guest, `debugfs finds the synced file lost or different after the SIGKILL\n${show(o)}`);
    // e2fsck replays the journal as a mount would: 1 says it did, nothing worse may be left.
    assert.ok(["0", "1"].includes(field(o.host, "fsck") ?? ""), `e2fsck -fy left errors after the kill\n${show(o)}`);
    assert.equal(field(o.host, "host-sha"), guest, `the synced file is lost or differs after journal replay\n${show(o)}`);
  });
});
