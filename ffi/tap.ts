/**
 * TAP devices (Linux `Documentation/networking/tuntap.rst`): a virtual
 * Ethernet link whose other end is a file descriptor. Each read(2) gives one
 * frame the host sent to the link, each write(2) sends one.
 *
 * vmm opens the TAP with IFF_VNET_HDR: every frame then carries a
 * `struct virtio_net_hdr` in front, the very header virtio-net puts before
 * each frame in the ring, so checksum and segmentation offloads pass between
 * guest and host kernel untouched (TUNSETOFFLOAD says which ones the guest
 * takes). TUNSETVNETHDRSZ 12 is the virtio 1.x header with num_buffers.
 */
import { check, close, errno, libc, NativeBuf, O_CLOEXEC, O_NONBLOCK, O_RDWR, open } from "./libc.ts";
import { SysError } from "./errno.ts";
import { _IOC } from "./kvm.ts";

const IOC_WRITE = 1, IOC_READ = 2, T = 0x54; // 'T'
export const TUNSETIFF = _IOC(IOC_WRITE, T, 202, 4);
export const TUNGETIFF = _IOC(IOC_READ, T, 210, 4);
export const TUNSETOFFLOAD = _IOC(IOC_WRITE, T, 208, 4);
export const TUNSETVNETHDRSZ = _IOC(IOC_WRITE, T, 216, 4);
export const SIOCGIFMTU = 0x8921;
export const SIOCGIFHWADDR = 0x8927;

export const IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_VNET_HDR = 0x4000;
export const TUN_F_CSUM = 0x01, TUN_F_TSO4 = 0x02, TUN_F_TSO6 = 0x04, TUN_F_TSO_ECN = 0x08;
/** struct ifreq: a 16-byte name, then a union (flags: short; mtu: int) — 40 bytes. */
const IFREQ_SIZE = 40, IFNAMSIZ = 16;
const AF_INET = 2, SOCK_DGRAM = 2;
/** The virtio-net header TAP and ring share (virtio 1.2 §5.1.6: with VERSION_1 it has num_buffers). */
export const VNET_HDR_SIZE = 12;

function ifreq(name: string): NativeBuf {
  const enc = new TextEncoder().encode(name);
  const b = NativeBuf.alloc(IFREQ_SIZE);
  b.bytes.set(enc);
  return b;
}

/** A TAP name the kernel takes: 1–15 bytes, no '/', whitespace, ':' or NUL (which would end it early). */
export function validTapName(name: string): boolean {
  const n = new TextEncoder().encode(name).length;
  return n >= 1 && n < IFNAMSIZ && !/[\s/:\0]/.test(name) && name !== "." && name !== "..";
}

export interface Tap {
  fd: number;
  name: string;
  mtu: number;
}

/**
 * Attach to the TAP `name` (or create it, when vmm may: CAP_NET_ADMIN;
 * `name` with `%d` creates the next free one, whose name is returned) with
 * virtio-net headers. The fd is non-blocking: the receive Worker reads
 * until EAGAIN and then sleeps in poll(2). Throws SysError naming the step
 * that failed.
 */
export function openTap(name: string): Tap {
  const fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK, 0, "open /dev/net/tun");
  const req = ifreq(name), hdr = NativeBuf.alloc(4);
  try {
    req.view.setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
    check("TUNSETIFF", libc.ioctl(fd, BigInt(TUNSETIFF), req.addr));
    // The kernel writes back the link's name: a NAME with %d ("vmm%d") asks it to pick a free one.
    const nul = req.bytes.indexOf(0);
    const actual = new TextDecoder().decode(req.bytes.subarray(0, nul >= 0 && nul < IFNAMSIZ ? nul : IFNAMSIZ));
    hdr.view.setInt32(0, VNET_HDR_SIZE, true);
    check("TUNSETVNETHDRSZ", libc.ioctl(fd, BigInt(TUNSETVNETHDRSZ), hdr.addr));
    return { fd, name: actual, mtu: tapMtu(actual) };
  } catch (e) {
    close(fd);
    throw e;
  } finally {
    req.free();
    hdr.free();
  }
}

/** The link's MTU (SIOCGIFMTU on any socket); 1500 when it cannot be read. */
export function tapMtu(name: string): number {
  const s = libc.socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0) return 1500;
  const req = ifreq(name);
  try {
    if (libc.ioctl(s, BigInt(SIOCGIFMTU), req.addr) < 0) return 1500;
    return req.view.getInt32(IFNAMSIZ, true);
  } finally {
    req.free();
    close(s);
  }
}

/** Which offloads the TAP may hand us (TUN_F_* bits): what the guest's driver takes. */
export function setTapOffload(fd: number, flags: number): void {
  if (libc.ioctl(fd, BigInt(TUNSETOFFLOAD), BigInt(flags >>> 0)) < 0) throw new SysError("TUNSETOFFLOAD", errno());
}
