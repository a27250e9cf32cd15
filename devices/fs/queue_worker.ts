/**
 * The Worker script of virtio-fs shares' queue Workers: loop/queue_worker.ts with
 * this kind's modules alone loaded (loop/spare_workers.ts queueWorker).
 */
import { serveQueues } from "../../loop/queue_worker.ts";
import { fsKind } from "./mod.ts";

serveQueues(fsKind);
