/**
 * The Worker script of virtio-blk disks' queue Workers: loop/queue_worker.ts with
 * this kind's modules alone loaded (loop/spare_workers.ts queueWorker).
 */
import { serveQueues } from "../../loop/queue_worker.ts";
import { blkKind } from "./mod.ts";

serveQueues(blkKind);
