/**
 * End to end: vmm's container image (Containerfile, scripts/build-image.ts)
 * under a real OCI runtime, runc, on real KVM.
 *
 * The image is built here, once per test process, as an OCI layout in the
 * checkout's dist/ (the nested host sees the checkout, not this machine's
 * /tmp). Its runtime configs are made here too, from the one umoci derives
 * from the image, changed as `docker run` with these flags would:
 *
 *   --device /dev/kvm --user 65534 --group-add 36 --cap-drop ALL
 *   --security-opt no-new-privileges --read-only --tmpfs /tmp
 *
 * that is: /dev/kvm as a device node (10:232) the cgroup lets through, a
 * non-root user whose only extra group owns that node, no capabilities at
 * all, a read-only root and a fresh /tmp per container, no terminal.
 *
 * In the nested host (or directly, on hardware KVM) one shell script unpacks
 * the image into a bundle with `umoci unpack`, mounts cgroup2 if it is
 * missing, and runs one container per scenario with `runc run`:
 *   status   stdin closed, output to files: CMD's status (7) comes back
 *   sigterm  `runc kill ID TERM` while CMD sleeps: vmm, PID 1 of the
 *            container, ends with 143; no container, process or cgroup is
 *            left; its identity and capabilities are read while it runs
 *   nokvm    without the device: a one-line error and status 1
 * Each prints `@@oci NAME rc=N` and its lines (test/support/scenarios.ts).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { e2eTier } from "../support/tier.ts";
import { runNested } from "../support/nested.ts";
import { field, type Outcome, parseScenarios, showOutcome } from "../support/scenarios.ts";
import { ensureDefaultGuest } from "../../guest/build.ts";
import { isDeno } from "../../ffi/runtime.ts";
import { buildExe } from "../../scripts/build-exe.ts";
import { type BuiltImage, buildImage, IMAGE_EXE, parseContainerfile } from "../../scripts/build-image.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const RUNTIME = isDeno ? "deno" : "bun";
const WORK = `${REPO}/dist/e2e-oci-${RUNTIME}`;
const TAG = "test";

/** /dev/kvm is misc device 10, minor 232 (KVM_MINOR, include/linux/miscdevice.h). */
const KVM = { major: 10, minor: 232 };
/** The group given /dev/kvm in the container (kvm's gid on Fedora; any gid but the user's own would do). */
const KVM_GID = 36;
/** The container's user: nobody. */
const UID = 65534;

/** An OCI runtime config, as much of it as this test reads or writes. */
// deno-lint-ignore no-explicit-any
type RuntimeSpec = Record<string, any>;

/**
 * The config of one container: `base` (umoci's, from the image) with `args`
 * after the entrypoint and the `docker run` flags of this file's header;
 * `kvm: false` leaves /dev/kvm out.
 */
function containerConfig(base: RuntimeSpec, name: string, args: string[], kvm = true): RuntimeSpec {
  const c: RuntimeSpec = structuredClone(base);
  c.root = { path: "rootfs", readonly: true };
  c.hostname = `vmm-${name}`;
  c.process.terminal = false;
  c.process.args = [IMAGE_EXE, ...args];
  c.process.user = { uid: UID, gid: UID, additionalGids: [KVM_GID] };
  c.process.capabilities = { bounding: [], effective: [], inheritable: [], permitted: [], ambient: [] };
  c.process.noNewPrivileges = true;
  c.mounts.push({ destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "mode=1777", "size=256m"] });
  c.linux.cgroupsPath = `/vmm-oci-${name}`;
  if (kvm) {
    c.linux.devices = [{ path: "/dev/kvm", type: "c", ...KVM, fileMode: 0o660, uid: 0, gid: KVM_GID }];
    c.linux.resources.devices.push({ allow: true, type: "c", ...KVM, access: "rwm" });
  }
  return c;
}

/** The nested script: unpack, then one container per scenario. */
function scenarios(img: BuiltImage): string {
  return `
set -u
W=${WORK}
B=/tmp/oci/bundle
mkdir -p /tmp/oci
now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }
# say NAME RC: the scenario's status, then its output, stderr and host lines.
say() {
  echo; echo "@@oci $1 rc=$2"
  { tr -d '\\r' </tmp/oci/$1.out; echo; } | sed "s/^/@@$1.out /"
  { cat /tmp/oci/$1.err; echo; } | sed "s/^/@@$1.err /"
  { cat /tmp/oci/$1.host 2>/dev/null; echo; } | sed "s/^/@@$1.host /"
}
# wait_for TEXT FILE PID: until FILE holds TEXT or PID has ended, at most 180 s.
wait_for() { timeout 180 sh -c 'until grep -q "$1" "$2" 2>/dev/null || ! kill -0 $3 2>/dev/null; do sleep 0.2; done' sh "$1" "$2" "$3"; }
# wait_exit PID: its status; a watchdog kills it after 240 s (137), so a hang fails one scenario.
wait_exit() { ( sleep 240; kill -9 $1 2>/dev/null ) & wd=$!; wait $1; rc=$?; kill $wd 2>/dev/null; return $rc; }
# leftovers NAME: what a finished container may have left behind: runc's
# record of it, its cgroup, and any process named vmm (ps may be missing).
leftovers() {
  echo "containers=$(runc list -q | wc -l)"
  echo "cgroup=$(test -e /sys/fs/cgroup/vmm-oci-$1 && echo left || echo gone)"
  echo "processes=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -cx vmm)"
}

# unpack: the image into a runtime bundle; runc needs the cgroup2 hierarchy.
grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
t=$(now)
umoci unpack --image "$W/image:${img.tag}" $B >/tmp/oci/unpack.out 2>/tmp/oci/unpack.err
rc=$?
{ echo "ms=$(ms $t)"; echo "kvm=$(stat -c %Hr:%Lr /dev/kvm)"; echo "cgroupfs=$(stat -fc %T /sys/fs/cgroup)"; echo "runc=$(runc --version | head -1)"; } >/tmp/oci/unpack.host
say unpack $rc

# status: no terminal, stdin closed; CMD's status comes back through vmm and runc.
cp "$W/config-status.json" $B/config.json
t=$(now)
timeout 300 runc run --bundle $B vmm-status <&- >/tmp/oci/status.out 2>/tmp/oci/status.err
rc=$?
{ echo "ms=$(ms $t)"; leftovers status; } >/tmp/oci/status.host
say status $rc

# sigterm: runc kill TERM while CMD sleeps; who vmm runs as, read while it runs.
cp "$W/config-sigterm.json" $B/config.json
t=$(now)
runc run --bundle $B vmm-sigterm </dev/null >/tmp/oci/sigterm.out 2>/tmp/oci/sigterm.err &
pid=$!
wait_for 'sleeping' /tmp/oci/sigterm.out $pid
{
  echo "first_output_ms=$(ms $t)"
  cpid=$(runc state vmm-sigterm | sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p')
  echo "comm=$(cat /proc/$cpid/comm)"
  grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/$cpid/status | tr -s '\\t ' '  ' | sed 's/: */=/'
} >/tmp/oci/sigterm.host
t=$(now)
runc kill vmm-sigterm TERM
wait_exit $pid
rc=$?
{ echo "stop_ms=$(ms $t)"; leftovers sigterm; echo "pid=$(test -n "$cpid" -a -d "/proc/$cpid" && echo left || echo gone)"; } >>/tmp/oci/sigterm.host
say sigterm $rc

# nokvm: the same image without the device says why in one line.
cp "$W/config-nokvm.json" $B/config.json
timeout 120 runc run --bundle $B vmm-nokvm </dev/null >/tmp/oci/nokvm.out 2>/tmp/oci/nokvm.err
say nokvm $?
exit 0
`;
}

/** The files of the image's one layer, as `tar tv` lists them. */
function layerListing(img: BuiltImage): string {
  const blob = (d: string) => `${img.layout}/blobs/${d.replace(":", "/")}`;
  const index = JSON.parse(readFileSync(`${img.layout}/index.json`, "utf8"));
  const desc = index.manifests.find((m: RuntimeSpec) => m.annotations?.["org.opencontainers.image.ref.name"] === img.tag);
  const manifest = JSON.parse(readFileSync(blob(desc.digest), "utf8"));
  assert.equal(manifest.layers.length, 1, "one layer");
  return execFileSync("tar", ["tvzf", blob(manifest.layers[0].digest)], { encoding: "utf8" });
}

describe(`end to end on ${RUNTIME}: the container image under runc`, () => {
  const tier = e2eTier();
  console.log(`e2e tier: ${tier.tier} (${tier.why})`);
  let img: BuiltImage;
  let base: RuntimeSpec = {};
  let results = new Map<string, Outcome>();
  let raw = "";

  before(async () => {
    assert.notEqual(tier.tier, "none", `No end-to-end tier can run here: ${tier.why}`);
    await ensureDefaultGuest();
    rmSync(WORK, { recursive: true, force: true });
    mkdirSync(WORK, { recursive: true });
    let t = Date.now();
    const exe = buildExe(`${WORK}/vmm`);
    img = buildImage({ exe, layout: `${WORK}/image`, tag: TAG });
    console.log(`image: ${(img.bytes / 1e6).toFixed(1)} MB OCI layout, ${(img.rootfsBytes / 1e6).toFixed(1)} MB unpacked; built in ${Date.now() - t} ms`);
    rmSync(exe);
    execFileSync("umoci", ["raw", "runtime-config", "--image", img.ref, `${WORK}/base.json`]);
    base = JSON.parse(readFileSync(`${WORK}/base.json`, "utf8"));
    const configs: Record<string, RuntimeSpec> = {
      status: containerConfig(base, "status", ["run", "--busybox", "--", "sh", "-c", "echo hello from the container; exit 7"]),
      sigterm: containerConfig(base, "sigterm", ["run", "--busybox", "--", "sh", "-c", "echo sleeping; sleep 600"]),
      nokvm: containerConfig(base, "nokvm", ["run", "--busybox", "--", "true"], false),
    };
    for (const [name, c] of Object.entries(configs)) writeFileSync(`${WORK}/config-${name}.json`, JSON.stringify(c, null, 2));
    const script = scenarios(img);
    t = Date.now();
    if (tier.tier === "hardware") {
      raw = execFileSync("sh", ["-c", script.replaceAll("/tmp/oci", `${WORK}/tmp`)], { encoding: "utf8", timeout: 900_000 });
    } else {
      const r = await runNested(script, { cwd: REPO, timeoutMs: 900_000 });
      console.log(`nested: L1 boot ${r.ms.boot} ms, all scenarios ${r.ms.total} ms`);
      raw = r.output;
    }
    results = parseScenarios(raw, "oci");
    for (const [name, o] of results) console.log(`${name}: status ${o.rc}; ${o.host.trim().replace(/\n/g, ", ")}`);
  });
  after(() => {
    rmSync(WORK, { recursive: true, force: true });
  });

  function outcome(name: string): Outcome {
    const o = results.get(name);
    assert.ok(o, `scenario ${name} did not run; output was:\n${raw.slice(-3000)}`);
    return o;
  }

  test("the image is the Containerfile's: vmm, its loader and glibc, /tmp, and nothing else", () => {
    const recipe = parseContainerfile(readFileSync(`${REPO}/Containerfile`, "utf8"));
    assert.deepEqual(recipe.entrypoint, [IMAGE_EXE]);
    assert.deepEqual(base.process.args, [...recipe.entrypoint!, ...recipe.cmd!]);
    assert.ok(base.process.env.includes("PATH=/usr/bin"), base.process.env.join(" "));
    const files = layerListing(img).split("\n").filter((l) => l && !l.startsWith("d")).map((l) => l.split(/\s+/).pop());
    assert.deepEqual(files.sort(), [
      "lib/x86_64-linux-gnu/libc.so.6",
      "lib/x86_64-linux-gnu/libdl.so.2",
      "lib/x86_64-linux-gnu/libm.so.6",
      "lib/x86_64-linux-gnu/libpthread.so.0",
      "lib64/ld-linux-x86-64.so.2",
      "usr/bin/vmm",
    ]);
    assert.match(layerListing(img), /^drwxrwxrwt \S+ +\d+ \S+ \S+ tmp\/$/m);
  });

  test("umoci unpacks the image into a bundle in the KVM host", () => {
    const o = outcome("unpack");
    assert.equal(o.rc, 0, showOutcome(o));
    assert.equal(field(o.host, "kvm"), `${KVM.major}:${KVM.minor}`, "/dev/kvm's numbers in the config");
  });

  test("runc run returns CMD's status, with no terminal and stdin closed", () => {
    const o = outcome("status");
    assert.equal(o.rc, 7, showOutcome(o));
    assert.match(o.out, /hello from the container/);
    assert.equal(field(o.host, "containers"), "0", showOutcome(o));
  });

  test("runc kill TERM stops vmm, PID 1 of the container, with 143 and leaves nothing behind", () => {
    const o = outcome("sigterm");
    assert.equal(o.rc, 143, showOutcome(o));
    assert.match(o.out, /sleeping/);
    assert.equal(field(o.host, "containers"), "0", "runc list is empty");
    assert.equal(field(o.host, "pid"), "gone", "the container's process is gone");
    assert.equal(field(o.host, "processes"), "0", "no vmm process left");
    assert.equal(field(o.host, "cgroup"), "gone", "the container's cgroup is removed");
  });

  test("vmm needs no privilege in the container: a non-root user in /dev/kvm's group, no capabilities", () => {
    const o = outcome("sigterm");
    assert.equal(field(o.host, "comm"), "vmm", showOutcome(o));
    assert.equal(field(o.host, "Uid"), `${UID} ${UID} ${UID} ${UID}`);
    assert.equal(field(o.host, "Groups"), `${KVM_GID}`);
    for (const set of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]) assert.equal(field(o.host, set), "0000000000000000", set);
    assert.equal(field(o.host, "NoNewPrivs"), "1");
  });

  test("without /dev/kvm the container ends with 1 and says why in one line", () => {
    const o = outcome("nokvm");
    assert.equal(o.rc, 1, showOutcome(o));
    assert.match(o.err, /^vmm: \/dev\/kvm: .+$/m);
    assert.equal(o.err.trim().split("\n").length, 1, o.err);
  });
});
