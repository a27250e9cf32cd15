/**
 * `/bench/randread`, the guest's random-read program for scripts/bench-blk.ts,
 * as the bytes of a static x86-64 ELF executable.
 */

import { staticElf64 } from "../../guest/elf.ts";

/**
 * `randread PATH COUNT`: COUNT reads of 4 KiB at pseudo-random 4 KiB-aligned
 * offsets of PATH, opened O_RDONLY|O_DIRECT, one after another; exits 0, or 1
 * on a wrong argument count or any failed or short read.
 *
 * The guest has busybox only, whose dd can read at one offset per process;
 * fio would bring librados, librbd, glusterfs and python3 into the guest. So,
 * like guest/build.ts's vmm-outb, this is a static program written out by
 * hand: offsets come from xorshift64 (Marsaglia 2003; shifts 13, 7, 17) with a
 * fixed seed, modulo the size that lseek(SEEK_END) gives, so every contender
 * reads the same blocks in the same order. The buffer is an anonymous mmap:
 * page-aligned, as O_DIRECT needs. Assembled once with GNU as (intel syntax);
 * the listing is beside the bytes.
 *
 * @example
 * ```ts
 * import { writeFileSync } from "node:fs";
 * import { randreadElf } from "./randread_elf.ts";
 * writeFileSync("/tmp/randread", randreadElf(), { mode: 0o755 });
 * // then, on any x86-64 Linux: /tmp/randread /path/to/file-on-ext4 1000; echo $?  → 0
 * ```
 */
export function randreadElf(): Uint8Array {
  // deno-fmt-ignore
  const code = [
    0x48, 0x83, 0x3c, 0x24, 0x03,             // 00 cmp  qword [rsp], 3          argc
    0x0f, 0x85, 0xdc, 0x00, 0x00, 0x00,       // 05 jne  fail
    0x48, 0x8b, 0x7c, 0x24, 0x18,             // 0b mov  rdi, [rsp+24]           argv[2]: COUNT
    0xe8, 0xde, 0x00, 0x00, 0x00,             // 10 call parse
    0x49, 0x89, 0xc4,                         // 15 mov  r12, rax                reads left
    0xb8, 0x02, 0x00, 0x00, 0x00,             // 18 mov  eax, 2                  SYS_open
    0x48, 0x8b, 0x7c, 0x24, 0x10,             // 1d mov  rdi, [rsp+16]           argv[1]: PATH
    0xbe, 0x00, 0x40, 0x00, 0x00,             // 22 mov  esi, 0x4000             O_RDONLY | O_DIRECT
    0x31, 0xd2,                               // 27 xor  edx, edx
    0x0f, 0x05,                               // 29 syscall
    0x85, 0xc0,                               // 2b test eax, eax
    0x0f, 0x88, 0xb4, 0x00, 0x00, 0x00,       // 2d js   fail
    0x49, 0x89, 0xc5,                         // 33 mov  r13, rax                fd
    0xb8, 0x08, 0x00, 0x00, 0x00,             // 36 mov  eax, 8                  SYS_lseek
    0x4c, 0x89, 0xef,                         // 3b mov  rdi, r13
    0x31, 0xf6,                               // 3e xor  esi, esi
    0xba, 0x02, 0x00, 0x00, 0x00,             // 40 mov  edx, 2                  SEEK_END: the size
    0x0f, 0x05,                               // 45 syscall
    0x48, 0x85, 0xc0,                         // 47 test rax, rax
    0x0f, 0x88, 0x97, 0x00, 0x00, 0x00,       // 4a js   fail
    0x48, 0xc1, 0xe8, 0x0c,                   // 50 shr  rax, 12                 4 KiB blocks
    0x0f, 0x84, 0x8d, 0x00, 0x00, 0x00,       // 54 jz   fail
    0x49, 0x89, 0xc6,                         // 5a mov  r14, rax
    0xb8, 0x09, 0x00, 0x00, 0x00,             // 5d mov  eax, 9                  SYS_mmap
    0x31, 0xff,                               // 62 xor  edi, edi
    0xbe, 0x00, 0x10, 0x00, 0x00,             // 64 mov  esi, 4096
    0xba, 0x03, 0x00, 0x00, 0x00,             // 69 mov  edx, 3                  PROT_READ | PROT_WRITE
    0x41, 0xba, 0x22, 0x00, 0x00, 0x00,       // 6e mov  r10d, 0x22              MAP_PRIVATE | MAP_ANONYMOUS
    0x49, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, // 74 mov  r8, -1
    0x45, 0x31, 0xc9,                         // 7b xor  r9d, r9d
    0x0f, 0x05,                               // 7e syscall
    0x48, 0x85, 0xc0,                         // 80 test rax, rax
    0x78, 0x62,                               // 83 js   fail
    0x49, 0x89, 0xc7,                         // 85 mov  r15, rax                buffer
    0x48, 0xbb, 0x15, 0x7c, 0x4a, 0x7f,       // 88 mov  rbx, 0x9e3779b97f4a7c15 seed
    0xb9, 0x79, 0x37, 0x9e,
    0x4d, 0x85, 0xe4,                         // 92 next: test r12, r12
    0x74, 0x4c,                               // 95 jz   done
    0x48, 0x89, 0xd8,                         // 97 mov  rax, rbx                x ^= x << 13
    0x48, 0xc1, 0xe0, 0x0d,                   // 9a shl  rax, 13
    0x48, 0x31, 0xc3,                         // 9e xor  rbx, rax
    0x48, 0x89, 0xd8,                         // a1 mov  rax, rbx                x ^= x >> 7
    0x48, 0xc1, 0xe8, 0x07,                   // a4 shr  rax, 7
    0x48, 0x31, 0xc3,                         // a8 xor  rbx, rax
    0x48, 0x89, 0xd8,                         // ab mov  rax, rbx                x ^= x << 17
    0x48, 0xc1, 0xe0, 0x11,                   // ae shl  rax, 17
    0x48, 0x31, 0xc3,                         // b2 xor  rbx, rax
    0x48, 0x89, 0xd8,                         // b5 mov  rax, rbx
    0x31, 0xd2,                               // b8 xor  edx, edx
    0x49, 0xf7, 0xf6,                         // ba div  r14                     rdx = x % blocks
    0x48, 0xc1, 0xe2, 0x0c,                   // bd shl  rdx, 12
    0x49, 0x89, 0xd2,                         // c1 mov  r10, rdx                offset
    0xb8, 0x11, 0x00, 0x00, 0x00,             // c4 mov  eax, 17                 SYS_pread64
    0x4c, 0x89, 0xef,                         // c9 mov  rdi, r13
    0x4c, 0x89, 0xfe,                         // cc mov  rsi, r15
    0xba, 0x00, 0x10, 0x00, 0x00,             // cf mov  edx, 4096
    0x0f, 0x05,                               // d4 syscall
    0x48, 0x3d, 0x00, 0x10, 0x00, 0x00,       // d6 cmp  rax, 4096
    0x75, 0x09,                               // dc jne  fail
    0x49, 0xff, 0xcc,                         // de dec  r12
    0xeb, 0xaf,                               // e1 jmp  next
    0x31, 0xff,                               // e3 done: xor edi, edi
    0xeb, 0x05,                               // e5 jmp  exit
    0xbf, 0x01, 0x00, 0x00, 0x00,             // e7 fail: mov edi, 1
    0xb8, 0x3c, 0x00, 0x00, 0x00,             // ec exit: mov eax, 60            SYS_exit
    0x0f, 0x05,                               // f1 syscall
    0x31, 0xc0,                               // f3 parse: xor eax, eax          decimal at rdi → rax
    0x0f, 0xb6, 0x0f,                         // f5 movzx ecx, byte [rdi]
    0x83, 0xe9, 0x30,                         // f8 sub  ecx, '0'
    0x83, 0xf9, 0x09,                         // fb cmp  ecx, 9
    0x77, 0x0c,                               // fe ja   ret                    not a digit (or NUL)
    0x48, 0x6b, 0xc0, 0x0a,                   // 100 imul rax, rax, 10
    0x48, 0x01, 0xc8,                         // 104 add  rax, rcx
    0x48, 0xff, 0xc7,                         // 107 inc  rdi
    0xeb, 0xe9,                               // 10a jmp  f5
    0xc3,                                     // 10c ret
  ];
  return staticElf64(code);
}
