/**
 * errno names and SysError, the error every failed system call becomes.
 *
 * A failed call reads as `KVM_CREATE_VM: EACCES (permission denied)`: the
 * call, then the errno, never a bare -1.
 */

/** Linux x86-64 errno values vmm may meet (asm-generic/errno-base.h, errno.h). */
export const ERRNO: Record<number, [string, string]> = {
  1: ["EPERM", "operation not permitted"],
  2: ["ENOENT", "no such file or directory"],
  3: ["ESRCH", "no such process"],
  4: ["EINTR", "interrupted system call"],
  5: ["EIO", "input/output error"],
  6: ["ENXIO", "no such device or address"],
  7: ["E2BIG", "argument list too long"],
  9: ["EBADF", "bad file descriptor"],
  11: ["EAGAIN", "resource temporarily unavailable"],
  12: ["ENOMEM", "cannot allocate memory"],
  13: ["EACCES", "permission denied"],
  14: ["EFAULT", "bad address"],
  16: ["EBUSY", "device or resource busy"],
  17: ["EEXIST", "file exists"],
  19: ["ENODEV", "no such device"],
  20: ["ENOTDIR", "not a directory"],
  21: ["EISDIR", "is a directory"],
  22: ["EINVAL", "invalid argument"],
  24: ["EMFILE", "too many open files"],
  25: ["ENOTTY", "inappropriate ioctl for device"],
  27: ["EFBIG", "file too large"],
  28: ["ENOSPC", "no space left on device"],
  30: ["EROFS", "read-only file system"],
  32: ["EPIPE", "broken pipe"],
  34: ["ERANGE", "result too large"],
  36: ["ENAMETOOLONG", "file name too long"],
  38: ["ENOSYS", "function not implemented"],
  40: ["ELOOP", "too many levels of symbolic links"],
  77: ["EBADFD", "file descriptor in bad state"],
  95: ["EOPNOTSUPP", "operation not supported"],
  110: ["ETIMEDOUT", "timed out"],
};

/**
 * errno values by name, the one place vmm spells them: `E.EINTR` is 4.
 * Built from the table above so a name and its number cannot disagree.
 */
export const E = Object.freeze(Object.fromEntries(Object.entries(ERRNO).map(([n, [name]]) => [name, Number(n)]))) as Readonly<
  Record<(typeof ERRNO_NAMES)[number], number>
>;
/** The names E knows, checked against ERRNO by ffi/errno_test.ts. */
const ERRNO_NAMES = [
  "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "ENXIO", "E2BIG", "EBADF", "EAGAIN", "ENOMEM", "EACCES", "EFAULT",
  "EBUSY", "EEXIST", "ENODEV", "ENOTDIR", "EISDIR", "EINVAL", "EMFILE", "ENOTTY", "EFBIG", "ENOSPC", "EROFS", "EPIPE",
  "ERANGE", "ENAMETOOLONG", "ENOSYS", "ELOOP", "EBADFD", "EOPNOTSUPP", "ETIMEDOUT",
] as const;

/** Symbolic name of an errno value (`EACCES`), or `errno N`. */
export function errnoName(errno: number): string {
  return ERRNO[errno]?.[0] ?? `errno ${errno}`;
}

/** A failed system call: which call, and errno. */
export class SysError extends Error {
  readonly call: string;
  readonly errno: number;
  constructor(call: string, errno: number) {
    const e = ERRNO[errno];
    super(e ? `${call}: ${e[0]} (${e[1]})` : `${call}: errno ${errno}`);
    this.name = "SysError";
    this.call = call;
    this.errno = errno;
  }
  /** The errno's symbolic name, e.g. `EINTR`. */
  get code(): string {
    return errnoName(this.errno);
  }
}
