/**
 * cli/args.ts against Node's own `util.parseArgs` (strict, positionals
 * allowed), which vmm used before: the same values, positionals and errors
 * for the command lines vmm takes and the mistakes people make.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseArgs as nodeParseArgs } from "node:util";
import { type OptionSpec, parseArgs } from "./args.ts";

const OPTIONS: Record<string, OptionSpec> = {
  kernel: { type: "string" },
  "kernel-as-is": { type: "boolean" },
  append: { type: "string" },
  drive: { type: "string", multiple: true },
  rw: { type: "string", multiple: true },
  rng: { type: "boolean" },
  verbose: { type: "boolean", short: "v" },
  help: { type: "boolean", short: "h" },
  output: { type: "string", short: "o" },
};

function node(argv: string[]): unknown {
  try {
    const { values, positionals } = nodeParseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    return { values: { ...values }, positionals };
  } catch (e) {
    return { error: (e as Error).name, message: (e as Error).message };
  }
}

function ours(argv: string[]): unknown {
  try {
    return parseArgs(argv, OPTIONS);
  } catch (e) {
    return { error: (e as Error).name, message: (e as Error).message };
  }
}

const CASES: string[][] = [
  [],
  ["boot"],
  ["boot", "--kernel", "/k", "--append", "quiet"],
  ["boot", "--kernel=/k", "--append=a=b c"],
  ["run", "-v", "--", "ls", "-l", "--kernel"],
  ["run", "ls", "-l"],
  ["-vh", "boot"],
  ["boot", "--drive", "a.img", "--drive=b.img,ro", "--rw", "/x"],
  ["boot", "--kernel", "/a", "--kernel", "/b"],
  ["boot", "--frob"],
  ["boot", "--frob=1"],
  ["boot", "-x"],
  ["boot", "--verbose=yes"],
  ["boot", "--kernel"],
  ["boot", "--kernel", "--rng"],
  ["boot", "--append", "-x"],
  ["boot", "-o"],
  ["boot", "-o", "file", "-ofile2"],
  ["boot", "-vo", "f"],
  ["boot", "-", "x"],
  ["boot", "--rng", "--", "--", "-v"],
  ["boot", "--append="],
];

test("parseArgs() gives what node:util's parseArgs gives, values, positionals and errors", () => {
  for (const argv of CASES) assert.deepEqual(ours(argv), node(argv), JSON.stringify(argv));
});
