/**
 * Port and MMIO dispatch: which emulated device answers a guest access.
 * A vCPU Worker builds one bus and asks it on every KVM_EXIT_IO/MMIO.
 * An access nobody claims reads as all ones, like an empty ISA bus, and
 * writes vanish, so a guest probing for hardware we lack moves on.
 */

export interface BusDevice {
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
}

interface Range {
  base: number;
  len: number;
  dev: BusDevice;
}

export class Bus {
  readonly #ranges: Range[] = [];

  /** Claim `[base, base + len)` for `dev`; ranges must not overlap. */
  add(base: number, len: number, dev: BusDevice): void {
    for (const r of this.#ranges) {
      if (base < r.base + r.len && r.base < base + len) {
        throw new RangeError(`Bus range 0x${base.toString(16)}+${len} overlaps 0x${r.base.toString(16)}+${r.len}`);
      }
    }
    this.#ranges.push({ base, len, dev });
  }

  #find(addr: number): Range | undefined {
    for (const r of this.#ranges) if (addr >= r.base && addr < r.base + r.len) return r;
    return undefined;
  }

  read(addr: number, size: number): number {
    const r = this.#find(addr);
    if (!r) return size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    return r.dev.read(addr - r.base, size);
  }

  write(addr: number, size: number, value: number): void {
    const r = this.#find(addr);
    if (r) r.dev.write(addr - r.base, size, value);
  }
}
