/**
 * vmm's stderr lines: colour only on a terminal, never with NO_COLOR, and a
 * file gets plain text whatever FORCE_COLOR says.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { colourOn, formatError, progress } from "./stderr.ts";

const tty = (env: Record<string, string> = {}) => ({ isTty: true, env });
const file = (env: Record<string, string> = {}) => ({ isTty: false, env });

test("colourOn() is true on a terminal only, and never with NO_COLOR or TERM=dumb", () => {
  assert.equal(colourOn(tty({ TERM: "xterm" })), true);
  assert.equal(colourOn(file({ TERM: "xterm" })), false);
  assert.equal(colourOn(file({ FORCE_COLOR: "1" })), false);
  assert.equal(colourOn(tty({ NO_COLOR: "1" })), false);
  assert.equal(colourOn(tty({ TERM: "dumb" })), false);
  // no-color.org: an empty NO_COLOR does not count.
  assert.equal(colourOn(tty({ NO_COLOR: "" })), true);
});

test("formatError() keeps the first line and colours only a colour terminal", () => {
  assert.equal(formatError("Bad thing\n    at stack", file()), "vmm: Bad thing\n");
  assert.equal(formatError("Bad thing", tty()), "\x1b[31mvmm: Bad thing\x1b[0m\n");
  assert.equal(formatError("Bad thing", tty({ NO_COLOR: "1" })), "vmm: Bad thing\n");
});

test("progress() is one line off a terminal and an open line that ends with its time on one", () => {
  let out = "";
  progress("unpacking", file(), (s) => (out += s))();
  assert.equal(out, "vmm: unpacking\n");
  out = "";
  const done = progress("unpacking", tty(), (s) => (out += s));
  assert.equal(out, "vmm: unpacking… ");
  done();
  assert.match(out, /^vmm: unpacking… done in \d+ ms\n$/);
});

test("printError() writes plain text to a file even with FORCE_COLOR set", () => {
  // A child process whose stderr is a file, as in `vmm … 2>err.txt`.
  const dir = mkdtempSync(join(tmpdir(), "vmm-stderr-"));
  try {
    const mod = fileURLToPath(new URL("./stderr.ts", import.meta.url));
    const script = join(dir, "say.ts");
    const errFile = join(dir, "err.txt");
    const code = `import { printError } from ${JSON.stringify(mod)}; printError("one line\\nnot this");`;
    writeFileSync(script, code);
    const fd = openSync(errFile, "w");
    const args = typeof (globalThis as { Deno?: unknown }).Deno === "object" ? ["run", "-A", "--no-check", script] : [script];
    const r = spawnSync(process.execPath, args, { stdio: ["ignore", "ignore", fd], env: { ...process.env, FORCE_COLOR: "1", TERM: "xterm" } });
    closeSync(fd);
    assert.equal(r.status, 0, String(r.stderr));
    assert.equal(readFileSync(errFile, "utf8"), "vmm: one line\n");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
