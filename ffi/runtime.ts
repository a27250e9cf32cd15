/**
 * The one place that knows which JavaScript runtime vmm runs on.
 *
 * Deno (`Deno.dlopen`) and Bun (`bun:ffi`) both call C functions, but spell
 * types and memory views differently. Everything else in vmm sees only this
 * interface: symbols declared with neutral types, called with numbers or
 * bigints, and raw host memory viewed as an ArrayBuffer.
 *
 * Every pointer parameter is declared `u64` and passed as a bigint address:
 * that keeps Deno on its fast call path (a JS number on a u64 parameter
 * drops it off, PLATFORM.md) and means no runtime-specific pointer objects
 * ever leave this file.
 */

/** Neutral C types for FFI declarations. Pointers are `u64`. */
export type FfiType = "void" | "i8" | "u8" | "i16" | "u16" | "i32" | "u32" | "i64" | "u64";

/** One C function: its parameter and result types. */
export interface FfiSymbol {
  args: readonly FfiType[];
  result: FfiType;
}

// deno-lint-ignore no-explicit-any
type AnyFn = (...args: any[]) => any;

/** What a runtime must provide. */
export interface Runtime {
  readonly name: "deno" | "bun";
  /** Open a shared library; each function returns number (≤32-bit) or bigint (64-bit). */
  dlopen<S extends Record<string, FfiSymbol>>(path: string, symbols: S): { [K in keyof S]: AnyFn };
  /** An ArrayBuffer over `len` bytes of host memory at `addr` (no copy). */
  view(addr: bigint, len: number): ArrayBuffer;
  /**
   * Let the runtime install whatever handler of its own it will ever install
   * for these signals, now, so that a handler vmm installs afterwards stays.
   * Deno installs one for SIGINT and SIGTERM once per process, lazily, within
   * a second of the first Worker starting, and one for SIGUSR1 (Node's "start
   * the inspector") when its signal machinery starts: a handler installed
   * before that is silently replaced, and SIGTERM then kills vmm instead of
   * stopping it, and a vCPU kick prints "Debugger listening on ws://…".
   */
  claimSignals(names: readonly ("SIGINT" | "SIGTERM" | "SIGUSR1" | "SIGUSR2")[]): void;
}

// deno-lint-ignore no-explicit-any
const g = globalThis as any;

/** True on Deno, false on Bun. */
export const isDeno: boolean = typeof g.Deno?.dlopen === "function";

function denoRuntime(): Runtime {
  const D = g.Deno;
  return {
    name: "deno",
    dlopen(path, symbols) {
      // deno-lint-ignore no-explicit-any
      const decl: Record<string, any> = {};
      for (const [k, s] of Object.entries(symbols)) decl[k] = { parameters: [...s.args], result: s.result };
      const lib = D.dlopen(path, decl).symbols;
      // deno-lint-ignore no-explicit-any
      return lib as any;
    },
    view(addr, len) {
      return D.UnsafePointerView.getArrayBuffer(D.UnsafePointer.create(addr), len);
    },
    claimSignals(names) {
      const none = () => {};
      for (const n of names) {
        D.addSignalListener(n, none);
        D.removeSignalListener(n, none);
      }
    },
  };
}

async function bunRuntime(): Promise<Runtime> {
  const ffi = await import("bun:ffi");
  return {
    name: "bun",
    dlopen(path, symbols) {
      // deno-lint-ignore no-explicit-any
      const decl: Record<string, any> = {};
      for (const [k, s] of Object.entries(symbols)) decl[k] = { args: [...s.args], returns: s.result };
      // deno-lint-ignore no-explicit-any
      return ffi.dlopen(path, decl).symbols as any;
    },
    view(addr, len) {
      return ffi.toArrayBuffer(Number(addr), 0, len);
    },
    claimSignals() {}, // Bun keeps its hands off handlers it did not install
  };
}

/** The runtime vmm runs on. */
export const runtime: Runtime = isDeno ? denoRuntime() : await bunRuntime();
