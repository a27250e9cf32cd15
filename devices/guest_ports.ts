/**
 * vmm's own two I/O ports, the guest→host path for `vmm run`.
 *
 * The guest's init (guest/init.sh) writes through /dev/port:
 * - 0xF4, the exit port: one byte, the exit status of the command it ran;
 *   vmm ends with that status (QEMU's isa-debug-exit sits at the same port).
 * - 0xF5, the ready port: any byte, once, when init is up, so vmm can time
 *   boots without reading the console.
 */

export const EXIT_PORT = 0xf4;
export const READY_PORT = 0xf5;

export class GuestPorts {
  readonly base = EXIT_PORT;
  readonly len = 2;
  readonly #on: { exit(code: number): void; ready(): void };
  constructor(on: { exit(code: number): void; ready(): void }) {
    this.#on = on;
  }
  read(_offset: number, _size: number): number {
    return 0;
  }
  write(offset: number, _size: number, value: number): void {
    if (offset === 0) this.#on.exit(value & 0xff);
    else this.#on.ready();
  }
}
