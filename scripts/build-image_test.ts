/**
 * scripts/build-image.ts without a build: reading the Containerfile and
 * finding the glibc files of an executable. The image itself is built and
 * run under runc in test/e2e/oci_test.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { IMAGE_EXE, linkedFiles, parseContainerfile } from "./build-image.ts";

const containerfile = readFileSync(new URL("../Containerfile", import.meta.url), "utf8");

test("parseContainerfile() reads the repository's Containerfile", () => {
  const r = parseContainerfile(containerfile);
  assert.deepEqual(r.copies, [{ src: "rootfs/", dest: "/" }]);
  assert.deepEqual(r.entrypoint, [IMAGE_EXE]);
  assert.deepEqual(r.cmd, ["--help"]);
  assert.deepEqual(r.env, ["PATH=/usr/bin"]);
});

test("parseContainerfile() rejects what it would otherwise ignore", () => {
  const base = "FROM scratch\nCOPY rootfs/ /\n";
  assert.throws(() => parseContainerfile(base + "RUN true\n"), { name: "SyntaxError", message: /:3: RUN is not supported/ });
  assert.throws(() => parseContainerfile(base + "ENTRYPOINT /usr/bin/vmm\n"), /ENTRYPOINT must be a JSON array/);
  assert.throws(() => parseContainerfile("FROM debian:bookworm\n"), /only one FROM scratch/);
  assert.throws(() => parseContainerfile("COPY a /\n"), /COPY before FROM/);
  assert.throws(() => parseContainerfile(base + "ENV A=1 \\\n"), /line continuations/);
  assert.throws(() => parseContainerfile(base + "COPY --chown=1 a /\n"), /one source and one destination/);
});

test("linkedFiles() names the dynamic loader and libc of a glibc executable", () => {
  const files = linkedFiles("/bin/ls");
  assert.ok(files.some((f) => /\/ld-linux[^/]*\.so\.\d$/.test(f)), files.join(" "));
  assert.ok(files.some((f) => /\/libc\.so\.6$/.test(f)), files.join(" "));
  assert.ok(files.every((f) => f.startsWith("/")));
});
