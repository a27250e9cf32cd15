/**
 * `--drive` parsing and opening real image files (devices/blk/disk.ts): the
 * sizes, types and locks a VM may be refused with, each as one ConfigError.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { closeDisk, defaultDriveId, type Disk, DRIVE_MAX_QUEUES, openDisk, parseDriveSpec } from "./disk.ts";
import { ConfigError } from "../../vm/vm.ts";
import { libc, O_RDONLY, O_RDWR } from "../../ffi/libc.ts";

const F_GETFD = 1, F_GETFL = 3, FD_CLOEXEC = 1, O_ACCMODE = 3;
const isRoot = process.getuid?.() === 0;

/** A temp dir with `disk.img` of `size` bytes; removed after `fn`. */
function withImage(size: number, fn: (path: string, dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "vmm-disk-"));
  try {
    const path = join(dir, "disk.img");
    writeFileSync(path, new Uint8Array(0));
    truncateSync(path, size);
    fn(path, dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function throwsConfig(fn: () => unknown, message: string | RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    if (typeof message === "string") assert.equal(e.message, message);
    else assert.match(e.message, message);
    assert.ok(!e.message.includes("\n"), "one line");
    return true;
  });
}

// ---- parseDriveSpec ----

test("parseDriveSpec() reads a bare path as a writable drive without an id", () => {
  assert.deepEqual(parseDriveSpec("disk.img"), { path: "disk.img", readOnly: false });
  assert.deepEqual(parseDriveSpec("/var/lib/vm/a b.img"), { path: "/var/lib/vm/a b.img", readOnly: false });
});

test("parseDriveSpec() reads readonly, its synonym ro, and id in any order", () => {
  assert.deepEqual(parseDriveSpec("disk.img,readonly"), { path: "disk.img", readOnly: true });
  assert.deepEqual(parseDriveSpec("disk.img,ro"), { path: "disk.img", readOnly: true });
  assert.deepEqual(parseDriveSpec("disk.img,id=root"), { path: "disk.img", readOnly: false, id: "root" });
  assert.deepEqual(parseDriveSpec("disk.img,id=root,ro"), { path: "disk.img", readOnly: true, id: "root" });
  assert.deepEqual(parseDriveSpec("disk.img,id=a=b"), { path: "disk.img", readOnly: false, id: "a=b" });
  assert.deepEqual(parseDriveSpec("d,id=12345678901234567890"), { path: "d", readOnly: false, id: "12345678901234567890" });
});

test("parseDriveSpec() reads queues=N, a whole number from 1 to DRIVE_MAX_QUEUES", () => {
  assert.deepEqual(parseDriveSpec("d,queues=2"), { path: "d", readOnly: false, queues: 2 });
  assert.equal(parseDriveSpec(`d,ro,queues=${DRIVE_MAX_QUEUES}`).queues, DRIVE_MAX_QUEUES);
  for (const bad of ["queues", "queues=", "queues=0", "queues=1.5", "queues=-1", "queues=0x2", `queues=${DRIVE_MAX_QUEUES + 1}`]) {
    throwsConfig(() => parseDriveSpec(`d,${bad}`), `--drive d,${bad}: queues takes a whole number from 1 to ${DRIVE_MAX_QUEUES} (queues=N)`);
  }
  throwsConfig(() => parseDriveSpec("d,queues=1,queues=2"), '--drive d,queues=1,queues=2: option "queues" given twice');
});

test("parseDriveSpec() rejects an empty path", () => {
  throwsConfig(() => parseDriveSpec(""), "--drive : empty path");
  throwsConfig(() => parseDriveSpec(",readonly"), "--drive ,readonly: empty path");
});

test("parseDriveSpec() rejects unknown options, naming the input", () => {
  throwsConfig(() => parseDriveSpec("disk.img,foo"), '--drive disk.img,foo: unknown option "foo"');
  throwsConfig(() => parseDriveSpec("disk.img,cache=none"), '--drive disk.img,cache=none: unknown option "cache"');
  throwsConfig(() => parseDriveSpec("disk.img,"), "--drive disk.img,: empty option (a stray comma?)");
});

test("parseDriveSpec() rejects a key given twice, synonyms included", () => {
  throwsConfig(() => parseDriveSpec("d,ro,readonly"), '--drive d,ro,readonly: option "readonly" given twice');
  throwsConfig(() => parseDriveSpec("d,ro,ro"), '--drive d,ro,ro: option "readonly" given twice');
  throwsConfig(() => parseDriveSpec("d,id=a,id=b"), '--drive d,id=a,id=b: option "id" given twice');
});

test("parseDriveSpec() rejects a value on readonly and a missing or empty id", () => {
  throwsConfig(() => parseDriveSpec("d,readonly=on"), '--drive d,readonly=on: option "readonly" takes no value');
  throwsConfig(() => parseDriveSpec("d,id"), '--drive d,id: option "id" needs a value (id=NAME)');
  throwsConfig(() => parseDriveSpec("d,id="), "--drive d,id=: empty id");
});

test("parseDriveSpec() rejects an id longer than the 20-byte virtio-blk serial, counting UTF-8 bytes", () => {
  throwsConfig(() => parseDriveSpec("d,id=123456789012345678901"), "--drive d,id=123456789012345678901: id is 21 bytes, virtio-blk allows at most 20");
  const e11 = "é".repeat(11); // 11 characters, 22 bytes
  throwsConfig(() => parseDriveSpec(`d,id=${e11}`), /id is 22 bytes/);
  assert.equal(parseDriveSpec(`d,id=${"é".repeat(10)}`).id, "é".repeat(10));
});

test("defaultDriveId() is the basename cut to 20 bytes at a character boundary", () => {
  assert.equal(defaultDriveId("/srv/images/root.img"), "root.img");
  assert.equal(defaultDriveId("root.img"), "root.img");
  assert.equal(defaultDriveId("/dev/vdb/"), "vdb");
  assert.equal(defaultDriveId("/x/a-very-long-image-name.qcow.raw"), "a-very-long-image-na");
  assert.equal(defaultDriveId("/x/" + "é".repeat(15)), "é".repeat(10)); // 20 bytes, no half character
  assert.equal(defaultDriveId("/x/" + "a" + "é".repeat(15)), "a" + "é".repeat(9)); // 19 bytes: the 10th é would make 21
});

// ---- openDisk ----

test("openDisk() opens an image read-write with O_CLOEXEC and reports its size and default id", () => {
  withImage(1 << 20, (path) => {
    const disk = openDisk({ path, readOnly: false });
    try {
      assert.equal(disk.sizeBytes, 1 << 20);
      assert.equal(disk.path, path);
      assert.equal(disk.readOnly, false);
      assert.equal(disk.id, "disk.img");
      assert.equal(Number(libc.fcntl(disk.fd, F_GETFL, 0n)) & O_ACCMODE, O_RDWR);
      assert.equal(Number(libc.fcntl(disk.fd, F_GETFD, 0n)) & FD_CLOEXEC, FD_CLOEXEC);
      assert.equal(Number(libc.fcntl(disk.fd, F_GETFL, 0n)) & 0o4000, 0, "O_NONBLOCK cleared after the type check");
    } finally {
      closeDisk(disk);
    }
  });
});

test("openDisk() opens a read-only drive O_RDONLY and keeps an explicit id", () => {
  withImage(4096, (path) => {
    const disk = openDisk({ path, readOnly: true, id: "boot" });
    try {
      assert.equal(Number(libc.fcntl(disk.fd, F_GETFL, 0n)) & O_ACCMODE, O_RDONLY);
      assert.equal(disk.id, "boot");
      assert.equal(disk.readOnly, true);
    } finally {
      closeDisk(disk);
    }
  });
});

test("openDisk() refuses a missing file", () => {
  withImage(512, (_, dir) => {
    const path = join(dir, "nope.img");
    throwsConfig(() => openDisk({ path, readOnly: false }), `--drive ${path}: no such file`);
    throwsConfig(() => openDisk({ path, readOnly: true }), `--drive ${path}: no such file`);
  });
});

test("openDisk() refuses a directory, writable or read-only", () => {
  withImage(512, (_, dir) => {
    const sub = join(dir, "sub");
    mkdirSync(sub);
    throwsConfig(() => openDisk({ path: sub, readOnly: false }), `--drive ${sub}: is a directory, not a disk image`);
    throwsConfig(() => openDisk({ path: sub, readOnly: true }), `--drive ${sub}: is a directory, not a disk image`);
  });
});

test("openDisk() refuses a character device", () => {
  throwsConfig(() => openDisk({ path: "/dev/null", readOnly: true }), "--drive /dev/null: is not a regular file or block device");
  throwsConfig(() => openDisk({ path: "/dev/null", readOnly: false }), "--drive /dev/null: is not a regular file or block device");
});

test("openDisk() refuses a FIFO without waiting for a writer", () => {
  withImage(512, (_, dir) => {
    const path = join(dir, "fifo");
    const made = spawnSync("mkfifo", [path]);
    if (made.status !== 0) return; // no mkfifo(1): nothing to test with
    throwsConfig(() => openDisk({ path, readOnly: true }), `--drive ${path}: is not a regular file or block device`);
  });
});

test("openDisk() refuses an empty image and one that is not whole sectors", () => {
  withImage(0, (path) => {
    throwsConfig(() => openDisk({ path, readOnly: false }), `--drive ${path}: image is empty`);
  });
  withImage(1000, (path) => {
    throwsConfig(
      () => openDisk({ path, readOnly: true }),
      `--drive ${path}: size 1000 bytes is not a multiple of 512; resize it (truncate -s 1024)`,
    );
  });
});

test("openDisk() refuses a writable image another open holds, as QEMU's image locking does", () => {
  // flock locks belong to an open file description, so a second open in the
  // same process conflicts just as another VM would.
  withImage(4096, (path) => {
    const first = openDisk({ path, readOnly: false });
    try {
      throwsConfig(() => openDisk({ path, readOnly: false }), `--drive ${path}: is in use by another process (another VM?)`);
      throwsConfig(() => openDisk({ path, readOnly: true }), `--drive ${path}: is open for writing by another process (another VM?)`);
    } finally {
      closeDisk(first);
    }
    closeDisk(openDisk({ path, readOnly: false })); // closing released the lock
  });
});

test("openDisk() lets read-only drives share an image but keeps writers out", () => {
  withImage(4096, (path) => {
    const a = openDisk({ path, readOnly: true });
    const b = openDisk({ path, readOnly: true });
    try {
      throwsConfig(() => openDisk({ path, readOnly: false }), /is in use by another process/);
    } finally {
      closeDisk(a);
      closeDisk(b);
    }
  });
});

test("openDisk() refuses a file it may not write, suggesting readonly", () => {
  // Root ignores file modes; a read-only sysfs attribute still refuses to open for writing.
  if (isRoot) {
    const path = "/sys/devices/system/cpu/online";
    throwsConfig(() => openDisk({ path, readOnly: false }), `--drive ${path}: permission denied (add ,readonly to use it read-only)`);
    return;
  }
  withImage(4096, (path) => {
    chmodSync(path, 0o444);
    throwsConfig(() => openDisk({ path, readOnly: false }), `--drive ${path}: permission denied (add ,readonly to use it read-only)`);
    closeDisk(openDisk({ path, readOnly: true }));
    chmodSync(path, 0);
    throwsConfig(() => openDisk({ path, readOnly: true }), `--drive ${path}: permission denied`);
  });
});

test("closeDisk() closes the fd", () => {
  withImage(512, (path) => {
    const disk: Disk = openDisk({ path, readOnly: true });
    closeDisk(disk);
    assert.equal(Number(libc.fcntl(disk.fd, F_GETFD, 0n)), -1);
  });
});
