import type { VirtioSpec } from "../devices/virtio/device.ts";

/**
 * The init message each Worker starts from: plain data only (fds as numbers,
 * host addresses as bigint), since FFI handles cannot cross threads.
 */

export interface VcpuInit {
  kind: "vcpu";
  id: number;
  vcpuFd: number;
  vmFd: number;
  /** Host address and size of this vCPU's kvm_run mapping (mapped by the main thread). */
  runAddr: bigint;
  runSize: number;
  /** Host address of the block described in loop/shared.ts. */
  shared: bigint;
  /** eventfd the main thread polls. */
  ctlFd: number;
  /** Where guest console output goes. */
  outFd: number;
  /** Guest RAM: host address, size and regions (for the MMIO devices of later issues). */
  memAddr: bigint;
  memSize: number;
  regions: { gpa: number; size: number; offset: number }[];
  /** The virtio-mmio devices this vCPU answers for. */
  virtio: VirtioDeviceInit[];
}

/** One virtio device's wiring, as the main thread set it up (loop/virtio.ts). */
export interface VirtioDeviceInit {
  spec: VirtioSpec;
  /** For log lines: "virtio-blk vda (disk.img)". */
  name: string;
  /** Guest physical base of its MMIO window. */
  base: number;
  /** Byte offset of its block in the shared block (loop/shared.ts). */
  block: number;
  /** Per queue: the ioeventfd KVM signals on a QueueNotify write of that index. */
  ioFds: number[];
  /** Per queue: the eventfd that wakes the queue's Worker to look at its state word. */
  wakeFds: number[];
  /** Queue Workers write it after a state change a waiter asked for. */
  ackFd: number;
  /** Writing it raises the device's interrupt (KVM_IRQFD). */
  irqFd: number;
}

/** A queue Worker's init. */
export interface QueueInit {
  kind: "queue";
  device: VirtioDeviceInit;
  queue: number;
  shared: bigint;
  ctlFd: number;
  memAddr: bigint;
  memSize: number;
  regions: { gpa: number; size: number; offset: number }[];
}

export interface StdinInit {
  kind: "stdin";
  vmFd: number;
  shared: bigint;
  ctlFd: number;
  inFd: number;
}

/** What a Worker posts back once it is set up. */
export interface WorkerReady {
  ok: boolean;
  error?: string;
}
