/**
 * The bytes of a kernel or an initrd, wherever they are: in memory, or in a
 * file that the loader reads piece by piece straight into guest RAM. A
 * 45 MB vmlinux read whole into a buffer and then copied into the guest
 * costs two copies and as many page faults on the host; read into place it
 * costs one copy, into memory the guest needs anyway.
 */
import type { GuestMemory } from "../vm/memory.ts";

/** A file the loader reads from (vm/ gives it the means: see loop/machine.ts). */
export interface ImageFile {
  readonly size: number;
  /** Bytes [offset, offset + len) of the file (len clipped at its end): for headers. */
  read(offset: number, len: number): Uint8Array;
  /**
   * Bytes [offset, offset + len) of the file into guest RAM at gpa, which
   * nothing has written yet (a new VM's, all zeros): where the file has
   * holes, the RAM may be left as it is (loop/machine.ts reads the data alone).
   */
  readInto(mem: GuestMemory, gpa: number, len: number, offset: number): void;
}

export type ImageSource = Uint8Array | ImageFile;

export function imageSize(src: ImageSource): number {
  return src instanceof Uint8Array ? src.length : src.size;
}

/** Up to `len` bytes from the start: all of it for bytes in memory. */
export function imageHead(src: ImageSource, len: number): Uint8Array {
  return src instanceof Uint8Array ? src : src.read(0, len);
}

/** Bytes [offset, offset + len) of the image into guest RAM at gpa. */
export function imageInto(mem: GuestMemory, gpa: number, src: ImageSource, offset: number, len: number): void {
  if (src instanceof Uint8Array) mem.write(gpa, src.subarray(offset, offset + len));
  else src.readInto(mem, gpa, len, offset);
}
