/**
 * The stdin Worker: blocks in read(2) on the host's stdin and feeds what it
 * reads to the guest's UART, raising the UART interrupt itself. The main
 * thread never touches console data.
 *
 * Ctrl-A then x ends the VM, as in QEMU's `-nographic` console, since in
 * raw mode Ctrl-C belongs to the guest.
 */
import { eventfdSignal, hostView, libc, NativeBuf, Poller, errno, EAGAIN, EINTR } from "../ffi/libc.ts";
import { irqLine } from "../ffi/kvm.ts";
import { COM1_IRQ, Serial } from "../devices/serial.ts";
import { ConsoleEscape } from "../devices/console_escape.ts";
import { EXIT_KIND, recordExit, SERIAL_OFFSET, SHARED_BYTES } from "./shared.ts";
import type { StdinInit } from "./messages.ts";

// deno-lint-ignore no-explicit-any
const self_ = globalThis as any;

self_.onmessage = (ev: MessageEvent<StdinInit>) => {
  self_.postMessage({ ok: true });
  try {
    pump(ev.data);
  } catch (e) {
    // The guest keeps running without console input; say why once.
    console.error(`vmm: console input stopped: ${(e as Error).message}`);
  }
};

function pump(init: StdinInit): void {
  const shared = hostView(init.shared, SHARED_BYTES);
  const ctl = new Int32Array(shared.buffer, shared.byteOffset, SHARED_BYTES / 4);
  const scratch = NativeBuf.alloc(16);
  const serial = new Serial(new Int32Array(shared.buffer, shared.byteOffset + SERIAL_OFFSET, 16384 / 4), {
    output: () => {},
    irq: (level) => irqLine(init.vmFd, COM1_IRQ, level, scratch),
  });
  const buf = NativeBuf.alloc(256);
  const wait = new Poller([]);
  const readable = new Poller([init.inFd]);
  const escape = new ConsoleEscape();
  for (;;) {
    const n = Number(libc.read(init.inFd, buf.addr, 256n));
    if (n < 0 && errno() === EINTR) continue;
    // Bun leaves stdin non-blocking: sleep in poll(2) until there is input.
    if (n < 0 && errno() === EAGAIN) {
      readable.wait(-1);
      continue;
    }
    if (n <= 0) return;
    const { data: typed, quit } = escape.push(buf.bytes.subarray(0, n));
    if (quit) {
      recordExit(ctl, shared, EXIT_KIND.QUIT, 0, "console escape Ctrl-A x");
      eventfdSignal(init.ctlFd);
      return;
    }
    let data = typed;
    // The guest drains the UART at its own pace; wait while its buffer is full.
    while (data.length > 0) {
      const took = serial.receive(data);
      data = data.subarray(took);
      if (data.length > 0) wait.wait(5);
    }
  }
}
