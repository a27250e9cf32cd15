/**
 * End to end: virtio-net over a TAP with Debian's stock cloud kernel on real
 * KVM, inside a network namespace the script makes itself, so no traffic
 * leaves it and the host's links are never touched.
 *
 * Like blk_test.ts, one shell script runs every scenario in turn (directly
 * on a hardware-KVM host, in the nested KVM host of test/support/nested.ts
 * elsewhere) and prints `@@net NAME rc=N` then `@@NAME.out|err|host` lines;
 * each test below checks one scenario.
 *
 * The guests run `vmm run --busybox` (the default guest's busybox
 * initramfs): the TCP transfers use busybox nc at both ends. busybox nc shuts its
 * sending half as soon as its stdin ends and quits when the peer's half
 * ends, so a receiving nc gets a stdin that never ends (a FIFO held open, or
 * `sleep |`): otherwise it would close the connection before the data came.
 */
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { e2eTier } from "../support/tier.ts";
import { field, guestSendsCommand, netnsShell, type Outcome, parseScenarios, shaOf, showOutcome } from "../support/scenarios.ts";
import { runNested } from "../support/nested.ts";
import { defaultCacheDir, ensureDefaultGuest } from "../../guest/build.ts";
import { isDeno } from "../../ffi/runtime.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const RUNTIME = isDeno ? "deno" : "bun";
const VMM = process.env.VMM_E2E_VMM || (isDeno ? "deno run -A --no-check bin/vmm.ts" : "bun bin/vmm.ts");
/** Bytes moved each way: a few MiB, many 64 KiB TSO segments. */
const TCP_BYTES = 4 * 1024 * 1024;
const MAC = "52:54:00:12:34:56";
const MTU = 1400;

function scenarios(): string {
  return `
set -u
VMM="${VMM}"
E=/tmp/e2e-net
rm -rf $E; mkdir -p $E
NS=vmm-e2e-$$
say() { echo; echo "@@net $1 rc=$2"; for s in out err host; do { cat $E/$1.$s 2>/dev/null; echo; } | tr -d '\\r' | sed "s/^/@@$1.$s /"; done; }
wait_for() { i=0; until grep -q "$1" "$2" 2>/dev/null || [ $i -ge 900 ]; do sleep 0.2; i=$((i+1)); done; }
wait_exit() { ( sleep 240; kill -9 $1 2>/dev/null ) & wd=$!; wait $1; rc=$?; kill $wd 2>/dev/null; return $rc; }
hsha() { sha256sum <"$1" | cut -c1-64; }
in_ns() { ip netns exec $NS "$@"; }
${netnsShell(MTU)}
head -c ${TCP_BYTES} /dev/urandom >$E/h2g

# ping: the guest gets an address, pings the host's side of the TAP; MAC and MTU as given.
fresh_ns
in_ns timeout -k 30 300 $VMM run --busybox --net tap=tap0,mac=${MAC} -- sh -c "$GUEST_IP && echo mac=\\$(cat /sys/class/net/eth0/address) && echo mtu=\\$(cat /sys/class/net/eth0/mtu) && ping -c 3 -W 10 10.0.2.1 | grep -E 'transmitted'" >$E/ping.out 2>$E/ping.err
say ping $?

# g2h: the guest sends ${TCP_BYTES} random bytes over TCP to the host.
fresh_ns
( sleep 400 | in_ns busybox nc -l -p 5000 >$E/g2h.recv ) &
in_ns timeout -k 30 300 $VMM run --busybox --net tap=tap0 -- sh -c "${guestSendsCommand(TCP_BYTES)}" >$E/g2h.out 2>$E/g2h.err
rc=$?
i=0; while [ $(stat -c %s $E/g2h.recv 2>/dev/null || echo 0) -lt ${TCP_BYTES} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "host-sha=$(hsha $E/g2h.recv)" >$E/g2h.host
echo "host-bytes=$(stat -c %s $E/g2h.recv)" >>$E/g2h.host
say g2h $rc

# h2g: the host sends ${TCP_BYTES} random bytes over TCP to the guest.
fresh_ns
( for i in $(seq 1 600); do sleep 0.2; in_ns busybox nc 10.0.2.2 5001 <$E/h2g >/dev/null 2>&1 && break; done ) &
sender=$!
in_ns timeout -k 30 300 $VMM run --busybox --net tap=tap0 -- sh -c "$GUEST_IP && mkfifo /tmp/p && { nc -l -p 5001 </tmp/p >/tmp/r & } && exec 3>/tmp/p && wait && sha256sum /tmp/r" >$E/h2g.out 2>$E/h2g.err
rc=$?
kill $sender 2>/dev/null
echo "host-sha=$(hsha $E/h2g)" >$E/h2g.host
say h2g $rc

# gone: the TAP's link is deleted while the guest runs; vmm says so and the guest carries on.
fresh_ns
in_ns timeout -k 30 300 $VMM run --busybox --net tap=tap0 -- sh -c "$GUEST_IP && ping -c 1 -W 10 10.0.2.1 >/dev/null && echo pinged && sleep 4 && ping -c 1 -W 1 10.0.2.1 >/dev/null; echo still-running" >$E/gone.out 2>$E/gone.err &
vmm=$!
wait_for pinged $E/gone.out
ip -n $NS link del tap0 && echo deleted >$E/gone.host
wait_exit $vmm
say gone $?

ip netns del $NS 2>/dev/null
true
`;
}


describe(`end to end on ${RUNTIME}: virtio-net over a TAP under vmm`, () => {
  const tier = e2eTier();
  console.log(`e2e tier: ${tier.tier} (${tier.why})`);
  let results = new Map<string, Outcome>();
  let raw = "";

  before(async () => {
    assert.notEqual(tier.tier, "none", `No end-to-end tier can run here: ${tier.why}`);
    await ensureDefaultGuest();
    const script = scenarios();
    if (tier.tier === "hardware") {
      raw = execFileSync("sh", ["-c", script], {
        cwd: REPO,
        env: { ...process.env, PATH: `${REPO}/node_modules/.bin:${process.env.PATH}` },
        encoding: "utf8",
        timeout: 1_200_000,
      });
    } else {
      const r = await runNested(script, { cwd: REPO, timeoutMs: 1_200_000, env: { VMM_CACHE: defaultCacheDir() } });
      console.log(`nested: L1 boot ${r.ms.boot} ms, all scenarios ${r.ms.total} ms`);
      raw = r.output;
    }
    results = parseScenarios(raw, "net");
  });

  function outcome(name: string): Outcome {
    const o = results.get(name);
    assert.ok(o, `scenario ${name} did not run; output was:\n${raw.slice(-3000)}`);
    return o;
  }
  const show = showOutcome;

  test("the guest pings the host side of the TAP, with the MAC given and the TAP's MTU", () => {
    const o = outcome("ping");
    assert.equal(o.rc, 0, show(o));
    assert.equal(field(o.out, "mac"), MAC, show(o));
    assert.equal(field(o.out, "mtu"), String(MTU), `the guest did not take the TAP's MTU (VIRTIO_NET_F_MTU)\n${show(o)}`);
    assert.match(o.out, /3 packets transmitted, 3 packets received/, show(o));
  });

  test(`${TCP_BYTES} bytes over TCP from the guest arrive on the host with the same sha256`, () => {
    const o = outcome("g2h");
    assert.equal(o.rc, 0, show(o));
    assert.match(o.out, /^sent$/m, show(o));
    const guest = shaOf(o.out, "/tmp/f");
    assert.ok(guest, `no sha256sum from the guest\n${show(o)}`);
    assert.equal(field(o.host, "host-bytes"), String(TCP_BYTES), show(o));
    assert.equal(field(o.host, "host-sha"), guest, show(o));
  });

  test(`${TCP_BYTES} bytes over TCP from the host arrive in the guest with the same sha256`, () => {
    const o = outcome("h2g");
    assert.equal(o.rc, 0, show(o));
    const guest = shaOf(o.out, "/tmp/r");
    assert.ok(guest, `no sha256sum from the guest\n${show(o)}`);
    assert.equal(guest, field(o.host, "host-sha"), show(o));
  });

  test("a TAP whose link is deleted is reported in one line and the guest keeps running", () => {
    const o = outcome("gone");
    assert.match(o.host, /deleted/, `the test could not delete the TAP\n${show(o)}`);
    assert.match(o.out, /^still-running$/m, `the guest did not carry on\n${show(o)}`);
    assert.equal(o.rc, 0, show(o));
    assert.match(o.err, /virtio-net \(tap0\): queue \d: .*(went away|failed)/, `vmm did not report the TAP's loss\n${show(o)}`);
  });
});
