/**
 * Which end-to-end tier this machine offers.
 *
 * - "hardware": /dev/kvm is hardware virtualization; run vmm directly.
 * - "nested": /dev/kvm is PVM (or absent), which cannot boot a stock kernel,
 *   but `runNested()` can give real KVM inside a TCG-emulated host.
 * - "none": neither; `why` says what is missing.
 */
import { kvmKind } from "../../vm/host.ts";
import { nestedAvailable } from "./nested.ts";

export type E2eTier = "hardware" | "nested" | "none";

/**
 * Picks the tier for end-to-end tests.
 *
 * @example
 * ```ts
 * import { e2eTier } from "./tier.ts";
 * const { tier, why } = e2eTier();
 * console.log(`e2e tier: ${tier} (${why})`);
 * ```
 */
export function e2eTier(): { tier: E2eTier; why: string } {
  const kind = kvmKind();
  if (kind === "hardware") return { tier: "hardware", why: "/dev/kvm is hardware virtualization" };
  const host = kind === "pvm" ? "/dev/kvm is PVM, which cannot boot a stock kernel" : "no /dev/kvm";
  const nested = nestedAvailable();
  if (nested.ok) return { tier: "nested", why: `${host}; nested KVM: ${nested.why}` };
  return { tier: "none", why: `${host}; nested KVM unavailable: ${nested.why}` };
}
