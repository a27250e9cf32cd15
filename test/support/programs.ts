/**
 * Whether a host program a test compares against is installed: `name
 * --version` runs and exits 0. Tests that need one skip, naming it, where
 * it is missing.
 */
import { execFileSync } from "node:child_process";

export function hasProgram(name: string): boolean {
  try {
    execFileSync(name, ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}
