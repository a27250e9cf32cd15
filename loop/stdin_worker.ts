/**
 * The stdin Worker: blocks in read(2) on the host's stdin and feeds what it
 * reads to the guest's UART, raising the UART interrupt itself. The main
 * thread never touches console data.
 *
 * Ctrl-A then x ends the VM, as in QEMU's `-nographic` console, since in
 * raw mode Ctrl-C belongs to the guest.
 */
import { eventfdSignal, hostView, libc, NativeBuf, Poller, errno, EAGAIN, EINTR} from "../ffi/libc.ts";
import { irqLine } from "../ffi/kvm.ts";
import { COM1_IRQ, Serial } from "../devices/serial.ts";
import { ConsoleEscape } from "../devices/console_escape.ts";
import { CTL, EXIT_KIND, recordExit, SERIAL_BYTES, SERIAL_OFFSET, SHARED_BYTES, sharedViews } from "./shared.ts";
import { workerMain } from "./workers.ts";
import type { StdinInit } from "./messages.ts";

workerMain((init: StdinInit) => () => {
  try {
    pump(init);
  } catch (e) {
    // The guest keeps running without console input; say why once.
    console.error(`vmm: console input stopped: ${(e as Error).message}`);
  }
});

/**
 * Feed stdin to the UART until end of file or the VM stops. It sleeps in
 * poll(2) on stdin and its wake eventfd (written when the VM stops), never
 * in a read(2) nobody could interrupt.
 */
function pump(init: StdinInit): void {
  const { bytes: shared, ctl } = sharedViews(hostView(init.shared, SHARED_BYTES));
  const scratch = NativeBuf.alloc(16);
  const serial = new Serial(new Int32Array(shared.buffer, shared.byteOffset + SERIAL_OFFSET, SERIAL_BYTES / 4), {
    output: () => {},
    irq: (level) => irqLine(init.vmFd, COM1_IRQ, level, scratch),
  });
  const buf = NativeBuf.alloc(256);
  const wait = new Poller([init.wakeFd]);
  const readable = new Poller([init.inFd, init.wakeFd]);
  const escape = new ConsoleEscape();
  const stopping = () => Atomics.load(ctl, CTL.STOP) !== 0;
  for (;;) {
    const [input] = readable.wait(-1);
    if (stopping()) return;
    if (!input) continue;
    // POLLHUP or POLLERR alone: read() says which (0 or an error).
    const n = Number(libc.read(init.inFd, buf.addr, 256n));
    if (n < 0 && (errno() === EINTR || errno() === EAGAIN)) continue;
    if (n <= 0) return;
    const { data: typed, quit } = escape.push(buf.bytes.subarray(0, n));
    if (quit) {
      recordExit(ctl, shared, EXIT_KIND.QUIT, 0, "console escape Ctrl-A x");
      eventfdSignal(init.ctlFd);
      return;
    }
    let data = typed;
    // The guest drains the UART at its own pace; wait while its buffer is full.
    while (data.length > 0 && !stopping()) {
      const took = serial.receive(data);
      data = data.subarray(took);
      if (data.length > 0) wait.wait(5);
    }
  }
}
