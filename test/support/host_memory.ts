/**
 * Guest RAM for device tests that hand guest addresses to the kernel
 * (preadv, writev, read): it must be real host memory, so GuestMemory gets
 * a host mapping and its base address.
 *
 * Two regions: low RAM at gpa 0, and a second at 256 MiB backed by the
 * second half of the mapping, so a gpa there is not a mapping offset and
 * a buffer placed in it catches any translation that forgets the region.
 */
import { hostView, mmapAnon } from "../../ffi/libc.ts";
import { GuestMemory, type MemoryRegion } from "../../vm/memory.ts";

const MiB = 1 << 20;
const HOST_SIZE = 4 * MiB;
/** The first gpa of the high region (2 MiB). */
export const HIGH_GPA = 0x1000_0000;
const REGIONS: MemoryRegion[] = [
  { gpa: 0, size: 2 * MiB, offset: 0 },
  { gpa: HIGH_GPA, size: 2 * MiB, offset: 2 * MiB },
];
let hostAddr = 0n; // mapped on first use, kept for the whole test file

/** Guest RAM with fresh (zeroed) contents; every call shares one mapping. */
export function hostGuestMemory(): GuestMemory {
  if (hostAddr === 0n) hostAddr = mmapAnon(HOST_SIZE);
  const bytes = hostView(hostAddr, HOST_SIZE);
  bytes.fill(0);
  return new GuestMemory(bytes, REGIONS, hostAddr);
}
