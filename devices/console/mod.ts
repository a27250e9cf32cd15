/**
 * virtio-console as a device kind (devices/virtio/kind.ts): one port, hvc0,
 * present when the machine's console is `hvc` (`--console hvc`). Output
 * goes from guest RAM to the console fd, watched for a kernel panic; input
 * is read only while the guest has buffers (lguest's pattern).
 */
import { RawTerminal } from "../../ffi/termios.ts";
import { EXIT_KIND } from "../../loop/shared.ts";
import type { DeviceKind } from "../virtio/kind.ts";
import { CONSOLE_RX_QUEUE, consoleConfig, ConsoleRx, ConsoleTx, VIRTIO_ID_CONSOLE } from "./console.ts";

export const CONSOLE_QUEUE_SIZE = 128;

export interface ConsoleSpec {
  kind: "console";
  /** null: the guest gets no input. */
  inFd: number | null;
  outFd: number;
  /** Ctrl-A x quits (terminal input). */
  escape: boolean;
}

export const consoleKind: DeviceKind<ConsoleSpec, Record<never, never>> = {
  kind: "console",
  open(_o, c) {
    if (c.device !== "hvc") return [];
    return [{ kind: "console", inFd: c.inFd, outFd: c.outFd, escape: c.inFd !== null && RawTerminal.isTty(c.inFd) }];
  },
  close() {},
  model: () => ({
    deviceId: VIRTIO_ID_CONSOLE,
    features: 0n,
    queueSizes: [CONSOLE_QUEUE_SIZE, CONSOLE_QUEUE_SIZE],
    config: consoleConfig(),
  }),
  name: () => "virtio-console",
  handler(spec, ctx) {
    if (ctx.queue === CONSOLE_RX_QUEUE) {
      if (spec.inFd === null) return { kick() {} }; // no input: the buffers wait
      const onQuit = spec.escape ? () => ctx.end(EXIT_KIND.QUIT, 0, "console escape Ctrl-A x") : undefined;
      return new ConsoleRx(spec.inFd, { onQuit });
    }
    return new ConsoleTx(ctx.mem, spec.outFd, { onPanic: (reason) => ctx.end(EXIT_KIND.PANIC, 0, reason), log: ctx.log });
  },
};
