/**
 * The boot CPU state vm/regs.ts builds for Linux's 64-bit entry: GDT entries
 * and the KVM segments decoded from them (Intel SDM vol. 3 §3.4.5), the
 * identity-mapping page tables (PML4 → PDPT → PD, 2 MiB pages, SDM vol. 3
 * §4.5), the long-mode special registers and the LAPIC's virtual wire.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "./memory.ts";
import { BOOT_GDT_ENTRIES, BOOT_MSRS, gdtEntry, longModeSregs, MSR, segmentFromGdt, wireLint, writeBootTables } from "./regs.ts";
import { BOOT_GDT, BOOT_IDT, IDENTITY_MAP_GIB, PD, PDPT, PML4 } from "../boot/layout.ts";
import { KVM_SREGS_SIZE, type Segment, type Sregs, decodeSregs } from "../ffi/structs.ts";

const P = 1n, RW = 2n, PS = 0x80n;

function bootMemory(): GuestMemory {
  const mem = new GuestMemory(new Uint8Array(0x10000));
  writeBootTables(mem);
  return mem;
}

/** Walk the 4-level tables for `va` as the MMU does; returns the physical address. */
function translate(mem: GuestMemory, cr3: number, va: number): number {
  const idx = (shift: number) => Math.floor(va / 2 ** shift) % 512;
  const pml4e = mem.readU64(cr3 + idx(39) * 8);
  assert.equal(pml4e & P, P, "PML4 entry present");
  const pdpte = mem.readU64(Number(pml4e & ~0xfffn) + idx(30) * 8);
  assert.equal(pdpte & P, P, "PDPT entry present");
  const pde = mem.readU64(Number(pdpte & ~0xfffn) + idx(21) * 8);
  assert.equal(pde & (P | PS), P | PS, "PD entry present, 2 MiB page");
  return Number(pde & ~0x1f_ffffn) + (va % 0x20_0000);
}

test("gdtEntry() packs flags, base and limit as the kernel's GDT_ENTRY macro", () => {
  assert.equal(gdtEntry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffffn); // 64-bit code
  assert.equal(gdtEntry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffffn); // data
  assert.equal(gdtEntry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffffn); // TSS
  assert.equal(gdtEntry(0x0093, 0x0012_3456, 0x1_2345), 0x0001_9312_3456_2345n); // base and limit split in pieces
  assert.deepEqual(BOOT_GDT_ENTRIES, [0n, 0x00af_9b00_0000_ffffn, 0x00cf_9300_0000_ffffn, 0x008f_8b00_0000_ffffn]);
});

test("gdtEntry() returns an unsigned 64-bit entry for a base at or above 2 GiB", () => {
  assert.equal(gdtEntry(0x808b, 0xfffb_d000, 0x67), 0xff80_8bfb_d000_0067n);
});

test("segmentFromGdt() decodes the boot code segment as 64-bit, present, ring 0", () => {
  const cs = segmentFromGdt(BOOT_GDT_ENTRIES[1], 1);
  const expected: Omit<Segment, "limit"> = {
    base: 0n, selector: 0x08, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
  };
  assert.deepEqual({ ...cs, limit: undefined }, { ...expected, limit: undefined });
});

test("segmentFromGdt() decodes the data and TSS segments and marks the null entry unusable", () => {
  const ds = segmentFromGdt(BOOT_GDT_ENTRIES[2], 2);
  assert.deepEqual([ds.selector, ds.type, ds.s, ds.db, ds.l, ds.present], [0x10, 3, 1, 1, 0, 1]);
  const tr = segmentFromGdt(BOOT_GDT_ENTRIES[3], 3);
  assert.deepEqual([tr.selector, tr.type, tr.s, tr.present], [0x18, 0xb, 0, 1], "busy 64-bit TSS, a system segment");
  const nul = segmentFromGdt(BOOT_GDT_ENTRIES[0], 0);
  assert.deepEqual([nul.present, nul.unusable], [0, 1]);
});

test("segmentFromGdt() round-trips base and a byte-granular limit through gdtEntry()", () => {
  const s = segmentFromGdt(gdtEntry(0x4093, 0x7f12_3456, 0xa_bcde), 5);
  assert.equal(s.base, 0x7f12_3456n);
  assert.equal(s.limit, 0xa_bcde);
  assert.deepEqual([s.g, s.db, s.selector, s.avl, s.dpl], [0, 1, 40, 0, 0]);
  const high = segmentFromGdt(gdtEntry(0x4093, 0xfffb_d000, 0x67), 5);
  assert.equal(high.base, 0xfffb_d000n, "a base above 2 GiB decodes whole");
});

test("segmentFromGdt() scales a page-granular limit to bytes, as KVM's kvm_segment.limit is", () => {
  assert.equal(segmentFromGdt(BOOT_GDT_ENTRIES[1], 1).limit, 0xffff_ffff);
  assert.equal(segmentFromGdt(gdtEntry(0x4093, 0, 0xa_bcde), 2).limit, 0xa_bcde, "G=0 stays as it is");
});

test("writeBootTables() writes the GDT at BOOT_GDT and an empty IDT at BOOT_IDT", () => {
  const mem = bootMemory();
  BOOT_GDT_ENTRIES.forEach((e, i) => assert.equal(mem.readU64(BOOT_GDT + i * 8), e));
  assert.equal(mem.readU64(BOOT_IDT), 0n);
});

test("writeBootTables() links PML4 → PDPT → one PD per GiB of 2 MiB pages", () => {
  const mem = bootMemory();
  assert.equal(mem.readU64(PML4), BigInt(PDPT) | P | RW);
  assert.equal(mem.readU64(PML4 + 8), 0n, "only the first 512 GiB slot is used");
  for (let i = 0; i < IDENTITY_MAP_GIB; i++) {
    assert.equal(mem.readU64(PDPT + i * 8), BigInt(PD + i * 0x1000) | P | RW, `PDPT[${i}]`);
  }
  assert.equal(mem.readU64(PDPT + IDENTITY_MAP_GIB * 8), 0n, "nothing above 4 GiB");
  assert.equal(mem.readU64(PD), P | RW | PS, "PD[0] maps 0");
  assert.equal(mem.readU64(PD + 8), 0x20_0000n | P | RW | PS, "PD[1] maps 2 MiB");
  assert.equal(mem.readU64(PD + 3 * 0x1000 + 511 * 8), 0xffe0_0000n | P | RW | PS, "the last PD entry maps 4 GiB − 2 MiB");
});

test("the boot page tables map the low 4 GiB, device hole included, to itself", () => {
  const mem = bootMemory();
  for (const va of [0, 0x10_0200, 0x7000, 0x3fff_ffff, 0x4000_0000, 0xc000_0000, 0xd000_0004, 0xfee0_0000, 0xffff_fffc]) {
    assert.equal(translate(mem, PML4, va), va, `0x${va.toString(16)}`);
  }
});

test("longModeSregs() enters IA-32e mode with paging and flat 64-bit segments", () => {
  const base = decodeSregs(new DataView(new ArrayBuffer(KVM_SREGS_SIZE)));
  base.cr0 = 0x6000_0010n; // CD | NW | ET, KVM's reset value
  base.cr4 = 0x40n;
  base.apicBase = 0xfee0_0900n;
  const s: Sregs = longModeSregs(base);
  assert.equal(s.cr0, 0x6000_0010n | 1n | 0x8000_0000n, "PE and PG added, the rest kept");
  assert.equal(s.cr3, BigInt(PML4));
  assert.equal(s.cr4, 0x60n, "PAE added");
  assert.equal(s.efer, 0x500n, "LME and LMA");
  assert.equal(s.apicBase, 0xfee0_0900n);
  assert.deepEqual(s.gdt, { base: BigInt(BOOT_GDT), limit: 31 });
  assert.deepEqual(s.idt, { base: BigInt(BOOT_IDT), limit: 7 });
  assert.deepEqual(s.cs, segmentFromGdt(BOOT_GDT_ENTRIES[1], 1));
  for (const seg of [s.ds, s.es, s.fs, s.gs, s.ss]) assert.deepEqual(seg, segmentFromGdt(BOOT_GDT_ENTRIES[2], 2));
  assert.deepEqual(s.tr, segmentFromGdt(BOOT_GDT_ENTRIES[3], 3));
});

test("wireLint() sets LINT0 to ExtINT and LINT1 to NMI, keeping the other LVT bits", () => {
  const lapic = new Uint8Array(1024);
  const v = new DataView(lapic.buffer);
  v.setUint32(0x350, 0x0001_0000, true); // masked, fixed delivery
  v.setUint32(0x360, 0x0001_0300, true);
  v.setUint32(0x320, 0x0001_00ef, true); // the timer LVT must not change
  const out = new DataView(wireLint(lapic).buffer);
  assert.equal(out.getUint32(0x350, true), 0x0001_0700);
  assert.equal(out.getUint32(0x360, true), 0x0001_0400);
  assert.equal(out.getUint32(0x320, true), 0x0001_00ef);
  assert.equal(v.getUint32(0x350, true), 0x0001_0000, "the input is not modified");
});

test("BOOT_MSRS turn on fast strings and write-back MTRRs as a BIOS would", () => {
  const msrs = new Map(BOOT_MSRS);
  assert.equal(msrs.get(MSR.IA32_MISC_ENABLE), 1n);
  assert.equal(msrs.get(MSR.MTRR_DEF_TYPE), 0x806n, "E (bit 11) and type 6, write-back");
  assert.equal(msrs.get(MSR.LSTAR), 0n);
  assert.equal(MSR.MTRR_DEF_TYPE, 0x2ff);
  assert.equal(MSR.KERNEL_GS_BASE, 0xc000_0102);
});
