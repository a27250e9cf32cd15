import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

test("the README shows examples/lifecycle.ts as it is", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const example = readFileSync(new URL("./lifecycle.ts", import.meta.url), "utf8");
  const body = example.slice(example.indexOf("import process")).trim();
  assert.ok(readme.includes(body), "README.md does not contain examples/lifecycle.ts from its imports on");
});
