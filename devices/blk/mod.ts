/**
 * virtio-blk as a device kind (devices/virtio/kind.ts):
 * `--drive PATH[,readonly][,id=NAME][,queues=N]`, repeatable, as vda, vdb, …
 * in order. The image is opened and locked here (disk.ts), served by one
 * queue Worker per request queue (blk.ts), flushed at every pause and stop.
 *
 * **Several requests in flight.** A queue Worker does one request at a time:
 * preadv/pwritev block it until the host is done. So a drive gets one
 * request queue per vCPU, up to BLK_DEFAULT_QUEUES unless `queues=N` asks
 * for more (VIRTIO_BLK_F_MQ; QEMU's num-queues, whose default for
 * virtio-blk-pci is also one per vCPU). Linux's blk-mq gives each CPU its queue, so requests issued on
 * different vCPUs run on different Workers at once, each sleeping on its own
 * ioeventfd. The Workers share the image's fd and nothing else: a flush's
 * fdatasync on one queue covers every write completed on any of them.
 */
import type { DeviceKind } from "../virtio/kind.ts";
import { type QueueHandler, serveAll } from "../virtio/queue_handler.ts";
import { blkConfig, blkFeatures, BlkQueue, VIRTIO_ID_BLOCK } from "./blk.ts";
import { closeDisk, type Disk, type DriveSpec, openDisk, parseDriveSpec, QUEUES_RANGE, validQueues } from "./disk.ts";
import { ConfigError } from "../../vm/errors.ts";

/**
 * Entries per request queue. seg_max is two less (blkConfig), and Linux
 * builds requests of up to max_sectors_kb (1280 KiB by default,
 * BLK_DEF_MAX_SECTORS) from at most seg_max buffers: with 4 KiB pages that
 * is 320 buffers, and 2 for the header and status. At 256 entries (QEMU's
 * and Firecracker's size) a 1 MiB O_DIRECT transfer whose pages are not
 * contiguous needs 256 buffers, more than seg_max 254, so the guest splits
 * it into a request of 1016 KiB and one of 8 KiB: two requests, two
 * interrupts and two exits for one transfer. 512 keeps it whole.
 */
export const BLK_QUEUE_SIZE = 512;
/** Request queues a drive gets without `queues=N`: one per vCPU up to this many (each is a Worker). */
export const BLK_DEFAULT_QUEUES = 4;

export interface BlkSpec {
  kind: "blk";
  disk: Disk;
  /** Request queues, each served by its own Worker. */
  queues: number;
}

export interface BlkOptions {
  /** Raw disk images, as virtio-blk devices vda, vdb, … (strings in the `--drive` form). */
  drives?: (DriveSpec | string)[];
  /** The machine's vCPUs: a drive has at most one request queue per vCPU. */
  cpus?: number;
}

/**
 * How many request queues a drive gets: what it asked for, else
 * BLK_DEFAULT_QUEUES, and never more than one per vCPU. A vCPU count that is
 * no count counts as 1 here: making the VM refuses it, naming --cpus. A
 * `queues` out of range (a DriveSpec object skips parseDriveSpec) is a
 * ConfigError naming the drive.
 */
export function blkQueues(d: Pick<DriveSpec, "path" | "queues">, cpus: number): number {
  const q = d.queues ?? BLK_DEFAULT_QUEUES;
  if (!validQueues(q)) throw new ConfigError(`--drive ${d.path}: ${QUEUES_RANGE}`);
  const vcpus = Number.isInteger(cpus) && cpus >= 1 ? cpus : 1;
  return Math.min(q, vcpus);
}

export const blkKind: DeviceKind<BlkSpec, BlkOptions> = {
  kind: "blk",
  cli: {
    flag: "drive",
    type: "string",
    multiple: true,
    help: `--drive PATH[,readonly][,id=NAME][,queues=N]
                    a raw disk image as virtio-blk (repeat: vda, vdb, …); id is its
                    serial; queues: request queues, each its own thread (default
                    one per vCPU up to ${BLK_DEFAULT_QUEUES}; never more than the vCPUs)`,
    apply(values, o) {
      o.drives = (values as string[]).map(parseDriveSpec);
    },
  },
  open(o) {
    const specs: BlkSpec[] = [];
    try {
      for (const d of o.drives ?? []) {
        const drive = typeof d === "string" ? parseDriveSpec(d) : d;
        const queues = blkQueues(drive, o.cpus ?? 1); // before the open: it may throw
        specs.push({ kind: "blk", disk: openDisk(drive), queues });
      }
    } catch (e) {
      specs.forEach((s) => closeDisk(s.disk));
      throw e;
    }
    return specs;
  },
  close: (spec) => closeDisk(spec.disk),
  model: (spec) => ({
    deviceId: VIRTIO_ID_BLOCK,
    features: blkFeatures(spec.disk, spec.queues),
    queueSizes: Array(spec.queues).fill(BLK_QUEUE_SIZE),
    config: blkConfig(spec.disk, BLK_QUEUE_SIZE, spec.queues),
  }),
  // vda…vdz, then vdaa like Linux's sd_format_disk_name; 19 devices never get there.
  name: (spec, n) => `virtio-blk vd${String.fromCharCode(0x61 + n)} (${spec.disk.path})`,
  handler(spec, ctx): QueueHandler {
    const blk = new BlkQueue(ctx.mem, spec.disk);
    return { kick: (vq) => serveAll(vq, (chain) => blk.serve(chain)), drain: () => blk.flush() };
  },
};
