/**
 * vmm's command line, parsed as Node's `util.parseArgs` parses it with
 * `strict` and `allowPositionals` (the same options table, the same
 * results, the same messages), without `node:util`: the first `node:` module
 * costs Deno its whole Node layer (ffi/sys.ts).
 *
 * What it takes: `--name value`, `--name=value`, `-x` (a short alias),
 * `-xy` (short booleans together), `-x value` and `-xVALUE` for a short
 * string option; `--` ends the options, and everything after it is a
 * positional, dashes and all. A string option given twice keeps its last
 * value unless it is `multiple`. An option that is not in the table, a
 * boolean given a value, or a string option without one is a TypeError, as
 * Node's are (bin/vmm.ts turns them into usage errors).
 */

export interface OptionSpec {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
}

/** What an option's value is: a string or true, or a list of them when `multiple`. */
type ValueOf<O extends OptionSpec> = O["type"] extends "boolean" ? (O["multiple"] extends true ? boolean[] : boolean)
  : (O["multiple"] extends true ? string[] : string);

/** Each option's value, where it was given. */
export type ParsedValues<T extends Record<string, OptionSpec>> = { [K in keyof T]?: ValueOf<T[K]> };

/** Parse `argv` against `options`; every argument that is not an option is a positional. */
export function parseArgs<T extends Record<string, OptionSpec>>(argv: readonly string[], options: T): { values: ParsedValues<T>; positionals: string[] } {
  const values: Record<string, string | boolean | (string | boolean)[]> = {};
  const positionals: string[] = [];
  const byShort = new Map(Object.entries(options).flatMap(([name, o]) => (o.short ? [[o.short, name]] : [])));
  const set = (name: string, v: string | boolean) => {
    if (options[name].multiple) values[name] = [...((values[name] as (string | boolean)[] | undefined) ?? []), v];
    else values[name] = v;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const o = options[name];
      if (!o) throw unknown(arg.slice(0, eq < 0 ? undefined : eq));
      if (o.type === "boolean") {
        if (eq >= 0) throw new TypeError(`Option '${label(name, o)}' does not take an argument`);
        set(name, true);
      } else if (eq >= 0) {
        set(name, arg.slice(eq + 1));
      } else {
        const v = argv[i + 1];
        if (v === undefined) throw missing(name, o);
        if (v.startsWith("-")) throw ambiguous(`--${name}`);
        set(name, v);
        i++;
      }
      continue;
    }
    if (arg.startsWith("-") && arg !== "-") {
      for (let j = 1; j < arg.length; j++) {
        const name = byShort.get(arg[j]);
        if (!name) throw unknown(`-${arg[j]}`);
        const o = options[name];
        if (o.type === "boolean") {
          set(name, true);
          continue;
        }
        if (j + 1 < arg.length) {
          set(name, arg.slice(j + 1)); // -xVALUE
        } else {
          const v = argv[i + 1];
          if (v === undefined) throw missing(name, o);
          if (v.startsWith("-")) throw ambiguous(`-${arg[j]}`);
          set(name, v);
          i++;
        }
        break;
      }
      continue;
    }
    positionals.push(arg);
  }
  return { values: values as ParsedValues<T>, positionals };
}

function unknown(opt: string): TypeError {
  return new TypeError(
    `Unknown option '${opt}'. To specify a positional argument starting with a '-', place it at the end of the command after '--', as in '-- ${JSON.stringify(opt)}`,
  );
}

function missing(name: string, o: OptionSpec): TypeError {
  return new TypeError(`Option '${label(name, o)} <value>' argument missing`);
}

function ambiguous(opt: string): TypeError {
  return new TypeError(
    `Option '${opt}' argument is ambiguous.\nDid you forget to specify the option argument for '${opt}'?\nTo specify an option argument starting with a dash use '${opt}=-XYZ'.`,
  );
}

function label(name: string, o: OptionSpec): string {
  return `${o.short ? `-${o.short}, ` : ""}--${name}`;
}
