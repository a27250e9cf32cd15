/**
 * A 16550A UART at the PC's COM1 address (0x3f8, IRQ 4): the guest's
 * console until virtio-console takes over.
 *
 * Every vCPU can touch the UART, and the control loop feeds it received
 * bytes (loop/console_input.ts), so the register state lives in shared
 * memory (an Int32Array over a block all threads map) and every access holds
 * a small spinlock. Contention is rare: each access is already a 10 µs trip
 * out of the guest.
 *
 * Register behaviour follows the 16550 data sheet as Linux's 8250 driver
 * probes it (drivers/tty/serial/8250/8250_port.c `autoconfig()`): the
 * scratch register and IER read back, loopback mode echoes the modem
 * control lines, and a THR write completes at once, so "transmitter empty"
 * is always true and raises its interrupt when enabled.
 */

import { withSpinLock } from "./spinlock.ts";

export const COM1_BASE = 0x3f8;
export const COM1_IRQ = 4;

// Register offsets from the base port.
const RBR_THR = 0, IER = 1, IIR_FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;
const LCR_DLAB = 0x80;
const IER_RDI = 0x01, IER_THRI = 0x02, IER_MASK = 0x0f;
const IIR_NONE = 0x01, IIR_THRI = 0x02, IIR_RDI = 0x04, IIR_FIFO = 0xc0;
const LSR_DR = 0x01, LSR_THRE = 0x20, LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const MSR_CTS = 0x10, MSR_DSR = 0x20, MSR_DCD = 0x80;

/** Word indexes in the shared state. */
const S = {
  LOCK: 0,
  IER: 1,
  LCR: 2,
  MCR: 3,
  SCR: 4,
  DLL: 5,
  DLM: 6,
  FCR: 7,
  THRI_PENDING: 8,
  IRQ_LEVEL: 9,
  RX_HEAD: 10, // next byte to read
  RX_TAIL: 11, // next free slot
  RX: 16, // ring of RX_SIZE bytes, one per word
} as const;
export const RX_SIZE = 1024;
/** Bytes of shared memory the UART state needs. */
export const SERIAL_STATE_BYTES = (S.RX + RX_SIZE) * 4;

export interface SerialIo {
  /** A byte the guest transmitted. */
  output(byte: number): void;
  /** Set the interrupt line to `level` (called only when it changes). */
  irq(level: number): void;
}

/** One thread's handle on the shared UART. */
export class Serial {
  readonly #s: Int32Array;
  readonly #io: SerialIo;

  /** `state` is this thread's Int32Array view of the shared block (zeroed once by its creator). */
  constructor(state: Int32Array, io: SerialIo) {
    this.#s = state;
    this.#io = io;
  }

  /** Guest IN from base + `offset`. */
  read(offset: number): number {
    return this.#locked(() => {
      const v = this.#readReg(offset);
      // Reading RBR or IIR can clear the pending interrupt.
      this.#updateIrq();
      return v;
    });
  }

  #readReg(offset: number): number {
    {
      const s = this.#s;
      const dlab = s[S.LCR] & LCR_DLAB;
      switch (offset) {
        case RBR_THR: {
          if (dlab) return s[S.DLL];
          const b = this.#rxPop();
          return b < 0 ? 0 : b;
        }
        case IER:
          return dlab ? s[S.DLM] : s[S.IER];
        case IIR_FCR: {
          const id = this.#pendingId();
          // Reading IIR while it reports THRE clears that source (16550 data sheet).
          if (id === IIR_THRI) s[S.THRI_PENDING] = 0;
          return id | (s[S.FCR] & 1 ? IIR_FIFO : 0);
        }
        case LCR:
          return s[S.LCR];
        case MCR:
          return s[S.MCR];
        case LSR:
          return LSR_THRE | LSR_TEMT | (this.#rxCount() > 0 ? LSR_DR : 0);
        case MSR: {
          const mcr = s[S.MCR];
          // In loopback the modem inputs mirror the outputs: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
          if (mcr & MCR_LOOP) {
            return ((mcr & 1) << 5) | ((mcr & 2) << 3) | ((mcr & 4) << 4) | ((mcr & 8) << 4);
          }
          return MSR_DCD | MSR_DSR | MSR_CTS;
        }
        case SCR:
          return s[S.SCR];
      }
      return 0xff;
    }
  }

  /** Guest OUT of `value` to base + `offset`. */
  write(offset: number, value: number): void {
    this.#locked(() => {
      const s = this.#s;
      const dlab = s[S.LCR] & LCR_DLAB;
      switch (offset) {
        case RBR_THR:
          if (dlab) s[S.DLL] = value;
          else {
            if (s[S.MCR] & MCR_LOOP) this.#rxPush(value);
            else this.#io.output(value);
            s[S.THRI_PENDING] = 1;
          }
          break;
        case IER:
          if (dlab) s[S.DLM] = value;
          else {
            // Enabling THRI with the transmitter empty raises the interrupt at once.
            if ((value & IER_THRI) && !(s[S.IER] & IER_THRI)) s[S.THRI_PENDING] = 1;
            s[S.IER] = value & IER_MASK;
          }
          break;
        case IIR_FCR:
          s[S.FCR] = value;
          if (value & 2) s[S.RX_HEAD] = s[S.RX_TAIL]; // clear receive FIFO
          break;
        case LCR:
          s[S.LCR] = value;
          break;
        case MCR:
          s[S.MCR] = value & 0x1f;
          break;
        case SCR:
          s[S.SCR] = value;
          break;
      }
      this.#updateIrq();
    });
  }

  /** Queue bytes received from the host; returns how many fit. */
  receive(bytes: Uint8Array): number {
    return this.#locked(() => {
      let n = 0;
      for (const b of bytes) {
        if (!this.#rxPush(b)) break;
        n++;
      }
      this.#updateIrq();
      return n;
    });
  }

  /** Free room in the receive ring. */
  rxSpace(): number {
    return RX_SIZE - 1 - this.#rxCount();
  }

  #pendingId(): number {
    const s = this.#s;
    if ((s[S.IER] & IER_RDI) && this.#rxCount() > 0) return IIR_RDI;
    if ((s[S.IER] & IER_THRI) && s[S.THRI_PENDING]) return IIR_THRI;
    return IIR_NONE;
  }

  #updateIrq(): void {
    const level = this.#pendingId() === IIR_NONE ? 0 : 1;
    // Only OUT2 gates the interrupt onto the bus on a PC; Linux sets it.
    if (level !== this.#s[S.IRQ_LEVEL]) {
      this.#s[S.IRQ_LEVEL] = level;
      this.#io.irq(level);
    }
  }

  #rxCount(): number {
    return (this.#s[S.RX_TAIL] - this.#s[S.RX_HEAD] + RX_SIZE) % RX_SIZE;
  }
  #rxPush(b: number): boolean {
    const s = this.#s;
    const next = (s[S.RX_TAIL] + 1) % RX_SIZE;
    if (next === s[S.RX_HEAD]) return false;
    s[S.RX + s[S.RX_TAIL]] = b & 0xff;
    s[S.RX_TAIL] = next;
    return true;
  }
  #rxPop(): number {
    const s = this.#s;
    if (s[S.RX_HEAD] === s[S.RX_TAIL]) return -1;
    const b = s[S.RX + s[S.RX_HEAD]];
    s[S.RX_HEAD] = (s[S.RX_HEAD] + 1) % RX_SIZE;
    return b;
  }

  #locked<T>(f: () => T): T {
    return withSpinLock(this.#s, S.LOCK, f);
  }
}
