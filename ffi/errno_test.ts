import { test } from "node:test";
import assert from "node:assert/strict";
import { E, ERRNO, errnoName } from "./errno.ts";

test("E names every errno in ERRNO and nothing else, with the same numbers", () => {
  assert.deepEqual(Object.entries(E).map(([k, v]) => [v, k]).sort((a, b) => (a[0] as number) - (b[0] as number)),
    Object.entries(ERRNO).map(([n, [name]]) => [Number(n), name]));
  assert.equal(E.EINTR, 4);
  assert.equal(errnoName(E.EBADFD), "EBADFD");
});
