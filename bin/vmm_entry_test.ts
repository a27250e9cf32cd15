/** bin/vmm.ts: which command lines start a vCPU Worker before vmm's modules load. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { bootsAGuest } from "./vmm.ts";

test("bootsAGuest(): boot, run and restore do, wherever the command stands; --help, --version and a guest's own words do not", () => {
  const yes = [["boot"], ["-v", "boot", "--kernel", "k"], ["run", "--", "ls"], ["restore", "dir"], ["--memory", "1G", "run", "--", "x"]];
  const no = [[], ["--help"], ["boot", "--help"], ["run", "-h", "--", "x"], ["--version"], ["bogus"], ["--", "run"], ["frob", "--", "boot"]];
  for (const a of yes) assert.equal(bootsAGuest(a), true, JSON.stringify(a));
  for (const a of no) assert.equal(bootsAGuest(a), false, JSON.stringify(a));
  assert.equal(bootsAGuest(["run", "--", "ls", "--help"]), true, "the guest command's own --help is its own");
});
