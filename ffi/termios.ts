/**
 * Raw terminal mode for the guest console, and its restoration.
 * In raw mode every key (Ctrl-C included) goes to the guest, as on a serial
 * line; the saved settings are put back on every way out of vmm.
 */
import { check, libc, NativeBuf } from "./libc.ts";

const TERMIOS_SIZE = 60, TCSANOW = 0;

export class RawTerminal {
  readonly #fd: number;
  readonly #saved = NativeBuf.alloc(TERMIOS_SIZE);
  #raw = false;

  constructor(fd: number) {
    this.#fd = fd;
  }

  /** True when `fd` is a terminal. */
  static isTty(fd: number): boolean {
    return libc.isatty(fd) === 1;
  }

  enter(): void {
    check("tcgetattr", libc.tcgetattr(this.#fd, this.#saved.addr));
    const t = NativeBuf.alloc(TERMIOS_SIZE);
    try {
      t.bytes.set(this.#saved.bytes);
      libc.cfmakeraw(t.addr);
      check("tcsetattr", libc.tcsetattr(this.#fd, TCSANOW, t.addr));
    } finally {
      t.free();
    }
    this.#raw = true;
  }

  /** Put the saved settings back and free them; the terminal object is done. */
  restore(): void {
    if (this.#raw) libc.tcsetattr(this.#fd, TCSANOW, this.#saved.addr);
    this.#raw = false;
    this.#saved.free();
  }
}
