/**
 * Real TAP devices for tests, made harmless: each scenario runs as a child
 * process (this file, on the runtime running the test) inside a private
 * network namespace (`unshare --net`), so the links it creates, attaches to
 * and deletes vanish with it and never touch the host's network. Tests and
 * CI run as root, which `unshare` and TAP creation need; without it the
 * test fails with the child's stderr rather than skipping.
 *
 * The child prints one JSON line of what it saw; the test asserts on it.
 * Options build the odd hosts openNet must explain: a /dev/net/tun that is
 * missing or unreadable (a private mount namespace with a tmpfs over
 * /dev/net), or a root that lacks CAP_NET_ADMIN (setpriv).
 *
 * @example
 * ```ts
 * import { inNetns } from "./tap_netns.ts";
 * const r = inNetns<Record<string, unknown>>("tap");
 * console.log(r.created); // what openTap("vmm-t0") returned
 * ```
 */
import { spawnSync } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { scriptCommand } from "./vmm_cli.ts";
import { hostView, libc, mmapAnon, NativeBuf, Poller } from "../../ffi/libc.ts";
import { openTap, setTapOffload, tapMtu, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUNGETIFF } from "../../ffi/tap.ts";
import { closeNet, openNet } from "../../devices/net/tap.ts";
import { GuestMemory } from "../../vm/memory.ts";
import { Virtqueue } from "../../devices/virtio/ring.ts";
import {
  NET_FEATURES,
  NetRx,
  NetStats,
  NetTx,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
} from "../../devices/net/net.ts";
import { DriverQueue } from "./driver_queue.ts";

const SELF = fileURLToPath(import.meta.url);

/** How the namespace the child runs in differs from a plain new network namespace. */
export interface NetnsOptions {
  /** Shell commands run first, as root, inside the namespace (`ip tuntap add …`). */
  setup?: string;
  /** Also a private mount namespace with a fresh tmpfs over /dev/net: empty, or with a mode-000 `tun` node. */
  devNet?: "empty" | "unreadable";
  /** Capabilities the child runs without (setpriv names: `net_admin`, `dac_override`…). */
  dropCaps?: string[];
}

/** Run `scenario` of this file (with `args`) in a private network namespace; returns what it printed. */
export function inNetns<T>(scenario: string, o: NetnsOptions = {}, args: string[] = []): T {
  const steps = [o.setup ?? ""];
  if (o.devNet) steps.push("mount -t tmpfs none /dev/net");
  if (o.devNet === "unreadable") steps.push("mknod -m 000 /dev/net/tun c 10 200");
  const caps = (o.dropCaps ?? []).map((c) => `-${c}`).join(",");
  const setpriv = caps ? `setpriv --bounding-set ${caps} --inh-caps ${caps} ` : "";
  // The runtime and its arguments arrive as "$@": no quoting of paths.
  const script = `${steps.filter(Boolean).join("\n")}\nexec ${setpriv}"$@"`;
  const [cmd, argv] = scriptCommand(SELF, [scenario, ...args]);
  const ns = o.devNet ? ["--net", "--mount"] : ["--net"];
  const r = spawnSync("unshare", [...ns, "--", "sh", "-euc", script, "sh", cmd, ...argv], { encoding: "utf8", timeout: 20_000 });
  if (r.status !== 0) {
    throw new Error(`netns scenario ${scenario} failed (status ${r.status}, ${r.error?.message ?? "no spawn error"}): ${r.stderr}`);
  }
  const lines = r.stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]) as T;
}

// ---- inside the namespace ----

/** Run a command; its stdout, or throw with its stderr. */
function sh(command: string): string {
  const r = spawnSync("sh", ["-euc", command], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${command}: ${r.stderr}`);
  return r.stdout;
}

/** The message `fn` throws, or "ok". */
function outcome(fn: () => unknown): string {
  try {
    fn();
    return "ok";
  } catch (e) {
    return (e as Error).message;
  }
}

function linkExists(name: string): boolean {
  return spawnSync("ip", ["link", "show", name]).status === 0;
}

/** ffi/tap.ts against the kernel: create, read back, resize, refuse. */
function tapScenario() {
  const tap = openTap("vmm-t0");
  const req = NativeBuf.alloc(40);
  const getiff = libc.ioctl(tap.fd, BigInt(TUNGETIFF), req.addr);
  const ifName = new TextDecoder().decode(req.bytes.subarray(0, req.bytes.indexOf(0)));
  const existed = linkExists("vmm-t0");
  sh("ip link set vmm-t0 mtu 1400");
  const mtuAfter = tapMtu("vmm-t0");
  const offloadAll = outcome(() => setTapOffload(tap.fd, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6));
  const offloadTsoAlone = outcome(() => setTapOffload(tap.fd, TUN_F_TSO4));
  const second = outcome(() => openTap("vmm-t0"));
  const lo = outcome(() => openTap("lo"));
  const picked = openTap("vmm%d");
  libc.close(tap.fd);
  libc.close(picked.fd);
  return {
    created: { name: tap.name, mtu: tap.mtu, fdOk: tap.fd >= 0 },
    getiff: { r: getiff, name: ifName, flags: req.view.getUint16(16, true) },
    existed,
    mtuAfter,
    mtuOfNothing: tapMtu("vmm-nothing"),
    offloadAll,
    offloadTsoAlone,
    second,
    lo,
    picked: { name: picked.name, mtu: picked.mtu },
    goneAfterClose: !linkExists("vmm-t0") && !linkExists(picked.name),
  };
}

/** openNet() as root: attach, create, and the links it must refuse. */
function openNetScenario() {
  const held = openNet({ tap: "vmm-held" });
  // A second process, in this namespace, wants the TAP this one holds.
  const [cmd, argv] = scriptCommand(SELF, ["attach", "vmm-held"]);
  const other = spawnSync(cmd, argv, { encoding: "utf8" });
  const made = openNet({ tap: "vmm-new", mac: [0x52, 0x54, 0, 1, 2, 3], mtu: 9000 });
  const picked = openNet({ tap: "vmm%d" });
  const result = {
    held: { tap: held.tap, mtu: held.mtu, mac: held.mac },
    inUse: other.status === 0 ? JSON.parse(other.stdout.trim().split("\n").pop()!) : other.stderr,
    lo: outcome(() => openNet({ tap: "lo" })),
    tun: outcome(() => openNet({ tap: "vmm-tun" })),
    made: { tap: made.tap, mtu: made.mtu, mac: made.mac, exists: linkExists("vmm-new") },
    picked: picked.tap,
    heldSurvives: false,
    madeGone: false,
  };
  [held, made, picked].forEach(closeNet);
  result.heldSurvives = linkExists("vmm-held"); // persistent: `ip tuntap add` made it
  result.madeGone = !linkExists("vmm-new"); // vmm made it: it goes with the fd
  return result;
}

/** Every name in `names` through openNet(), each outcome. */
function openNetOutcomes(names: string[]) {
  return Object.fromEntries(names.map((n) => [n, outcome(() => closeNet(openNet({ tap: n })))]));
}

/** Ethernet + ARP request "who has `tpa`? tell `spa`" from `mac`, behind a 12-byte virtio_net_hdr. */
function arpRequest(mac: number[], spa: number[], tpa: number[], gsoType = 0): Uint8Array {
  const f = new Uint8Array(12 + 14 + 28);
  f[1] = gsoType;
  f.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, ...mac, 0x08, 0x06], 12);
  f.set([0, 1, 0x08, 0x00, 6, 4, 0, 1, ...mac, ...spa, 0, 0, 0, 0, 0, 0, ...tpa], 26);
  return f;
}

/**
 * NetTx and NetRx on a real TAP: a frame sent while the link is down is
 * dropped quietly; an ARP request from the "guest" gets the host kernel's
 * reply; a header the TAP refuses costs one frame; deleting the link ends
 * both directions with one line each.
 */
function trafficScenario() {
  // No IPv6 on the new link: its router solicitations would be frames we did not ask for.
  sh("echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null || true");
  const net = openNet({ tap: "vmm-n0", mac: [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc] });
  const size = 1 << 20, host = mmapAnon(size);
  const mem = new GuestMemory(hostView(host, size), undefined, host);
  const txq = new DriverQueue(mem, DriverQueue.layout(0x1000, 16));
  const rxq = new DriverQueue(mem, DriverQueue.layout(0x3000, 16));
  const txVq = new Virtqueue(mem, txq.config(false));
  const rxVq = new Virtqueue(mem, rxq.config(false));
  const log: string[] = [];
  const txStats = new NetStats((l) => log.push(l)), rxStats = new NetStats((l) => log.push(l));
  const features = NET_FEATURES & (VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6);
  const tx = new NetTx(mem, net.tapFd, 16, txStats);
  const rx = new NetRx(mem, net.tapFd, features, rxStats);
  for (let i = 0; i < 8; i++) rxq.add([{ gpa: 0x10000 + i * 0x1000, len: 0x1000, write: true }]);
  const send = (frame: Uint8Array) => {
    mem.write(0x8000, frame);
    txq.add([{ gpa: 0x8000, len: frame.length }]);
    tx.kick(txVq);
  };
  const request = arpRequest(net.mac, [10, 9, 0, 2], [10, 9, 0, 1]);
  send(request); // the link is still down (EIO)
  const linkDown = { txFrames: txStats.txFrames, txDropped: txStats.txDropped, tapGone: txStats.tapGone, lines: log.length };
  sh("ip addr add 10.9.0.1/24 dev vmm-n0 && ip link set vmm-n0 up");
  /** Frames the guest got, until an ARP one arrives or 2 s pass. */
  const receive = () => {
    const got: { header: number[]; frame: number[] }[] = [];
    const poller = new Poller([net.tapFd]);
    const end = Date.now() + 2000;
    while (!got.some((g) => g.frame[12] === 0x08 && g.frame[13] === 0x06) && Date.now() < end) {
      poller.wait(100);
      rx.input(rxVq);
      for (let u = rxq.popUsed(); u; u = rxq.popUsed()) {
        const at = 0x10000 + u.id * 0x1000; // head i is the chain at 0x10000 + i * 4 KiB
        got.push({ header: [...mem.slice(at, 12)], frame: [...mem.slice(at + 12, u.len - 12)] });
      }
    }
    return got;
  };
  send(request);
  const replies = receive().filter((g) => g.frame[12] === 0x08 && g.frame[13] === 0x06);
  send(arpRequest(net.mac, [10, 9, 0, 2], [10, 9, 0, 1], 0x7f)); // gso_type no kernel knows
  const afterRefusal = { txFrames: txStats.txFrames, txDropped: txStats.txDropped, tapGone: txStats.tapGone };
  send(request);
  const afterGood = { txFrames: txStats.txFrames, txDropped: txStats.txDropped };
  sh("ip link del vmm-n0");
  const revents = new Poller([net.tapFd]).wait(0)[0];
  send(request);
  send(request);
  rx.input(rxVq);
  rx.input(rxVq);
  return {
    linkDown,
    replies,
    afterRefusal,
    afterGood,
    revents,
    afterDelete: { txDropped: txStats.txDropped, txGone: txStats.tapGone, rxGone: rxStats.tapGone, inputFd: rx.inputFd() },
    log,
  };
}

if (import.meta.main) {
  const [scenario, ...args] = process.argv.slice(2);
  const run: Record<string, () => unknown> = {
    tap: tapScenario,
    openNet: openNetScenario,
    outcomes: () => openNetOutcomes(args),
    attach: () => outcome(() => openNet({ tap: args[0] })),
    traffic: trafficScenario,
  };
  if (!run[scenario]) throw new Error(`No netns scenario ${scenario}`);
  console.log(JSON.stringify(run[scenario]()));
}
