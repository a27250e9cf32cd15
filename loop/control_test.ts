/**
 * The control loop (loop/control.ts) and the vCPU Workers it runs, on the
 * real /dev/kvm: tiny guests (test/support/tiny_kernel.ts) print on COM1 and
 * end the VM each way a guest can, through `Machine` from mod.ts as a
 * library user would. On PVM each guest instruction is emulated (~1.5 µs),
 * so every guest here is a few dozen instructions.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXIT_PANIC, EXIT_TRIPLE_FAULT } from "../mod.ts";
import { asm, makeBzImage, printAndExit } from "../test/support/tiny_kernel.ts";
import { requireKvm, runTiny } from "../test/support/tiny_run.ts";
import { CHILD_BOUND_MS, scriptCommand, vmmEnv } from "../test/support/vmm_cli.ts";
import { ACPI_RESET_PORT, ACPI_SLEEP_PORT, SLP_EN, SLP_TYP_S5, SLP_TYP_SHIFT, WAK_STS } from "../boot/acpi.ts";
import { VIRTIO_MMIO_START } from "../boot/layout.ts";

/** mov dx, 0xf4; out dx, al: end the VM with the low byte of EAX as the exit code. */
const EXIT_WITH_AL = [0x66, 0xba, 0xf4, 0x00, 0xee];
const le32 = (x: number) => [x & 0xff, (x >> 8) & 0xff, (x >> 16) & 0xff, (x >>> 24) & 0xff];
/*
 * Absolute loads and stores carry the address-size prefix 0x67: without it,
 * 64-bit mode sign-extends a disp32 of 2 GiB or more to 0xffffffff_xxxxxxxx,
 * which the boot page tables do not map.
 */
/** mov eax, [addr32] */
const loadU32 = (addr: number) => [0x67, 0x8b, 0x04, 0x25, ...le32(addr)];
/** mov rax, [addr32] (REX.W right before the opcode) */
const loadU64 = (addr: number) => [0x67, 0x48, 0x8b, 0x04, 0x25, ...le32(addr)];
/** mov dword [addr32], imm32 */
const storeU32 = (addr: number, v: number) => [0x67, 0xc7, 0x04, 0x25, ...le32(addr), ...le32(v)];
/** movzx eax, byte [addr32] */
const loadU8 = (addr: number) => [0x67, 0x0f, 0xb6, 0x04, 0x25, ...le32(addr)];
/** shr rax, 32 */
const SHR_RAX_32 = [0x48, 0xc1, 0xe8, 0x20];

function guest(...code: number[][]): Uint8Array {
  return makeBzImage(new Uint8Array(code.flat()));
}

test("a guest's serial output arrives and its exit-port status comes back", async () => {
  const { result, output } = await runTiny(printAndExit("hello from the guest\n", 42));
  assert.equal(output, "hello from the guest\n");
  const { builtMs, workersMs, ...rest } = result;
  assert.deepEqual(rest, { code: 42, kind: "EXIT_CODE", reason: "guest command exited with 42", readyMs: undefined });
  // The VM was built, then the vCPU Worker reported ready, before the run ended.
  assert.ok(typeof builtMs === "number" && builtMs >= 0, `builtMs: ${builtMs}`);
  assert.ok(typeof workersMs === "number" && workersMs >= builtMs, `workersMs: ${workersMs}, builtMs: ${builtMs}`);
});

test("exit status 0 is a success like any other", async () => {
  const { result, output } = await runTiny(printAndExit("", 0));
  assert.equal(output, "");
  assert.equal(result.code, 0);
  assert.equal(result.kind, "EXIT_CODE");
});

test("with 2 vCPUs the idle application processor is kicked out of KVM_RUN and the VM stops", async () => {
  const { result, output } = await runTiny(printAndExit("two\n", 3), { cpus: 2 });
  assert.equal(output, "two\n");
  // A kick that failed would leave vCPU 1 in KVM_RUN: its Worker would not
  // end, and the result would say so as an ERROR.
  assert.deepEqual([result.kind, result.code, result.reason], ["EXIT_CODE", 3, "guest command exited with 3"]);
});

test("an i8042 reset (0xFE to port 0x64) ends the VM as RESET with status 0", async () => {
  const { result, output } = await runTiny(guest(asm.print("bye\n"), asm.outb(0x64, 0xfe), asm.halt));
  assert.equal(output, "bye\n");
  assert.deepEqual([result.kind, result.code, result.reason], ["RESET", 0, "guest reset (keyboard controller)"]);
});

test("other i8042 commands do not reset the guest", async () => {
  const { result } = await runTiny(guest(asm.outb(0x64, 0xaa), asm.outb(0x60, 0xfe), asm.outb(0xf4, 5), asm.halt));
  assert.deepEqual([result.kind, result.code], ["EXIT_CODE", 5]);
});

test("writing S5 to the ACPI sleep port powers off, after Linux's WAK_STS clear is ignored", async () => {
  const s5 = (SLP_TYP_S5 << SLP_TYP_SHIFT) | SLP_EN; // 0x34, what Linux writes for poweroff
  const { result } = await runTiny(guest(asm.outb(ACPI_SLEEP_PORT, WAK_STS), asm.outb(ACPI_SLEEP_PORT, s5), asm.halt));
  assert.deepEqual([result.kind, result.code, result.reason], ["POWEROFF", 0, "guest powered off"]);
});

test("writing 1 to the ACPI reset register resets the guest", async () => {
  const { result } = await runTiny(guest(asm.outb(ACPI_RESET_PORT, 1), asm.halt));
  assert.deepEqual([result.kind, result.code, result.reason], ["RESET", 0, "guest reset (ACPI)"]);
});

test("a kernel panic on the console ends the VM with EXIT_PANIC and the panic line", async () => {
  const panic = "Kernel panic - not syncing: test\n---[ end Kernel panic - not syncing: test ]---\n";
  const { result, output } = await runTiny(printAndExit(panic, 0));
  assert.equal(EXIT_PANIC, 101);
  assert.deepEqual([result.kind, result.code, result.reason], ["PANIC", 101, "Kernel panic - not syncing: test"]);
  assert.equal(output, panic);
});

test("a reset right after a panic line (panic=-1) counts as the panic", async () => {
  const { result } = await runTiny(guest(asm.print("Kernel panic - not syncing: oops\n"), asm.outb(0x64, 0xfe), asm.halt));
  assert.deepEqual([result.kind, result.code, result.reason], ["PANIC", 101, "Kernel panic - not syncing: oops"]);
});

test("a triple fault is a crash, not a reset: status EXIT_TRIPLE_FAULT and a one-line reason", async () => {
  const { result } = await runTiny(guest([0x0f, 0x0b])); // ud2 with an empty IDT
  assert.equal(result.kind, "TRIPLE_FAULT");
  assert.equal(result.code, EXIT_TRIPLE_FAULT);
  assert.match(result.reason, /^vCPU 0: the guest triple-faulted \(KVM_EXIT_SHUTDOWN\) (at rip 0x[0-9a-f]+|\(where is lost: KVM reset the vCPU\))$/);
});

test("an MMIO read in the device hole reads all ones, and the guest then exits", async () => {
  const { result } = await runTiny(guest(loadU32(VIRTIO_MMIO_START), EXIT_WITH_AL, asm.halt));
  assert.deepEqual([result.kind, result.code], ["EXIT_CODE", 0xff]);
});

test("an MMIO write in the device hole vanishes and the guest carries on", async () => {
  const { result } = await runTiny(guest(storeU32(0xd000_0010, 0x1234_5678), asm.outb(0xf4, 9), asm.halt));
  assert.deepEqual([result.kind, result.code], ["EXIT_CODE", 9]);
});

test("a virtio-mmio window answers through the vCPU Worker: the magic value, then the device ID", async () => {
  // 0x74726976 "virt": low byte 0x76. Device ID (offset 8) of virtio-rng: 4.
  const magic = await runTiny(guest(loadU32(VIRTIO_MMIO_START), EXIT_WITH_AL, asm.halt), { machine: { rng: true } });
  assert.deepEqual([magic.result.kind, magic.result.code], ["EXIT_CODE", 0x76]);
  const id = await runTiny(guest(loadU32(VIRTIO_MMIO_START + 8), EXIT_WITH_AL, asm.halt), { machine: { rng: true } });
  assert.deepEqual([id.result.kind, id.result.code], ["EXIT_CODE", 4]);
});

test("a virtio-mmio window is its register page, read where KVM maps it: a 1-byte read of the magic value gives 'v'", async () => {
  // The transport refuses register reads that are not 32 bits wide (virtio
  // 1.2 §4.2.2.2), so through a vCPU exit this would read 0. From the page
  // KVM maps read-only over the window (loop/virtio.ts), the guest reads the
  // byte itself, without leaving KVM_RUN.
  const { result } = await runTiny(guest(loadU8(VIRTIO_MMIO_START), EXIT_WITH_AL, asm.halt), { machine: { rng: true } });
  assert.deepEqual([result.kind, result.code], ["EXIT_CODE", 0x76]);
});

test("a register write leaves the vCPU and the page follows: DeviceFeaturesSel 1 shows VERSION_1 in DeviceFeatures", async () => {
  // Word 1 of the features holds bits 32…63; VIRTIO_F_VERSION_1 (bit 32) is its bit 0.
  const code = guest(storeU32(VIRTIO_MMIO_START + 0x14, 1), loadU32(VIRTIO_MMIO_START + 0x10), EXIT_WITH_AL, asm.halt);
  const { result } = await runTiny(code, { machine: { rng: true } });
  assert.deepEqual([result.kind, result.code], ["EXIT_CODE", 1]);
});

test("a port nobody claims reads as 0xff", async () => {
  const { result } = await runTiny(guest(asm.inb(0x2f8), EXIT_WITH_AL, asm.halt)); // COM2 is absent
  assert.deepEqual([result.kind, result.code], ["EXIT_CODE", 0xff]);
});

test("an 8-byte MMIO read in the device hole reads all ones in both halves", async () => {
  // Exit with the low byte of the upper half.
  const { result } = await runTiny(guest(loadU64(VIRTIO_MMIO_START), SHR_RAX_32, EXIT_WITH_AL, asm.halt));
  assert.deepEqual([result.kind, result.code], ["EXIT_CODE", 0xff]);
});

test("asm.loadAbs32() from tiny_kernel.ts reads the device hole", async () => {
  const { result } = await runTiny(guest(asm.loadAbs32(VIRTIO_MMIO_START), EXIT_WITH_AL, asm.halt));
  assert.deepEqual([result.kind, result.code], ["EXIT_CODE", 0xff]);
});

test("after Machine.run() returns, SIGTERM terminates the process again", () => {
  requireKvm();
  const dir = mkdtempSync(join(tmpdir(), "vmm-sig-"));
  try {
    const script = join(dir, "run_then_term.ts");
    const url = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
    writeFileSync(
      script,
      `import process from "node:process";
import { Machine } from ${url("../mod.ts")};
import { printAndExit } from ${url("../test/support/tiny_kernel.ts")};
const m = await Machine.create({ kernel: printAndExit("", 0), memMiB: 64, console: { outFd: 1, inFd: null }, signals: true });
await m.run();
process.kill(process.pid, "SIGTERM");
await new Promise((r) => setTimeout(r, 1000));
console.log("SIGTERM was swallowed");
process.exit(0);
`,
    );
    const [cmd, args] = scriptCommand(script);
    const r = spawnSync(cmd, args, { env: vmmEnv(true), encoding: "utf8", timeout: CHILD_BOUND_MS });
    assert.equal(r.signal, "SIGTERM", `stdout ${r.stdout}, stderr ${r.stderr}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
