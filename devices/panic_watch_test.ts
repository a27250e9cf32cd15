/**
 * PanicWatch (devices/panic_watch.ts) fed console bytes as a vCPU Worker
 * feeds them: it keeps the `Kernel panic - not syncing:` line as the reason
 * and says "ended" at the `---[ end Kernel panic` line (kernel/panic.c).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PanicWatch } from "./panic_watch.ts";

/** Feed `text` byte by byte; returns the verdict of each line end. */
function feed(w: PanicWatch, text: string): ("ended" | null)[] {
  const verdicts: ("ended" | null)[] = [];
  for (const b of new TextEncoder().encode(text)) {
    const v = w.push(b);
    if (b === 0x0a) verdicts.push(v);
    else assert.equal(v, null, "only a line end can end the report");
  }
  return verdicts;
}

test("PanicWatch keeps the panic line as the reason and ends at the end marker", () => {
  const w = new PanicWatch();
  const verdicts = feed(
    w,
    "Run /init as init process\n" +
      "Kernel panic - not syncing: test\n" +
      "CPU: 0 PID: 1 Comm: init Not tainted 6.1.0 #1\n" +
      "---[ end Kernel panic - not syncing: test ]---\n",
  );
  assert.deepEqual(verdicts, [null, null, null, "ended"]);
  assert.equal(w.reason, "Kernel panic - not syncing: test");
});

test("PanicWatch reads CRLF lines, as the 8250 console writes them", () => {
  const w = new PanicWatch();
  assert.deepEqual(
    feed(w, "Kernel panic - not syncing: VFS: Unable to mount root fs\r\n---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---\r\n"),
    [null, "ended"],
  );
  assert.equal(w.reason, "Kernel panic - not syncing: VFS: Unable to mount root fs");
});

test("PanicWatch finds the panic after a printk timestamp and keeps the first panic", () => {
  const w = new PanicWatch();
  feed(w, "[    1.234567] Kernel panic - not syncing: first\n[    1.3] Kernel panic - not syncing: second\n");
  assert.equal(w.reason, "Kernel panic - not syncing: first");
});

test("PanicWatch ignores ordinary output and an unfinished line", () => {
  const w = new PanicWatch();
  assert.deepEqual(feed(w, "hello\nkernel panic in lower case\n"), [null, null]);
  assert.equal(w.reason, "");
  feed(w, "---[ end Kernel panic - not syncing: x ]---"); // no newline yet
  assert.equal(w.reason, "");
});

test("PanicWatch caps a runaway line and still reads the next one", () => {
  const w = new PanicWatch();
  assert.deepEqual(feed(w, "x".repeat(100_000) + "\nKernel panic - not syncing: after\n"), [null, null]);
  assert.equal(w.reason, "Kernel panic - not syncing: after");
});

test("PanicWatch takes the reason from the end marker when the panic line was missed", () => {
  const w = new PanicWatch();
  assert.deepEqual(feed(w, "---[ end Kernel panic - not syncing: Attempted to kill init! ]---\n"), ["ended"]);
  assert.equal(w.reason, "Kernel panic - not syncing: Attempted to kill init!");
});
