/**
 * The end-to-end tiers' scenario output: one shell script runs every
 * scenario and prints, for each, `@@TAG NAME rc=N [s=SECONDS]` and then
 * `@@NAME.out|err|host TEXT` lines (the guest console, vmm's stderr, what
 * the host found). The tests parse that back here and check one scenario each.
 */

export interface Outcome {
  rc: number;
  /** Wall time of the scenario, when the script reported it. */
  seconds?: number;
  out: string;
  err: string;
  host: string;
}

/** Every scenario of `tag` in `output`, by name. */
export function parseScenarios(output: string, tag: string): Map<string, Outcome> {
  const m = new Map<string, Outcome>();
  const headRe = new RegExp(`^@@${tag} (\\w+) rc=(\\d+)(?: s=(\\d+))?$`);
  for (const line of output.split("\n")) {
    const head = headRe.exec(line);
    if (head) m.set(head[1], { rc: Number(head[2]), seconds: head[3] === undefined ? undefined : Number(head[3]), out: "", err: "", host: "" });
    const body = /^@@(\w+)\.(out|err|host) (.*)$/.exec(line);
    if (body && m.has(body[1]) && body[3] !== "") m.get(body[1])![body[2] as "out" | "err" | "host"] += body[3] + "\n";
  }
  return m;
}

/** `key=value` from an outcome's lines; undefined when absent. */
export function field(text: string, key: string): string | undefined {
  return new RegExp(`^${key}=(.*)$`, "m").exec(text)?.[1].trim();
}

/** Everything a scenario left, for failure messages. */
export function showOutcome(o: Outcome): string {
  return `status ${o.rc}\n--- console ---\n${o.out}--- vmm stderr ---\n${o.err}--- host ---\n${o.host}`;
}

/** The digest of a `sha256sum FILE` line for `file`. */
export function shaOf(text: string, file: string): string | undefined {
  return new RegExp(`^([0-9a-f]{64}) {2}${file.replace(/\//g, "\\/")}$`, "m").exec(text)?.[1];
}
