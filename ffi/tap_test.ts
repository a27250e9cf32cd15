/**
 * ffi/tap.ts: the TUN/TAP ABI pinned to the kernel's numbers, and real TAP
 * devices created, resized and refused inside a private network namespace
 * (test/support/tap_netns.ts), so the host's links are never touched.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  IFF_NO_PI,
  IFF_TAP,
  IFF_VNET_HDR,
  SIOCGIFHWADDR,
  SIOCGIFMTU,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_TSO_ECN,
  TUNGETIFF,
  TUNSETIFF,
  TUNSETOFFLOAD,
  TUNSETVNETHDRSZ,
  validTapName,
  VNET_HDR_SIZE,
} from "./tap.ts";
import { inNetns } from "../test/support/tap_netns.ts";

test("TUN ioctl numbers are the kernel's (uapi/linux/if_tun.h, _IOW/_IOR('T', nr, int))", () => {
  assert.equal(TUNSETIFF, 0x400454ca);
  assert.equal(TUNSETOFFLOAD, 0x400454d0);
  assert.equal(TUNSETVNETHDRSZ, 0x400454d8);
  assert.equal(TUNGETIFF, 0x800454d2);
  // uapi/linux/sockios.h
  assert.equal(SIOCGIFMTU, 0x8921);
  assert.equal(SIOCGIFHWADDR, 0x8927);
});

test("TAP flags, offload bits and the vnet header size are the kernel's", () => {
  assert.deepEqual([IFF_TAP, IFF_NO_PI, IFF_VNET_HDR], [0x0002, 0x1000, 0x4000]);
  assert.deepEqual([TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN], [0x01, 0x02, 0x04, 0x08]);
  // struct virtio_net_hdr_mrg_rxbuf / virtio 1.x header: 10 bytes + num_buffers.
  assert.equal(VNET_HDR_SIZE, 12);
});

test("validTapName() takes what dev_valid_name() takes: 1-15 bytes, no '/', ':', whitespace or NUL, not . or ..", () => {
  for (const ok of ["tap0", "t", "abcdefghijklmno", "vmm%d", "tap-0_x.y", "é".repeat(7), "...", "a.b"]) {
    assert.ok(validTapName(ok), ok);
  }
  const refused = ["", "abcdefghijklmnop", "é".repeat(8), ".", "..", "a b", "a\tb", "a\nb", "a/b", "a:b", "a\0b", " tap0"];
  for (const bad of refused) assert.ok(!validTapName(bad), JSON.stringify(bad));
});

// ---- real TAPs, in a private network namespace (one child process for all of them) ----

interface TapRun {
  created: { name: string; mtu: number; fdOk: boolean };
  getiff: { r: number; name: string; flags: number };
  existed: boolean;
  mtuAfter: number;
  mtuOfNothing: number;
  offloadAll: string;
  offloadTsoAlone: string;
  second: string;
  lo: string;
  picked: { name: string; mtu: number };
  goneAfterClose: boolean;
}
let tapRun: TapRun | undefined;
const netns = () => (tapRun ??= inNetns<TapRun>("tap"));

test("openTap() creates a TAP by name, attached with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (TUNGETIFF)", () => {
  const r = netns();
  assert.deepEqual(r.created, { name: "vmm-t0", mtu: 1500, fdOk: true });
  assert.ok(r.existed, "ip link show vmm-t0");
  assert.deepEqual(r.getiff, { r: 0, name: "vmm-t0", flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR });
});

test("tapMtu() reads the MTU set with ip link set mtu 1400, and falls back to 1500 for a missing link", () => {
  const r = netns();
  assert.equal(r.mtuAfter, 1400);
  assert.equal(r.mtuOfNothing, 1500);
});

test("a second openTap() of an attached single-queue TAP fails with EBUSY", () => {
  // tun_attach(): a TAP without IFF_MULTI_QUEUE takes one file.
  assert.equal(netns().second, "TUNSETIFF: EBUSY (device or resource busy)");
});

test("openTap() of a link that is not a TAP (lo) fails with EINVAL", () => {
  assert.equal(netns().lo, "TUNSETIFF: EINVAL (invalid argument)");
});

test("openTap('vmm%d') returns the name the kernel picked, and that link's MTU", () => {
  assert.deepEqual(netns().picked, { name: "vmm0", mtu: 1500 });
});

test("setTapOffload() takes CSUM with TSO; the kernel refuses TSO without CSUM", () => {
  const r = netns();
  assert.equal(r.offloadAll, "ok");
  assert.equal(r.offloadTsoAlone, "TUNSETOFFLOAD: EINVAL (invalid argument)");
});

test("closing the fd of a TAP openTap() created deletes the link", () => {
  assert.ok(netns().goneAfterClose);
});
