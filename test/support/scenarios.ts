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
  /** The end of the guest's console when a run failed (scenarios that keep it). */
  console: string;
}

/** Every scenario of `tag` in `output`, by name. */
export function parseScenarios(output: string, tag: string): Map<string, Outcome> {
  const m = new Map<string, Outcome>();
  const headRe = new RegExp(`^@@${tag} (\\w+) rc=(\\d+)(?: s=(\\d+))?$`);
  for (const line of output.split("\n")) {
    const head = headRe.exec(line);
    if (head) m.set(head[1], { rc: Number(head[2]), seconds: head[3] === undefined ? undefined : Number(head[3]), out: "", err: "", host: "", console: "" });
    const body = /^@@(\w+)\.(out|err|host|console) (.*)$/.exec(line);
    if (body && m.has(body[1]) && body[3] !== "") m.get(body[1])![body[2] as "out" | "err" | "host" | "console"] += body[3] + "\n";
  }
  return m;
}

/** `key=value` from an outcome's lines; undefined when absent. */
export function field(text: string, key: string): string | undefined {
  return new RegExp(`^${key}=(.*)$`, "m").exec(text)?.[1].trim();
}

/** Everything a scenario left, for failure messages. */
export function showOutcome(o: Outcome): string {
  const guest = o.console ? `--- guest console ---\n${o.console}` : "";
  return `status ${o.rc}\n--- stdout ---\n${o.out}--- vmm stderr ---\n${o.err}--- host ---\n${o.host}${guest}`;
}

/** The digest of a `sha256sum FILE` line for `file`. */
export function shaOf(text: string, file: string): string | undefined {
  return new RegExp(`^([0-9a-f]{64}) {2}${file.replace(/\//g, "\\/")}$`, "m").exec(text)?.[1];
}

/**
 * Shell for the network scenarios (test/e2e/net_test.ts, scripts/stress-net.ts):
 * `fresh_ns` (re)makes namespace $NS with tap0 at 10.0.2.1/24, MTU `mtu`;
 * `GUEST_IP` gives the guest's eth0 10.0.2.2.
 */
export function netnsShell(mtu: number): string {
  return `# A fresh namespace with tap0 at 10.0.2.1/24 (the guest takes 10.0.2.2).
fresh_ns() {
  ip netns del $NS 2>/dev/null
  ip netns add $NS && ip -n $NS link set lo up && ip -n $NS tuntap add tap0 mode tap &&
    ip -n $NS link set tap0 mtu ${mtu} && ip -n $NS addr add 10.0.2.1/24 dev tap0 && ip -n $NS link set tap0 up
}
GUEST_IP='ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0'`;
}

/** The guest's half of the guest-to-host transfer: `bytes` random bytes, their sha256, then nc to the host's port 5000 (for `sh -c "…"`). */
export function guestSendsCommand(bytes: number): string {
  return `$GUEST_IP && head -c ${bytes} /dev/urandom >/tmp/f && sha256sum /tmp/f && nc 10.0.2.1 5000 </tmp/f && echo sent`;
}
