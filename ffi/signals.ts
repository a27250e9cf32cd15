/**
 * Signals for a VMM inside a multi-threaded JavaScript runtime.
 *
 * The runtimes' own threads leave signals unblocked, and Bun's event loop
 * unblocks every signal while it waits, so a process-wide mask (and so
 * signalfd) cannot hold on Bun (PLATFORM.md). What works on both is the
 * self-pipe: a handler of a few bytes of machine code that writes the signal
 * number to a non-blocking pipe the main thread polls, the fallback qemu-kvm
 * used where signalfd was missing. It runs on whatever thread the kernel
 * picks, touches no JavaScript, and is async-signal-safe (one write(2)).
 *
 * The vCPU kick signal gets a handler that only returns: its job is to make
 * KVM_RUN return EINTR, which a signal with a handler does and an ignored
 * one does not.
 */
import { errno, libc, mmapAnon, NativeBuf, O_CLOEXEC, O_NONBLOCK, pipe, PROT_EXEC, PROT_READ, PROT_WRITE } from "./libc.ts";
import { SysError } from "./errno.ts";
import { runtime } from "./runtime.ts";

const SA_RESTART = 0x10000000;
/** glibc struct sigaction on x86-64: handler, 128-byte mask, flags, restorer. */
const SIGACTION_SIZE = 152, SA_FLAGS = 136;

/** x86-64 code: `push rdi; mov rsi,rsp; mov edx,1; mov edi,FD; mov eax,1 (write); syscall; pop rdi; ret`. */
export function pipeWriterCode(fd: number): Uint8Array {
  const c = [0x57, 0x48, 0x89, 0xe6, 0xba, 1, 0, 0, 0, 0xbf, 0, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0x0f, 0x05, 0x5f, 0xc3];
  c[10] = fd & 0xff;
  c[11] = (fd >> 8) & 0xff;
  c[12] = (fd >> 16) & 0xff;
  c[13] = (fd >> 24) & 0xff;
  return new Uint8Array(c);
}
const RET = new Uint8Array([0xc3]);
const PAGE = 4096;

/** Copy machine code into a page of its own, made executable; returns its address. */
function codePage(code: Uint8Array): bigint {
  const page = mmapAnon(PAGE, PROT_READ | PROT_WRITE, undefined, "mmap signal handler page");
  new NativeBuf(page, code.length).bytes.set(code);
  if (Number(libc.mprotect(page, BigInt(PAGE), PROT_READ | PROT_EXEC)) < 0) {
    const e = errno();
    libc.munmap(page, BigInt(PAGE));
    throw new SysError("mprotect signal handler page", e);
  }
  return page;
}

/**
 * Install `handler` (0n: SIG_DFL) for `sig`; returns the struct sigaction
 * that was there, so it can be put back exactly (handler, mask, flags and
 * restorer: whatever the runtime had installed).
 */
function sigaction(sig: number, handler: bigint): Uint8Array {
  const sa = NativeBuf.alloc(SIGACTION_SIZE), old = NativeBuf.alloc(SIGACTION_SIZE);
  try {
    sa.view.setBigUint64(0, handler, true);
    sa.view.setInt32(SA_FLAGS, SA_RESTART, true);
    if (Number(libc.sigaction(sig, sa.addr, old.addr)) < 0) throw new SysError(`sigaction ${sig}`, errno());
    return old.bytes.slice();
  } finally {
    sa.free();
    old.free();
  }
}

/** Put back a struct sigaction saved by `sigaction()`. */
function restoreAction(sig: number, saved: Uint8Array): void {
  const sa = NativeBuf.alloc(SIGACTION_SIZE);
  try {
    sa.bytes.set(saved);
    libc.sigaction(sig, sa.addr, 0n);
  } finally {
    sa.free();
  }
}

/** The signals a runtime may take over behind vmm's back (ffi/runtime.ts claimSignals). */
const CLAIMABLE = { 2: "SIGINT", 10: "SIGUSR1", 12: "SIGUSR2", 15: "SIGTERM" } as const;

/** Signals routed to a pipe; `close()` puts the old handlers back and releases the pipe and code. */
export interface SignalPipe {
  /** Read end: one byte per signal, its number. */
  readonly fd: number;
  close(): void;
}

/** Route `signals` to a pipe the caller polls. */
export function signalPipe(signals: number[]): SignalPipe {
  runtime.claimSignals(signals.flatMap((s) => (s in CLAIMABLE ? [CLAIMABLE[s as 2]] : [])));
  const [r, w] = pipe(O_CLOEXEC | O_NONBLOCK);
  let page: bigint;
  try {
    page = codePage(pipeWriterCode(w));
  } catch (e) {
    libc.close(r);
    libc.close(w);
    throw e;
  }
  const saved = new Map<number, Uint8Array>();
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    // Handlers first: a signal must never land on an unmapped page or a closed pipe.
    for (const [sig, old] of saved) restoreAction(sig, old);
    libc.munmap(page, BigInt(PAGE));
    libc.close(r);
    libc.close(w);
  };
  try {
    for (const s of signals) saved.set(s, sigaction(s, page));
  } catch (e) {
    close();
    throw e;
  }
  return { fd: r, close };
}

/**
 * The vCPU kick signal: a handler that only returns, so the signal
 * interrupts KVM_RUN (an ignored signal would not). Shared by every machine
 * of the process: the first `acquireKickSignal` installs it, and it then
 * stays for the life of the process, as QEMU's and Firecracker's do.
 *
 * Why it is never put back: a kick can still be on its way when the last
 * machine closes. `pthread_kill` leaves the signal pending on the vCPU's
 * thread, which takes it the next time it runs; a thread the scheduler has
 * not run again since (its loop over, its Worker ending) takes it after
 * the machine is gone. With the old action back, that is SIG_DFL on Bun,
 * which ends the process ("User defined signal 1": CI lost a test run in
 * the nested host that way), and the inspector's start on Deno. A handler
 * that only returns makes that late kick, and any SIGUSR1 sent to the
 * process afterwards, nothing. It costs one page, mapped once.
 */
let kick: { sig: number; users: number; page: bigint } | null = null;

export function acquireKickSignal(sig: number): void {
  if (kick) {
    if (kick.sig !== sig) throw new Error(`The vCPU kick signal is ${kick.sig}, not ${sig}`);
    // Installed again when no machine held it: whatever took the signal meanwhile loses it.
    if (kick.users++ === 0) sigaction(sig, kick.page);
    return;
  }
  if (sig in CLAIMABLE) runtime.claimSignals([CLAIMABLE[sig as 10]]);
  const page = codePage(RET);
  try {
    sigaction(sig, page);
  } catch (e) {
    libc.munmap(page, BigInt(PAGE));
    throw e;
  }
  kick = { sig, users: 1, page };
}

/** A machine is done with the kick signal; the handler stays (see `kick`). */
export function releaseKickSignal(): void {
  if (kick && kick.users > 0) kick.users--;
}
