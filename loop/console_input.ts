/**
 * The serial console's input: what vmm reads on its stdin goes into the
 * UART's receive ring, and the UART's interrupt is raised.
 *
 * The control loop serves it, between its other fds, and no Worker of its
 * own does. Console input comes at the rate a person types or a script
 * writes a few lines, and a Worker costs more than it could ever save: on
 * Deno 12 MiB of resident memory and, in the nested host, about half a
 * second of the main thread before the guest's first instruction (issue 12's
 * measurements); on Bun 3 MiB. Firecracker serves its serial input on its
 * event loop thread in the same way, and QEMU its character devices on its
 * main loop. The data paths the design keeps off the control thread are the
 * guest's: a vCPU's exit or a queue kick never wakes it.
 *
 * The loop polls stdin only while it has nothing left over: bytes the UART
 * had no room for (its ring holds 1 KiB; the guest drains it at its own pace)
 * are offered again a few milliseconds later, and stdin waits in its pipe
 * meanwhile. Each offer the ring takes nothing of doubles the wait, up to a
 * quarter of a second: a guest that never reads its serial port (no process
 * has the tty open) costs four wake-ups a second, not two hundred. A paused
 * machine takes no input, so a snapshot sees the UART as the guest left it.
 *
 * Ctrl-A then x ends the VM, as in QEMU's `-nographic` console, since in raw
 * mode Ctrl-C belongs to the guest.
 */
import { EAGAIN, EINTR, errno, libc, NativeBuf } from "../ffi/libc.ts";
import { irqLine } from "../ffi/kvm.ts";
import { COM1_IRQ, Serial } from "../devices/serial.ts";
import { ConsoleEscape } from "../devices/console_escape.ts";
import { SERIAL_BYTES, SERIAL_OFFSET } from "./shared.ts";

/** How long leftover bytes wait before they are offered to the UART again, at first and at most. */
export const RETRY_MS = 5;
export const RETRY_MAX_MS = 250;
const READ_BYTES = 256;

export class ConsoleInput {
  /** The fd the loop polls while `listening`. */
  readonly fd: number;
  readonly #serial: Serial;
  readonly #scratch = NativeBuf.alloc(16);
  readonly #buf = NativeBuf.alloc(READ_BYTES);
  readonly #escape = new ConsoleEscape();
  /** Read, and not yet taken by the UART. */
  #left: Uint8Array = new Uint8Array(0);
  #retryMs = RETRY_MS;
  #open = true;

  /** `shared`: the block every thread maps (loop/shared.ts), where the UART's state lives. */
  constructor(vmFd: number, inFd: number, shared: Uint8Array) {
    this.fd = inFd;
    const state = new Int32Array(shared.buffer, shared.byteOffset + SERIAL_OFFSET, SERIAL_BYTES / 4);
    this.#serial = new Serial(state, {
      output: () => {}, // the vCPUs transmit; this side only receives
      irq: (level) => irqLine(vmFd, COM1_IRQ, level, this.#scratch),
    });
  }

  /** Whether the loop should poll `fd`: stdin is still open and nothing is left over. */
  get listening(): boolean {
    return this.#open && this.#left.length === 0;
  }

  /** How long the loop may sleep before calling feed() again while bytes are left over (RETRY_MS, doubling while the UART takes none); else -1, no limit. */
  get timeoutMs(): number {
    return this.#left.length > 0 ? this.#retryMs : -1;
  }

  /**
   * `fd` polled readable (or hung up): read what is there and offer it to
   * the UART. Returns true when Ctrl-A x was typed. End of file, or an
   * error, closes the input for good; the guest runs on without it.
   */
  read(): boolean {
    const n = Number(libc.read(this.fd, this.#buf.addr, BigInt(READ_BYTES)));
    if (n < 0 && (errno() === EINTR || errno() === EAGAIN)) return false;
    if (n <= 0) {
      this.#open = false;
      return false;
    }
    const { data, quit } = this.#escape.push(this.#buf.bytes.subarray(0, n));
    this.#left = data;
    this.feed();
    if (quit) this.#open = false;
    return quit;
  }

  /** Offer the bytes left over to the UART. */
  feed(): void {
    if (this.#left.length === 0) return;
    const took = this.#serial.receive(this.#left);
    this.#left = this.#left.subarray(took);
    this.#retryMs = took > 0 ? RETRY_MS : Math.min(this.#retryMs * 2, RETRY_MAX_MS);
  }

  /** Stop reading (after an error the loop reported). */
  stop(): void {
    this.#open = false;
    this.#left = new Uint8Array(0);
  }

  close(): void {
    this.#scratch.free();
    this.#buf.free();
  }
}
