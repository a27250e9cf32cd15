/**
 * virtio-fs as a device kind (devices/virtio/kind.ts): `--share
 * HOSTDIR[,tag=NAME][,ro]`, repeatable, one device per share, which the
 * guest mounts with `mount -t virtiofs NAME DIR`.
 *
 * `open` checks each share and makes the pipe its two queues talk over
 * (device.ts: the hiprio queue forwards forgets to the request queue, whose
 * handler owns the inode table); the spec carries the pipe's fds as
 * numbers, like every spec, and `close` closes them. The request queue's
 * handler opens the directory itself at each DRIVER_OK, and closes every fd
 * of it when the handler is discarded (a reset, the VM's stop).
 *
 * Both queues are served by one Worker (`oneWorker`). The hiprio queue
 * carries only FORGETs (and INTERRUPTs, which vmm has nothing to do for),
 * none of which the guest waits on: all its thread ever did was copy them
 * into the pipe for the request queue's thread. A thread of its own bought
 * nothing but one more Worker to start before a restored guest may run,
 * 60–320 ms on Bun and 0.7–1.2 s on Deno in the nested host (issue 12's
 * notes). In one Worker a long request only delays the forgets behind it,
 * which is harmless: a forget applied late keeps an fd open a little longer.
 */
import type { DeviceKind } from "../virtio/kind.ts";
import { type QueueHandler, serveAll } from "../virtio/queue_handler.ts";
import {
  FS_HIPRIO_QUEUE,
  FS_HIPRIO_QUEUE_SIZE,
  FS_REQUEST_QUEUE_SIZE,
  fsConfig,
  FsHiprioQueue,
  FsRequestQueue,
  VIRTIO_ID_FS,
} from "./device.ts";
import { raiseFdLimit } from "../../ffi/libc.ts";
import { closeForgetPipe, openForgetPipe } from "./forget.ts";
import { checkShares, parseShareOptions, type ShareOption } from "./share_option.ts";
import type { CacheMode } from "./share.ts";

export interface FsSpec {
  kind: "fs";
  /** The host directory (a real path when it came from the CLI). */
  path: string;
  tag: string;
  readOnly: boolean;
  /** How long the guest may cache names and attributes (share.ts). */
  cache: CacheMode;
  /** The forget pipe (forget.ts): the request queue reads, the hiprio queue writes. */
  forgetRead: number;
  forgetWrite: number;
}

export interface FsOptions {
  /** Host directories shared over virtio-fs, one device each. */
  shares?: ShareOption[];
}

export const fsKind: DeviceKind<FsSpec, FsOptions> = {
  kind: "fs",
  cli: {
    flag: "share",
    type: "string",
    multiple: true,
    help: `--share DIR[,tag=NAME][,ro][,cache=always]
                    a host directory over virtio-fs (repeat); in the guest:
                    mount -t virtiofs NAME /mnt (NAME defaults to DIR's name);
                    cache=always: the guest trusts names, absent names and
                    attributes for a day, not a second (for a directory the
                    host leaves be)`,
    apply(values, o) {
      o.shares = parseShareOptions(values as string[]);
    },
  },
  open(o) {
    const shares = o.shares ?? [];
    checkShares(shares);
    // Each inode the guest holds is an O_PATH fd here (inodes.ts).
    if (shares.length) raiseFdLimit();
    const specs: FsSpec[] = [];
    try {
      for (const s of shares) {
        const [forgetRead, forgetWrite] = openForgetPipe();
        specs.push({ kind: "fs", path: s.path, tag: s.tag, readOnly: s.readOnly, cache: s.cache ?? "auto", forgetRead, forgetWrite });
      }
    } catch (e) {
      specs.forEach((s) => closeForgetPipe([s.forgetRead, s.forgetWrite]));
      throw e;
    }
    return specs;
  },
  close: (spec) => closeForgetPipe([spec.forgetRead, spec.forgetWrite]),
  model: (spec) => ({
    deviceId: VIRTIO_ID_FS,
    features: 0n,
    queueSizes: [FS_HIPRIO_QUEUE_SIZE, FS_REQUEST_QUEUE_SIZE],
    config: fsConfig(spec.tag),
  }),
  name: (spec) => `virtio-fs ${spec.tag} (${spec.path}${spec.readOnly ? ", ro" : ""})`,
  handler(spec, ctx): QueueHandler {
    if (ctx.queue === FS_HIPRIO_QUEUE) {
      const hi = new FsHiprioQueue(spec.forgetWrite, ctx.log);
      return { kick: (vq) => serveAll(vq, (chain) => hi.serve(chain)), close: () => hi.close() };
    }
    const rq = new FsRequestQueue({ root: spec.path, readOnly: spec.readOnly, cache: spec.cache }, spec.forgetRead, ctx.log);
    // No drain: nothing is buffered here, and the guest asks for durability with FUSE FSYNC.
    return {
      kick(vq) {
        rq.applyForgets();
        return serveAll(vq, (chain) => rq.serve(chain));
      },
      inputFd: () => rq.forgetFd,
      input: () => void rq.applyForgets(),
      close: () => rq.close(),
    };
  },
  oneWorker: true,
};
