/**
 * Just enough of the PC keyboard controller (i8042) to reset the machine.
 *
 * Linux's `reboot=k` path (arch/x86/kernel/reboot.c) waits for the input
 * buffer to drain (status bit 1 clear), then writes 0xFE, "pulse reset
 * line", to the command port. Our FADT tells Linux there is no 8042, so the
 * keyboard driver never probes it; only the reset path reaches us.
 */

export const I8042_DATA = 0x60;
export const I8042_COMMAND = 0x64;
const CMD_RESET_CPU = 0xfe;

export class I8042 {
  readonly #reset: () => void;
  constructor(reset: () => void) {
    this.#reset = reset;
  }
  /** Status reads 0: output buffer empty, input buffer empty, so `kb_wait()` returns at once. */
  read(_port: number): number {
    return 0;
  }
  write(port: number, value: number): void {
    if (port === I8042_COMMAND && value === CMD_RESET_CPU) this.#reset();
  }
}
