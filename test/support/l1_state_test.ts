/**
 * The nested host's check for a guest that ran on L1's own registers
 * (test/support/l1_state.ts), on trace lines copied from CI and from loops
 * in the nested host. The check itself runs in L1 (nested_test.ts plays it
 * with a real guest); here is its pure part.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ripsIn, symbolWindow, VMRUN_FN } from "./l1_state.ts";

/** Around kvm_amd's __svm_vcpu_run in one L1 boot's /proc/kallsyms (module symbols carry a [module] column). */
const KALLSYMS = [
  "ffffffffc0418ca0 T nested_svm_vmrun\t[kvm_amd]",
  "ffffffffc0422380 T __svm_sev_es_vcpu_run\t[kvm_amd]",
  "ffffffffc0422170 T __svm_vcpu_run\t[kvm_amd]",
  "ffffffffc0414780 t svm_vcpu_run\t[kvm_amd]",
  "ffffffff81000000 T _stext",
  "",
].join("\n");

test("symbolWindow() spans a function up to the next higher symbol, in any order", () => {
  assert.deepEqual(symbolWindow(KALLSYMS, VMRUN_FN), { start: 0xffffffffc0422170n, end: 0xffffffffc0422380n });
  assert.deepEqual(symbolWindow(KALLSYMS, "svm_vcpu_run"), { start: 0xffffffffc0414780n, end: 0xffffffffc0418ca0n });
});

test("symbolWindow() places nothing that kallsyms hides or lacks", () => {
  // kptr_restrict: every address reads as zeros.
  assert.equal(symbolWindow("0000000000000000 T __svm_vcpu_run\t[kvm_amd]\n0000000000000000 T x\n", VMRUN_FN), undefined);
  assert.equal(symbolWindow(KALLSYMS, "no_such_fn"), undefined);
  // The last symbol has no end.
  assert.equal(symbolWindow(KALLSYMS, "__svm_sev_es_vcpu_run"), undefined);
});

test("ripsIn() finds L1's VMRUN return address in a lost CR3's loop, and nothing in a guest's own triple fault", () => {
  const w = symbolWindow(KALLSYMS, VMRUN_FN)!;
  // The hang watcher's last exit in stop 31's loop, moved to this L1's layout (the same page offset, 0x20c).
  const lost = "vcpu 0 reason npf rip 0xffffffffc042220c info1 0x000000020000000e info2 0x0000000102688fe0 intr_info 0x80000b0e error_code 0x00000000";
  assert.deepEqual(ripsIn(lost, w), [0xffffffffc042220cn]);
  // loop/control_test.ts's deliberate #UD, as CI's flight recorder printed it.
  const ud = [
    "worker-11-345 [000] ..... 44.167580: kvm_page_fault: vcpu 0 rip 0x100200 address 0x0000000000009000 error_code 0x200000006",
    "worker-11-345 [000] ..... 44.167876: kvm_exit: vcpu 0 reason UD excp rip 0x100200 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000",
    "worker-11-345 [000] ..... 44.169428: kvm_inj_exception: #UD",
    "worker-11-345 [000] ..... 44.169704: kvm_exit: vcpu 0 reason shutdown rip 0x100200 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x80000306 error_code 0x00000000",
  ].join("\n");
  assert.deepEqual(ripsIn(ud, w), []);
  // A Linux guest's own kernel and module addresses just outside the window.
  assert.deepEqual(ripsIn("kvm_exit: vcpu 0 reason hlt rip 0xffffffff81c0a1de\nkvm_exit: vcpu 0 reason io rip 0xffffffffc0422380\nkvm_exit: vcpu 0 reason io rip 0xffffffffc042216f", w), []);
});
