/**
 * guest_scan.ts, the hang watcher's diagnostic (test/support/nested.ts),
 * against this test's own process: its "guest RAM" is a mapping made as
 * vmm makes one (mmapGuestRam, advised MADV_HUGEPAGE), holding either a
 * page-table entry that points at the faulting page or kernel data that
 * only looks like one. Status 3 (the guest's CR3 lost below it) must come
 * for the second and not for the first.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { hostView, libc, mmapGuestRam } from "../../ffi/libc.ts";
import { scriptCommand } from "./vmm_cli.ts";

const SCAN = fileURLToPath(new URL("./guest_scan.ts", import.meta.url));
const SIZE = 64 << 20;
/** The loop's fault: the guest's page walk at 4 GiB past page 0x856000, at entry 508. */
const FAULT = "0x100856fe0";

function scan(fill: (put: (gpa: number, hi: number, lo: number) => void) => void) {
  const addr = mmapGuestRam(SIZE);
  try {
    const bytes = hostView(addr, SIZE);
    const v = new DataView(bytes.buffer, bytes.byteOffset, SIZE);
    fill((gpa, hi, lo) => {
      v.setUint32(gpa, lo, true);
      v.setUint32(gpa + 4, hi, true);
    });
    const [cmd, argv] = scriptCommand(SCAN, [String(process.pid), FAULT]);
    return spawnSync(cmd, argv, { encoding: "utf8", timeout: 60_000 });
  } finally {
    libc.munmap(addr, BigInt(SIZE));
  }
}

test("guest_scan: a page-table entry pointing at the page is listed, and the fault is not called a lost CR3", () => {
  const r = scan((put) => {
    put(0x23c3000 + 8 * 3, 0, 0x856067); // present, RW, user, accessed, dirty
    put(0x23c3000 + 8 * 511, 0x80000000, 0x1a0b063); // another entry of the table, NX
  });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /at 0x23c3018: 0x0_00856067/);
});

test("guest_scan: kernel data that holds the page's address with bit 0 set is no entry: the CR3 was lost (status 3)", () => {
  // What a CI pass met: odd words 0x8560d1, 0x8560f9, … each beside one like 0xfed452a4_fed4528f.
  const r = scan((put) => {
    for (let k = 0, g = 0x23c37d8; k < 12; k++, g += 16) {
      put(g, 0, 0x8560d1 + 0x28 * k);
      put(g + 8, 0xfed45000 + 0x37 * k, 0xfed45001 + 0x29 * k);
    }
  });
  assert.equal(r.status, 3, r.stdout + r.stderr);
  assert.match(r.stdout, /the guest's CR3 is outside its RAM/);
});
