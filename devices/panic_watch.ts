/**
 * Spot a guest kernel panic in its console output.
 *
 * Linux prints `Kernel panic - not syncing: <why>` when it panics and
 * `---[ end Kernel panic - not syncing: <why> ]---` when it is done
 * (kernel/panic.c). vmm remembers the first line as the one-line reason
 * and ends the VM at the second, or at the reboot `panic=-1` asks for,
 * whichever comes first, so a panicking guest never hangs a test run.
 */

const START = "Kernel panic - not syncing:";
const END = "---[ end Kernel panic";
const MAX_LINE = 512;

export class PanicWatch {
  /** The panic line, once seen ("" before). */
  reason = "";
  #line: number[] = [];

  /** Feed one console byte; "ended" once the panic report is complete. */
  push(b: number): "ended" | null {
    if (b !== 0x0a) {
      if (this.#line.length < MAX_LINE && b !== 0x0d) this.#line.push(b);
      return null;
    }
    const text = String.fromCharCode(...this.#line);
    this.#line = [];
    const end = text.indexOf(END);
    if (end >= 0) {
      if (!this.reason) this.reason = text.slice(end + "---[ end ".length).replace(/ \]---.*$/, "").trim();
      return "ended";
    }
    const at = text.indexOf(START);
    if (at >= 0 && !this.reason) this.reason = text.slice(at).trim();
    return null;
  }
}
