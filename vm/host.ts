/**
 * What kind of KVM this host offers.
 *
 * `/dev/kvm` can be hardware virtualization (Intel VMX, AMD SVM) or PVM, the
 * pagetable-based KVM that runs inside a cloud guest without hardware help.
 * PVM runs guest ring-3 code natively but emulates ring-0 code one instruction
 * at a time, so a stock Linux kernel cannot boot on it (see PLATFORM.md).
 */
import { existsSync, readTextFileSync } from "../ffi/sys.ts";

/** True when `/dev/kvm` is served by the `kvm_pvm` module. */
export function isPvmHost(): boolean {
  return existsSync("/sys/module/kvm_pvm");
}

/** True when the CPU offers hardware virtualization to this kernel. */
export function hasHardwareVirt(): boolean {
  try {
    return /\b(vmx|svm)\b/.test(readTextFileSync("/proc/cpuinfo"));
  } catch {
    return false;
  }
}

/** Which KVM `/dev/kvm` is: "hardware", "pvm" or "none" (absent). */
export function kvmKind(): "hardware" | "pvm" | "none" {
  if (!existsSync("/dev/kvm")) return "none";
  if (isPvmHost()) return "pvm";
  return hasHardwareVirt() ? "hardware" : "pvm";
}
