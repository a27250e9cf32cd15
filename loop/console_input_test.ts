/**
 * The serial console's input as the control loop drives it
 * (loop/console_input.ts), over a real pipe and the UART's state in a
 * shared block, with no VM: the guest's side is a second `Serial` handle
 * reading the receive register. With IER 0 the UART raises no interrupt, so
 * no KVM ioctl is made. loop/console_input_kvm_test.ts boots guests with it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { close, O_CLOEXEC, O_NONBLOCK, pipe, writeAll } from "../ffi/libc.ts";
import { RX_SIZE, Serial } from "../devices/serial.ts";
import { ConsoleInput, RETRY_MAX_MS, RETRY_MS } from "./console_input.ts";
import { SERIAL_BYTES, SERIAL_OFFSET, SHARED_BYTES } from "./shared.ts";

const LSR = 5, LSR_DR = 0x01;

/** A console input on a fresh non-blocking pipe, and the guest's view of the UART. */
function rig() {
  const shared = new Uint8Array(SHARED_BYTES);
  const [r, w] = pipe(O_CLOEXEC | O_NONBLOCK);
  const input = new ConsoleInput(-1, r, shared);
  const guest = new Serial(new Int32Array(shared.buffer, SERIAL_OFFSET, SERIAL_BYTES / 4), {
    output: () => {},
    irq: () => assert.fail("no interrupt while IER is 0"),
  });
  /** Everything the guest can read now. */
  const drain = () => {
    const got: number[] = [];
    while (guest.read(LSR) & LSR_DR) got.push(guest.read(0));
    return got;
  };
  const done = () => {
    input.close();
    close(r);
    try {
      close(w);
    } catch { /* closed by the test */ }
  };
  return { input, w, drain, done };
}

test("what the UART's ring cannot take is kept, offered again, and stdin waits meanwhile", () => {
  const { input, w, drain, done } = rig();
  try {
    const text = Uint8Array.from({ length: RX_SIZE + 200 }, (_, i) => 0x61 + (i % 26));
    writeAll(w, text);
    assert.equal(input.listening, true);
    assert.equal(input.timeoutMs, -1, "nothing left over: the loop sleeps until stdin is ready");
    // Reads of 256 bytes until the ring is full: it holds RX_SIZE - 1, and the rest of that read waits.
    for (let reads = 0; input.listening; reads++) {
      assert.ok(reads < 4, "the ring was full after four reads, and stdin is still polled");
      assert.equal(input.read(), false);
    }
    assert.equal(input.timeoutMs, RETRY_MS);
    // A guest that does not read: each offer the ring takes nothing of waits twice as long, up to RETRY_MAX_MS.
    const waits = Array.from({ length: 8 }, () => (input.feed(), input.timeoutMs));
    assert.deepEqual(waits, [10, 20, 40, 80, 160, RETRY_MAX_MS, RETRY_MAX_MS, RETRY_MAX_MS]);
    const got = drain();
    assert.equal(got.length, RX_SIZE - 1);
    input.feed();
    assert.equal(input.listening, true, "what was left over went in once the guest read the ring");
    assert.equal(input.timeoutMs, -1);
    assert.equal(input.read(), false); // the last 200
    got.push(...drain());
    assert.deepEqual(got, [...text]);
    // Nothing more in the pipe (EAGAIN): still listening.
    assert.equal(input.read(), false);
    assert.equal(input.listening, true);
    // End of file: the input closes for good.
    close(w);
    assert.equal(input.read(), false);
    assert.equal(input.listening, false);
    assert.equal(input.timeoutMs, -1);
  } finally {
    done();
  }
});

test("Ctrl-A x: read() says quit, what came before it reaches the UART, what came after is dropped", () => {
  const { input, w, drain, done } = rig();
  try {
    writeAll(w, new TextEncoder().encode("ab\x01\x01c\x01xdef"));
    assert.equal(input.read(), true);
    assert.equal(new TextDecoder().decode(Uint8Array.from(drain())), "ab\x01c");
    assert.equal(input.listening, false, "no input after the escape");
  } finally {
    done();
  }
});
