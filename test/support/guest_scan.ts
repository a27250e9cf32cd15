/**
 * A diagnostic for the nested host's hang watcher (test/support/nested.ts),
 * not a test: given a stuck vmm's pid and the guest-physical address of the
 * nested page fault it loops on, look in that vmm's guest RAM for the
 * page-table entry behind the fault.
 *
 * The loop it serves: `kvm_exit ... reason npf ... info1 0x2000000xx info2
 * 0x1_xxxx_xfe0`, a fault during the guest's own page walk (info1 bit 33)
 * at a guest-physical address 4 GiB past a page of the guest's RAM. Either
 * an entry in guest memory really has bit 32 set (something wrote the
 * guest's page tables), or the nested MMU one level down reports an
 * address the guest never wrote. The entries that point at the page, with
 * bit 32 or without, tell which.
 *
 * It reads guest RAM through /proc/PID/mem (root in L1): the mapping is
 * vmm's private anonymous one advised MADV_HUGEPAGE for a booted guest, the
 * snapshot's memory file for a restored one.
 *
 * Usage: bun test/support/guest_scan.ts PID 0xINFO2
 * Exits with status 3 when the address is past guest RAM and no entry in it
 * points at its page: the walk failed at the top-level table, at CR3.
 */
import { closeSync, openSync, readFileSync, readSync } from "node:fs";
import process from "node:process";

const [pidArg, gpaArg] = process.argv.slice(2);
const pid = Number(pidArg);
const bad = BigInt(gpaArg ?? "0");
if (!Number.isInteger(pid) || bad === 0n) {
  console.error("usage: guest_scan.ts PID 0xGPA");
  process.exit(2);
}

// Guest RAM: the largest writable mapping advised MADV_HUGEPAGE (VmFlags
// "hg": a booted guest's private anonymous RAM, ffi/libc.ts mmapGuestRam),
// else the largest writable mapping of a file (a restored guest's).
let ram = { start: 0, size: 0, name: "" };
let huge = false;
let cur: { start: number; size: number; name: string; rw: boolean } | null = null;
for (const line of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
  const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
  if (m) {
    const start = parseInt(m[1], 16);
    cur = { start, size: parseInt(m[2], 16) - start, name: m[4] || "anonymous, huge pages advised", rw: m[3].startsWith("rw") };
    if (cur.rw && !huge && m[4] !== "" && !m[4].startsWith("[") && cur.size > ram.size) ram = cur;
    continue;
  }
  if (cur?.rw && /^VmFlags:.* hg( |$)/.test(line) && (!huge || cur.size > ram.size)) {
    ram = cur;
    huge = true;
  }
}
if (ram.size < 16 << 20) {
  console.log(`guest_scan: no guest RAM mapping found in /proc/${pid}/smaps`);
  process.exit(0);
}
const mem = new Uint8Array(ram.size);
const fd = openSync(`/proc/${pid}/mem`, "r");
for (let off = 0; off < ram.size;) {
  const n = readSync(fd, mem, off, Math.min(1 << 24, ram.size - off), ram.start + off);
  if (n <= 0) break;
  off += n;
}
closeSync(fd);
const w = new Uint32Array(mem.buffer);

const hex = (hi: number, lo: number) => `0x${hi.toString(16)}_${lo.toString(16).padStart(8, "0")}`;
const page = Number(bad & 0xffffffffn) & ~0xfff; // the page, less bit 32 and up
const hiBad = Number(bad >> 32n);
console.log(`guest_scan: RAM ${ram.size >> 20} MiB at 0x${ram.start.toString(16)} (${ram.name}); fault at ${hex(hiBad, Number(bad & 0xffffffffn))}; entries pointing at page 0x${page.toString(16)}:`);
if (page >= ram.size) console.log("guest_scan: that page is outside guest RAM too");
const at = Number(bad & 0xfffn);
if (page < ram.size) {
  // If the page is a process's top-level table (the fault at offset 0xfe0,
  // entry 508: the cpu_entry_area, walked to deliver any interrupt), its
  // kernel half (entries 256-511) matches every other top-level table's.
  const q = (o: number) => hex(w[(page + o) / 4 + 1], w[(page + o) / 4]);
  console.log(`guest_scan: in that page, the qword at the fault's offset 0x${at.toString(16)}: ${q(at)}; entries 256, 508, 511: ${q(0x800)} ${q(0xfe0)} ${q(0xff8)}`);
}
/**
 * Whether the 4 KiB page holding the qword at word `i` could be a page
 * table: every present entry in it (bit 0) has bits 33-51 clear, so points
 * below 8 GiB (RAM, MMIO below 4 GiB, or 4 GiB past RAM, the address this
 * looks for); bits 52-63 are flags (NX, protection keys, software bits).
 * Kernel data that happens to hold the page's address with bit 0 set is
 * not one: a CI pass met a list of such words, each beside one like
 * 0xfed452a4_fed4528f.
 */
function couldBeTable(i: number): boolean {
  const first = i & ~1023; // 512 qwords, 1024 words
  for (let j = first; j < first + 1024; j += 2) {
    if ((w[j] & 1) !== 0 && (w[j + 1] & 0xffffe) !== 0) return false;
  }
  return true;
}

let found = 0;
for (let i = 0; i < w.length; i += 2) {
  const lo = w[i], hi = w[i + 1];
  // Present, the address's low 32 bits equal the page, bits 33-51 clear, in what could be a page table.
  if ((lo & 1) === 0 || (lo & 0xfffff000) >>> 0 !== page || (hi & 0xffffe) !== 0 || !couldBeTable(i)) continue;
  const gpa = i * 4;
  const near: string[] = [];
  for (let k = -2; k <= 2; k++) {
    const j = i + 2 * k;
    if (j >= 0 && j + 1 < w.length) near.push(hex(w[j + 1], w[j]));
  }
  console.log(`  at 0x${gpa.toString(16)}: ${hex(hi, lo)}${hi & 1 ? "  <- bit 32 SET in guest memory" : ""}; qwords around: ${near.join(" ")}`);
  if (++found >= 12) break;
}
if (!found) console.log("  none");
// Past guest RAM and pointed at by nothing in it: the top-level table, so
// the guest's CR3 register itself (status 3, read by the hang watcher).
if (!found && bad >= BigInt(ram.size)) {
  console.log("guest_scan: the fault is at the top-level table: the guest's CR3 is outside its RAM");
  process.exit(3);
}
