/**
 * scripts/deno-compile.ts: compiles with a local denort (DENORT_BIN), and
 * without one skips with a message that says why, exiting 0.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { denortMissing } from "./deno-compile.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const BUN = `${REPO}/node_modules/.bin/bun`;

test("denortMissing() names what is missing", () => {
  assert.match(denortMissing({})!, /^DENORT_BIN is not set: deno compile would download denort/);
  assert.equal(denortMissing({ DENORT_BIN: "/nonexistent/denort" }), "DENORT_BIN /nonexistent/denort: no such file");
  assert.equal(denortMissing({ DENORT_BIN: process.execPath }), undefined);
});

test("without DENORT_BIN the script skips with one line and status 0", () => {
  // env -u, not an `env` option: Deno's spawnSync adds that to the parent's environment.
  const r = spawnSync("env", ["-u", "DENORT_BIN", BUN, "scripts/deno-compile.ts"], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
  assert.equal(r.status, 0, r.stderr.toString());
  assert.match(r.stderr.toString(), /^deno-compile: skipped: DENORT_BIN is not set: .*\n$/);
  assert.equal(r.stdout.toString(), "");
});

test("with DENORT_BIN it compiles an executable that runs", { timeout: 300_000 }, (t) => {
  const why = denortMissing();
  if (why) return t.skip(`deno compile not checked: ${why}`);
  const dir = mkdtempSync(join(tmpdir(), "vmm-deno-compile-"));
  try {
    const out = join(dir, "vmm-deno");
    const r = spawnSync(BUN, ["scripts/deno-compile.ts", "--outfile", out], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
    assert.equal(r.status, 0, r.stderr.toString());
    const v = spawnSync(out, ["--version"], { stdio: ["ignore", "pipe", "pipe"] });
    assert.match(v.stdout.toString(), /^vmm \d/, v.stderr.toString());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
