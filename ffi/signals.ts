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
import { check, errno, libc, mmapAnon, NativeBuf, O_CLOEXEC, O_NONBLOCK, pipe, PROT_EXEC, PROT_READ, PROT_WRITE } from "./libc.ts";
import { SysError } from "./errno.ts";

const SA_RESTART = 0x10000000;
/** glibc struct sigaction on x86-64: handler, 128-byte mask, flags, restorer. */
const SIGACTION_SIZE = 152, SA_MASK = 8, SA_FLAGS = 136;

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

let codePage: bigint | null = null;
let codeUsed = 0;

/** Copy machine code into an executable page; returns its address. */
function installCode(code: Uint8Array): bigint {
  if (codePage === null) {
    codePage = mmapAnon(4096, PROT_READ | PROT_WRITE);
  } else {
    check("mprotect", libc.mprotect(codePage, 4096n, PROT_READ | PROT_WRITE));
  }
  const at = codeUsed;
  new NativeBuf(codePage + BigInt(at), code.length).bytes.set(code);
  codeUsed = (at + code.length + 15) & ~15;
  check("mprotect", libc.mprotect(codePage, 4096n, PROT_READ | PROT_EXEC));
  return codePage + BigInt(at);
}

function sigaction(sig: number, handler: bigint): void {
  const sa = NativeBuf.alloc(SIGACTION_SIZE);
  sa.view.setBigUint64(0, handler, true);
  sa.bytes.fill(0, SA_MASK, SA_MASK + 128);
  sa.view.setInt32(SA_FLAGS, SA_RESTART, true);
  if (Number(libc.sigaction(sig, sa.addr, 0n)) < 0) throw new SysError(`sigaction ${sig}`, errno());
}

/** Route `signals` to a pipe; returns the read end to poll (one byte per signal: its number). */
export function signalPipe(signals: number[]): number {
  const [r, w] = pipe(O_CLOEXEC | O_NONBLOCK);
  const handler = installCode(pipeWriterCode(w));
  for (const s of signals) sigaction(s, handler);
  return r;
}

/** Give `sig` a handler that does nothing, so it interrupts blocking calls such as KVM_RUN. */
export function interruptingSignal(sig: number): void {
  sigaction(sig, installCode(RET));
}

/** Restore the default action for `sig`. */
export function defaultSignal(sig: number): void {
  sigaction(sig, 0n);
}
