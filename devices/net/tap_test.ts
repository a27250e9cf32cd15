/**
 * devices/net/tap.ts: the `--net` option, MAC addresses, and openNet()'s one
 * line for each way a TAP cannot be had. openNet runs against real TAPs in
 * private network namespaces (test/support/tap_netns.ts), some of them
 * built to fail: no CAP_NET_ADMIN, no /dev/net/tun, an unreadable one.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError } from "../../vm/vm.ts";
import { formatMac, generateMac, MAX_MTU, MIN_MTU, parseMac, parseNetSpec } from "./tap.ts";
import { inNetns } from "../../test/support/tap_netns.ts";

// ---- --net tap=NAME[,mac=..][,mtu=N] ----

test("parseNetSpec() takes a TAP name alone, or with mac and mtu in any order", () => {
  assert.deepEqual(parseNetSpec("tap=tap0"), { tap: "tap0" });
  assert.deepEqual(parseNetSpec("tap=tap0,mac=52:54:00:12:34:56,mtu=9000"), {
    tap: "tap0",
    mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
    mtu: 9000,
  });
  assert.deepEqual(parseNetSpec("mtu=1400,mac=02-00-00-AB-cd-EF,tap=vmm%d"), {
    tap: "vmm%d",
    mac: [0x02, 0, 0, 0xab, 0xcd, 0xef],
    mtu: 1400,
  });
});

test("parseNetSpec() takes the MTU bounds 68 and 65521", () => {
  assert.equal(MIN_MTU, 68);
  assert.equal(MAX_MTU, 65521);
  assert.equal(parseNetSpec("tap=t,mtu=68").mtu, 68);
  assert.equal(parseNetSpec("tap=t,mtu=65521").mtu, 65521);
});

test("parseNetSpec() refuses each wrong form with one ConfigError line naming the option", () => {
  const cases: [string, string][] = [
    ["", `--net : expected key=value, got ""`],
    ["tap0", `--net tap0: expected key=value, got "tap0"`],
    ["tap=t,,mtu=9000", `--net tap=t,,mtu=9000: expected key=value, got ""`],
    ["tap=a,tap=b", `--net tap=a,tap=b: option "tap" given twice`],
    ["tap=", `--net tap=: "" is not a network interface name (1-15 bytes, no spaces, '/' or ':')`],
    ["tap=abcdefghijklmnop", `--net tap=abcdefghijklmnop: "abcdefghijklmnop" is not a network interface name (1-15 bytes, no spaces, '/' or ':')`],
    ["tap=a/b", `--net tap=a/b: "a/b" is not a network interface name (1-15 bytes, no spaces, '/' or ':')`],
    ["tap=t,mac=52:54:00:12:34", `--net tap=t,mac=52:54:00:12:34: mac "52:54:00:12:34" is not six hex pairs like 52:54:00:12:34:56`],
    ["tap=t,mac=01:00:5e:00:00:01", `--net tap=t,mac=01:00:5e:00:00:01: mac 01:00:5e:00:00:01 is a multicast address; a NIC needs a unicast one`],
    ["tap=t,mac=ff:ff:ff:ff:ff:ff", `--net tap=t,mac=ff:ff:ff:ff:ff:ff: mac ff:ff:ff:ff:ff:ff is a multicast address; a NIC needs a unicast one`],
    ["tap=t,mac=00:00:00:00:00:00", `--net tap=t,mac=00:00:00:00:00:00: mac 00:00:00:00:00:00 is the all-zero address; a NIC needs a real one`],
    ["tap=t,mtu=67", `--net tap=t,mtu=67: mtu 67 must be a whole number from 68 to 65521`],
    ["tap=t,mtu=65522", `--net tap=t,mtu=65522: mtu 65522 must be a whole number from 68 to 65521`],
    ["tap=t,mtu=1e3", `--net tap=t,mtu=1e3: mtu 1e3 must be a whole number from 68 to 65521`],
    ["tap=t,mtu=-1500", `--net tap=t,mtu=-1500: mtu -1500 must be a whole number from 68 to 65521`],
    ["tap=t,mtu=", `--net tap=t,mtu=: mtu  must be a whole number from 68 to 65521`],
    ["tap=t,queues=2", `--net tap=t,queues=2: unknown option "queues" (expected tap, mac or mtu)`],
    ["mac=52:54:00:12:34:56", `--net mac=52:54:00:12:34:56: needs tap=NAME`],
  ];
  for (const [spec, message] of cases) {
    assert.throws(() => parseNetSpec(spec), (e) => e instanceof ConfigError && e.message === message, `${spec} → ${message}`);
  }
});

// ---- MAC addresses ----

test("parseMac() reads six hex pairs with ':' or '-' in either case; formatMac() writes them back lower-case", () => {
  assert.deepEqual(parseMac("52:54:00:12:34:56"), [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
  assert.deepEqual(parseMac("02-0A-0b-C0-d0-FF"), [0x02, 0x0a, 0x0b, 0xc0, 0xd0, 0xff]);
  assert.equal(formatMac([0x02, 0x0a, 0x0b, 0xc0, 0xd0, 0xff]), "02:0a:0b:c0:d0:ff");
  assert.equal(formatMac(parseMac("52:54:00:00:00:01")!), "52:54:00:00:00:01");
});

test("parseMac() refuses anything but six hex pairs", () => {
  for (const bad of ["", "52:54:00:12:34", "52:54:00:12:34:5", "52:54:00:12:34:567", "5254.0012.3456", "525400123456", "gg:54:00:12:34:56", " 52:54:00:12:34:56", "52:54:00:12:34:56:78"]) {
    assert.equal(parseMac(bad), null, bad);
  }
});

test("generateMac() is 52:54:00 and three given random bytes: unicast, locally administered", () => {
  assert.deepEqual(generateMac(new Uint8Array([0xde, 0xad, 0xbe])), [0x52, 0x54, 0x00, 0xde, 0xad, 0xbe]);
  const seen = new Set<string>();
  for (let i = 0; i < 8; i++) {
    const mac = generateMac();
    assert.equal(mac.length, 6);
    assert.deepEqual(mac.slice(0, 3), [0x52, 0x54, 0x00]);
    assert.equal(mac[0] & 1, 0, "unicast");
    assert.equal(mac[0] & 2, 2, "locally administered");
    assert.ok(mac.every((b) => Number.isInteger(b) && b >= 0 && b <= 255));
    seen.add(formatMac(mac));
  }
  assert.ok(seen.size > 1, "the last three bytes are random");
});

// ---- openNet() against real TAPs, in private network namespaces ----

interface OpenNetRun {
  held: { tap: string; mtu: number; mac: number[] };
  inUse: string;
  lo: string;
  tun: string;
  made: { tap: string; mtu: number; mac: number[]; exists: boolean };
  picked: string;
  heldSurvives: boolean;
  madeGone: boolean;
}
let openNetRun: OpenNetRun | undefined;
const rootNetns = () =>
  (openNetRun ??= inNetns<OpenNetRun>("openNet", {
    setup: "ip tuntap add vmm-held mode tap\nip link set vmm-held mtu 1400\nip tuntap add vmm-tun mode tun",
  }));

test("openNet() attaches to an existing TAP with its MTU and a generated 52:54:00 MAC", () => {
  const { held } = rootNetns();
  assert.equal(held.tap, "vmm-held");
  assert.equal(held.mtu, 1400);
  assert.deepEqual(held.mac.slice(0, 3), [0x52, 0x54, 0x00]);
});

test("openNet() says a TAP another process holds is in use", () => {
  assert.equal(rootNetns().inUse, "--net tap=vmm-held: vmm-held is in use by another process (another VM?)");
});

test("openNet() says a link that is not a TAP (lo, a TUN) is not one", () => {
  const r = rootNetns();
  assert.equal(r.lo, "--net tap=lo: lo exists but is not a TAP device this vmm can attach to");
  assert.equal(r.tun, "--net tap=vmm-tun: vmm-tun exists but is not a TAP device this vmm can attach to");
});

test("openNet() creates a missing TAP (root) with the MAC and MTU asked for; closeNet() deletes only what vmm created", () => {
  const r = rootNetns();
  assert.deepEqual(r.made, { tap: "vmm-new", mtu: 9000, mac: [0x52, 0x54, 0, 1, 2, 3], exists: true });
  assert.ok(r.madeGone, "vmm-new went with its fd");
  assert.ok(r.heldSurvives, "vmm-held is persistent (ip tuntap add)");
});

test("openNet() reports the TAP the kernel named for tap=vmm%d", () => {
  assert.equal(rootNetns().picked, "vmm0");
});

test("openNet() without CAP_NET_ADMIN: permission denied for a new TAP and for one owned by another user", () => {
  const r = inNetns<Record<string, string>>("outcomes", {
    setup: "ip tuntap add vmm-owned mode tap user 65534",
    dropCaps: ["net_admin"],
  }, ["vmm-new", "vmm-owned"]);
  assert.deepEqual(r, {
    "vmm-new": "--net tap=vmm-new: permission denied: no TAP named vmm-new that vmm may use, and creating one needs CAP_NET_ADMIN",
    "vmm-owned": "--net tap=vmm-owned: permission denied: no TAP named vmm-owned that vmm may use, and creating one needs CAP_NET_ADMIN",
  });
});

test("openNet() without /dev/net/tun says to load the tun module", () => {
  const r = inNetns<Record<string, string>>("outcomes", { devNet: "empty" }, ["vmm0"]);
  assert.deepEqual(r, { vmm0: "--net tap=vmm0: /dev/net/tun is missing (modprobe tun)" });
});

test("openNet() with an unreadable /dev/net/tun says permission denied opening it", () => {
  const r = inNetns<Record<string, string>>("outcomes", { devNet: "unreadable", dropCaps: ["dac_override", "dac_read_search"] }, ["vmm0"]);
  assert.deepEqual(r, { vmm0: "--net tap=vmm0: permission denied opening /dev/net/tun" });
});
