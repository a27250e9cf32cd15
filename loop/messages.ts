/**
 * The init message each Worker starts from: plain data only (fds as numbers,
 * host addresses as bigint), since FFI handles cannot cross threads.
 */
import type { VirtioSpec } from "../devices/registry.ts";
import type { DeviceModel } from "../devices/virtio/kind.ts";

/** Guest RAM as every thread maps it. */
export interface MemoryInit {
  memAddr: bigint;
  memSize: number;
  regions: { gpa: number; size: number; offset: number }[];
}

export interface VcpuInit extends MemoryInit {
  kind: "vcpu";
  id: number;
  vcpuFd: number;
  vmFd: number;
  /** Host address and size of this vCPU's kvm_run mapping (mapped by the main thread). */
  runAddr: bigint;
  runSize: number;
  /** Host address of the block described in loop/shared.ts. */
  shared: bigint;
  /** eventfd the control loop polls. */
  ctlFd: number;
  /** eventfd this vCPU sleeps on while paused. */
  wakeFd: number;
  /** Where guest console output goes. */
  outFd: number;
  /** The virtio-mmio devices this vCPU answers for. */
  virtio: VirtioDeviceInit[];
}

/** One virtio device's wiring, as the main thread set it up (loop/virtio.ts). */
export interface VirtioDeviceInit {
  spec: VirtioSpec;
  /** What the transport tells the driver (devices/registry.ts describe), worked out once on the main thread. */
  model: DeviceModel;
  /** For log lines: "virtio-blk vda (disk.img)". */
  name: string;
  /** Guest physical base of its MMIO window. */
  base: number;
  /** Byte offset of its block in the shared block (loop/shared.ts). */
  block: number;
  /** Byte offset of its register page in the shared block, mapped read-only over its window; -1: none (loop/virtio.ts). */
  page: number;
  /** Per queue: the ioeventfd KVM signals on a QueueNotify write of that index. */
  ioFds: number[];
  /** Per queue: the eventfd that wakes the queue's Worker to look at its state word. */
  wakeFds: number[];
  /** Queue Workers write it after a state change a waiter asked for. */
  ackFd: number;
  /** Writing it raises the device's interrupt (KVM_IRQFD). */
  irqFd: number;
  /** The ioeventfd that swallows the driver's InterruptACK writes in KVM (all, or of VRING alone); never read (loop/virtio.ts). */
  intAckFd: number;
}

/** A queue Worker's init. */
export interface QueueInit extends MemoryInit {
  kind: "queue";
  device: VirtioDeviceInit;
  /** The queues this Worker serves: one, or all of a device whose kind says `oneWorker`. */
  queues: number[];
  shared: bigint;
  ctlFd: number;
}

/** What the control loop needs, on the main thread (CLI) or its own Worker (library). */
export interface ControlInit {
  kind: "control";
  shared: bigint;
  /** Per vCPU: its kvm_run mapping (for immediate_exit) and its wake eventfd. */
  runAddrs: bigint[];
  runSize: number;
  vcpuWakeFds: number[];
  /** Workers → loop: something ended or changed. */
  ctlFd: number;
  /** Machine → loop: a command is in the mailbox (loop/shared.ts CMD). */
  cmdFd: number;
  /** The signal pipe (SIGINT, SIGTERM), or -1 when the machine does not take signals. */
  sigFd: number;
  /** The serial console's input (vmm's stdin), which the loop feeds to the UART (loop/console_input.ts), or -1. */
  consoleInFd: number;
  /** The VM, for the UART's interrupt. */
  vmFd: number;
  virtio: VirtioDeviceInit[];
  /** The vCPUs and queues come up parked (a machine made from a snapshot): resume them first. */
  resumeFirst?: boolean;
}

/** What the control loop reports, in order. */
export type ControlEvent =
  | { type: "done"; seq: number; ok: boolean; error?: string }
  | { type: "ended"; signalled: number; drainError: string };

/** What a Worker posts back once it is set up. */
export interface WorkerReady {
  ok: boolean;
  error?: string;
}
