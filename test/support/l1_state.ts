/**
 * Whether a guest in the nested host ran on L1's own registers: a check for
 * the nested host's hang watcher and flight recorder (test/support/nested.ts),
 * not a test.
 *
 * The nested host's worst fault, seen as a guest that loops on a page fault
 * (a "lost CR3") or triple-faults out of nowhere, has one signature: L1's
 * KVM reports the guest's RIP as the address in L1's own kvm_amd just past
 * its VMRUN instruction (`__svm_vcpu_run`, the `pop %rax` that follows
 * `vmrun`). The guest's state came back from the emulated SVM below (QEMU's
 * TCG) as L1's host state, so the guest "runs" L1's kernel code at its own
 * CR3 and faults. Found from the two lost CR3s of stop 31's loop, at
 * 0xffffffffc03f920c and 0xffffffffc040620c: Debian's 6.1.0-57 kvm-amd.ko
 * has `vmrun` at `__svm_vcpu_run+0x99`, the next instruction at +0x9c, and
 * L1's kallsyms puts `__svm_vcpu_run` at an address ending in 0x170, so
 * that instruction ends in 0x20c in every L1 boot (the module's base moves
 * by whole pages only).
 *
 * No guest of the suite runs there on its own: the tiny test guests live
 * below 16 MiB, and a Linux guest's kernel at the same numbers as L1's
 * kvm_amd text, in the one window of `__svm_vcpu_run`, while it also faults,
 * is not a case to plan for. So a RIP in that window is proof that the run
 * says nothing about vmm, and runNested gives L1 up and runs the script
 * again in a fresh one (its `LOST` marker).
 *
 * Usage: bun test/support/l1_state.ts FILE
 * FILE holds KVM trace lines (a flight-recorder record, or the hang
 * watcher's last exit). Prints one line and exits with status 3 when a RIP
 * in them is in L1's `__svm_vcpu_run`, 0 when none is, 2 when L1's
 * kallsyms do not say where it is.
 *
 * `bun test/support/l1_state.ts --guest FILE` writes a tiny bzImage whose
 * one instruction jumps to L1's `__svm_vcpu_run`, where nothing is mapped,
 * so it triple-faults there: the harness's test plays the fault with it.
 */
import { readFileSync, writeFileSync } from "node:fs";
import process from "node:process";

/** The function of L1's kvm_amd that runs a guest: VMRUN, and the return to L1 after it. */
export const VMRUN_FN = "__svm_vcpu_run";

/** [start, end) of a function in /proc/kallsyms text: from its address to the next higher symbol's. */
export function symbolWindow(kallsyms: string, name: string): { start: bigint; end: bigint } | undefined {
  let start: bigint | undefined;
  const addrs: bigint[] = [];
  for (const line of kallsyms.split("\n")) {
    const [addr, , sym] = line.split(/\s+/);
    if (!addr || !sym || !/^[0-9a-f]+$/.test(addr)) continue;
    const a = BigInt("0x" + addr);
    if (a === 0n) continue; // kptr_restrict: no addresses shown
    addrs.push(a);
    if (sym === name) start = a;
  }
  if (start === undefined) return undefined;
  let end: bigint | undefined;
  for (const a of addrs) if (a > start && (end === undefined || a < end)) end = a;
  return end === undefined ? undefined : { start, end };
}

/** The RIPs that KVM trace lines name (`kvm_exit: … rip 0x…`, `kvm_page_fault: … rip 0x…`), in the window. */
export function ripsIn(trace: string, w: { start: bigint; end: bigint }): bigint[] {
  const out: bigint[] = [];
  for (const m of trace.matchAll(/\brip (0x[0-9a-f]+)\b/g)) {
    const rip = BigInt(m[1]);
    if (rip >= w.start && rip < w.end) out.push(rip);
  }
  return out;
}

if (import.meta.main) {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: l1_state.ts FILE");
    process.exit(2);
  }
  const w = symbolWindow(readFileSync("/proc/kallsyms", "utf8"), VMRUN_FN);
  if (!w) {
    console.log(`L1's kallsyms do not place ${VMRUN_FN}`);
    process.exit(2);
  }
  if (file === "--guest") {
    const { makeBzImage } = await import("./tiny_kernel.ts");
    const jump = new Uint8Array(12); // movabs $start, %rax; jmp *%rax
    jump.set([0x48, 0xb8]);
    new DataView(jump.buffer).setBigUint64(2, w.start, true);
    jump.set([0xff, 0xe0], 10);
    writeFileSync(process.argv[3], makeBzImage(jump));
    process.exit(0);
  }
  const hits = ripsIn(readFileSync(file, "utf8"), w);
  const at = `${VMRUN_FN} 0x${w.start.toString(16)}-0x${w.end.toString(16)}`;
  if (hits.length === 0) {
    console.log(`no RIP in L1's ${at}`);
    process.exit(0);
  }
  console.log(`the guest's RIP is L1's own, in ${at}: 0x${hits[0].toString(16)} (${hits.length} events)`);
  process.exit(3);
}
