#!/usr/bin/env bun
/**
 * Network benchmark: vmm on Bun, vmm on Deno and QEMU microvm with a
 * virtio-net-device, each on a TAP in a network namespace of its own, run
 * with the same kernel, initramfs and guest command; the host measures:
 * - guest → host TCP throughput (the host reads N MiB of zeros the guest sends),
 * - host → guest TCP throughput (the host sends N MiB the guest discards),
 * - the ping round trip host → guest (busybox ping, 20 pings),
 * - the VMM process's host CPU time per GiB moved (user + system less the
 *   vCPU's time in guest mode, sampled around each transfer).
 * Contenders are interleaved run by run; the table shows medians with their
 * least and most, the ratios of the medians to QEMU's, and the machine it
 * ran on. A sample whose transfer came short or stalled is dropped, and the
 * log says why: the transfer stalled while the VM ran, or the VM's process
 * had ended, with the last of what it printed (a triple fault, a panic).
 * QEMU runs with `vhost=off`: vmm moves frames in user space too, and the
 * nested host has no vhost-net.
 *
 * Where /dev/kvm is hardware KVM the script runs here; elsewhere (PVM) it
 * runs inside the nested L1 host of test/support/nested.ts: low absolute
 * numbers, comparable between contenders.
 *
 * Usage: bun scripts/bench-net.ts [--runs 3] [--size MiB]
 * A benchmark, not a test: nothing here is asserted.
 */
import { parseArgs } from "node:util";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { median, stats } from "./bench/common.ts";
import { kvmKind } from "../vm/host.ts";
import { concatInitrd, DEFAULT_CMDLINE, runArchive } from "../mod.ts";
import { defaultCacheDir, ensureDefaultGuest } from "../guest/build.ts";
import { runNested } from "../test/support/nested.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { runs: { type: "string", default: "3" }, size: { type: "string" }, help: { type: "boolean", short: "h" } },
});
if (values.help) {
  console.log("Usage: bun scripts/bench-net.ts [--runs 3] [--size MiB]");
  process.exit(0);
}
const nested = kvmKind() !== "hardware";
const runs = Number(values.runs);
const sizeMiB = Number(values.size ?? (nested ? 64 : 2048));
if (!(runs >= 1) || !(sizeMiB >= 1)) {
  console.error("bench-net: --runs and --size take whole numbers ≥ 1");
  process.exit(2);
}

/** The guest: an address, then two servers and a marker; the host drives everything. */
const GUEST = [
  "ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0 || exit 1",
  // guest → host: send zeros until the host hangs up.
  "(while true; do nc -l -p 5000 </dev/zero >/dev/null 2>&1; done) &",
  // host → guest: a sink whose stdin never ends (busybox nc hangs up when its stdin does).
  "mkfifo /tmp/p && exec 3<>/tmp/p",
  "(while true; do nc -l -p 5001 </tmp/p >/dev/null 2>&1; done) &",
  "echo @@net-ready",
  "sleep 100000",
].join("\n");

const img = await ensureDefaultGuest({ log: (s) => console.error(`bench-net: ${s}`) });
const tmp = mkdtempSync(join(nested ? defaultCacheDir() : tmpdir(), "bench-net-"));
const qemuInitrd = join(tmp, "initrd-run.cpio");
writeFileSync(qemuInitrd, concatInitrd(new Uint8Array(readFileSync(img.initrd)), runArchive(["sh", "-c", GUEST])));
writeFileSync(join(tmp, "guest.sh"), GUEST);

const vmmArgs = `run --busybox --kernel ${img.kernel} --initrd ${img.initrd} --cpus 1 --memory 512M --net tap=tap0 -- sh ${"-c"} "$(cat ${tmp}/guest.sh)"`;
const CONTENDERS: Record<string, string> = {
  "vmm-bun": `bun bin/vmm.ts ${vmmArgs}`,
  "vmm-deno": `deno run -A --no-check bin/vmm.ts ${vmmArgs}`,
  qemu: [
    "qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 512 -smp 1 -nodefaults -no-user-config -nographic -no-reboot",
    `-serial stdio -kernel ${img.kernel} -initrd ${qemuInitrd} -append '${DEFAULT_CMDLINE}'`,
    "-netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off -device virtio-net-device,netdev=n0",
  ].join(" "),
};

function script(): string {
  const order = Object.keys(CONTENDERS);
  const lines = [`set -u`, `cd ${REPO}`, `export PATH=${REPO}/node_modules/.bin:$PATH`, `SIZE=${sizeMiB * 1024 * 1024}`, `O=/tmp/bench-net-out`, `
NS=vmm-bench-$$
mkdir -p $O
# A stdin that never ends for the host's receiving nc (busybox nc hangs up when its stdin does).
rm -f $O/hold; mkfifo $O/hold; exec 3<>$O/hold
now() { date +%s.%N; }
# cpu PID: user+system-guest clock ticks of a process (0 once it has ended: its sample is dropped then).
cpu() { awk '{ s = substr($0, index($0, ") ") + 2); split(s, f, " "); print f[12] + f[13] - f[41] }' /proc/$1/stat 2>/dev/null || echo 0; }
# The machine the run ran on (inside the nested host, L1), and the unit of cpu().
echo "@@host kernel=$(uname -r) cpus=$(nproc) tck=$(getconf CLK_TCK)"
# why NAME PID: why a transfer came short, for the dropped sample's line.
why() {
  if kill -0 $2 2>/dev/null; then echo "@@why $1 the VM still ran: the transfer stalled until its 300 s bound"
  else wait $2; echo "@@why $1 the VM process had ended (status $?): $(tail -c 300 $O/out | tr '\\n' ' ')"; fi
}
run_one() {  # NAME COMMAND
  ip netns del $NS 2>/dev/null
  ip netns add $NS && ip -n $NS link set lo up && ip -n $NS tuntap add tap0 mode tap &&
    ip -n $NS addr add 10.0.2.1/24 dev tap0 && ip -n $NS link set tap0 up || { echo "@@fail $1 netns"; return; }
  rm -f $O/out; ip netns exec $NS sh -c "exec $2" </dev/null >$O/out 2>&1 &
  pid=$!
  i=0; until grep -q @@net-ready $O/out || [ $i -ge 1500 ]; do sleep 0.2; i=$((i+1)); done
  grep -q @@net-ready $O/out || { echo "@@fail $1 not-ready $(tail -c 300 $O/out | tr '\\n' ' ')"; kill -9 $pid; wait $pid 2>/dev/null; return; }
  # The process that owns the VM: the runtime or QEMU (ip netns exec execs it).
  rtt=$(timeout 60 ip netns exec $NS busybox ping -c 20 -i 0.2 -q 10.0.2.2 2>&1 | sed -n 's/.*= [0-9.]*\\/\\([0-9.]*\\)\\/.*/\\1/p')
  c0=$(cpu $pid); t0=$(now)
  # Every step is bounded: a stuck transfer costs one sample, not the run.
  got=$( (timeout 300 ip netns exec $NS busybox nc 10.0.2.2 5000 <$O/hold | head -c $SIZE | wc -c) 2>/dev/null)
  t1=$(now); c1=$(cpu $pid)
  head -c $SIZE /dev/zero | timeout 300 ip netns exec $NS busybox nc 10.0.2.2 5001 >/dev/null 2>&1
  h2g_rc=$?
  t2=$(now); c2=$(cpu $pid)
  echo "@@sample $1 rtt=$rtt g2h_bytes=$got g2h_s=$(awk "BEGIN { print $t1 - $t0 }") g2h_cpu=$((c1 - c0)) h2g_rc=$h2g_rc h2g_s=$(awk "BEGIN { print $t2 - $t1 }") h2g_cpu=$((c2 - c1))"
  if [ "$got" != "$SIZE" ] || [ $h2g_rc -ne 0 ]; then why $1 $pid; fi
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
}`];
  for (let r = 0; r < runs; r++) {
    for (let k = 0; k < order.length; k++) {
      const name = order[(r + k) % order.length];
      lines.push(`echo "bench-net: run ${r + 1}/${runs} ${name}" >&2`, `run_one ${name} '${CONTENDERS[name].replaceAll("'", `'\\''`)}'`);
    }
  }
  lines.push(`ip netns del $NS 2>/dev/null; true`);
  return lines.join("\n");
}

let output = "";
let failed: string | undefined;
try {
  if (nested) {
    const r = await runNested(script(), { cwd: REPO, timeoutMs: 3_600_000, env: { VMM_CACHE: defaultCacheDir() } });
    output = r.output;
  } else {
    output = execFileSync("sh", ["-c", script()], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  }
} catch (e) {
  // runNested gives up after a second L1 fails too (it froze, died, or lost
  // a guest's CR3); that L1's samples went with it.
  failed = (e as Error).message.split("\n")[0];
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
if (failed !== undefined) {
  console.error(`bench-net: no table: ${failed}`);
  process.exit(1);
}

interface Sample {
  rtt: number;
  g2h: number;
  h2g: number;
  cpuPerGiB: number;
}
/** `key=value …` after a marker, as numbers (or strings where a value is not one). */
const fields = (s: string) => Object.fromEntries(s.split(" ").map((kv) => kv.split("=")));
const hostLine = /^@@host (.*)$/m.exec(output);
const host = fields(hostLine?.[1] ?? "");
const tck = Number(host.tck) || 100; // USER_HZ where getconf said nothing
const samples = new Map<string, Sample[]>();
for (const line of output.split("\n")) {
  const fail = /^@@fail (\S+) (.*)$/.exec(line);
  if (fail) console.error(`bench-net: ${fail[1]} failed: ${fail[2]}`);
  const why = /^@@why (\S+) (.*)$/.exec(line);
  if (why) console.error(`bench-net: ${why[1]}: sample dropped: ${why[2]}`);
  const m = /^@@sample (\S+) (.*)$/.exec(line);
  if (!m) continue;
  const f = Object.fromEntries(Object.entries(fields(m[2])).map(([k, v]) => [k, Number(v)]));
  if (f.g2h_bytes !== sizeMiB * 1024 * 1024 || f.h2g_rc !== 0) {
    const short = f.g2h_bytes !== sizeMiB * 1024 * 1024 ? `guest → host moved ${f.g2h_bytes} bytes, not ${sizeMiB} MiB` : `host → guest ended with status ${f.h2g_rc}`;
    console.error(`bench-net: ${m[1]}: ${short}; sample dropped`);
    continue;
  }
  const gib = (2 * sizeMiB) / 1024;
  const s: Sample = {
    rtt: f.rtt,
    g2h: sizeMiB / f.g2h_s,
    h2g: sizeMiB / f.h2g_s,
    cpuPerGiB: (f.g2h_cpu + f.h2g_cpu) / tck / gib,
  };
  samples.set(m[1], [...(samples.get(m[1]) ?? []), s]);
}

if (Object.keys(CONTENDERS).some((n) => !samples.has(n))) console.error(`bench-net: output tail:\n${output.slice(-2500)}`);

const of = (name: string, k: keyof Sample) => (samples.get(name) ?? []).map((s) => s[k]);
const cell = (xs: number[], digits: number) => {
  if (xs.length === 0) return "–";
  const s = stats(xs);
  return `${s.med.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`;
};
const ratio = (xs: number[], q: number[]) => (xs.length && q.length ? `${(median(xs) / median(q)).toFixed(2)}×` : "–");
const rows: [string, keyof Sample, number][] = [
  ["guest → host TCP (MiB/s)", "g2h", 1],
  ["host → guest TCP (MiB/s)", "h2g", 1],
  ["ping round trip (ms)", "rtt", 2],
  ["VMM host CPU per GiB moved (s)", "cpuPerGiB", 2],
];
console.log(`\nbench-net: ${nested ? "nested KVM (L1 under QEMU TCG)" : "hardware KVM"}, ${sizeMiB} MiB each way, ${runs} runs`);
console.log(`KVM host kernel ${host.kernel ?? "?"}, ${host.cpus ?? "?"} CPUs; CPU times in clock ticks (1/${tck} s)`);
console.log(`samples: ${[...Object.keys(CONTENDERS)].map((n) => `${n} ${samples.get(n)?.length ?? 0}`).join(", ")}\n`);
console.log("| metric (median (min–max)) | vmm-bun | vmm-deno | qemu microvm | bun/qemu | deno/qemu |");
console.log("|---|---|---|---|---|---|");
for (const [label, k, digits] of rows) {
  const [b, d, q] = ["vmm-bun", "vmm-deno", "qemu"].map((n) => of(n, k));
  console.log(`| ${label} | ${cell(b, digits)} | ${cell(d, digits)} | ${cell(q, digits)} | ${ratio(b, q)} | ${ratio(d, q)} |`);
}
console.log(`\nQEMU: -M microvm -accel kvm -cpu host -netdev tap,vhost=off -device virtio-net-device; 1 vCPU, 512 MiB.`);
