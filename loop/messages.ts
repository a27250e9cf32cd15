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
