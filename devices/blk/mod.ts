/**
 * virtio-blk as a device kind (devices/virtio/kind.ts): `--drive PATH[,readonly][,id=NAME]`,
 * repeatable, as vda, vdb, … in order. The image is opened and locked here
 * (disk.ts), served by one queue Worker (blk.ts), flushed at every pause and stop.
 */
import type { DeviceKind } from "../virtio/kind.ts";
import { type QueueHandler, serveAll } from "../virtio/queue_handler.ts";
import { blkConfig, blkFeatures, BlkQueue, VIRTIO_ID_BLOCK } from "./blk.ts";
import { closeDisk, type Disk, type DriveSpec, openDisk, parseDriveSpec } from "./disk.ts";

export const BLK_QUEUE_SIZE = 256;

export interface BlkSpec {
  kind: "blk";
  disk: Disk;
}

export interface BlkOptions {
  /** Raw disk images, as virtio-blk devices vda, vdb, … (strings in the `--drive` form). */
  drives?: (DriveSpec | string)[];
}

export const blkKind: DeviceKind<BlkSpec, BlkOptions> = {
  kind: "blk",
  cli: {
    flag: "drive",
    type: "string",
    multiple: true,
    help: `--drive PATH[,readonly][,id=NAME]
                    a raw disk image as virtio-blk (repeat: vda, vdb, …); id is its serial`,
    apply(values, o) {
      o.drives = (values as string[]).map(parseDriveSpec);
    },
  },
  open(o) {
    const specs: BlkSpec[] = [];
    try {
      for (const d of o.drives ?? []) specs.push({ kind: "blk", disk: openDisk(typeof d === "string" ? parseDriveSpec(d) : d) });
    } catch (e) {
      specs.forEach((s) => closeDisk(s.disk));
      throw e;
    }
    return specs;
  },
  close: (spec) => closeDisk(spec.disk),
  model: (spec) => ({
    deviceId: VIRTIO_ID_BLOCK,
    features: blkFeatures(spec.disk),
    queueSizes: [BLK_QUEUE_SIZE],
    config: blkConfig(spec.disk, BLK_QUEUE_SIZE),
  }),
  // vda…vdz, then vdaa like Linux's sd_format_disk_name; 19 devices never get there.
  name: (spec, n) => `virtio-blk vd${String.fromCharCode(0x61 + n)} (${spec.disk.path})`,
  handler(spec, ctx): QueueHandler {
    const blk = new BlkQueue(ctx.mem, spec.disk);
    return { kick: (vq) => serveAll(vq, (chain) => blk.serve(chain)), drain: () => blk.flush() };
  },
};
