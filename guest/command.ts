/**
 * How the default guest learns its command: vmm appends a second initramfs
 * archive holding `/vmm/run.sh`, which guest/init.sh runs (Linux unpacks
 * concatenated archives one after another).
 */
import { S_IFDIR, S_IFREG, writeCpio } from "./cpio.ts";

/** Quote one argument for sh. */
export function shellQuote(arg: string): string {
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** The extra initramfs archive that makes the default guest run `command`. */
export function runArchive(command: string[]): Uint8Array {
  const script = `${command.map(shellQuote).join(" ")}\n`;
  return writeCpio([
    { path: "vmm", mode: S_IFDIR | 0o755 },
    { path: "vmm/run.sh", mode: S_IFREG | 0o755, data: new TextEncoder().encode(script) },
  ]);
}

/** Concatenate initramfs archives, each starting 4-byte aligned. */
export function concatInitrd(a: Uint8Array, b: Uint8Array): Uint8Array {
  const pad = (4 - (a.length % 4)) % 4;
  const out = new Uint8Array(a.length + pad + b.length);
  out.set(a);
  out.set(b, a.length + pad);
  return out;
}
