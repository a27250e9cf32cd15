/**
 * Console input: bytes on vmm's stdin reach the guest's UART through the
 * control loop (loop/console_input.ts), on both runtimes (Bun leaves stdin
 * non-blocking, and a zero-length memory view once hung the Worker that
 * did this before).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeBzImage } from "../test/support/tiny_kernel.ts";
import { requireKvm } from "../test/support/require_kvm.ts";
import { CHILD_BOUND_MS, vmmCommand, vmmEnv, vmmSpawn, withFile } from "../test/support/vmm_cli.ts";

/** A guest that polls the UART's LSR, echoes each received byte, and exits with 9 on 'q'. */
const ECHO = new Uint8Array([
  0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (LSR)
  0xec, // in al, dx
  0xa8, 0x01, // test al, DR
  0x74, 0xf7, // jz back to the start
  0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8 (RBR/THR)
  0xec, // in al, dx
  0xee, // out dx, al
  0x3c, 0x71, // cmp al, 'q'
  0x75, 0xed, // jne back to the start
  0x66, 0xba, 0xf4, 0x00, 0xb0, 0x09, 0xee, // exit port 0xf4 <- 9
  0xf4, 0xeb, 0xfd, // hlt forever
]);

/** Boot the echo guest with `stdin` as shell redirection text (e.g. `< file`) or piped `input`. */
function boot(o: { input?: string; file?: string }) {
  requireKvm();
  const dir = mkdtempSync(join(tmpdir(), "vmm-stdin-"));
  try {
    const k = join(dir, "echo.bz");
    writeFileSync(k, makeBzImage(ECHO));
    const run = vmmCommand(["boot", "--kernel", k]).flat();
    let script = '"$@"';
    if (o.file !== undefined) {
      writeFileSync(join(dir, "in"), o.file);
      script = `"$@" < ${join(dir, "in")}`;
    }
    return spawnSync("sh", ["-c", script, "sh", ...run], {
      input: o.input ?? "",
      env: vmmEnv(true),
      timeout: 120_000,
      encoding: "utf8",
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("bytes piped to vmm's stdin reach the guest's UART", () => {
  const r = boot({ input: "abcq" });
  assert.equal(r.stdout, "abcq", r.stderr);
  assert.equal(r.status, 9, r.stderr);
});

test("stdin from a regular file reaches the guest's UART", () => {
  const r = boot({ file: "xyzq" });
  assert.equal(r.stdout, "xyzq", r.stderr);
  assert.equal(r.status, 9, r.stderr);
});

test("more input than the UART's receive ring holds reaches the guest whole and in order", () => {
  // 3 KiB against a 1 KiB ring: the control loop keeps what did not fit and offers it again.
  const text = Array.from({ length: 3000 }, (_, i) => "abcdefghijklmnop"[(i * 7) % 16]).join("") + "q";
  const r = boot({ input: text });
  assert.equal(r.status, 9, r.stderr);
  assert.equal(r.stdout.length, text.length, r.stderr);
  assert.equal(r.stdout, text);
});

test("Ctrl-A x on stdin ends the VM with status 0; what came before it reached the guest", async () => {
  requireKvm();
  await withFile(makeBzImage(ECHO), async (k) => {
    const vmm = vmmSpawn(["boot", "-v", "--kernel", k]);
    const bound = setTimeout(() => vmm.child.kill("SIGKILL"), CHILD_BOUND_MS);
    try {
      vmm.child.stdin!.write("ab");
      await vmm.waitForStdout("ab"); // the guest echoed both bytes: the VM is running and takes input
      vmm.child.stdin!.write("\x01xq"); // 'q' after the escape is dropped, or the guest would exit with 9
      assert.equal(await vmm.exited, 0, vmm.stderr());
      assert.equal(vmm.stdout(), "ab");
      assert.match(vmm.stderr(), /console escape Ctrl-A x/);
    } finally {
      clearTimeout(bound);
      vmm.child.kill("SIGKILL");
    }
  });
});
