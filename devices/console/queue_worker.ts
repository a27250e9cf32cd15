/**
 * The Worker script of virtio-console devices (hvc0)' queue Workers: loop/queue_worker.ts with
 * this kind's modules alone loaded (loop/spare_workers.ts queueWorker).
 */
import { serveQueues } from "../../loop/queue_worker.ts";
import { consoleKind } from "./mod.ts";

serveQueues(consoleKind);
