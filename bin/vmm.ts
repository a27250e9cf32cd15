#!/usr/bin/env bun
/**
 * The vmm executable: `vmm boot`, `vmm run -- CMD...`, `vmm --help`
 * (cli/main.ts is the command line itself).
 *
 * For a command that boots a guest, the first vCPU Worker starts loading
 * here, before the rest of vmm: on Deno, `new Worker` blocks its caller
 * while Deno makes the Worker's runtime (0.6 s in the nested test host),
 * and then the Worker's modules and vmm's own load side by side instead of
 * one after the other (loop/spare_workers.ts). So this module imports only
 * that one module before it looks at its arguments.
 */
import { prestart } from "../loop/spare_workers.ts";

// deno-lint-ignore no-explicit-any
const g = globalThis as any;
const argv: string[] = g.Deno ? [...g.Deno.args] : g.process.argv.slice(2);

/**
 * Whether `argv` asks for a guest: a command that boots or restores one,
 * and no --help or --version (which print and end). A wrong guess costs a
 * Worker that vmm's exit ends, nothing else; cli/main.ts checks the command
 * line for real.
 */
export function bootsAGuest(argv: string[]): boolean {
  const end = argv.indexOf("--");
  const mine = end < 0 ? argv : argv.slice(0, end);
  if (mine.some((a) => a === "-h" || a === "--help" || a === "--version")) return false;
  return mine.some((a) => a === "boot" || a === "run" || a === "restore");
}

if (import.meta.main) {
  if (bootsAGuest(argv)) prestart("vcpu");
  const { runCli } = await import("../cli/main.ts");
  await runCli(argv);
}
