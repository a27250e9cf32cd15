/**
 * The Worker script of vmm's stdio consoles' queue Workers: loop/queue_worker.ts with
 * this kind's modules alone loaded (loop/spare_workers.ts queueWorker).
 */
import { serveQueues } from "../../loop/queue_worker.ts";
import { stdioKind } from "./mod.ts";

serveQueues(stdioKind);
