/**
 * The console escape: Ctrl-A then x ends the VM, as in QEMU's `-nographic`
 * console, since in raw mode Ctrl-C belongs to the guest. Ctrl-A Ctrl-A
 * sends one Ctrl-A; Ctrl-A and anything else sends both bytes.
 * Shared by the UART's input (loop/console_input.ts) and virtio-console's receive queue.
 */
const CTRL_A = 0x01;
const X = 0x78;

export class ConsoleEscape {
  #pending = false;

  /** Filter host input; `quit` once Ctrl-A x was typed (bytes after it are dropped). */
  push(input: Uint8Array): { data: Uint8Array; quit: boolean } {
    const keep: number[] = [];
    for (const b of input) {
      if (this.#pending) {
        this.#pending = false;
        if (b === X) return { data: Uint8Array.from(keep), quit: true };
        if (b !== CTRL_A) keep.push(CTRL_A);
        keep.push(b);
      } else if (b === CTRL_A) this.#pending = true;
      else keep.push(b);
    }
    return { data: Uint8Array.from(keep), quit: false };
  }
}
