/**
 * The pure parts of scripts/bench/common.ts that every benchmark's report
 * rests on: medians and ranges, and the markdown table.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { markdownTable, median, stats } from "./common.ts";

test("median() of odd and even counts, unsorted input left alone; NaN for none", () => {
  const xs = [5, 1, 3];
  assert.equal(median(xs), 3);
  assert.deepEqual(xs, [5, 1, 3]);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.ok(Number.isNaN(median([])));
  assert.deepEqual(stats([7, 2, 9]), { med: 7, min: 2, max: 9, n: 3 });
});

test("markdownTable() pads every column to its widest cell, the first left, the rest right", () => {
  const t = markdownTable(["metric", "a", "ratio"], [["ping", "12.5 (10–15)", "1.9×"], ["guest → host TCP", "7", "–"]]);
  assert.deepEqual(t, [
    "| metric           |            a | ratio |",
    "|------------------|-------------:|------:|",
    "| ping             | 12.5 (10–15) |  1.9× |",
    "| guest → host TCP |            7 |     – |",
  ]);
});

test("markdownTable() escapes a pipe inside a cell, so a shell pipeline stays one cell", () => {
  const [, , row] = markdownTable(["command", "ms"], [["find . | wc -l", "3"]]);
  assert.equal(row, "| find . \\| wc -l |  3 |");
});
