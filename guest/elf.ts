/**
 * A minimal static ELF64 x86-64 executable: the ELF header, one R+X
 * PT_LOAD segment mapping the whole file at 0x400000, then `code`, where
 * execution starts. Enough for the guest's tiny helpers (vmm-outb, the
 * benchmark's random reader), which need no libc and no loader.
 */
export function staticElf64(code: number[]): Uint8Array {
  const BASE = 0x400000;
  const EHDR = 64; // sizeof(Elf64_Ehdr)
  const PHDR = 56; // sizeof(Elf64_Phdr)
  const size = EHDR + PHDR + code.length;
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0); // \x7fELF, ELFCLASS64, little-endian, EV_CURRENT
  v.setUint16(0x10, 2, true); // e_type: ET_EXEC
  v.setUint16(0x12, 62, true); // e_machine: EM_X86_64
  v.setUint32(0x14, 1, true); // e_version
  v.setBigUint64(0x18, BigInt(BASE + EHDR + PHDR), true); // e_entry: the first code byte
  v.setBigUint64(0x20, BigInt(EHDR), true); // e_phoff
  v.setUint16(0x34, EHDR, true); // e_ehsize
  v.setUint16(0x36, PHDR, true); // e_phentsize
  v.setUint16(0x38, 1, true); // e_phnum
  v.setUint32(EHDR + 0x00, 1, true); // p_type: PT_LOAD
  v.setUint32(EHDR + 0x04, 5, true); // p_flags: R + X
  v.setBigUint64(EHDR + 0x10, BigInt(BASE), true); // p_vaddr
  v.setBigUint64(EHDR + 0x18, BigInt(BASE), true); // p_paddr
  v.setBigUint64(EHDR + 0x20, BigInt(size), true); // p_filesz
  v.setBigUint64(EHDR + 0x28, BigInt(size), true); // p_memsz
  v.setBigUint64(EHDR + 0x30, 0x1000n, true); // p_align
  b.set(code, EHDR + PHDR);
  return b;
}
