/**
 * The stdio console as a device kind (devices/virtio/kind.ts): a multiport
 * virtio-console whose ports `vmm.stdin`, `vmm.stdout` and `vmm.stderr`
 * carry a guest command's standard streams to and from vmm's own, present
 * when the machine's options have `stdio` (`vmm run` sets it; there is no
 * flag). The guest finds the ports by name in
 * /sys/class/virtio-ports/vport*\/name and opens /dev/vportNpM.
 *
 * vmm does not own the three fds (they are the caller's, usually 0, 1, 2);
 * it opens two eventfds per device, for its Workers to wake each other.
 */
import { close, EFD_CLOEXEC, EFD_NONBLOCK, eventfd } from "../../ffi/libc.ts";
import { consoleConfig, VIRTIO_ID_CONSOLE } from "../console/console.ts";
import type { DeviceKind } from "../virtio/kind.ts";
import { NR_PORTS, NR_QUEUES, VIRTIO_CONSOLE_F_MULTIPORT } from "./control.ts";
import { type StdioFds, stdioHandler } from "./stdio.ts";

export const STDIO_QUEUE_SIZE = 128;

export interface StdioSpec extends StdioFds {
  kind: "stdio";
}

export interface StdioOptions {
  /**
   * Carry a command's stdin, stdout and stderr on their own ports. `inFd`
   * null gives the guest an empty stdin. Whoever sets this must keep the
   * serial console from also reading `inFd` (MachineOptions.console.inFd).
   */
  stdio?: {
    inFd: number | null;
    outFd: number;
    errFd: number;
    /** Sent on vmm.stdin before `inFd`'s bytes (StdioFds.stdinPrefix). */
    stdinPrefix?: Uint8Array;
    /** Where in it the wall clock goes (StdioFds.stdinClockAt). */
    stdinClockAt?: number;
  };
}

export const stdioKind: DeviceKind<StdioSpec, StdioOptions> = {
  kind: "stdio",
  open(o) {
    if (!o.stdio) return [];
    const { inFd, outFd, errFd, stdinPrefix, stdinClockAt } = o.stdio;
    // Non-blocking: a Worker may read one that polled readable for another reason.
    const controlWakeFd = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
    const stdinWakeFd = eventfd(EFD_CLOEXEC | EFD_NONBLOCK);
    return [{ kind: "stdio", inFd, outFd, errFd, controlWakeFd, stdinWakeFd, ...(stdinPrefix ? { stdinPrefix, stdinClockAt } : {}) }];
  },
  close(spec) {
    close(spec.controlWakeFd);
    close(spec.stdinWakeFd);
  },
  model: () => ({
    deviceId: VIRTIO_ID_CONSOLE,
    features: 1n << BigInt(VIRTIO_CONSOLE_F_MULTIPORT),
    queueSizes: new Array(NR_QUEUES).fill(STDIO_QUEUE_SIZE),
    config: consoleConfig(NR_PORTS),
  }),
  name: () => "virtio-console stdio",
  handler: (spec, ctx) => stdioHandler(spec, ctx),
  // Eight queues that carry a command's stdio and the port conversation:
  // one Worker for all of them, not eight Workers to start (and, after a
  // restore, to wait for) before the command's first byte.
  oneWorker: true,
};
