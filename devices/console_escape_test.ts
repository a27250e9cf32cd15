import { test } from "node:test";
import assert from "node:assert/strict";
import { ConsoleEscape } from "./console_escape.ts";

test("console escape: plain bytes pass, Ctrl-A x quits", () => {
  const e = new ConsoleEscape();
  assert.deepEqual(e.push(Uint8Array.of(0x61, 0x62)), { data: Uint8Array.of(0x61, 0x62), quit: false });
  assert.deepEqual(e.push(Uint8Array.of(0x63, 1, 0x78, 0x64)), { data: Uint8Array.of(0x63), quit: true });
});

test("console escape: Ctrl-A Ctrl-A sends one, Ctrl-A other sends both, across reads", () => {
  const e = new ConsoleEscape();
  assert.deepEqual(e.push(Uint8Array.of(1)).data, new Uint8Array(0));
  assert.deepEqual(e.push(Uint8Array.of(1, 1, 0x7a)).data, Uint8Array.of(1, 1, 0x7a));
});
