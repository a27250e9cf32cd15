/**
 * The Worker script of virtio-net cards' queue Workers: loop/queue_worker.ts with
 * this kind's modules alone loaded (loop/spare_workers.ts queueWorker).
 */
import { serveQueues } from "../../loop/queue_worker.ts";
import { netKind } from "./mod.ts";

serveQueues(netKind);
