/**
 * vmm's own lines on stderr: errors, notes and first-use progress.
 *
 * Why not `console.error`: Bun paints everything `console.error` prints red
 * when stderr is a terminal, and also when `FORCE_COLOR` is set, whatever
 * stderr is: with `FORCE_COLOR=1` (which CI systems and some wrappers export)
 * an error redirected to a file came out as `ESC[0mESC[31mvmm: …ESC[0m`, and
 * `NO_COLOR` did not stop it. Deno prints strings plain. So vmm writes its
 * lines itself, with `writeSync` on fd 2, and chooses colour by one rule:
 * only on a terminal, never with `NO_COLOR` (https://no-color.org: set and
 * not empty) and never on `TERM=dumb`. `FORCE_COLOR` is ignored on purpose:
 * a line that may land in a log file must stay plain text.
 *
 * `writeSync` (write(2) through ffi/sys.ts), not `process.stderr.write`:
 * vmm exits right after its last line, and a stream write to a pipe may
 * still be queued then.
 */
import { env, isatty, writeSync } from "../ffi/sys.ts";

/** What colour depends on, passed in by tests; the process's own by default. */
export interface TermEnv {
  /** Whether the fd is a terminal. */
  isTty: boolean;
  env: Record<string, string | undefined>;
}

/**
 * Whether lines to this stream may carry colour escapes.
 *
 * @example
 * ```ts
 * import { colourOn } from "./stderr.ts";
 * console.log(colourOn({ isTty: true, env: { NO_COLOR: "1" } })); // false
 * ```
 */
export function colourOn(t: TermEnv): boolean {
  return t.isTty && !t.env.NO_COLOR && t.env.TERM !== "dumb";
}

function stderrTerm(): TermEnv {
  return { isTty: isatty(2), env: env() };
}

const RED = "\x1b[31m";
const RESET = "\x1b[0m";

/**
 * One error line, `vmm: MESSAGE`: the message's first line only (a stack
 * trace or a child's output never follows it); red on a colour terminal.
 */
export function formatError(message: string, t: TermEnv = stderrTerm()): string {
  const line = `vmm: ${message.split("\n")[0]}`;
  return colourOn(t) ? `${RED}${line}${RESET}\n` : `${line}\n`;
}

/**
 * Writes one error line to stderr.
 *
 * @example
 * ```ts
 * import { printError } from "./stderr.ts";
 * printError("--cpus 0: expected at least 1"); // vmm: --cpus 0: expected at least 1
 * ```
 */
export function printError(message: string): void {
  write(formatError(message));
}

/** Writes one plain note, `vmm: TEXT`, to stderr (never coloured). */
export function printNote(text: string): void {
  write(`vmm: ${text}\n`);
}

/**
 * Announces work that takes more than a moment; call the returned function
 * when it is done. Off a terminal that is one line, written before the work
 * starts (a log shows what was under way if it never ends). On a terminal
 * the same line stays open and its end says how long the work took.
 *
 * @example
 * ```ts
 * import { progress } from "./stderr.ts";
 * const done = progress("unpacking the default guest");
 * // … the work …
 * done(); // on a terminal: "vmm: unpacking the default guest… done in 80 ms"
 * ```
 */
export function progress(text: string, t: TermEnv = stderrTerm(), out: (s: string) => void = write): () => void {
  const t0 = Date.now();
  if (!t.isTty) {
    out(`vmm: ${text}\n`);
    return () => {};
  }
  out(`vmm: ${text}… `);
  return () => out(`done in ${Date.now() - t0} ms\n`);
}

function write(s: string): void {
  try {
    writeSync(2, s);
  } catch { /* stderr closed or full: nothing better to tell anyone */ }
}
