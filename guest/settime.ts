/**
 * `vmm-settime`: sets the guest's wall clock to a time built into it, in one
 * clock_settime(2). `vmm run` sends a fresh copy with each command
 * (guest/command.ts runPayload), and init runs it before anything else.
 *
 * Why: a guest restored from a snapshot (loop/snapshot.ts) comes back with
 * the wall clock it had when the snapshot was taken, which may be days old;
 * its monotonic clock continues as if no time had passed, which is what a
 * guest kernel tolerates (a jump of kvmclock by hours would not be: its
 * watchdogs would fire and its cycle arithmetic can overflow). A build's
 * timestamps, `make`'s "clock skew" checks and TLS certificate dates need
 * the host's time, and busybox `date -s` only takes whole seconds. The time
 * is the one when vmm built the payload, so the guest lags the host by the
 * payload's trip (milliseconds on hardware).
 *
 * Exits 0, or the low byte of the negative errno (255: EPERM).
 */
import { staticElf64 } from "./elf.ts";

/** The timespec, the program's last bytes: tv_sec, then tv_nsec, each a u64. */
export const SETTIME_CLOCK_BYTES = 16;

/** Where the timespec sits in `CODE`. */
const AT_TS = 0x19;

// Assembled by hand; the listing is beside the bytes.
// deno-fmt-ignore
const CODE = [
  0xb8, 0xe3, 0x00, 0x00, 0x00,             // 00 mov  eax, 227            SYS_clock_settime
  0x31, 0xff,                               // 05 xor  edi, edi            CLOCK_REALTIME
  0x48, 0x8d, 0x35, 0x0b, 0x00, 0x00, 0x00, // 07 lea  rsi, [rip+ts]       0x0e + 0x0b = 0x19
  0x0f, 0x05,                               // 0e syscall
  0x89, 0xc7,                               // 10 mov  edi, eax            0 or -errno
  0xb8, 0x3c, 0x00, 0x00, 0x00,             // 12 mov  eax, 60             SYS_exit
  0x0f, 0x05,                               // 17 syscall
  //                                           19 ts: struct timespec
];

/** The program, setting the clock to `epochMs` (milliseconds since 1970, as Date.now()). */
export function settimeElf(epochMs: number): Uint8Array {
  if (!Number.isFinite(epochMs) || epochMs < 0) throw new RangeError(`Not a time: ${epochMs}`);
  const code = new Uint8Array(AT_TS + SETTIME_CLOCK_BYTES);
  code.set(CODE);
  stampClock(code, AT_TS, epochMs);
  return staticElf64([...code]);
}

/** Write `epochMs` as a timespec at `bytes[at]`: the clock of a settime program, wherever its bytes are. */
export function stampClock(bytes: Uint8Array, at: number, epochMs = Date.now()): void {
  const v = new DataView(bytes.buffer, bytes.byteOffset + at, SETTIME_CLOCK_BYTES);
  const ms = Math.floor(epochMs);
  v.setBigUint64(0, BigInt(Math.floor(ms / 1000)), true);
  v.setBigUint64(8, BigInt((ms % 1000) * 1_000_000), true);
}

/** The time a `settimeElf()` program sets, in epoch ms (for tests). */
export function settimeOf(elf: Uint8Array): number {
  const v = new DataView(elf.buffer, elf.byteOffset + elf.length - 16, 16);
  return Number(v.getBigUint64(0, true)) * 1000 + Number(v.getBigUint64(8, true)) / 1_000_000;
}
