/**
 * KVM tests fail, never skip, on a host without /dev/kvm: CI has KVM, so a
 * silent skip would hide a broken runner. Kept apart from tiny_run.ts so the
 * ioctl-level tests need nothing but ffi/.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";

/** Fail with a clear message when the host has no /dev/kvm. */
export function requireKvm(): void {
  assert.ok(
    existsSync("/dev/kvm"),
    "/dev/kvm is missing: this test needs real KVM (CI provides /dev/kvm; run it on a KVM host)",
  );
}
