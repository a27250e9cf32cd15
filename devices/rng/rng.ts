/**
 * virtio-rng, the entropy device (virtio 1.2 §5.4): one queue whose chains
 * are writable buffers the device fills with random bytes. vmm fills them
 * straight from the host kernel's getrandom(2), into guest RAM by host
 * address: no copy, and no device-specific features or configuration.
 */
import { getrandom } from "../../ffi/libc.ts";
import type { GuestMemory } from "../../vm/memory.ts";
import type { Chain, Virtqueue } from "../virtio/ring.ts";
import { type QueueHandler, serveAll } from "../virtio/queue_handler.ts";

export const VIRTIO_ID_ENTROPY = 4;
/** A driver may hand us a huge buffer; fill at most this much per request (Linux asks for ≤ 64 bytes at a time). */
export const RNG_MAX_REQUEST = 64 * 1024;

export class RngQueue implements QueueHandler {
  readonly #mem: GuestMemory;
  constructor(mem: GuestMemory) {
    this.#mem = mem;
  }

  kick(vq: Virtqueue): boolean {
    return serveAll(vq, (chain) => this.serve(chain));
  }

  /** Fill the chain's writable buffers; returns how many bytes it got. */
  serve(chain: Chain): number {
    let left = RNG_MAX_REQUEST;
    let done = 0;
    for (const s of chain.writable) {
      const len = Math.min(s.len, left);
      if (len === 0) break;
      // getrandom never returns less than asked for up to 256 bytes, and on
      // an initialised pool not for larger requests either; count what came.
      const got = getrandom(this.#mem.hostAddress(s.gpa, len), len);
      done += got;
      left -= got;
      if (got < len) break;
    }
    return done;
  }
}
