/**
 * ACPI tables for a stock Linux kernel: RSDP, XSDT, FADT, MADT and DSDT.
 *
 * Debian's kernels find virtio-mmio devices only through ACPI (a DSDT device
 * with `_HID "LNRO0005"`, matched by `drivers/virtio/virtio_mmio.c`), so vmm
 * describes its machine the way Firecracker (`src/vmm/src/acpi/`) and
 * cloud-hypervisor do: a *hardware-reduced* ACPI platform (ACPI 6.4 §4.1),
 * which has no PM1 event/control blocks, no GPEs, no SCI and no FACS. What
 * Linux still needs from us:
 *
 * - MADT: one Local APIC per vCPU, the in-kernel IOAPIC, and ISA IRQ0 → GSI 2
 *   (KVM's default routing wires the PIT to IOAPIC pin 2).
 * - FADT: HW_REDUCED_ACPI, the sleep control/status registers and the reset
 *   register, all single bytes in I/O space. `poweroff` then writes S5 to the
 *   sleep control register (ACPICA `hwesleep.c`), `reboot` writes the reset
 *   value to the reset register (`acpi_reboot()`, `drivers/acpi/reboot.c`).
 * - DSDT: `\_S5_` (without it `acpi_sleep_state_supported(ACPI_STATE_S5)`
 *   fails and Linux registers no ACPI power-off handler), COM1, and one
 *   `VRnn` device per virtio-mmio window.
 *
 * COM1 is declared because on a hardware-reduced platform Linux installs no
 * legacy PIC (`acpi_generic_reduced_hw_init()`, arch/x86/kernel/acpi/boot.c),
 * so `nr_legacy_irqs()` is 0 and the IOAPIC's IRQ domain is dynamic: ISA
 * IRQ 4, which the legacy 8250 probe assumes, is no longer identity-mapped
 * to GSI 4. Declaring the port as a PNP0501 device makes 8250_pnp take its
 * interrupt from `_CRS` as a real GSI. Firecracker and cloud-hypervisor
 * declare their COM ports too (cloud-hypervisor found its boot and serial
 * broken without COM1 when it went hardware-reduced, PR #180).
 *
 * The whole set is one blob, copied to guest memory at `addr`; tables point
 * at each other by absolute guest address. RSDP comes first so that `addr`
 * (16-byte aligned) is also the RSDP address the kernel scans for or reads
 * from `boot_params.acpi_rsdp_addr`.
 */

import {
  concat,
  device,
  eisaId,
  integer,
  interrupt,
  ioPort,
  memory32Fixed,
  name,
  pkg,
  resourceTemplate,
  scope,
  string,
} from "./aml.ts";

// ---------------------------------------------------------------------------
// What the vCPU loop must handle
// ---------------------------------------------------------------------------

/** Sleep control and sleep status register (FADT SLEEP_CONTROL_REG/SLEEP_STATUS_REG): one byte, I/O space. */
export const ACPI_SLEEP_PORT = 0x600;
/** Reset register (FADT RESET_REG): one byte, I/O space. */
export const ACPI_RESET_PORT = 0x604;
/** The byte the guest writes to ACPI_RESET_PORT to reset the machine (FADT RESET_VALUE). */
export const ACPI_RESET_VALUE = 1;

/** Sleep control register fields (ACPI 6.4 §4.8.3.7; ACPICA `ACPI_X_SLEEP_*`). */
export const SLP_TYP_SHIFT = 2;
export const SLP_TYP_MASK = 0x1c;
export const SLP_EN = 0x20;
/** Sleep status register: WAK_STS, which Linux clears (writes 1) just before sleeping. */
export const WAK_STS = 0x80;
/** The SLP_TYP value our `\_S5_` object gives for soft-off. */
export const SLP_TYP_S5 = 5;

/**
 * Decode a byte the guest wrote to ACPI_SLEEP_PORT: "poweroff" when it asks
 * for S5 (SLP_EN set, SLP_TYP = 5), else null. Linux first writes WAK_STS
 * (0x80) to the same port to clear it, then SLP_TYP<<2 | SLP_EN (0x34); it
 * then spins reading the port until WAK_STS is set, so reads must return 0
 * and the VM must stop on the 0x34 write.
 */
export function decodeSleepWrite(value: number): "poweroff" | null {
  const slpTyp = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
  return (value & SLP_EN) !== 0 && slpTyp === SLP_TYP_S5 ? "poweroff" : null;
}

/** Decode a byte the guest wrote to ACPI_RESET_PORT: "reset" for ACPI_RESET_VALUE, else null. */
export function decodeResetWrite(value: number): "reset" | null {
  return (value & 0xff) === ACPI_RESET_VALUE ? "reset" : null;
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

/** One virtio-mmio window and the GSI its irqfd raises. */
export interface VirtioMmioDevice {
  base: number;
  size: number;
  /**
   * GSI (IOAPIC pin). Declared edge-triggered, active-high: vmm raises it
   * through a KVM irqfd, which pulses the pin, and virtio_mmio's handler
   * reads and acks InterruptStatus itself (Firecracker declares the same).
   */
  irq: number;
}

/** A legacy 16550 UART to declare as a PNP0501 device. */
export interface LegacySerialPort {
  port: number;
  irq: number;
}

/** COM1 as every PC has it. */
export const COM1: LegacySerialPort = { port: 0x3f8, irq: 4 };

export interface AcpiOptions {
  /** 1..255: one MADT Local APIC entry per vCPU, APIC ids 0..cpus-1, all enabled. */
  cpus: number;
  /** Guest physical address where the blob will be copied (16-byte aligned). */
  addr: number;
  /** Each becomes DSDT device `\_SB_.VRnn`, `_HID "LNRO0005"`, `_UID n`. */
  mmioDevices: VirtioMmioDevice[];
  /** UARTs to declare (see the file comment for why); default `[COM1]`. */
  serialPorts?: LegacySerialPort[];
}

export interface AcpiTables {
  bytes: Uint8Array;
  /** `addr` + offset of the RSDP in `bytes` (0: it comes first). */
  rsdpAddr: number;
}

// ---------------------------------------------------------------------------
// Platform facts the tables state
// ---------------------------------------------------------------------------

/** KVM's in-kernel IOAPIC: where it sits, its 24 pins, and the id its register resets to. */
export const IOAPIC_ADDR = 0xfec0_0000;
export const IOAPIC_PINS = 24;
export const IOAPIC_ID = 0;
/** Local APIC base every vCPU sees. */
export const LAPIC_ADDR = 0xfee0_0000;
/** Where KVM's default GSI routing connects the PIT (ISA IRQ0). */
export const PIT_GSI = 2;

const OEM_ID = "VMMTS ";
const OEM_REVISION = 1;
const CREATOR_ID = "VMMT";
const CREATOR_REVISION = 1;
const HYPERVISOR_VENDOR = "VMMTSKVM";

// ---------------------------------------------------------------------------
// Layouts (ACPI 6.4 §5.2)
// ---------------------------------------------------------------------------

/** Root System Description Pointer, revision 2 (§5.2.5.3). */
export const RSDP = {
  SIGNATURE: 0, // "RSD PTR "
  CHECKSUM: 8, // over the first V1_SIZE bytes
  OEM_ID: 9,
  REVISION: 15, // 2
  RSDT_ADDRESS: 16, // u32, 0: we have only an XSDT
  LENGTH: 20, // u32, SIZE
  XSDT_ADDRESS: 24, // u64
  EXTENDED_CHECKSUM: 32, // over all SIZE bytes
  SIZE: 36,
  V1_SIZE: 20,
} as const;

/** System Description Table header, shared by every table but the RSDP (§5.2.6). */
export const SDT = {
  SIGNATURE: 0,
  LENGTH: 4, // u32, whole table
  REVISION: 8,
  CHECKSUM: 9, // whole table sums to 0
  OEM_ID: 10, // 6 bytes
  OEM_TABLE_ID: 16, // 8 bytes
  OEM_REVISION: 24,
  CREATOR_ID: 28,
  CREATOR_REVISION: 32,
  SIZE: 36,
} as const;

/** XSDT (§5.2.8): the header, then u64 table addresses. */
export const XSDT_ENTRY_SIZE = 8;

/** Generic Address Structure (§5.2.3.2). */
export const GAS = {
  SPACE_ID: 0, // 0 system memory, 1 system I/O
  BIT_WIDTH: 1,
  BIT_OFFSET: 2,
  ACCESS_SIZE: 3, // 1 byte, 2 word, 3 dword, 4 qword
  ADDRESS: 4, // u64
  SIZE: 12,
} as const;
export const GAS_SYSTEM_IO = 1;
export const GAS_ACCESS_BYTE = 1;

/** Fixed ACPI Description Table, revision 6 (§5.2.9, Table 5.9). Fields we leave zero are listed for the offsets. */
export const FADT = {
  FIRMWARE_CTRL: 36, // u32, 0: no FACS on a hardware-reduced platform
  DSDT: 40, // u32, 0: X_DSDT is used instead
  PREFERRED_PM_PROFILE: 45,
  SCI_INT: 46, // u16
  IAPC_BOOT_ARCH: 109, // u16
  FLAGS: 112, // u32
  RESET_REG: 116, // GAS
  RESET_VALUE: 128,
  ARM_BOOT_ARCH: 129, // u16
  MINOR_VERSION: 131,
  X_FIRMWARE_CTRL: 132, // u64
  X_DSDT: 140, // u64
  SLEEP_CONTROL_REG: 244, // GAS
  SLEEP_STATUS_REG: 256, // GAS
  HYPERVISOR_VENDOR_ID: 268, // 8 bytes
  SIZE: 276,
} as const;
export const FADT_REVISION = 6;
export const FADT_MINOR_VERSION = 4; // ACPI 6.4

/** FADT Flags (§5.2.9 Table 5.10). */
export const FADT_F_PWR_BUTTON = 1 << 4; // no fixed-feature power button
export const FADT_F_SLP_BUTTON = 1 << 5; // no fixed-feature sleep button
export const FADT_F_RESET_REG_SUP = 1 << 10;
export const FADT_F_HW_REDUCED_ACPI = 1 << 20;

/** IA-PC Boot Architecture Flags (§5.2.9.3 Table 5.11). */
export const IAPC_LEGACY_DEVICES = 1 << 0;
export const IAPC_8042 = 1 << 1;
export const IAPC_VGA_NOT_PRESENT = 1 << 2;
export const IAPC_MSI_NOT_SUPPORTED = 1 << 3;
export const IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5;

/** Multiple APIC Description Table (§5.2.12): the header, then interrupt controller structures. */
export const MADT = {
  LOCAL_APIC_ADDRESS: 36, // u32
  FLAGS: 40, // u32, bit 0 PCAT_COMPAT
  SIZE: 44,
} as const;
export const MADT_REVISION = 5; // ACPI 6.4

/** Processor Local APIC structure (§5.2.12.2). */
export const MADT_LAPIC = {
  TYPE: 0, // 0
  LENGTH: 1, // 8
  PROCESSOR_UID: 2,
  APIC_ID: 3,
  FLAGS: 4, // u32, bit 0 Enabled
  SIZE: 8,
} as const;
export const MADT_TYPE_LAPIC = 0;
export const MADT_LAPIC_ENABLED = 1;

/** I/O APIC structure (§5.2.12.3). */
export const MADT_IOAPIC = {
  TYPE: 0, // 1
  LENGTH: 1, // 12
  IOAPIC_ID: 2,
  ADDRESS: 4, // u32
  GSI_BASE: 8, // u32
  SIZE: 12,
} as const;
export const MADT_TYPE_IOAPIC = 1;

/** Interrupt Source Override structure (§5.2.12.5). */
export const MADT_ISO = {
  TYPE: 0, // 2
  LENGTH: 1, // 10
  BUS: 2, // 0: ISA
  SOURCE: 3, // ISA IRQ
  GSI: 4, // u32
  FLAGS: 8, // u16 MPS INTI flags
  SIZE: 10,
} as const;
export const MADT_TYPE_ISO = 2;
/** MPS INTI flags (§5.2.12.5 Table 5.26): polarity bits 0–1, trigger mode bits 2–3. */
export const MPS_INTI_ACTIVE_HIGH = 0x1;
export const MPS_INTI_EDGE = 0x1 << 2;

export const DSDT_REVISION = 2; // 2 or more: AML integers are 64-bit (§5.2.11.1)

// ---------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------

/** Sum of bytes modulo 256: a correct table sums to 0 (§5.2.6). */
export function checksum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

function setAscii(b: Uint8Array, at: number, s: string, len: number): void {
  for (let k = 0; k < len; k++) b[at + k] = k < s.length ? s.charCodeAt(k) : 0x20;
}

/** u64 as two u32 halves: `addr` is a number below 2^53. */
function setU64(v: DataView, at: number, value: number): void {
  v.setUint32(at, value % 0x1_0000_0000, true);
  v.setUint32(at + 4, Math.floor(value / 0x1_0000_0000), true);
}

/** A table of `len` bytes with its header filled in; the checksum is set by `seal`. */
function newTable(sig: string, len: number, revision: number): [Uint8Array, DataView] {
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  setAscii(b, SDT.SIGNATURE, sig, 4);
  v.setUint32(SDT.LENGTH, len, true);
  b[SDT.REVISION] = revision;
  setAscii(b, SDT.OEM_ID, OEM_ID, 6);
  setAscii(b, SDT.OEM_TABLE_ID, `VMM${sig}`, 8);
  v.setUint32(SDT.OEM_REVISION, OEM_REVISION, true);
  setAscii(b, SDT.CREATOR_ID, CREATOR_ID, 4);
  v.setUint32(SDT.CREATOR_REVISION, CREATOR_REVISION, true);
  return [b, v];
}

function seal(b: Uint8Array): Uint8Array {
  b[SDT.CHECKSUM] = 0;
  b[SDT.CHECKSUM] = (256 - checksum(b)) & 0xff;
  return b;
}

function setIoGas(b: Uint8Array, v: DataView, at: number, port: number): void {
  b[at + GAS.SPACE_ID] = GAS_SYSTEM_IO;
  b[at + GAS.BIT_WIDTH] = 8;
  b[at + GAS.BIT_OFFSET] = 0;
  b[at + GAS.ACCESS_SIZE] = GAS_ACCESS_BYTE;
  setU64(v, at + GAS.ADDRESS, port);
}

/**
 * The FADT. SCI_INT stays 0 as on Firecracker: a hardware-reduced platform
 * has no SCI (ACPICA installs no SCI handler), and Linux only uses the value
 * to recognise the SCI's interrupt source override in the MADT.
 *
 * IAPC_BOOT_ARCH: 8042 clear, so Linux marks the i8042 firmware-absent and
 * skips probing it (`acpi_parse_fadt()`); VGA_NOT_PRESENT set, there is no
 * VGA. LEGACY_DEVICES, MSI_NOT_SUPPORTED (it would disable MSI for a later
 * virtio-pci) and CMOS_RTC_NOT_PRESENT stay clear, as on Firecracker.
 */
export function buildFadt(dsdtAddr: number): Uint8Array {
  const [b, v] = newTable("FACP", FADT.SIZE, FADT_REVISION);
  v.setUint16(FADT.IAPC_BOOT_ARCH, IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT, true);
  v.setUint32(FADT.FLAGS, FADT_F_HW_REDUCED_ACPI | FADT_F_RESET_REG_SUP | FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON, true);
  setIoGas(b, v, FADT.RESET_REG, ACPI_RESET_PORT);
  b[FADT.RESET_VALUE] = ACPI_RESET_VALUE;
  b[FADT.MINOR_VERSION] = FADT_MINOR_VERSION;
  setU64(v, FADT.X_DSDT, dsdtAddr);
  setIoGas(b, v, FADT.SLEEP_CONTROL_REG, ACPI_SLEEP_PORT);
  setIoGas(b, v, FADT.SLEEP_STATUS_REG, ACPI_SLEEP_PORT);
  setAscii(b, FADT.HYPERVISOR_VENDOR_ID, HYPERVISOR_VENDOR, 8);
  return seal(b);
}

/**
 * The MADT. Flags stay 0 (no PCAT_COMPAT): on a hardware-reduced platform
 * Linux uses no 8259 anyway.
 *
 * ISA IRQ0 → GSI 2 is flagged edge/active-high explicitly rather than
 * "conforming" (0) as QEMU does: with SCI_INT 0, Linux takes an override
 * whose source is IRQ 0 for the SCI's (`acpi_parse_int_src_ovr()`) and would
 * turn conforming flags into level/active-low. Explicit flags mean the same
 * as conforming ones for ISA and survive that path.
 */
export function buildMadt(cpus: number): Uint8Array {
  const len = MADT.SIZE + cpus * MADT_LAPIC.SIZE + MADT_IOAPIC.SIZE + MADT_ISO.SIZE;
  const [b, v] = newTable("APIC", len, MADT_REVISION);
  v.setUint32(MADT.LOCAL_APIC_ADDRESS, LAPIC_ADDR, true);
  v.setUint32(MADT.FLAGS, 0, true);
  let at = MADT.SIZE;
  for (let id = 0; id < cpus; id++) {
    b[at + MADT_LAPIC.TYPE] = MADT_TYPE_LAPIC;
    b[at + MADT_LAPIC.LENGTH] = MADT_LAPIC.SIZE;
    b[at + MADT_LAPIC.PROCESSOR_UID] = id;
    b[at + MADT_LAPIC.APIC_ID] = id;
    v.setUint32(at + MADT_LAPIC.FLAGS, MADT_LAPIC_ENABLED, true);
    at += MADT_LAPIC.SIZE;
  }
  b[at + MADT_IOAPIC.TYPE] = MADT_TYPE_IOAPIC;
  b[at + MADT_IOAPIC.LENGTH] = MADT_IOAPIC.SIZE;
  b[at + MADT_IOAPIC.IOAPIC_ID] = IOAPIC_ID;
  v.setUint32(at + MADT_IOAPIC.ADDRESS, IOAPIC_ADDR, true);
  v.setUint32(at + MADT_IOAPIC.GSI_BASE, 0, true);
  at += MADT_IOAPIC.SIZE;
  b[at + MADT_ISO.TYPE] = MADT_TYPE_ISO;
  b[at + MADT_ISO.LENGTH] = MADT_ISO.SIZE;
  b[at + MADT_ISO.BUS] = 0;
  b[at + MADT_ISO.SOURCE] = 0;
  v.setUint32(at + MADT_ISO.GSI, PIT_GSI, true);
  v.setUint16(at + MADT_ISO.FLAGS, MPS_INTI_ACTIVE_HIGH | MPS_INTI_EDGE, true);
  return seal(b);
}

/** `VR00`..`VR99`, the names QEMU and Firecracker give virtio-mmio devices. */
export function virtioDeviceName(n: number): string {
  return `VR${String(n).padStart(2, "0")}`;
}

/**
 * The DSDT: `\_S5_`, then under `\_SB_` the UARTs and the virtio-mmio
 * devices.
 *
 * `\_S5_` is Package {5, 0}: ACPICA takes SLP_TYPa from the first element
 * (`acpi_get_sleep_type_data()`) and, on a hardware-reduced platform, writes
 * it to the sleep control register's SLP_TYP field (ACPI 6.4 §7.4.2).
 */
export function buildDsdt(mmioDevices: VirtioMmioDevice[], serialPorts: LegacySerialPort[] = [COM1]): Uint8Array {
  const s5 = name("_S5_", pkg([integer(SLP_TYP_S5), integer(0)]));
  const uarts = serialPorts.map((p, n) =>
    device(`COM${n + 1}`, [
      name("_HID", eisaId("PNP0501")),
      name("_UID", integer(n)),
      name("_CRS", resourceTemplate([ioPort(p.port, p.port, 1, 8), interrupt(p.irq)])),
    ])
  );
  const virtio = mmioDevices.map((d, n) =>
    device(virtioDeviceName(n), [
      name("_HID", string("LNRO0005")),
      name("_UID", integer(n)),
      name("_CRS", resourceTemplate([memory32Fixed(d.base, d.size), interrupt(d.irq)])),
    ])
  );
  const aml = concat(s5, scope("\\_SB_", [...uarts, ...virtio]));
  const [b] = newTable("DSDT", SDT.SIZE + aml.length, DSDT_REVISION);
  b.set(aml, SDT.SIZE);
  return seal(b);
}

/** The XSDT, listing `tables` by address. */
export function buildXsdt(tables: number[]): Uint8Array {
  const [b, v] = newTable("XSDT", SDT.SIZE + tables.length * XSDT_ENTRY_SIZE, 1);
  tables.forEach((addr, k) => setU64(v, SDT.SIZE + k * XSDT_ENTRY_SIZE, addr));
  return seal(b);
}

/** The RSDP (revision 2), pointing at the XSDT only. */
export function buildRsdp(xsdtAddr: number): Uint8Array {
  const b = new Uint8Array(RSDP.SIZE);
  const v = new DataView(b.buffer);
  setAscii(b, RSDP.SIGNATURE, "RSD PTR ", 8);
  setAscii(b, RSDP.OEM_ID, OEM_ID, 6);
  b[RSDP.REVISION] = 2;
  v.setUint32(RSDP.LENGTH, RSDP.SIZE, true);
  setU64(v, RSDP.XSDT_ADDRESS, xsdtAddr);
  b[RSDP.CHECKSUM] = (256 - checksum(b.subarray(0, RSDP.V1_SIZE))) & 0xff;
  b[RSDP.EXTENDED_CHECKSUM] = (256 - checksum(b)) & 0xff;
  return b;
}

/** Tables start on 16-byte boundaries: the RSDP must (§5.2.5.1), the others are kept tidy. */
const TABLE_ALIGN = 16;
const alignUp = (n: number) => Math.ceil(n / TABLE_ALIGN) * TABLE_ALIGN;

function checkOptions(opts: AcpiOptions): void {
  const { cpus, addr, mmioDevices } = opts;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 255) throw new RangeError(`ACPI: ${cpus} vCPUs is outside 1..255`);
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % TABLE_ALIGN !== 0) {
    throw new RangeError(`ACPI: table address 0x${addr.toString(16)} is not 16-byte aligned`);
  }
  if (mmioDevices.length > 100) {
    throw new RangeError(`ACPI: ${mmioDevices.length} virtio-mmio devices exceed VR00..VR99`);
  }
  const gsis = [...mmioDevices.map((d) => d.irq), ...(opts.serialPorts ?? [COM1]).map((p) => p.irq)];
  for (const gsi of gsis) {
    if (!Number.isInteger(gsi) || gsi < 0 || gsi >= IOAPIC_PINS) {
      throw new RangeError(`ACPI: GSI ${gsi} is outside the IOAPIC's pins 0..${IOAPIC_PINS - 1}`);
    }
    if (gsi === PIT_GSI) throw new RangeError(`ACPI: GSI ${gsi} belongs to the PIT`);
  }
  mmioDevices.forEach((d, n) => {
    if (d.size <= 0) throw new RangeError(`ACPI: virtio-mmio device ${n} has size ${d.size}`);
  });
}

/**
 * Build RSDP, XSDT, FADT, MADT and DSDT as one blob for guest address `addr`.
 * Throws RangeError for options the tables cannot express.
 *
 * @example
 * ```ts
 * const { bytes, rsdpAddr } = buildAcpiTables({
 *   cpus: 2,
 *   addr: 0xe0000,
 *   mmioDevices: [{ base: 0xd000_0000, size: 0x1000, irq: 5 }],
 * });
 * // copy `bytes` to guest 0xe0000; boot_params.acpi_rsdp_addr = rsdpAddr
 * ```
 */
export function buildAcpiTables(opts: AcpiOptions): AcpiTables {
  checkOptions(opts);
  const dsdt = buildDsdt(opts.mmioDevices, opts.serialPorts ?? [COM1]);
  const madt = buildMadt(opts.cpus);
  // Layout: RSDP, XSDT (two entries), FADT, MADT, DSDT.
  const xsdtOff = alignUp(RSDP.SIZE);
  const fadtOff = alignUp(xsdtOff + SDT.SIZE + 2 * XSDT_ENTRY_SIZE);
  const madtOff = alignUp(fadtOff + FADT.SIZE);
  const dsdtOff = alignUp(madtOff + madt.length);
  const end = dsdtOff + dsdt.length;
  const a = opts.addr;
  const bytes = new Uint8Array(end);
  bytes.set(buildRsdp(a + xsdtOff), 0);
  bytes.set(buildXsdt([a + fadtOff, a + madtOff]), xsdtOff);
  bytes.set(buildFadt(a + dsdtOff), fadtOff);
  bytes.set(madt, madtOff);
  bytes.set(dsdt, dsdtOff);
  return { bytes, rsdpAddr: a };
}
