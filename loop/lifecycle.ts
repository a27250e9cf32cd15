/**
 * The states of a machine and the operations that move it, in one table:
 *
 * ```
 * created ──start──▶ running ──pause──▶ paused
 *                     ▲  │  ◀──resume──   │
 *                     │  └──stop / the guest ends──▶ stopped ◀──stop──┘
 * any state ──close──▶ closed
 * ```
 *
 * Every public operation of `Machine` asks `check()` first, so a call in the
 * wrong state is one clear error (`pause() on a stopped machine`) and not a
 * hang or a half-done transition.
 */

export type MachineState = "created" | "running" | "paused" | "stopped" | "closed";
export type Operation = "start" | "pause" | "resume" | "stop" | "wait" | "snapshot" | "close";

/** The states each operation may start from. */
const FROM: Readonly<Record<Operation, readonly MachineState[]>> = {
  start: ["created"],
  pause: ["running"],
  resume: ["paused"],
  // stop() of a stopped machine hands back how it ended, as wait() does.
  stop: ["running", "paused", "stopped"],
  wait: ["running", "paused", "stopped"],
  snapshot: ["paused"],
  // close() of a closed machine does nothing, as `await using` may call it again.
  close: ["created", "running", "paused", "stopped", "closed"],
};

/** Where a successful operation leaves the machine (wait and snapshot leave it as it was). */
const TO: Readonly<Partial<Record<Operation, MachineState>>> = {
  start: "running",
  pause: "paused",
  resume: "running",
  stop: "stopped",
  close: "closed",
};

/** An operation asked of a machine in a state that does not allow it. */
export class StateError extends Error {
  readonly state: MachineState;
  readonly operation: Operation;
  constructor(operation: Operation, state: MachineState) {
    super(`${operation}() on a ${state} machine`);
    this.name = "StateError";
    this.operation = operation;
    this.state = state;
  }
}

export class Lifecycle {
  #state: MachineState = "created";

  get state(): MachineState {
    return this.#state;
  }

  /** Throw StateError unless `op` may run now. */
  check(op: Operation): void {
    if (!FROM[op].includes(this.#state)) throw new StateError(op, this.#state);
  }

  /** `op` succeeded: move to where it leads. */
  done(op: Operation): void {
    this.check(op);
    this.#state = TO[op] ?? this.#state;
  }

  /** The guest ended by itself (or failed): a running or paused machine is now stopped. */
  ended(): void {
    if (this.#state === "running" || this.#state === "paused") this.#state = "stopped";
  }
}
