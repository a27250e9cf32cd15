/**
 * The control side of a multiport virtio-console (virtio 1.2 §5.3.6.2), as
 * pure logic: the message layout, which queue is which, and what the host
 * answers. devices/stdio/stdio.ts moves the messages through the queues.
 *
 * With VIRTIO_CONSOLE_F_MULTIPORT the driver finds no port by itself. The
 * conversation, as Linux's drivers/char/virtio_console.c holds it:
 *
 *   guest → DEVICE_READY 1        (probe done, control receiveq stocked)
 *   host  → PORT_ADD id           for each port
 *   guest → PORT_READY id 1       (add_port() made /dev/vportNpM)
 *   host  → PORT_OPEN id 1        "the host end is connected"
 *   host  → PORT_NAME id + name   (/sys/class/virtio-ports/vportNpM/name)
 *   guest → PORT_OPEN id 1|0      a program opened or closed the port
 *   host  → PORT_OPEN 0 0         stdin ended
 *
 * The guest's PORT_OPEN matters for stdin: in_intr() discards what arrives
 * on a generic port no program has open, so vmm sends stdin only after the
 * guest said it opened vmm.stdin (stdio.ts StdinRx).
 *
 * PORT_OPEN goes before PORT_NAME on purpose: the driver handles control
 * messages in order, so a guest that waits for the name to appear knows
 * the port's host end is already set. Otherwise a read() of vmm.stdin that
 * came between the two would see `!host_connected` with no data, which
 * port_fops_read() reports as end of file.
 *
 * After host EOF, PORT_OPEN value 0 on stdin is how the guest learns it:
 * port_fops_read() returns 0 once the port has no data and
 * `host_connected` is false. The data read before EOF is already in the
 * port's used ring by then, and the driver drains that first.
 */
import { GuestError } from "../virtio/ring.ts";

/** Feature bit: the device has ports and control queues (virtio 1.2 §5.3.3). */
export const VIRTIO_CONSOLE_F_MULTIPORT = 1;

/** Control events (uapi/linux/virtio_console.h). */
export const VIRTIO_CONSOLE_DEVICE_READY = 0;
export const VIRTIO_CONSOLE_PORT_ADD = 1;
export const VIRTIO_CONSOLE_PORT_REMOVE = 2;
export const VIRTIO_CONSOLE_PORT_READY = 3;
export const VIRTIO_CONSOLE_CONSOLE_PORT = 4;
export const VIRTIO_CONSOLE_RESIZE = 5;
export const VIRTIO_CONSOLE_PORT_OPEN = 6;
export const VIRTIO_CONSOLE_PORT_NAME = 7;

/** struct virtio_console_control: le32 id, le16 event, le16 value; PORT_NAME's name follows it, no NUL. */
export const CONTROL = { ID: 0, EVENT: 4, VALUE: 6, SIZE: 8 } as const;

export interface ControlMsg {
  id: number;
  event: number;
  value: number;
  /** PORT_NAME only. */
  name?: string;
}

/** The bytes of one control message: what the driver reads from one receive buffer. */
export function encodeControl(m: ControlMsg): Uint8Array {
  const name = m.name === undefined ? new Uint8Array(0) : new TextEncoder().encode(m.name);
  const b = new Uint8Array(CONTROL.SIZE + name.length);
  const v = new DataView(b.buffer);
  v.setUint32(CONTROL.ID, m.id, true);
  v.setUint16(CONTROL.EVENT, m.event, true);
  v.setUint16(CONTROL.VALUE, m.value, true);
  b.set(name, CONTROL.SIZE);
  return b;
}

/** A control message from the driver; GuestError `ChainTooShort` when it is not 8 bytes long at least. */
export function decodeControl(b: Uint8Array): ControlMsg {
  if (b.length < CONTROL.SIZE) {
    throw new GuestError("ChainTooShort", `Control message of ${b.length} bytes, needs ${CONTROL.SIZE}`);
  }
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  return { id: v.getUint32(CONTROL.ID, true), event: v.getUint16(CONTROL.EVENT, true), value: v.getUint16(CONTROL.VALUE, true) };
}

// ---- the ports and their queues ----

export const STDIN_PORT = 0;
export const STDOUT_PORT = 1;
export const STDERR_PORT = 2;
/** The names a guest looks for in /sys/class/virtio-ports/vport*\/name, by port id. */
export const PORT_NAMES = ["vmm.stdin", "vmm.stdout", "vmm.stderr"] as const;
/** max_nr_ports in the configuration space. */
export const NR_PORTS = PORT_NAMES.length;

/**
 * Queue numbers with F_MULTIPORT (virtio 1.2 §5.3.2): port 0 keeps queues
 * 0 and 1, the control queues come next, then two per further port.
 */
export const CONTROL_RX_QUEUE = 2;
export const CONTROL_TX_QUEUE = 3;
export const NR_QUEUES = 2 * (NR_PORTS + 1);

/** A port's receive (host → guest) and transmit (guest → host) queue. */
export function portQueues(port: number): { rx: number; tx: number } {
  const rx = port === 0 ? 0 : 2 * port + 2;
  return { rx, tx: rx + 1 };
}

export type QueueRole =
  | { role: "rx" | "tx"; port: number }
  | { role: "control-rx" | "control-tx" };

/** What queue `q` carries. */
export function queueRole(q: number): QueueRole {
  if (q === CONTROL_RX_QUEUE) return { role: "control-rx" };
  if (q === CONTROL_TX_QUEUE) return { role: "control-tx" };
  const port = q < 2 ? 0 : (q >> 1) - 1;
  if (!Number.isInteger(q) || q < 0 || port >= NR_PORTS) throw new RangeError(`No queue ${q} on a ${NR_PORTS}-port console`);
  return { role: q % 2 === 0 ? "rx" : "tx", port };
}

// ---- what the two control handlers share ----

/**
 * The device's shared words (HandlerContext.state). The control transmit
 * handler hears the guest and the stdin handler sees EOF, but only the
 * control receive handler owns buffers to answer in: they leave word
 * REQUESTS / STDIN_EOF set and write its wake eventfd.
 */
export const W = {
  /** Bits of what the guest asked and the host has not answered: REQ_*. */
  REQUESTS: 0,
  /** 1 once host stdin ended (EOF, a read error, or no stdin at all). */
  STDIN_EOF: 1,
  /** GUEST_OPEN + port: 1 while a guest program has the port open (its PORT_OPEN). */
  GUEST_OPEN: 2,
  /**
   * What the host has told this driver session (ControlPlan.state), kept
   * here rather than in the control receive handler's memory so that a
   * snapshot carries it: a restored guest whose stdin ends must still be
   * told so, by a handler that never saw the ports announced.
   */
  PLAN: 2 + NR_PORTS,
} as const;

export const REQ_DEVICE_READY = 1;
/** The REQUESTS bit of a PORT_READY for `port`. */
export function reqPortReady(port: number): number {
  return 2 << port;
}

/** What one message from the guest changes: REQUESTS bits, or a port's guest-open state. */
export function guestRequest(m: ControlMsg): { requests: number; guestOpen?: { port: number; open: boolean } } {
  const known = m.id < NR_PORTS;
  switch (m.event) {
    // Value 0 reports a failure (probe or add_port ran out of memory): nothing to answer.
    case VIRTIO_CONSOLE_DEVICE_READY:
      return { requests: m.value === 1 ? REQ_DEVICE_READY : 0 };
    case VIRTIO_CONSOLE_PORT_READY:
      return { requests: known && m.value === 1 ? reqPortReady(m.id) : 0 };
    case VIRTIO_CONSOLE_PORT_OPEN:
      return known ? { requests: 0, guestOpen: { port: m.id, open: m.value !== 0 } } : { requests: 0 };
    default:
      return { requests: 0 }; // nothing else is the driver's to send
  }
}

const PLAN_ADDED = 1, PLAN_NAMED = 2, PLAN_STDIN_OPEN = 0x100, PLAN_STDIN_CLOSED = 0x200;

/**
 * The host's half of the conversation, for one driver session (a device
 * reset starts a new one): given what the guest asked since last time and
 * whether stdin has ended, the messages to send next, in order. Each
 * request is answered once, so a driver repeating itself cannot make the
 * answers pile up: a session sends at most 3 + 3·2 + 1 messages.
 */
export class ControlPlan {
  #added = false;
  readonly #named = new Set<number>();
  /** What the guest was last told about stdin's host end (null: nothing yet). */
  #stdinOpen: boolean | null = null;

  /** A plan that goes on from `state` (a `state` read earlier; 0: a new session). */
  constructor(state = 0) {
    this.#added = (state & PLAN_ADDED) !== 0;
    for (let id = 0; id < NR_PORTS; id++) if (state & (PLAN_NAMED << id)) this.#named.add(id);
    this.#stdinOpen = state & PLAN_STDIN_OPEN ? true : state & PLAN_STDIN_CLOSED ? false : null;
  }

  /** What has been said so far, as one word (W.PLAN). */
  get state(): number {
    let s = this.#added ? PLAN_ADDED : 0;
    for (const id of this.#named) s |= PLAN_NAMED << id;
    if (this.#stdinOpen === true) s |= PLAN_STDIN_OPEN;
    if (this.#stdinOpen === false) s |= PLAN_STDIN_CLOSED;
    return s;
  }

  next(requests: number, stdinEof: boolean): ControlMsg[] {
    const out: ControlMsg[] = [];
    if (requests & REQ_DEVICE_READY && !this.#added) {
      this.#added = true;
      for (let id = 0; id < NR_PORTS; id++) out.push({ id, event: VIRTIO_CONSOLE_PORT_ADD, value: 1 });
    }
    for (let id = 0; id < NR_PORTS; id++) {
      if (!(requests & reqPortReady(id)) || this.#named.has(id)) continue;
      this.#named.add(id);
      // Output ports stay connected for the VM's life: the driver's write() waits while the host end is closed.
      const open = id === STDIN_PORT ? !stdinEof : true;
      if (id === STDIN_PORT) this.#stdinOpen = open;
      out.push({ id, event: VIRTIO_CONSOLE_PORT_OPEN, value: open ? 1 : 0 });
      out.push({ id, event: VIRTIO_CONSOLE_PORT_NAME, value: 1, name: PORT_NAMES[id] });
    }
    if (stdinEof && this.#stdinOpen === true) {
      this.#stdinOpen = false;
      out.push({ id: STDIN_PORT, event: VIRTIO_CONSOLE_PORT_OPEN, value: 0 });
    }
    return out;
  }
}
