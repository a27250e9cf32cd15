/**
 * A spinlock in one Int32 word of memory shared between threads, for device
 * state that several Workers touch (the UART's registers, a virtio-mmio
 * register file).
 *
 * It spins rather than sleeps: the state sits over a plain ArrayBuffer from
 * FFI, where Atomics.wait is not allowed, and a holder keeps it only for a
 * few hundred nanoseconds. The compareExchange that takes it and the store
 * that frees it are sequentially consistent, so plain reads and writes made
 * while holding it are ordered between threads. A thread killed while it
 * holds the lock leaves it held for good, so Workers are asked to stop,
 * never terminated in the middle of an access.
 */
export function withSpinLock<T>(state: Int32Array, word: number, f: () => T): T {
  while (Atomics.compareExchange(state, word, 0, 1) !== 0) { /* spin: held for a few hundred ns */ }
  try {
    return f();
  } finally {
    Atomics.store(state, word, 0);
  }
}
