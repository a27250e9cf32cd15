/**
 * virtio-net as a device kind (devices/virtio/kind.ts): `--net tap=NAME[,mac=…][,mtu=N]`,
 * repeatable, as eth0, eth1, …. Queue 0 receives from the TAP, queue 1
 * transmits to it, each on its own Worker. The two share one word: when
 * either finds the TAP gone, both stop using it, and the device clears
 * LINK_UP in its configuration space and tells the driver (virtio 1.2
 * §5.1.4.2), so the guest sees its link go down.
 */
import type { DeviceKind } from "../virtio/kind.ts";
import { NET_FEATURES, NET_RX_QUEUE, NET_STATUS_OFFSET, netConfig, NetRx, NetStats, NetTx, VIRTIO_ID_NET, VIRTIO_NET_S_LINK_UP } from "./net.ts";
import { closeNet, type NetBackend, type NetSpec as NetOption, openNet, parseNetSpec } from "./tap.ts";

export const NET_QUEUE_SIZE = 256;
/** Device word 0: 1 once either queue found the TAP gone. */
const LINK_DOWN = 0;

export interface NetDeviceSpec {
  kind: "net";
  net: NetBackend;
}

export interface NetOptions {
  /** TAP devices, as virtio-net cards eth0, eth1, … (strings in the `--net` form). */
  nets?: (NetOption | string)[];
}

export const netKind: DeviceKind<NetDeviceSpec, NetOptions> = {
  kind: "net",
  cli: {
    flag: "net",
    type: "string",
    multiple: true,
    help: `--net tap=NAME[,mac=52:54:00:12:34:56][,mtu=N]
                    a virtio-net card on the TAP device NAME (repeat: eth0, eth1, …)`,
    apply(values, o) {
      o.nets = (values as string[]).map(parseNetSpec);
    },
  },
  open(o) {
    const specs: NetDeviceSpec[] = [];
    try {
      for (const n of o.nets ?? []) specs.push({ kind: "net", net: openNet(typeof n === "string" ? parseNetSpec(n) : n) });
    } catch (e) {
      specs.forEach((s) => closeNet(s.net));
      throw e;
    }
    return specs;
  },
  close: (spec) => closeNet(spec.net),
  model: (spec) => ({
    deviceId: VIRTIO_ID_NET,
    features: NET_FEATURES,
    queueSizes: [NET_QUEUE_SIZE, NET_QUEUE_SIZE],
    config: netConfig(spec.net.mac, spec.net.mtu),
  }),
  name: (spec) => `virtio-net (${spec.net.tap})`,
  handler(spec, ctx) {
    const stats = new NetStats(ctx.log, {
      isDown: () => Atomics.load(ctx.state, LINK_DOWN) !== 0,
      goDown() {
        if (Atomics.exchange(ctx.state, LINK_DOWN, 1) !== 0) return; // the other queue said it
        const status = new DataView(ctx.config.buffer, ctx.config.byteOffset + NET_STATUS_OFFSET, 2);
        status.setUint16(0, status.getUint16(0, true) & ~VIRTIO_NET_S_LINK_UP, true);
        ctx.configChanged();
      },
    });
    if (ctx.queue === NET_RX_QUEUE) return new NetRx(ctx.mem, spec.net.tapFd, ctx.features, stats);
    return new NetTx(ctx.mem, spec.net.tapFd, NET_QUEUE_SIZE, stats);
  },
};
