/** virtio-rng as a device kind (devices/virtio/kind.ts): `--rng`, getrandom straight into guest buffers. */
import type { DeviceKind } from "../virtio/kind.ts";
import { RngQueue, VIRTIO_ID_ENTROPY } from "./rng.ts";

export const RNG_QUEUE_SIZE = 64;

export interface RngSpec {
  kind: "rng";
}

export interface RngOptions {
  /** Add a virtio-rng device. */
  rng?: boolean;
}

export const rngKind: DeviceKind<RngSpec, RngOptions> = {
  kind: "rng",
  cli: {
    flag: "rng",
    type: "boolean",
    help: "--rng             a virtio-rng device fed from the host's getrandom (/dev/hwrng)",
    apply(value, o) {
      o.rng = value === true;
    },
  },
  open: (o) => (o.rng ? [{ kind: "rng" }] : []),
  close() {},
  model: () => ({ deviceId: VIRTIO_ID_ENTROPY, features: 0n, queueSizes: [RNG_QUEUE_SIZE], config: new Uint8Array(0) }),
  name: () => "virtio-rng",
  handler: (_spec, ctx) => new RngQueue(ctx.mem),
};
