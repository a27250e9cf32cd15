/**
 * buildAcpiTables() read back the way an OS reads it: RSDP → XSDT → FADT,
 * MADT, and FADT.X_DSDT → DSDT, each table checked for signature, length and
 * checksum. Then ACPICA, the code inside Linux's `drivers/acpi/acpica`, judges
 * the result: `iasl -d` disassembles every table, `iasl` recompiles the DSDT,
 * and `acpiexec` loads FADT + DSDT + MADT, evaluates `\_S5_`, parses each
 * `_CRS` and enters S5 through the hardware-reduced sleep registers.
 *
 * The ACPICA checks need `iasl` and `acpiexec` from Debian's acpica-tools;
 * without them the tests fail rather than skip, so CI cannot pass silently.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_SLEEP_PORT,
  type AcpiOptions,
  buildAcpiTables,
  checksum,
  COM1,
  decodeResetWrite,
  decodeSleepWrite,
  FADT,
  FADT_F_HW_REDUCED_ACPI,
  FADT_F_RESET_REG_SUP,
  GAS,
  GAS_ACCESS_BYTE,
  GAS_SYSTEM_IO,
  IAPC_8042,
  IAPC_VGA_NOT_PRESENT,
  IOAPIC_ADDR,
  LAPIC_ADDR,
  MADT,
  MADT_IOAPIC,
  MADT_ISO,
  MADT_LAPIC,
  MADT_TYPE_IOAPIC,
  MADT_TYPE_ISO,
  MADT_TYPE_LAPIC,
  RSDP,
  SDT,
  XSDT_ENTRY_SIZE,
} from "./acpi.ts";

const dec = new TextDecoder();
const ADDR = 0xe0000;
const DEVICES = [
  { base: 0xd000_0000, size: 0x1000, irq: 5 },
  { base: 0xd000_1000, size: 0x1000, irq: 6 },
  { base: 0xd000_2000, size: 0x1000, irq: 7 },
];

function u64(v: DataView, at: number): number {
  return v.getUint32(at, true) + v.getUint32(at + 4, true) * 0x1_0000_0000;
}

/** The tables an OS finds from the RSDP, each as its own bytes. */
interface Found {
  rsdp: Uint8Array;
  xsdt: Uint8Array;
  bySig: Map<string, Uint8Array>;
  xsdtEntries: number[];
}

/** Walks RSDP → XSDT → tables → X_DSDT in a blob loaded at `addr`, checking every header on the way. */
function walk(bytes: Uint8Array, addr: number, rsdpAddr: number): Found {
  const at = (gpa: number, len: number) => {
    const off = gpa - addr;
    assert.ok(off >= 0 && off + len <= bytes.length, `0x${gpa.toString(16)}+${len} lies inside the blob`);
    return bytes.subarray(off, off + len);
  };
  const table = (gpa: number): Uint8Array => {
    const hdr = at(gpa, SDT.SIZE);
    const len = new DataView(hdr.buffer, hdr.byteOffset).getUint32(SDT.LENGTH, true);
    const t = at(gpa, len);
    assert.equal(checksum(t), 0, `${dec.decode(t.subarray(0, 4))} checksum`);
    assert.equal(dec.decode(t.subarray(SDT.OEM_ID, SDT.OEM_ID + 6)), "VMMTS ");
    return t;
  };
  const rsdp = at(rsdpAddr, RSDP.SIZE);
  const rv = new DataView(rsdp.buffer, rsdp.byteOffset);
  const xsdt = table(u64(rv, RSDP.XSDT_ADDRESS));
  const xv = new DataView(xsdt.buffer, xsdt.byteOffset);
  const xsdtEntries: number[] = [];
  for (let o = SDT.SIZE; o < xsdt.length; o += XSDT_ENTRY_SIZE) xsdtEntries.push(u64(xv, o));
  const bySig = new Map<string, Uint8Array>();
  for (const gpa of xsdtEntries) {
    const t = table(gpa);
    bySig.set(dec.decode(t.subarray(0, 4)), t);
  }
  const fadt = bySig.get("FACP");
  assert.ok(fadt, "XSDT lists a FADT");
  bySig.set("DSDT", table(u64(new DataView(fadt.buffer, fadt.byteOffset), FADT.X_DSDT)));
  return { rsdp, xsdt, bySig, xsdtEntries };
}

function build(opts: Partial<AcpiOptions> = {}) {
  const o: AcpiOptions = { cpus: 4, addr: ADDR, mmioDevices: DEVICES, ...opts };
  const t = buildAcpiTables(o);
  return { ...t, found: walk(t.bytes, o.addr, t.rsdpAddr) };
}

/** MADT interrupt controller structures as [type, bytes]. */
function madtEntries(madt: Uint8Array): [number, Uint8Array][] {
  const out: [number, Uint8Array][] = [];
  for (let o = MADT.SIZE; o < madt.length; o += madt[o + 1]) {
    assert.ok(madt[o + 1] > 0, "MADT entry has a length");
    out.push([madt[o], madt.subarray(o, o + madt[o + 1])]);
  }
  return out;
}

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

// ---------------------------------------------------------------------------
// Structure, read as an OS reads it
// ---------------------------------------------------------------------------

test("buildAcpiTables() puts a revision 2 RSDP first, with both checksums right", () => {
  const { bytes, rsdpAddr, found } = build();
  assert.equal(rsdpAddr, ADDR);
  assert.equal(rsdpAddr % 16, 0);
  const r = found.rsdp;
  assert.equal(r.byteOffset - bytes.byteOffset, 0);
  assert.equal(dec.decode(r.subarray(RSDP.SIGNATURE, 8)), "RSD PTR ");
  assert.equal(r[RSDP.REVISION], 2);
  assert.equal(view(r).getUint32(RSDP.LENGTH, true), RSDP.SIZE);
  assert.equal(view(r).getUint32(RSDP.RSDT_ADDRESS, true), 0);
  assert.equal(checksum(r.subarray(0, RSDP.V1_SIZE)), 0, "ACPI 1.0 checksum over 20 bytes");
  assert.equal(checksum(r), 0, "extended checksum over 36 bytes");
});

test("buildAcpiTables() XSDT entries point at the FADT and the MADT", () => {
  const { found } = build();
  assert.equal(dec.decode(found.xsdt.subarray(0, 4)), "XSDT");
  assert.equal(found.xsdt.length, SDT.SIZE + 2 * XSDT_ENTRY_SIZE);
  assert.deepEqual([...found.bySig.keys()], ["FACP", "APIC", "DSDT"]);
  for (const gpa of found.xsdtEntries) assert.equal(gpa % 8, 0, "tables are aligned");
});

test("buildAcpiTables() tables carry correct signatures, lengths and revisions", () => {
  const { bytes, found } = build();
  const revisions: Record<string, number> = { FACP: 6, APIC: 5, DSDT: 2 };
  let end = 0;
  for (const [sig, t] of found.bySig) {
    assert.equal(dec.decode(t.subarray(SDT.SIGNATURE, 4)), sig);
    assert.equal(view(t).getUint32(SDT.LENGTH, true), t.length);
    assert.equal(t[SDT.REVISION], revisions[sig], `${sig} revision`);
    end = Math.max(end, t.byteOffset - bytes.byteOffset + t.length);
  }
  assert.equal(end, bytes.length, "the DSDT ends the blob");
});

test("buildAcpiTables() addresses tables absolutely, also above 4 GiB", () => {
  const addr = 0x1_2345_6780;
  const { found } = build({ addr });
  for (const gpa of found.xsdtEntries) assert.ok(gpa > addr && gpa < addr + 0x1000);
});

test("FADT is hardware-reduced with sleep and reset registers in I/O space", () => {
  const { found } = build();
  const f = found.bySig.get("FACP")!;
  const v = view(f);
  assert.equal(f.length, FADT.SIZE);
  const flags = v.getUint32(FADT.FLAGS, true);
  assert.equal(flags & FADT_F_HW_REDUCED_ACPI, FADT_F_HW_REDUCED_ACPI);
  assert.equal(flags & FADT_F_RESET_REG_SUP, FADT_F_RESET_REG_SUP);
  const boot = v.getUint16(FADT.IAPC_BOOT_ARCH, true);
  assert.equal(boot & IAPC_8042, 0, "no i8042: Linux skips probing it");
  assert.equal(boot & IAPC_VGA_NOT_PRESENT, IAPC_VGA_NOT_PRESENT);
  for (
    const [reg, port] of [[FADT.SLEEP_CONTROL_REG, ACPI_SLEEP_PORT], [FADT.SLEEP_STATUS_REG, ACPI_SLEEP_PORT], [
      FADT.RESET_REG,
      ACPI_RESET_PORT,
    ]]
  ) {
    assert.equal(f[reg + GAS.SPACE_ID], GAS_SYSTEM_IO);
    assert.equal(f[reg + GAS.BIT_WIDTH], 8);
    assert.equal(f[reg + GAS.BIT_OFFSET], 0);
    assert.equal(f[reg + GAS.ACCESS_SIZE], GAS_ACCESS_BYTE);
    assert.equal(u64(v, reg + GAS.ADDRESS), port);
  }
  assert.equal(f[FADT.RESET_VALUE], ACPI_RESET_VALUE);
  assert.equal(v.getUint32(FADT.DSDT, true), 0, "only X_DSDT is set");
  assert.equal(u64(v, FADT.X_FIRMWARE_CTRL), 0, "no FACS");
  assert.equal(dec.decode(f.subarray(FADT.HYPERVISOR_VENDOR_ID, FADT.SIZE)), "VMMTSKVM");
});

for (const cpus of [1, 4]) {
  test(`MADT for ${cpus} vCPU(s) lists ${cpus} Local APICs, the IOAPIC and IRQ0 → GSI 2`, () => {
    const { found } = build({ cpus });
    const m = found.bySig.get("APIC")!;
    assert.equal(view(m).getUint32(MADT.LOCAL_APIC_ADDRESS, true), LAPIC_ADDR);
    const entries = madtEntries(m);
    assert.equal(entries.length, cpus + 2);
    const lapics = entries.filter(([t]) => t === MADT_TYPE_LAPIC).map(([, e]) => e);
    assert.equal(lapics.length, cpus);
    lapics.forEach((e, id) => {
      assert.equal(e.length, MADT_LAPIC.SIZE);
      assert.equal(e[MADT_LAPIC.APIC_ID], id);
      assert.equal(e[MADT_LAPIC.PROCESSOR_UID], id);
      assert.equal(view(e).getUint32(MADT_LAPIC.FLAGS, true), 1, "enabled");
    });
    const [, io] = entries.find(([t]) => t === MADT_TYPE_IOAPIC)!;
    assert.equal(io.length, MADT_IOAPIC.SIZE);
    assert.equal(io[MADT_IOAPIC.IOAPIC_ID], 0);
    assert.equal(view(io).getUint32(MADT_IOAPIC.ADDRESS, true), IOAPIC_ADDR);
    assert.equal(view(io).getUint32(MADT_IOAPIC.GSI_BASE, true), 0);
    const [, iso] = entries.find(([t]) => t === MADT_TYPE_ISO)!;
    assert.equal(iso.length, MADT_ISO.SIZE);
    assert.equal(iso[MADT_ISO.BUS], 0);
    assert.equal(iso[MADT_ISO.SOURCE], 0);
    assert.equal(view(iso).getUint32(MADT_ISO.GSI, true), 2);
    assert.equal(view(iso).getUint16(MADT_ISO.FLAGS, true), 0x5, "edge, active-high");
  });
}

test("MADT for 255 vCPUs uses APIC ids up to 254", () => {
  const { found } = build({ cpus: 255 });
  const lapics = madtEntries(found.bySig.get("APIC")!).filter(([t]) => t === MADT_TYPE_LAPIC);
  assert.equal(lapics.length, 255);
  assert.equal(lapics[254][1][MADT_LAPIC.APIC_ID], 254);
});

test("DSDT names \\_S5_, COM1 and one LNRO0005 device per virtio-mmio window", () => {
  const { found } = build();
  const aml = dec.decode(found.bySig.get("DSDT")!.subarray(SDT.SIZE));
  assert.ok(aml.includes("_S5_"));
  assert.ok(aml.includes("COM1"));
  assert.equal(aml.split("LNRO0005").length - 1, DEVICES.length);
  for (const n of ["VR00", "VR01", "VR02"]) assert.ok(aml.includes(n), n);
});

test("buildAcpiTables() rejects options the tables cannot express", () => {
  const bad: Partial<AcpiOptions>[] = [
    { cpus: 0 },
    { cpus: 256 },
    { cpus: 1.5 },
    { addr: ADDR + 8 },
    { mmioDevices: [{ base: 0xd000_0000, size: 0x1000, irq: 24 }] },
    { mmioDevices: [{ base: 0xd000_0000, size: 0x1000, irq: 2 }] },
    { mmioDevices: [{ base: 0xffff_f000, size: 0x2000, irq: 5 }] },
    { mmioDevices: [{ base: 0xd000_0000, size: 0, irq: 5 }] },
    { mmioDevices: Array.from({ length: 101 }, (_, k) => ({ base: 0xd000_0000 + k * 0x1000, size: 0x1000, irq: 5 })) },
  ];
  for (const b of bad) {
    assert.throws(() => buildAcpiTables({ cpus: 1, addr: ADDR, mmioDevices: [], ...b }), RangeError, JSON.stringify(b));
  }
});

// ---------------------------------------------------------------------------
// What the guest writes to the ports
// ---------------------------------------------------------------------------

test("decodeSleepWrite() sees poweroff only in SLP_EN with SLP_TYP 5", () => {
  assert.equal(decodeSleepWrite(0x34), "poweroff", "what Linux writes for S5: 5 << 2 | SLP_EN");
  assert.equal(decodeSleepWrite(0x80), null, "WAK_STS clear, written just before");
  assert.equal(decodeSleepWrite(0x14), null, "SLP_TYP 5 without SLP_EN");
  assert.equal(decodeSleepWrite(0x20), null, "SLP_EN with SLP_TYP 0");
  assert.equal(decodeSleepWrite(0x2c), null, "SLP_EN with SLP_TYP 3 (S3)");
  for (let v = 0; v < 256; v++) {
    assert.equal(decodeSleepWrite(v) === "poweroff", (v & 0x3c) === 0x34, `0x${v.toString(16)}`);
  }
});

test("decodeResetWrite() sees reset only in the FADT's reset value", () => {
  assert.equal(decodeResetWrite(ACPI_RESET_VALUE), "reset");
  assert.equal(decodeResetWrite(0), null);
  assert.equal(decodeResetWrite(0xfe), null);
});

// ---------------------------------------------------------------------------
// ACPICA's verdict (acpica-tools: iasl, acpiexec)
// ---------------------------------------------------------------------------

const INSTALL = "install acpica-tools (apt-get install -y acpica-tools): the ACPI tests need iasl and acpiexec";

function tool(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8" });
  if (r.error) throw new Error(`${cmd} could not run (${r.error.message}); ${INSTALL}`);
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")} exited ${r.status}:\n${out}`);
  return out;
}

/** A scratch directory holding the tables of `build()` as FACP.dat, APIC.dat, DSDT.dat, XSDT.dat. */
function withTables(opts: Partial<AcpiOptions>, fn: (dir: string) => void): void {
  const { found } = build(opts);
  const dir = mkdtempSync(join(tmpdir(), "vmm-acpi-"));
  try {
    for (const [sig, t] of found.bySig) writeFileSync(join(dir, `${sig}.dat`), t);
    writeFileSync(join(dir, "XSDT.dat"), found.xsdt);
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `iasl -d` one table; returns its disassembly after checking ACPICA reported no problem. */
function disassemble(dir: string, sig: string): string {
  const log = tool("iasl", ["-d", `${sig}.dat`], dir);
  assert.doesNotMatch(log, /error|warning|invalid/i, log);
  const dsl = readFileSync(join(dir, `${sig}.dsl`), "utf8");
  assert.doesNotMatch(dsl, /Incorrect checksum|\*\*\*\*|error/i, dsl);
  return dsl;
}

test("iasl is installed (acpica-tools)", () => {
  try {
    execFileSync("iasl", ["-v"], { stdio: "ignore" });
    execFileSync("acpiexec", ["-v"], { stdio: "ignore" });
  } catch (e) {
    assert.fail(`${INSTALL} (${(e as Error).message})`);
  }
});

test("iasl -d disassembles the DSDT, and iasl compiles the result again", () => {
  withTables({}, (dir) => {
    const dsl = disassemble(dir, "DSDT");
    assert.match(dsl, /_S5_/); // iasl prints the name as _S5 and comments it as _S5_
    const code = dsl.replace(/\/\/.*$/gm, ""); // without iasl's field comments
    assert.match(code, /Name \(_S5, Package \(0x02\)\s*\{\s*0x05,\s*Zero\s*\}/);
    assert.match(
      code,
      /Device \(COM1\)[\s\S]*?EisaId \("PNP0501"\)[\s\S]*?IO \(Decode16,\s*0x03F8,\s*0x03F8,\s*0x01,\s*0x08,/,
    );
    assert.equal(dsl.split('Name (_HID, "LNRO0005")').length - 1, DEVICES.length);
    DEVICES.forEach((d, n) => {
      const re = new RegExp(
        `Device \\(VR0${n}\\)[\\s\\S]*?_UID, ${n === 0 ? "Zero" : n === 1 ? "One" : `0x0${n}`}\\)[\\s\\S]*?` +
          `Memory32Fixed \\(ReadWrite,\\s*0x${d.base.toString(16).toUpperCase()},\\s*0x0000${
            d.size.toString(16).toUpperCase()
          },` +
          `[\\s\\S]*?Interrupt \\(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \\)\\s*\\{\\s*0x0000000${d.irq},`,
      );
      assert.match(code, re, `VR0${n}`);
    });
    const log = tool("iasl", ["-p", "recompiled", "DSDT.dsl"], dir);
    assert.match(log, /Compilation successful\. 0 Errors, 0 Warnings/, log);
  });
});

test("iasl -d decodes the FADT as hardware-reduced with our registers", () => {
  withTables({}, (dir) => {
    const dsl = disassemble(dir, "FACP");
    const field = (label: string) => dsl.match(new RegExp(`${label.replace(/[()/]/g, "\\$&")} : (\\S+)`))?.[1];
    assert.equal(field("Revision"), "06");
    assert.equal(field("Hardware Reduced (V5)"), "1");
    assert.equal(field("Reset Register Supported (V2)"), "1");
    assert.equal(field("8042 Present on ports 60/64 (V2)"), "0");
    assert.equal(field("VGA Not Present (V4)"), "1");
    assert.equal(field("Value to cause reset"), "01");
    assert.match(
      dsl,
      /Reset Register : \[Generic Address Structure\][\s\S]*?Space ID : 01 \[SystemIO\][\s\S]*?Address : 0000000000000604/,
    );
    assert.match(
      dsl,
      /Sleep Control Register : \[Generic Address Structure\][\s\S]*?Space ID : 01 \[SystemIO\][\s\S]*?Address : 0000000000000600/,
    );
    assert.match(
      dsl,
      /Sleep Status Register : \[Generic Address Structure\][\s\S]*?Space ID : 01 \[SystemIO\][\s\S]*?Address : 0000000000000600/,
    );
  });
});

test("iasl -d decodes the MADT: Local APICs, IOAPIC, IRQ0 override", () => {
  withTables({ cpus: 4 }, (dir) => {
    const dsl = disassemble(dir, "APIC");
    assert.equal(dsl.split("[Processor Local APIC]").length - 1, 4);
    assert.equal(dsl.split("Processor Enabled : 1").length - 1, 4);
    assert.match(dsl, /\[I\/O APIC\][\s\S]*?I\/O Apic ID : 00[\s\S]*?Address : FEC00000[\s\S]*?Interrupt : 00000000/);
    assert.match(
      dsl,
      /\[Interrupt Source Override\][\s\S]*?Bus : 00\s[\s\S]*?Source : 00\s[\s\S]*?Interrupt : 00000002/,
    );
  });
});

test("iasl -d reads the XSDT", () => {
  withTables({}, (dir) => {
    const dsl = disassemble(dir, "XSDT");
    assert.equal(dsl.split("ACPI Table Address").length - 1, 2);
  });
});

test("acpiexec loads FADT + DSDT + MADT, parses every _CRS and enters S5 through the sleep registers", () => {
  withTables({}, (dir) => {
    const cmds = [
      "evaluate \\_S5_",
      "resources \\_SB.COM1",
      ...DEVICES.map((_, n) => `resources \\_SB.VR0${n}`),
      "sleep 5",
    ];
    const out = tool("acpiexec", ["-b", cmds.join("; "), "FACP.dat", "DSDT.dat", "APIC.dat"], dir);
    assert.match(out, /ACPI: FACP .* \(v06 VMMTS {2}VMMFACP /);
    assert.match(out, /\[Package\] Contains 2 Elements:\s*\[Integer\] = 0000000000000005/);
    assert.match(out, /I\/O Resource[\s\S]*?Address Minimum : 03F8[\s\S]*?Dword00 : 00000004/);
    DEVICES.forEach((d) => {
      const re = new RegExp(
        `Address : ${d.base.toString(16).toUpperCase()}\\s*Address Length : 0000${d.size.toString(16).toUpperCase()}` +
          `[\\s\\S]*?Triggering : Edge\\s*Polarity : ActiveHigh\\s*Sharing : Exclusive[\\s\\S]*?Dword00 : 0000000${d.irq}`,
      );
      assert.match(out, re);
    });
    assert.doesNotMatch(out, /mismatch|ACPI Error|ACPI Exception/i, out);
    // ACPICA takes the hardware-reduced path, writing SLP_TYP 5 to the sleep control register.
    assert.match(out, /Sleep-A: 05/);
    assert.match(out, /HwExtendedSleep\s*: Entering sleep state \[S5\]/);
  });
});

test("COM1 can be left out", () => {
  const { found } = build({ serialPorts: [] });
  assert.ok(!dec.decode(found.bySig.get("DSDT")!).includes("COM1"));
  assert.deepEqual(COM1, { port: 0x3f8, irq: 4 });
});
