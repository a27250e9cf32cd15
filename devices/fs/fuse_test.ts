/**
 * The FUSE layouts (devices/fs/fuse.ts) against include/uapi/linux/fuse.h of
 * Linux 6.1: every struct's size, as `sizeof` gives it on x86-64, and the
 * offsets the kernel's code depends on.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import * as F from "./fuse.ts";

test("FUSE struct sizes match include/uapi/linux/fuse.h (7.38, x86-64)", () => {
  const sizes: [string, { SIZE: number }, number][] = [
    ["fuse_in_header", F.IN_HEADER, 40],
    ["fuse_out_header", F.OUT_HEADER, 16],
    ["fuse_attr", F.ATTR, 88],
    ["fuse_entry_out", F.ENTRY_OUT, 128],
    ["fuse_attr_out", F.ATTR_OUT, 104],
    ["fuse_kstatfs", F.KSTATFS, 80],
    ["fuse_init_in", F.INIT_IN, 64],
    ["fuse_init_out", F.INIT_OUT, 64],
    ["fuse_forget_in", F.FORGET_IN, 8],
    ["fuse_batch_forget_in", F.BATCH_FORGET_IN, 8],
    ["fuse_forget_one", F.FORGET_ONE, 16],
    ["fuse_getattr_in", F.GETATTR_IN, 16],
    ["fuse_setattr_in", F.SETATTR_IN, 88],
    ["fuse_mknod_in", F.MKNOD_IN, 16],
    ["fuse_mkdir_in", F.MKDIR_IN, 8],
    ["fuse_rename_in", F.RENAME_IN, 8],
    ["fuse_rename2_in", F.RENAME2_IN, 16],
    ["fuse_link_in", F.LINK_IN, 8],
    ["fuse_open_in", F.OPEN_IN, 8],
    ["fuse_create_in", F.CREATE_IN, 16],
    ["fuse_open_out", F.OPEN_OUT, 16],
    ["fuse_release_in", F.RELEASE_IN, 24],
    ["fuse_flush_in", F.FLUSH_IN, 24],
    ["fuse_read_in", F.READ_IN, 40],
    ["fuse_write_in", F.WRITE_IN, 40],
    ["fuse_write_out", F.WRITE_OUT, 8],
    ["fuse_fsync_in", F.FSYNC_IN, 16],
    ["fuse_getxattr_in", F.GETXATTR_IN, 8],
    ["fuse_getxattr_out", F.GETXATTR_OUT, 8],
    ["fuse_interrupt_in", F.INTERRUPT_IN, 8],
    ["fuse_fallocate_in", F.FALLOCATE_IN, 32],
    ["fuse_lseek_in", F.LSEEK_IN, 24],
    ["fuse_lseek_out", F.LSEEK_OUT, 8],
    ["fuse_dirent (FUSE_NAME_OFFSET)", F.DIRENT, 24],
    ["fuse_direntplus (FUSE_NAME_OFFSET_DIRENTPLUS)", F.DIRENTPLUS, 152],
  ];
  for (const [name, layout, size] of sizes) assert.equal(layout.SIZE, size, name);
});

test("FUSE layouts: every field lies inside its struct, in order, without overlap", () => {
  const layouts = [
    F.IN_HEADER, F.OUT_HEADER, F.ATTR, F.ENTRY_OUT, F.ATTR_OUT, F.KSTATFS, F.INIT_OUT, F.SETATTR_IN, F.READ_IN,
    F.WRITE_IN, F.RELEASE_IN, F.FLUSH_IN, F.FALLOCATE_IN, F.LSEEK_IN, F.CREATE_IN, F.MKNOD_IN, F.RENAME2_IN,
  ];
  for (const l of layouts) {
    const offsets = Object.entries(l).filter(([k]) => k !== "SIZE" && k !== "COMPAT_SIZE").map(([, v]) => v as number);
    for (let i = 1; i < offsets.length; i++) assert.ok(offsets[i] > offsets[i - 1], `${JSON.stringify(l)}: field ${i} out of order`);
    assert.ok(offsets[offsets.length - 1] < l.SIZE, `${JSON.stringify(l)}: last field past SIZE`);
  }
});

test("FUSE offsets the kernel relies on: fuse_in_header, fuse_attr, fuse_entry_out, fuse_setattr_in, fuse_init_out", () => {
  assert.deepEqual([F.IN_HEADER.OPCODE, F.IN_HEADER.UNIQUE, F.IN_HEADER.NODEID, F.IN_HEADER.TOTAL_EXTLEN], [4, 8, 16, 36]);
  assert.deepEqual([F.ATTR.ATIMENSEC, F.ATTR.MODE, F.ATTR.RDEV, F.ATTR.FLAGS], [48, 60, 76, 84]);
  assert.equal(F.ENTRY_OUT.ATTR, 40);
  assert.equal(F.ATTR_OUT.ATTR, 16);
  assert.deepEqual([F.SETATTR_IN.ATIME, F.SETATTR_IN.ATIMENSEC, F.SETATTR_IN.MODE, F.SETATTR_IN.UID, F.SETATTR_IN.GID], [32, 56, 68, 76, 80]);
  assert.deepEqual([F.INIT_OUT.MAX_BACKGROUND, F.INIT_OUT.MAX_WRITE, F.INIT_OUT.TIME_GRAN, F.INIT_OUT.MAX_PAGES, F.INIT_OUT.FLAGS2], [16, 20, 24, 28, 32]);
  assert.equal(F.DIRENTPLUS.DIRENT, F.ENTRY_OUT.SIZE);
});

test("direntSize() and direntplusSize() pad records to 8 bytes (FUSE_DIRENT_ALIGN)", () => {
  assert.equal(F.direntSize(1), 32);
  assert.equal(F.direntSize(8), 32);
  assert.equal(F.direntSize(9), 40);
  assert.equal(F.direntplusSize(1), 160);
  assert.equal(F.direntplusSize(255), 408);
});

test("FUSE opcodes and version match fuse.h", () => {
  assert.deepEqual([F.FUSE_LOOKUP, F.FUSE_FORGET, F.FUSE_INIT, F.FUSE_CREATE, F.FUSE_INTERRUPT, F.FUSE_BATCH_FORGET], [1, 2, 26, 35, 36, 42]);
  assert.deepEqual([F.FUSE_READDIRPLUS, F.FUSE_RENAME2, F.FUSE_LSEEK, F.FUSE_TMPFILE], [44, 45, 46, 51]);
  assert.equal(F.FUSE_KERNEL_VERSION, 7);
  assert.equal(F.FUSE_KERNEL_MINOR_VERSION, 38);
  assert.equal(F.FUSE_OPCODE_NAMES[F.FUSE_READDIRPLUS], "READDIRPLUS");
});
