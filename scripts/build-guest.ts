/**
 * Builds (or finds, when already built) vmm's guest images and prints their paths.
 *
 *   bun scripts/build-guest.ts [--guest] [--nested] [--refresh] [--cache-dir DIR] [--quiet]
 *
 * With neither --guest nor --nested it builds both: the default guest that
 * `vmm` boots, and the nested host (L1) that end-to-end tests use on machines
 * without hardware KVM. --refresh asks apt for the current kernel again
 * (otherwise a built image keeps its kernel). See guest/build.ts.
 */
import { parseArgs } from "node:util";
import { ensureDefaultGuest, ensureNestedHost, type GuestImage } from "../guest/build.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    guest: { type: "boolean", default: false },
    nested: { type: "boolean", default: false },
    "cache-dir": { type: "string" },
    refresh: { type: "boolean", default: false },
    quiet: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log("usage: build-guest.ts [--guest] [--nested] [--refresh] [--cache-dir DIR] [--quiet]");
  process.exit(0);
}
const both = !values.guest && !values.nested;
const opts = {
  cacheDir: values["cache-dir"],
  refresh: values.refresh,
  log: values.quiet ? undefined : (s: string) => console.error(`build-guest: ${s}`),
};
const show = (name: string, img: GuestImage) => {
  console.log(`${name}: kernel ${img.kernel}`);
  if (img.vmlinux) console.log(`${name}: vmlinux ${img.vmlinux}`);
  console.log(`${name}: initrd ${img.initrd}`);
  console.log(`${name}: version ${img.kernelVersion}`);
};
try {
  if (both || values.guest) show("guest", await ensureDefaultGuest(opts));
  if (both || values.nested) show("nested", await ensureNestedHost(opts));
} catch (e) {
  console.error(`build-guest: ${(e as Error).message}`);
  process.exit(1);
}
