/**
 * Run `bin/vmm.ts` as a child process under the runtime running the test
 * (Deno: `deno run -A`, Bun: `bun`), the way a user runs the CLI.
 *
 * `vmmSync` waits for the exit; `vmmSpawn` returns a running child for the
 * signal tests, optionally as PID 1 of a new pid namespace
 * (`unshare --pid --fork`), where the process to signal is unshare's child.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import type { Readable } from "node:stream";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const VMM = fileURLToPath(new URL("../../bin/vmm.ts", import.meta.url));
const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
/**
 * How long a vmm child may take to start and to stop. Bounds against a hang,
 * not speed checks: in the nested host (TCG) a Deno child with an empty
 * module cache takes 15 s or more to print its first byte.
 */
export const CHILD_BOUND_MS = process.env.VMM_NESTED ? 90_000 : 30_000;

/** The command line that runs the TypeScript file `script` with `args` on this test's runtime. */
export function scriptCommand(script: string, args: string[] = []): [string, string[]] {
  return [process.execPath, isDeno ? ["run", "-A", script, ...args] : [script, ...args]];
}

/** The command line that runs vmm with `args` on this test's runtime. */
export function vmmCommand(args: string[]): [string, string[]] {
  return scriptCommand(VMM, args);
}

/** The environment with VMM_ALLOW_PVM set (`true`) or removed (`false`). */
export function vmmEnv(allowPvm: boolean): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== "VMM_ALLOW_PVM") env[k] = v;
  if (allowPvm) env.VMM_ALLOW_PVM = "1";
  return env;
}

/** How a vmm run ended: its status (or the signal that ended it, or why it could not run) and its output. */
export interface VmmResult {
  status: number | null;
  stdout: string;
  stderr: string;
  signal?: string | null;
  error?: string;
}

/** Run vmm to completion. */
export function vmmSync(args: string[], o: { allowPvm?: boolean } = {}): VmmResult {
  const [cmd, argv] = vmmCommand(args);
  const r = spawnSync(cmd, argv, { env: vmmEnv(o.allowPvm ?? true), encoding: "utf8", timeout: CHILD_BOUND_MS });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, signal: r.signal, ...(r.error ? { error: String(r.error) } : {}) };
}

/** The whole of a result, for a failure message: a run that printed nothing says little by its stderr alone. */
export function described(r: VmmResult): string {
  return JSON.stringify({ status: r.status, signal: r.signal, error: r.error, stdout: r.stdout.slice(-400), stderr: r.stderr.slice(-400) });
}

/**
 * Run vmm to completion without blocking the event loop: for a vmm started
 * while another child runs. Bun 1.4's spawnSync can wait forever on a child
 * that has already exited when another child of the process is alive (its
 * sync wait loop misses the exit); this waits with `exitOf`, which cannot.
 */
export async function vmmRun(args: string[], o: { allowPvm?: boolean } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const [cmd, argv] = vmmCommand(args);
  const child = spawn(cmd, argv, { env: vmmEnv(o.allowPvm ?? true) });
  let stdout = "", stderr = "";
  child.stdout!.on("data", (d: Uint8Array) => (stdout += new TextDecoder().decode(d)));
  child.stderr!.on("data", (d: Uint8Array) => (stderr += new TextDecoder().decode(d)));
  const timer = setTimeout(() => child.kill("SIGKILL"), CHILD_BOUND_MS);
  const status = await exitOf(child);
  clearTimeout(timer);
  await streamsDone(child);
  return { status, stdout, stderr };
}

/** Wait (briefly) for the child's pipes to deliver their last bytes after its exit. */
function streamsDone(child: ChildProcess): Promise<void> {
  const ended = (s: Readable | null) => new Promise<void>((r) => (!s || s.readableEnded ? r() : s.once("end", () => r())));
  return Promise.race([
    Promise.all([ended(child.stdout), ended(child.stderr)]).then(() => {}),
    new Promise<void>((r) => setTimeout(r, 2000)),
  ]);
}

/**
 * The child's exit status once it has ended (null when a signal ended it).
 * The runtime's `exit` event says so; should the runtime miss it (Bun 1.4
 * can leave an exited child unreaped, and then never emits the event), the
 * kernel still does: /proc/PID/stat of the zombie shows state Z and, in its
 * field 52, the status in waitpid(2)'s form.
 */
export function exitOf(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (code: number | null) => {
      if (done) return;
      done = true;
      clearInterval(poll);
      resolve(code);
    };
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    child.on("exit", (code) => finish(code));
    const poll = setInterval(() => {
      const z = zombieStatus(child.pid);
      if (z !== undefined) finish(z);
    }, 500);
  });
}

/** undefined while `pid` runs; its exit status (null: a signal) once it is a zombie. */
function zombieStatus(pid: number | undefined): number | null | undefined {
  if (pid === undefined) return undefined;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined; // reaped: the exit event carries the status
  }
  // Fields after the command name (in parentheses, may hold spaces) start at field 3, the state.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  if (f[0] !== "Z") return undefined;
  const w = Number(f[52 - 3]);
  return (w & 0x7f) === 0 ? (w >> 8) & 0xff : null;
}

/** Run `fn` with `bytes` written to a temporary file (a kernel image, say), removed afterwards. */
export async function withFile<T>(bytes: Uint8Array, fn: (path: string) => T | Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "vmm-cli-"));
  try {
    const path = join(dir, "file");
    writeFileSync(path, bytes);
    return await fn(path);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A running vmm child. */
export interface VmmChild {
  child: ChildProcess;
  /** Everything written to stdout / stderr so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves once stdout contains `text`; rejects after `ms`. */
  waitForStdout(text: string, ms?: number): Promise<void>;
  /** Resolves once stderr contains `text`; rejects after `ms`. */
  waitForStderr(text: string, ms?: number): Promise<void>;
  /** Resolves with the exit status (null when killed by a signal). */
  exited: Promise<number | null>;
}

/** Start vmm; with `unshare`, as PID 1 of a new pid namespace. */
export function vmmSpawn(args: string[], o: { unshare?: boolean } = {}): VmmChild {
  const [cmd, argv] = vmmCommand(args);
  const child = o.unshare
    ? spawn("unshare", ["--pid", "--fork", cmd, ...argv], { env: vmmEnv(true) })
    : spawn(cmd, argv, { env: vmmEnv(true) });
  let out = "", err = "";
  const waiters: (() => void)[] = [];
  child.stdout!.on("data", (d: Uint8Array) => {
    out += new TextDecoder().decode(d);
    waiters.forEach((w) => w());
  });
  child.stderr!.on("data", (d: Uint8Array) => {
    err += new TextDecoder().decode(d);
    waiters.forEach((w) => w());
  });
  const exited = exitOf(child);
  const waitFor = (where: "stdout" | "stderr", text: string, ms: number) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`vmm did not print ${JSON.stringify(text)} on ${where} within ${ms} ms; stdout ${JSON.stringify(out)}, stderr ${JSON.stringify(err)}`));
      }, ms);
      const check = () => {
        if ((where === "stdout" ? out : err).includes(text)) {
          clearTimeout(timer);
          resolve();
        }
      };
      waiters.push(check);
      check();
    });
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForStdout: (text, ms = CHILD_BOUND_MS) => waitFor("stdout", text, ms),
    waitForStderr: (text, ms = CHILD_BOUND_MS) => waitFor("stderr", text, ms),
  };
}

/** Process ids whose parent is `pid` (from /proc/PID/stat). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      // Field 4 (ppid) follows the command name, which is in parentheses and may hold spaces.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // The process exited while we looked.
    }
  }
  return out;
}
