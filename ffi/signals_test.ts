/**
 * The signal pipe holds while Workers start: Deno installs SIGINT and
 * SIGTERM handlers of its own within a second of its first Worker, and
 * signalPipe() must have claimed them first (ffi/runtime.ts claimSignals).
 * Each case runs in a fresh process, since the runtime does this once per process.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { scriptCommand } from "../test/support/vmm_cli.ts";

test("a SIGTERM two seconds after a Worker started still reaches the signal pipe, and after close() terminates again", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-sig-"));
  try {
    const url = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
    writeFileSync(join(dir, "w.ts"), "self.onmessage = () => {};\n");
    writeFileSync(
      join(dir, "main.ts"),
      `import process from "node:process";
import { signalPipe } from ${url("./signals.ts")};
import { Poller, SIGTERM } from ${url("./libc.ts")};
const p = signalPipe([SIGTERM]);
const w = new Worker(new URL("./w.ts", import.meta.url).href, { type: "module" });
await new Promise((r) => setTimeout(r, 2000));
process.kill(process.pid, "SIGTERM");
const got = new Poller([p.fd]).wait(2000)[0] !== 0;
console.log(got ? "piped" : "lost");
w.terminate();
p.close();
process.kill(process.pid, "SIGTERM");
await new Promise((r) => setTimeout(r, 2000));
console.log("survived");
`,
    );
    const [cmd, args] = scriptCommand(join(dir, "main.ts"));
    const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 30_000 });
    assert.equal(r.stdout, "piped\n", r.stderr);
    assert.equal(r.signal, "SIGTERM", "after close() SIGTERM did not terminate the process");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the vCPU kick handler holds while Workers start and the SIGINT/SIGTERM pipe is set up after it", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmm-sig-"));
  try {
    const url = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
    writeFileSync(join(dir, "w.ts"), "self.onmessage = () => {};\n");
    writeFileSync(
      join(dir, "main.ts"),
      `import { acquireKickSignal, releaseKickSignal, signalPipe } from ${url("./signals.ts")};
import { libc, NativeBuf, SIGINT, SIGTERM, SIGUSR1 } from ${url("./libc.ts")};
const handler = (s: number) => { const b = NativeBuf.alloc(152); libc.sigaction(s, 0n, b.addr); return b.view.getBigUint64(0, true); };
acquireKickSignal(SIGUSR1);
const ours = handler(SIGUSR1);
const p = signalPipe([SIGINT, SIGTERM]);
const w = new Worker(new URL("./w.ts", import.meta.url).href, { type: "module" });
await new Promise((r) => setTimeout(r, 2000));
console.log(handler(SIGUSR1) === ours ? "kept" : "replaced");
w.terminate();
p.close();
releaseKickSignal();
`,
    );
    const [cmd, args] = scriptCommand(join(dir, "main.ts"));
    const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 30_000 });
    assert.equal(r.stdout, "kept\n", r.stderr);
    assert.equal(r.stderr, "");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a kick that lands after the last machine released the signal does nothing, and the next machine has the handler again", () => {
  // CI lost a run of Bun's tests to a kick that its vCPU thread took after
  // the machine was gone, when SIGUSR1 was SIG_DFL again.
  const dir = mkdtempSync(join(tmpdir(), "vmm-sig-"));
  try {
    const url = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
    writeFileSync(
      join(dir, "w.ts"),
      `import { libc } from ${url("./libc.ts")};
self.onmessage = () => self.postMessage(libc.pthread_self());
`,
    );
    writeFileSync(
      join(dir, "main.ts"),
      `import { acquireKickSignal, releaseKickSignal } from ${url("./signals.ts")};
import { libc, NativeBuf, SIGUSR1 } from ${url("./libc.ts")};
const handler = () => { const b = NativeBuf.alloc(152); libc.sigaction(SIGUSR1, 0n, b.addr); return b.view.getBigUint64(0, true); };
acquireKickSignal(SIGUSR1);
const ours = handler();
const w = new Worker(new URL("./w.ts", import.meta.url).href, { type: "module" });
const tid = await new Promise<bigint>((r) => { w.onmessage = (e) => r(BigInt(e.data)); w.postMessage(0); });
releaseKickSignal();
console.log(handler() === ours ? "kept" : "put back");
libc.pthread_kill(tid, SIGUSR1); // to the Worker's thread, as the control loop kicks a vCPU
libc.pthread_kill(libc.pthread_self(), SIGUSR1);
await new Promise((r) => setTimeout(r, 500));
acquireKickSignal(SIGUSR1);
console.log(handler() === ours ? "again" : "other");
releaseKickSignal();
w.terminate();
console.log("survived");
`,
    );
    const [cmd, args] = scriptCommand(join(dir, "main.ts"));
    const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 30_000 });
    assert.equal(r.signal, null, `the process died of ${r.signal}`);
    assert.equal(r.stdout, "kept\nagain\nsurvived\n", r.stderr);
    assert.equal(r.stderr, "");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
