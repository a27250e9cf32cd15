import { test } from "node:test";
import assert from "node:assert/strict";
import { Lifecycle, type MachineState, type Operation, StateError } from "./lifecycle.ts";

const OPS: Operation[] = ["start", "pause", "resume", "stop", "wait", "snapshot", "close"];
/** Every allowed transition, by hand: the table in lifecycle.ts must say exactly this. */
const ALLOWED: Record<MachineState, Partial<Record<Operation, MachineState>>> = {
  created: { start: "running", close: "closed" },
  running: { pause: "paused", stop: "stopped", wait: "running", close: "closed" },
  paused: { resume: "running", stop: "stopped", wait: "paused", snapshot: "paused", close: "closed" },
  stopped: { stop: "stopped", wait: "stopped", close: "closed" },
  closed: { close: "closed" },
};

/** A Lifecycle driven into `state` by the operations that lead there. */
function at(state: MachineState): Lifecycle {
  const l = new Lifecycle();
  const path: Record<MachineState, Operation[]> = {
    created: [], running: ["start"], paused: ["start", "pause"], stopped: ["start", "stop"], closed: ["close"],
  };
  path[state].forEach((op) => l.done(op));
  assert.equal(l.state, state);
  return l;
}

for (const from of Object.keys(ALLOWED) as MachineState[]) {
  for (const op of OPS) {
    const to = ALLOWED[from][op];
    if (to) {
      test(`${op}() on a ${from} machine leads to ${to}`, () => {
        const l = at(from);
        l.check(op);
        l.done(op);
        assert.equal(l.state, to);
      });
    } else {
      test(`${op}() on a ${from} machine is a StateError and changes nothing`, () => {
        const l = at(from);
        assert.throws(() => l.check(op), (e) => e instanceof StateError && e.message === `${op}() on a ${from} machine`);
        assert.throws(() => l.done(op), StateError);
        assert.equal(l.state, from);
      });
    }
  }
}

test("the guest ending by itself stops a running or paused machine and leaves the others alone", () => {
  for (const [from, to] of [["running", "stopped"], ["paused", "stopped"], ["created", "created"], ["stopped", "stopped"], ["closed", "closed"]] as const) {
    const l = at(from);
    l.ended();
    assert.equal(l.state, to, `from ${from}`);
  }
});
