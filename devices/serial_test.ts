/**
 * The 16550A UART (devices/serial.ts) driven the way Linux's 8250 driver
 * drives it (drivers/tty/serial/8250/8250_port.c): registers that read back,
 * the loopback probe, receive status, interrupt identification and the
 * interrupt line, which must change only when its level changes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { RX_SIZE, Serial, SERIAL_STATE_BYTES } from "./serial.ts";

// Register offsets and bits (16550 data sheet; Linux include/uapi/linux/serial_reg.h).
const RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;
const IER_RDI = 0x01, IER_THRI = 0x02;
const IIR_NO_INT = 0x01, IIR_THRI = 0x02, IIR_RDI = 0x04;
const LSR_DR = 0x01, LSR_THRE = 0x20, LSR_TEMT = 0x40;
const LCR_DLAB = 0x80, MCR_LOOP = 0x10, MCR_OUT2 = 0x08, MCR_RTS = 0x02;

/** A UART over fresh shared state, recording what it transmits and each IRQ level change. */
function uart() {
  const state = new Int32Array(SERIAL_STATE_BYTES / 4);
  const out: number[] = [], irqs: number[] = [];
  const serial = new Serial(state, { output: (b) => out.push(b), irq: (l) => irqs.push(l) });
  return { serial, state, out, irqs };
}

test("Serial transmits a THR write at once and keeps the transmitter empty", () => {
  const { serial, out } = uart();
  for (const b of new TextEncoder().encode("ok\n")) serial.write(THR, b);
  assert.deepEqual(out, [0x6f, 0x6b, 0x0a]);
  assert.equal(serial.read(LSR), LSR_THRE | LSR_TEMT);
});

test("Serial reads back the scratch register and IER (its low four bits)", () => {
  const { serial } = uart();
  serial.write(SCR, 0xa5);
  assert.equal(serial.read(SCR), 0xa5);
  serial.write(IER, 0xff);
  assert.equal(serial.read(IER), 0x0f);
  serial.write(LCR, 0x03);
  assert.equal(serial.read(LCR), 0x03);
});

test("Serial in loopback mirrors MCR outputs into MSR inputs, as the 8250 probe checks", () => {
  const { serial } = uart();
  serial.write(MCR, MCR_LOOP | 0x0a); // autoconfig(): OUT2 | RTS
  assert.equal(serial.read(MSR) & 0xf0, 0x90, "DCD | CTS");
  serial.write(MCR, MCR_LOOP | 0x0f);
  assert.equal(serial.read(MSR) & 0xf0, 0xf0, "DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD");
  serial.write(MCR, MCR_LOOP);
  assert.equal(serial.read(MSR) & 0xf0, 0);
  serial.write(MCR, MCR_OUT2 | MCR_RTS);
  assert.equal(serial.read(MSR), 0xb0, "out of loopback: carrier, DSR and CTS present");
});

test("Serial in loopback receives what it transmits instead of sending it", () => {
  const { serial, out } = uart();
  serial.write(MCR, MCR_LOOP);
  serial.write(THR, 0x55);
  assert.deepEqual(out, []);
  assert.equal(serial.read(LSR) & LSR_DR, LSR_DR);
  assert.equal(serial.read(RBR), 0x55);
});

test("Serial sets LSR.DR while received bytes wait and hands them out in order", () => {
  const { serial } = uart();
  assert.equal(serial.read(LSR) & LSR_DR, 0);
  assert.equal(serial.receive(new Uint8Array([0x41, 0x42])), 2);
  assert.equal(serial.read(LSR) & LSR_DR, LSR_DR);
  assert.equal(serial.read(RBR), 0x41);
  assert.equal(serial.read(LSR) & LSR_DR, LSR_DR);
  assert.equal(serial.read(RBR), 0x42);
  assert.equal(serial.read(LSR) & LSR_DR, 0);
  assert.equal(serial.read(RBR), 0, "an empty receiver reads 0");
});

test("Serial.receive() takes only what fits in the ring", () => {
  const { serial } = uart();
  assert.equal(serial.rxSpace(), RX_SIZE - 1);
  assert.equal(serial.receive(new Uint8Array(RX_SIZE + 10).fill(0x61)), RX_SIZE - 1);
  assert.equal(serial.rxSpace(), 0);
  assert.equal(serial.receive(new Uint8Array([0x62])), 0);
  serial.read(RBR);
  assert.equal(serial.receive(new Uint8Array([0x62, 0x63])), 1);
});

test("Serial FCR bit 1 clears the receive FIFO, and IIR shows FIFOs enabled", () => {
  const { serial } = uart();
  serial.receive(new Uint8Array([1, 2, 3]));
  serial.write(FCR, 0x07); // enable, clear RX, clear TX
  assert.equal(serial.read(LSR) & LSR_DR, 0);
  assert.equal(serial.read(IIR) & 0xc0, 0xc0);
  serial.write(FCR, 0);
  assert.equal(serial.read(IIR), IIR_NO_INT);
});

test("Serial reports THRI in IIR when enabled, then clears it on that read", () => {
  const { serial, irqs } = uart();
  assert.equal(serial.read(IIR), IIR_NO_INT);
  serial.write(IER, IER_THRI);
  assert.deepEqual(irqs, [1], "enabling THRI with the transmitter empty interrupts at once");
  assert.equal(serial.read(IIR), IIR_THRI);
  assert.equal(serial.read(IIR), IIR_NO_INT, "reading IIR cleared the THRE source");
  serial.write(THR, 0x61);
  assert.equal(serial.read(IIR), IIR_THRI, "each transmitted byte empties the THR again");
});

test("Serial gives received data priority over THRE in IIR", () => {
  const { serial } = uart();
  serial.write(IER, IER_RDI | IER_THRI);
  serial.receive(new Uint8Array([0x0d]));
  assert.equal(serial.read(IIR), IIR_RDI);
  serial.read(RBR);
  assert.equal(serial.read(IIR), IIR_THRI);
});

test("Serial raises its IRQ for received data only when RDI is enabled, and only on a level change", () => {
  const { serial, irqs } = uart();
  serial.receive(new Uint8Array([1]));
  assert.deepEqual(irqs, [], "RDI disabled: no interrupt");
  serial.write(IER, IER_RDI);
  assert.deepEqual(irqs, [1]);
  serial.receive(new Uint8Array([2]));
  serial.write(SCR, 0);
  assert.deepEqual(irqs, [1], "still pending: no repeated call");
  serial.write(IER, 0);
  assert.deepEqual(irqs, [1, 0], "masking the source lowers the line");
});

test("Serial lowers its IRQ once the guest has read the last received byte", () => {
  const { serial, irqs } = uart();
  serial.write(IER, IER_RDI);
  serial.receive(new Uint8Array([0x71]));
  assert.deepEqual(irqs, [1]);
  serial.read(RBR);
  assert.deepEqual(irqs, [1, 0]);
  serial.receive(new Uint8Array([0x72]));
  assert.deepEqual(irqs, [1, 0, 1], "the next byte raises a fresh edge");
});

test("Serial lowers its IRQ when reading IIR clears a THRE interrupt", () => {
  const { serial, irqs } = uart();
  serial.write(IER, IER_THRI);
  assert.equal(serial.read(IIR), IIR_THRI);
  assert.deepEqual(irqs, [1, 0]);
});

test("Serial with DLAB set maps offsets 0 and 1 to the divisor latch", () => {
  const { serial, out } = uart();
  serial.write(IER, IER_RDI);
  serial.write(LCR, LCR_DLAB | 0x03);
  serial.write(DLL, 0x01); // 115200 baud
  serial.write(DLM, 0x00);
  assert.equal(serial.read(DLL), 0x01);
  assert.equal(serial.read(DLM), 0x00);
  assert.deepEqual(out, [], "a divisor write is not transmitted");
  serial.write(LCR, 0x03);
  assert.equal(serial.read(IER), IER_RDI, "IER is untouched by the DLM write");
  serial.write(LCR, LCR_DLAB);
  assert.equal(serial.read(DLL), 0x01, "the divisor is kept");
});

test("Serial handles on the same shared state see one UART", () => {
  const { serial, state } = uart();
  const other = new Serial(state, { output: () => {}, irq: () => {} }); // e.g. the control loop's handle (loop/console_input.ts)
  other.receive(new Uint8Array([0x7a]));
  assert.equal(serial.read(RBR), 0x7a);
  serial.write(SCR, 9);
  assert.equal(other.read(SCR), 9);
  assert.equal(Atomics.load(state, 0), 0, "the lock is free between accesses");
});
