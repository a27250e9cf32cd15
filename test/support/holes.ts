/**
 * Sparse files in tests: whether a directory's file system keeps holes, and
 * where a file holds data. A test of a sparse write asserts its holes only
 * where the file system has them; elsewhere every file reads as all data.
 */
import { statSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { close, dataExtents, O_RDONLY, open } from "../../ffi/libc.ts";

/** The byte ranges of the file at `path` that hold data (ffi/libc.ts dataExtents over all of it). */
export function fileExtents(path: string): [number, number][] {
  const fd = open(path, O_RDONLY);
  try {
    return dataExtents(fd, 0, statSync(path).size, path);
  } finally {
    close(fd);
  }
}

/** Whether the file system of `dir` keeps holes and reports them: a file of 1 MiB never written holds no data. */
export function hasHoles(dir: string): boolean {
  const probe = join(dir, ".holes-probe");
  writeFileSync(probe, "");
  try {
    truncateSync(probe, 1 << 20);
    return fileExtents(probe).length === 0;
  } finally {
    unlinkSync(probe);
  }
}
