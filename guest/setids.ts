/**
 * `vmm-setids ROOT PROG ARGS...`: the last step before `vmm run`'s command.
 * It enters ROOT (chroot, then chdir "/"), takes on the caller's identity
 * (supplementary groups, then gid, then uid — in that order, since dropping
 * the uid first would forbid the rest), and executes PROG (an absolute path
 * inside ROOT) with ARGS and the environment it was given.
 *
 * Why a program of our own: the guest's busybox has no setuidgid, chpst or
 * `setpriv --reuid`, and its `su` needs the uid to have a name in the root's
 * /etc/passwd, which a CI runner's uid or an unpacked image may lack. And the
 * chroot must happen in the same process, before the ids change (chroot needs
 * CAP_SYS_CHROOT), so the program runs from the initramfs and needs nothing
 * inside ROOT but PROG.
 *
 * The ids are not parsed at run time: vmm writes a fresh copy for each run with
 * them as the immediates of three `mov` instructions and the groups as a table
 * after the code. It exits 126 when the chroot or an id change fails and 127
 * when PROG cannot be executed (the shell's "cannot execute" and "not found").
 */
import { readTextFileSync } from "../ffi/sys.ts";
import { staticElf64 } from "./elf.ts";

/** Linux's NGROUPS_MAX is 65536; a caller with more than this many is refused. */
export const MAX_GROUPS = 1024;

/** Where each patched immediate sits in `CODE`. */
const AT_NGROUPS = 0x33;
const AT_GID = 0x4a;
const AT_UID = 0x5e;

// Assembled once with GNU as (intel syntax); the listing is beside the bytes.
// deno-fmt-ignore
const CODE = [
  0x48, 0x83, 0x3c, 0x24, 0x03,             // 00 cmp  qword [rsp], 3        argc: ROOT and PROG at least
  0x0f, 0x82, 0x82, 0x00, 0x00, 0x00,       // 05 jb   fail
  0x48, 0x8b, 0x7c, 0x24, 0x10,             // 0b mov  rdi, [rsp+16]        argv[1]: ROOT
  0xb8, 0xa1, 0x00, 0x00, 0x00,             // 10 mov  eax, 161             SYS_chroot
  0x0f, 0x05,                               // 15 syscall
  0x85, 0xc0,                               // 17 test eax, eax
  0x75, 0x72,                               // 19 jne  fail
  0x48, 0x8d, 0x3d, 0x77, 0x00, 0x00, 0x00, // 1b lea  rdi, [rip+slash]
  0xb8, 0x50, 0x00, 0x00, 0x00,             // 22 mov  eax, 80              SYS_chdir: a chroot leaves the cwd outside
  0x0f, 0x05,                               // 27 syscall
  0x85, 0xc0,                               // 29 test eax, eax
  0x75, 0x60,                               // 2b jne  fail
  0xb8, 0x74, 0x00, 0x00, 0x00,             // 2d mov  eax, 116             SYS_setgroups
  0xbf, 0x00, 0x00, 0x00, 0x00,             // 32 mov  edi, NGROUPS         (patched)
  0x48, 0x8d, 0x35, 0x5f, 0x00, 0x00, 0x00, // 37 lea  rsi, [rip+groups]
  0x0f, 0x05,                               // 3e syscall
  0x85, 0xc0,                               // 40 test eax, eax
  0x75, 0x49,                               // 42 jne  fail
  0xb8, 0x77, 0x00, 0x00, 0x00,             // 44 mov  eax, 119             SYS_setresgid
  0xbf, 0x00, 0x00, 0x00, 0x00,             // 49 mov  edi, GID             (patched)
  0x89, 0xfe,                               // 4e mov  esi, edi
  0x89, 0xfa,                               // 50 mov  edx, edi
  0x0f, 0x05,                               // 52 syscall
  0x85, 0xc0,                               // 54 test eax, eax
  0x75, 0x35,                               // 56 jne  fail
  0xb8, 0x75, 0x00, 0x00, 0x00,             // 58 mov  eax, 117             SYS_setresuid
  0xbf, 0x00, 0x00, 0x00, 0x00,             // 5d mov  edi, UID             (patched)
  0x89, 0xfe,                               // 62 mov  esi, edi
  0x89, 0xfa,                               // 64 mov  edx, edi
  0x0f, 0x05,                               // 66 syscall
  0x85, 0xc0,                               // 68 test eax, eax
  0x75, 0x21,                               // 6a jne  fail
  0x48, 0x8b, 0x7c, 0x24, 0x18,             // 6c mov  rdi, [rsp+24]        argv[2]: PROG
  0x48, 0x8d, 0x74, 0x24, 0x18,             // 71 lea  rsi, [rsp+24]        its argv: argv+2
  0x48, 0x8b, 0x04, 0x24,                   // 76 mov  rax, [rsp]           argc
  0x48, 0x8d, 0x54, 0xc4, 0x10,             // 7a lea  rdx, [rsp+rax*8+16]  envp: past argv and its NULL
  0xb8, 0x3b, 0x00, 0x00, 0x00,             // 7f mov  eax, 59              SYS_execve
  0x0f, 0x05,                               // 84 syscall                   returns only on failure
  0xbf, 0x7f, 0x00, 0x00, 0x00,             // 86 mov  edi, 127
  0xeb, 0x05,                               // 8b jmp  exit
  0xbf, 0x7e, 0x00, 0x00, 0x00,             // 8d fail: mov edi, 126
  0xb8, 0x3c, 0x00, 0x00, 0x00,             // 92 exit: mov eax, 60         SYS_exit
  0x0f, 0x05,                               // 97 syscall
  0x2f, 0x00, 0x00, 0x00,                   // 99 slash: "/"
  //                                           9d groups: NGROUPS × u32 follow
];

/** The ids a command runs with. */
export interface Identity {
  uid: number;
  gid: number;
  /** Supplementary groups (may be empty). */
  groups: number[];
}

/**
 * The program, with `id` built in.
 *
 * @example
 * ```ts
 * import { setidsElf } from "./setids.ts";
 * const elf = setidsElf({ uid: 1000, gid: 1000, groups: [1000, 27] });
 * console.log(elf.length); // 285: headers, code, two groups
 * ```
 */
export function setidsElf(id: Identity): Uint8Array {
  const ok = (n: number) => Number.isInteger(n) && n >= 0 && n < 0xffffffff; // (gid_t)-1 means "unchanged"
  if (!ok(id.uid) || !ok(id.gid) || !id.groups.every(ok)) throw new RangeError(`Not a valid uid, gid or group in ${JSON.stringify(id)}`);
  if (id.groups.length > MAX_GROUPS) throw new RangeError(`${id.groups.length} supplementary groups; at most ${MAX_GROUPS} are passed on`);
  const code = new Uint8Array(CODE.length + 4 * id.groups.length);
  code.set(CODE);
  const v = new DataView(code.buffer);
  v.setUint32(AT_NGROUPS, id.groups.length, true);
  v.setUint32(AT_GID, id.gid, true);
  v.setUint32(AT_UID, id.uid, true);
  id.groups.forEach((g, i) => v.setUint32(CODE.length + 4 * i, g, true));
  return staticElf64([...code]);
}

/**
 * This process's real uid, gid and supplementary groups, from
 * /proc/self/status (the same on Deno and Bun, which differ in what
 * node:process offers).
 */
export function callerIdentity(status = "/proc/self/status"): Identity {
  const text = readTextFileSync(status);
  const field = (name: string) => (new RegExp(`^${name}:[ \\t]*(.*)$`, "m").exec(text)?.[1] ?? "").trim().split(/\s+/).filter(Boolean).map(Number);
  const [uid] = field("Uid"), [gid] = field("Gid");
  if (uid === undefined || gid === undefined) throw new Error(`${status}: no Uid or Gid line`);
  return { uid, gid, groups: field("Groups") };
}
