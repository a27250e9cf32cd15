/**
 * guest/settime.ts: the program carries the time it was given, and really
 * calls clock_settime(CLOCK_REALTIME) with it. Run on the host without
 * CAP_SYS_TIME (setpriv), so it cannot change this host's clock: the kernel
 * answers EPERM, which the program returns as its status (255); strace,
 * where there is one, shows the call and its timespec.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { settimeElf, settimeOf, stampClock } from "./settime.ts";

test("settimeElf() carries its time to the millisecond, and stampClock() changes it in place", () => {
  const elf = settimeElf(1_796_282_067_011);
  assert.equal(settimeOf(elf), 1_796_282_067_011);
  stampClock(elf, elf.length - 16, 5_500);
  assert.equal(settimeOf(elf), 5_500);
  assert.throws(() => settimeElf(-1), /Not a time/);
});

const has = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;

test("the settime program calls clock_settime(CLOCK_REALTIME) with its time, and exits with the errno it got", () => {
  assert.ok(has("setpriv"), "setpriv (util-linux) is needed to run it without CAP_SYS_TIME");
  const dir = mkdtempSync(join(tmpdir(), "vmm-settime-"));
  try {
    const path = join(dir, "settime");
    writeFileSync(path, settimeElf(1_796_282_067_011));
    chmodSync(path, 0o755);
    const noTime = ["--inh-caps=-all", "--bounding-set=-sys_time"];
    const r = spawnSync("setpriv", [...noTime, path]);
    assert.equal(r.status, 255, `status ${r.status} ${r.stderr}`); // -EPERM's low byte
    if (has("strace")) {
      const t = spawnSync("setpriv", [...noTime, "strace", "-e", "trace=clock_settime", path], { encoding: "utf8" });
      assert.match(t.stderr, /clock_settime\(CLOCK_REALTIME, \{tv_sec=1796282067, tv_nsec=11000000\}\) = -1 EPERM/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
