/**
 * Boot a tiny guest (test/support/tiny_kernel.ts) on the real /dev/kvm and
 * capture what it printed on its console: the way the KVM tests use vmm as a
 * library.
 *
 * The console goes to a temporary file opened through ffi/libc.ts, as vmm's
 * vCPU Workers write raw fds; the test reads it back with node:fs once the
 * run is over. Without /dev/kvm the tests fail with a clear message rather
 * than skip (require_kvm.ts).
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Machine, type MachineOptions, type RunResult } from "../../mod.ts";
import { close, O_CREAT, O_RDWR, open } from "../../ffi/libc.ts";
import { requireKvm } from "./require_kvm.ts";

export { requireKvm };

/** How a tiny guest's run ended, what it printed, and how long `run()` took. */
export interface TinyRun {
  result: RunResult;
  output: string;
  runMs: number;
}

/** Boot `kernel` (a bzImage) with 64 MiB, no console input; return the result and console text. */
export async function runTiny(kernel: Uint8Array, o: { cpus?: number; machine?: Partial<MachineOptions> } = {}): Promise<TinyRun> {
  requireKvm();
  const dir = mkdtempSync(join(tmpdir(), "vmm-tiny-"));
  const path = join(dir, "console.txt");
  const outFd = open(path, O_RDWR | O_CREAT, 0o600);
  try {
    const m = await Machine.create({ kernel, cpus: o.cpus ?? 1, memMiB: 64, console: { outFd, inFd: null }, ...o.machine });
    const t0 = performance.now();
    const result = await m.run();
    const runMs = performance.now() - t0;
    return { result, output: readFileSync(path, "latin1"), runMs };
  } finally {
    close(outFd);
    rmSync(dir, { recursive: true, force: true });
  }
}
