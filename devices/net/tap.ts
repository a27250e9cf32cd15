/**
 * Host networks for virtio-net: the `--net` option, and attaching to a TAP
 * device so that the guest's network card is exactly that link.
 *
 * `--net tap=NAME[,mac=52:54:00:12:34:56][,mtu=N]`: NAME is an existing
 * TAP (`ip tuntap add NAME mode tap`), or a new one when vmm has
 * CAP_NET_ADMIN (it then lasts as long as vmm). Every way the user can get
 * it wrong becomes one ConfigError line naming the option.
 */
import { close } from "../../ffi/libc.ts";
import { SysError } from "../../ffi/errno.ts";
import { openTap, validTapName } from "../../ffi/tap.ts";
import { ConfigError } from "../../vm/errors.ts";

/** One `--net` option, parsed but not yet opened. */
export interface NetSpec {
  tap: string;
  /** Six bytes; default generated in `openNet`. */
  mac?: number[];
  /** Default: the TAP's own MTU. */
  mtu?: number;
}

/** An attached TAP, plain data a queue Worker receives as is. */
export interface NetBackend {
  tapFd: number;
  tap: string;
  mac: number[];
  mtu: number;
}

/** Largest MTU virtio-net's config field (u16) and a TAP frame of 64 KiB allow. */
export const MAX_MTU = 65535 - 14;
/** The smallest MTU IPv4 allows (RFC 791). */
export const MIN_MTU = 68;

/** Parse a MAC written as six hex pairs separated by ':' or '-'. */
export function parseMac(s: string): number[] | null {
  const m = /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(s);
  return m ? m.slice(1).map((h) => parseInt(h, 16)) : null;
}

export function formatMac(mac: number[]): string {
  return mac.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/**
 * A MAC for a guest nobody named: QEMU's 52:54:00 prefix (locally
 * administered, unicast) and three random bytes, so two VMs on one bridge
 * do not collide the way two copies of QEMU's fixed default would.
 */
export function generateMac(random: Uint8Array = crypto.getRandomValues(new Uint8Array(3))): number[] {
  return [0x52, 0x54, 0x00, random[0], random[1], random[2]];
}

/** Parse `tap=NAME[,mac=…][,mtu=N]`. */
export function parseNetSpec(s: string): NetSpec {
  const fail = (why: string) => new ConfigError(`--net ${s}: ${why}`);
  const spec: Partial<NetSpec> = {};
  const seen = new Set<string>();
  for (const part of s.split(",")) {
    const eq = part.indexOf("=");
    if (eq < 0) throw fail(`expected key=value, got "${part}"`);
    const key = part.slice(0, eq), value = part.slice(eq + 1);
    if (seen.has(key)) throw fail(`option "${key}" given twice`);
    seen.add(key);
    if (key === "tap") {
      if (!validTapName(value)) throw fail(`"${value}" is not a network interface name (1-15 bytes, no spaces, '/' or ':')`);
      spec.tap = value;
    } else if (key === "mac") {
      const mac = parseMac(value);
      if (!mac) throw fail(`mac "${value}" is not six hex pairs like 52:54:00:12:34:56`);
      if (mac[0] & 1) throw fail(`mac ${value} is a multicast address; a NIC needs a unicast one`);
      // Linux's eth_validate_addr refuses it too: the guest could not bring the link up.
      if (mac.every((b) => b === 0)) throw fail(`mac ${value} is the all-zero address; a NIC needs a real one`);
      spec.mac = mac;
    } else if (key === "mtu") {
      const mtu = /^\d+$/.test(value) ? Number(value) : NaN;
      if (!(mtu >= MIN_MTU && mtu <= MAX_MTU)) throw fail(`mtu ${value} must be a whole number from ${MIN_MTU} to ${MAX_MTU}`);
      spec.mtu = mtu;
    } else throw fail(`unknown option "${key}" (expected tap, mac or mtu)`);
  }
  if (!spec.tap) throw fail("needs tap=NAME");
  return spec as NetSpec;
}

/** Attach to the TAP; every failure is one line naming the option and why. */
export function openNet(spec: NetSpec): NetBackend {
  const fail = (why: string) => new ConfigError(`--net tap=${spec.tap}: ${why}`);
  let tap;
  try {
    tap = openTap(spec.tap);
  } catch (e) {
    if (!(e instanceof SysError)) throw e;
    const c = e.code;
    if (e.call.startsWith("open")) {
      if (c === "ENOENT" || c === "ENODEV") throw fail("/dev/net/tun is missing (modprobe tun)");
      if (c === "EACCES" || c === "EPERM") throw fail("permission denied opening /dev/net/tun");
      throw fail(`opening /dev/net/tun: ${e.message}`);
    }
    if (c === "EPERM" || c === "EACCES") {
      throw fail(`permission denied: no TAP named ${spec.tap} that vmm may use, and creating one needs CAP_NET_ADMIN`);
    }
    if (c === "EBUSY") throw fail(`${spec.tap} is in use by another process (another VM?)`);
    if (c === "EINVAL") throw fail(`${spec.tap} exists but is not a TAP device this vmm can attach to`);
    throw fail(e.message);
  }
  return { tapFd: tap.fd, tap: tap.name, mac: spec.mac ?? generateMac(), mtu: spec.mtu ?? tap.mtu };
}

export function closeNet(net: NetBackend): void {
  close(net.tapFd);
}
