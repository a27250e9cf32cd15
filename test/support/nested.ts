/**
 * Real KVM for end-to-end tests on a machine whose /dev/kvm is PVM.
 *
 * PVM cannot boot a stock kernel (PLATFORM.md), so `runNested()` boots a
 * nested host, "L1", under QEMU's TCG with `-cpu max`, which exposes AMD SVM:
 * inside L1, kvm-amd gives a real /dev/kvm. L1 sees the host's root read-only
 * over virtio-9p, chroots into it, and so has every host tool, Bun and Deno
 * included, at the same paths. The script runs there; what it prints and its
 * exit status come back. The chroot's /tmp and /run are L1's own tmpfs; the
 * checkout and the working directory are bound back when they live there, so
 * a clone in /tmp runs like one anywhere else.
 *
 * L1 boots the image of `guest/build.ts` (`ensureNestedHost`): Debian's
 * generic kernel and the same `/init` as vmm's default guest. Like vmm, this
 * harness appends a second cpio archive with `/vmm/run.sh`; the init runs it
 * and writes its status to port 0xF4, where QEMU's isa-debug-exit device ends
 * QEMU with it. The status and the script's output are also framed by marker
 * lines on the serial console, which separate them from L1's own boot noise.
 *
 * Knobs for studying the emulator itself, not for the suite: VMM_NESTED_QEMU
 * names another QEMU build, VMM_NESTED_TCG_THREAD=single runs L1's vCPUs on
 * one host thread (no multi-threaded TCG), VMM_NESTED_DEBUG=1 copies L1's
 * console to stderr as it comes, VMM_NESTED_HANG_S moves the hang watcher's
 * 200 s (`hangWatch`; NestedOptions.hangS), VMM_NESTED_FROZEN_S the 90 s without L1's heartbeat
 * after which L1 counts as frozen (`BEAT`), VMM_NESTED_SMP sets L1's CPUs (2), VMM_NESTED_APPEND
 * adds to L1's command line (`kvm_amd.npt=0`: guest/init.sh hands module
 * parameters to insmod).
 */
import { execFileSync, spawn } from "node:child_process";
import { connect } from "node:net";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { builtImage } from "../../guest/build.ts";
import { type CpioEntry, S_IFREG, writeCpio } from "../../guest/cpio.ts";
import { concatInitrd } from "../../guest/command.ts";

export interface NestedOptions {
  /** Whole run, L1 boot included; default 180 s. */
  timeoutMs?: number;
  /** Host directories shared read-write, mounted at the same path in L1. */
  shareRw?: string[];
  /** Working directory of the script; default the current directory. */
  cwd?: string;
  /** Extra environment of the script. */
  env?: Record<string, string>;
  /** How long without L1's heartbeat means L1 froze; default 90 s (VMM_NESTED_FROZEN_S). */
  frozenMs?: number;
  /** Called with the reason before the script runs again in a fresh L1 (to reset what the first run left in a share). */
  onRetry?: (why: string) => void;
  /**
   * L1s the script may run in, each after the last one froze or died; default 2.
   * Only the harness's own tests raise it: one that plays an L1 failure needs
   * a spare L1 for a real one before its script starts.
   */
  attempts?: number;
  /**
   * L1's KVM flight recorder (`kvmRecorder`): on by default; benchmarks turn
   * it off, so that tracing costs no contender any time.
   */
  kvmRecorder?: boolean;
  /**
   * How old a vmm process is when the hang watcher (`hangWatch`) looks at
   * it; default 200 s (VMM_NESTED_HANG_S). It must be shorter than the
   * bounds the script's own tests put on a vmm, or a guest whose state L1
   * lost fails its test as a hang before the watcher can give L1 up (`LOST`).
   */
  hangS?: number;
}

export interface NestedResult {
  /** Exit status of `sh -c script` inside L1. */
  code: number;
  /** What the script printed (stdout and stderr, as on a console), without L1's noise. */
  output: string;
  /** Milliseconds from QEMU's start to the script's start (L1 boot), and in all. */
  ms: { boot: number; total: number };
  /** Why the first L1 was given up (it froze or its kernel died), when the script had to run again. */
  retried?: string;
  /** The flight recorder's record of each guest that shut down (triple-faulted) in L1, oldest first (`kvmRecorder`). */
  shutdowns: string[];
}

const START = "@@vmm-nested: start@@";
const EXIT_RE = /\n@@vmm-nested: exit (\d+)@@\n/;
/**
 * L1's heartbeat: from the script's start, a loop in L1's initramfs (not in
 * the chroot, so it needs nothing from 9p) writes this on the console every
 * HEARTBEAT_S seconds, in one write(2) so that it lands whole, between two
 * writes of the script. Its own newlines around it make it removable without
 * a trace: "ab" + BEAT + "c\n" reads "abc\n" once it is taken out.
 *
 * One write(2) takes care: busybox's `printf` on a tty writes up to each
 * newline separately ("\n", then "@@…@@\n"), so the beat is `cat` of a file
 * (/vmm/beat), one write that the tty keeps whole against other writers. And
 * the loop must not die in the middle of one: a kill can cut a tty write
 * short, and a beat without its last newline, taken out, takes the exit
 * marker's first newline with it (CI saw "second-run" for "second-run\n").
 * So the loop ends through a TERM trap, which ash runs only after the `cat`
 * in hand, and run.sh waits for it before it prints the exit marker.
 */
const BEAT = "\n@@vmm-nested: alive@@\n";
/**
 * The word of the hang watcher (hangWatch) or the flight recorder
 * (kvmRecorder) that L1's KVM lost a guest's state, after the line that says
 * how (`vmm-nested: lost: …`). The emulated SVM below (QEMU's TCG, no NRIPS
 * or decode assists, with L1's kvm-amd) now and then gives a guest back
 * L1's own registers: its RIP is L1's, just past the VMRUN instruction in
 * kvm_amd's `__svm_vcpu_run` (test/support/l1_state.ts shows how that was
 * found). The guest then either loops, about 8,000 times a second, on a
 * page fault it cannot be given, because the walk to its handler reads the
 * top-level page table at a CR3 4 GiB past its RAM that no entry in guest
 * memory points at (the "lost CR3"), or triple-faults, where it has no
 * usable IDT or the fault recurs. vmm never writes CR3 or RIP into a
 * running guest. It struck once a full suite or so, in a different
 * scenario each time. L1 is given up as broken, as for a freeze.
 */
const LOST = "@@vmm-nested: L1 lost a guest's state@@";
/** How the line before `LOST` begins. */
const LOST_WHY = "vmm-nested: lost: ";
const HEARTBEAT_S = 5;
/**
 * No heartbeat for this long means L1's kernel no longer runs its tasks: the
 * emulator has frozen it (see `qemuArgs`). A vmm or a guest that hangs
 * does not stop the heartbeat, and is caught by the scenarios' own bounds.
 */
const FROZEN_MS = Number(process.env.VMM_NESTED_FROZEN_S || 90) * 1000;
/** L1 boots in about 5 s; no script start after this long is a frozen boot. */
const BOOT_LIMIT_MS = 120_000;

/**
 * L1 itself failed, not the script: it froze (no heartbeat, or no start,
 * for `FROZEN_MS`) or its kernel died (QEMU ended by itself before the
 * script's exit status: while L1 booted, before vmm ran at all, or after the
 * script started). `runNested` boots once more.
 */
export class NestedHostError extends Error {
  override name = "NestedHostError";
}
const REPO = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");


/** The emulator that runs L1: Debian's by default; VMM_NESTED_QEMU names another build (to compare QEMU versions). */
const QEMU = process.env.VMM_NESTED_QEMU || "qemu-system-x86_64";
/**
 * Runs `sh -c script` inside a nested KVM host and returns its status and output.
 *
 * Throws when L1 cannot boot or the run exceeds `timeoutMs` (QEMU is killed).
 *
 * @example
 * ```ts
 * import { runNested } from "./nested.ts";
 * const { code, output } = await runNested("ls -l /dev/kvm; exit 3");
 * console.log(code, output); // 3 "crw-rw---- 1 root root 10, 232 … /dev/kvm\n"
 * ```
 */
export async function runNested(script: string, opts: NestedOptions = {}): Promise<NestedResult> {
  const img = builtImage("nested");
  if (!img) throw new Error("Nested host image is not built: run bash scripts/setup.sh");
  const cwd = resolve(opts.cwd ?? process.cwd());
  const shares = (opts.shareRw ?? []).map((p) => resolve(p));
  for (const p of shares) {
    if (!existsSync(p) || !statSync(p).isDirectory()) throw new Error(`Nested rw share is not a directory: ${p}`);
  }
  for (const k of Object.keys(opts.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`Nested env name is not valid: ${k}`);
  }
  const timeoutMs = opts.timeoutMs ?? 180_000;

  const dir = mkdtempSync(join(tmpdir(), "vmm-nested-"));
  try {
    const initrd = join(dir, "initrd.cpio");
    const base = readFileSync(img.initrd);
    const extra = writeCpio(runFiles(script, cwd, shares, opts.env ?? {}, opts.kvmRecorder ?? true, opts.hangS ?? Number(process.env.VMM_NESTED_HANG_S || 200)));
    writeFileSync(initrd, concatInitrd(base, extra));
    const qmp = join(dir, "qmp.sock");
    const records = join(dir, "records");
    mkdirSync(records);
    // The ELF kernel boots through PVH without TCG running the decompressor.
    const args = qemuArgs(img.vmlinux ?? img.kernel, initrd, shares, qmp, records);
    const frozenMs = opts.frozenMs ?? FROZEN_MS;
    const t0 = Date.now();
    const attempts = opts.attempts ?? 2;
    let retried: string | undefined;
    const shutdowns: string[] = [];
    for (let n = 1;; n++) {
      try {
        // timeoutMs bounds the whole run: a later L1 has what the ones before it left.
        const r = await boot(args, timeoutMs - (Date.now() - t0), frozenMs, qmp).finally(() => shutdowns.push(...takeRecords(records)));
        return { ...r, shutdowns, ...(retried === undefined ? {} : { retried }) };
      } catch (e) {
        if (!(e instanceof NestedHostError) || n >= attempts) throw e;
        // The emulator froze L1 or broke its kernel (QEMU's TCG under nested
        // SVM, about once in an hour of L1 time): that run says nothing about
        // vmm, so the script runs again in a fresh L1, in `attempts` L1s at
        // most (2: one retry); the last one's failure fails. A hang of vmm or of a guest is not one (L1 still beats)
        // and is never run again, except the one loop the hang watcher shows
        // to be a guest's state lost below it (LOST), and the triple fault the flight
        // recorder shows to be that too. The script must not depend on what a
        // cut-short run left in rw shares.
        process.stderr.write(`vmm-nested: ${e.message}\nvmm-nested: booting a fresh L1 and running the script again\n`);
        retried = e.message.split("; console ends:")[0];
        opts.onRetry?.(retried);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A watcher in L1 for the rare vmm that runs far longer than any scenario
 * should (a guest that stalls, a vmm that waits for ever): once a vmm
 * process is `afterS` seconds old, it appends a snapshot of that process to
 * the file its stderr goes to, which the scenario's test prints when it
 * fails. Each thread's state, CPU time and wait channel, and its kernel
 * stack, tell a guest spinning in KVM_RUN from a halted one waiting for an
 * interrupt and from a Worker blocked in poll(2) or on a lock. Nothing is
 * written for a vmm that ends in time.
 */
function hangWatch(afterS: number): string {
  // One second of the guest's KVM events in L1, first: each kvm_exit names
  // the guest rip, and the counts say whether it spins in one place (the
  // same exit over and over), goes round a wider loop, or is halted.
  const EV = ["kvm_exit", "kvm_page_fault", "kvm_mmio", "kvm_emulate_insn", "kvm_inj_exception"];
  const trace = [
    "T=/sys/kernel/tracing; [ -e $T/trace ] || mount -t tracefs nodev $T 2>/dev/null; ev=''; last=''",
    // With the flight recorder on (kvmRecorder), its events are on already and stay on.
    "rec=''; [ -e /tmp/.vmm-nested/recording ] && rec=1",
    `if [ -w $T/events/kvm/kvm_exit/enable ]; then : >$T/trace; [ -n "$rec" ] || for e in ${EV.join(" ")}; do echo 1 >$T/events/kvm/$e/enable; done; sleep 1;` +
    ` [ -n "$rec" ] || for e in ${EV.join(" ")}; do echo 0 >$T/events/kvm/$e/enable; done;` +
    ` ev="$(for e in ${EV.join(" ")}; do printf '%s %s, ' $e $(grep -c " $e:" $T/trace); done)"; ev="\${ev%, }"; inj=$(grep -c " kvm_inj_exception:" $T/trace);` +
    ` last=$(grep kvm_exit: $T/trace | tail -n 1 | sed 's/^.*kvm_exit: //'); fi`,
  ];
  const dump = [
    ...trace,
    // The headline comes first: CI prints the first lines of an error only.
    'echo "vmm-nested: vmm (pid $p) has run $age s; the guest\'s KVM events in one second: ${ev:-no trace}; the last exit: ${last:-none}"',
    // A loop on a nested page fault in the guest's page walk 4 GiB past its
    // RAM: look for the page-table entry behind it in guest memory. None
    // (guest_scan's status 3), with a page fault injected ~8,000 times a
    // second, is the guest's CR3 lost one level down (see LOST).
    "lost=''",
    'case "$last" in *"reason npf"*) i2=$(echo "$last" | sed -n "s/.*info2 \\(0x[0-9a-f]*\\).*/\\1/p");' +
    ` if [ -n "$i2" ] && [ $(( i2 >> 32 )) -gt 0 ]; then timeout 120 bun ${q(REPO)}/test/support/guest_scan.ts $p $i2;` +
    ' [ $? -eq 3 ] && [ "${inj:-0}" -ge 1000 ] && lost=1; fi ;; esac',
    // Or the last exit's RIP is L1's own, past its VMRUN (l1_state.ts).
    `[ -n "$last" ] && { echo "$last" >/tmp/.vmm-nested/seen/last-$p; timeout 120 bun ${q(REPO)}/test/support/l1_state.ts /tmp/.vmm-nested/seen/last-$p; [ $? -eq 3 ] && lost=1; }`,
    'echo "-- its threads (tid, state, CPU time (the first row: the whole process), wait channel):"',
    "ps -L -o tid=,stat=,time=,wchan:28=,comm= -p $p",
    // Kernel stacks, less the runtimes' idle pools (all in futex_wait).
    'for t in /proc/$p/task/*; do case "$(cat $t/wchan)" in futex*) continue ;; esac; echo "-- thread ${t##*/}, kernel stack:"; head -6 $t/stack 2>/dev/null; done',
    '[ -n "$ev" ] && { echo "-- the last KVM events:"; tail -n 8 $T/trace; }',
    // L1 moving the guest's pages (compaction, THP) changes the nested page
    // tables under a running guest: how much of it L1 has done since boot.
    `echo "-- L1 page moves since its boot: $(grep -E '^(pgmigrate_success|compact_success|thp_split_pmd|thp_collapse_alloc) ' /proc/vmstat | tr '\\n' ' ')"`,
    // To the console (fd 9), for runNested: the headline, then the marker.
    `[ -n "$lost" ] && printf '${LOST_WHY}vmm (pid %s): %s; the last exit: %s\\n%s\\n' $p "$ev" "$last" ${q(LOST)} >&9`,
  ].join("; ");
  return [
    "mkdir -p /tmp/.vmm-nested/seen",
    "( exec 9>&1; while sleep 15; do",
    "  for p in $(pgrep -f 'vmm(\\.ts)? (run|boot)'); do",
    '    case "$(ps -o comm= -p $p)" in deno|bun|vmm|node) ;; *) continue ;; esac',
    '    age=$(ps -o etimes= -p $p | tr -d " ")',
    `    [ "\${age:-0}" -ge ${afterS} ] && [ ! -e /tmp/.vmm-nested/seen/$p ] || continue`,
    "    touch /tmp/.vmm-nested/seen/$p",
    // To a file first: a stderr that is a socket (Bun's child processes) cannot be opened
    // through /proc, and the check must run, and mark a lost state, all the same.
    `    { ${dump}; } >/tmp/.vmm-nested/seen/$p 2>&1; cat /tmp/.vmm-nested/seen/$p 2>/dev/null >>/proc/$p/fd/2`,
    "  done",
    "done ) &",
  ].join("\n");
}

/**
 * The KVM events L1's flight recorder keeps: each exit of a guest with its
 * reason and RIP, the nested page faults, what KVM injects, and what reaches
 * the monitor (port and MMIO accesses, MSRs, control registers).
 */
const RECORDED = ["kvm_exit", "kvm_page_fault", "kvm_inj_exception", "kvm_inj_virq", "kvm_userspace_exit", "kvm_pio", "kvm_mmio", "kvm_msr", "kvm_cr"];
/**
 * A kprobe on L1's `svm_handle_exit(vcpu)`, which runs for each exit before
 * the kvm_exit event: the exit code, RIP, CR3, CR0, CR4 and EFER in the
 * guest's VMCB. The save area's layout is AMD's (from the VMCB's start:
 * EFER 0x4d0, CR4 0x548, CR3 0x550, CR0 0x558, RIP 0x578; the exit code at
 * 0x70); where `struct vcpu_svm` keeps its VMCB pointer (0x1998) is the
 * build's, read from `svm_get_cpl` in Debian 6.1.0-57's kvm-amd.ko. Another
 * build may keep it elsewhere, so a reader of a record trusts a line only
 * where its RIP is kvm_exit's for the same exit, and nothing acts on it.
 */
const VMCB_PROBE = "p:vmm/vmcb kvm_amd:svm_handle_exit exit=+0x70(+0x1998(%di)):x32 rip=+0x578(+0x1998(%di)):x64 cr3=+0x550(+0x1998(%di)):x64 cr0=+0x558(+0x1998(%di)):x64 cr4=+0x548(+0x1998(%di)):x64 efer=+0x4d0(+0x1998(%di)):x64";
/** How much of the record before a shutdown is kept: about the guest's last 20 ms under nested KVM. */
const RECORD_LINES = 200;

/**
 * L1's flight recorder, for the rare guest that triple-faults in a full
 * suite and in no loop of the same scenarios: a triple fault resets the
 * vCPU (KVM_EXIT_SHUTDOWN), so vmm cannot say where the guest was, and
 * only L1's KVM saw its last steps. L1's kernel traces the `RECORDED` events
 * into its per-CPU ring buffers for the whole run, and a trigger on a
 * shutdown exit (SVM_EXIT_SHUTDOWN, 0x7f) stops the tracing at once, which
 * keeps what led to it. A loop notices within a second, writes the last
 * `RECORD_LINES` events to the `records` share (runNested prints them and
 * returns them as `shutdowns`) and starts the recorder again. A guest that
 * a test makes triple-fault on purpose leaves a record too.
 */
function kvmRecorder(): string {
  return [
    "T=/sys/kernel/tracing; [ -e $T/trace ] || mount -t tracefs nodev $T 2>/dev/null",
    "if [ -w $T/events/kvm/kvm_exit/trigger ]; then",
    "  echo 2048 >$T/buffer_size_kb",
    `  for e in ${RECORDED.join(" ")}; do echo 1 >$T/events/kvm/$e/enable; done`,
    // Where L1's VMCB says the guest is at each exit, before kvm_exit's line:
    // its RIP and CR3, which no KVM event shows (see VMCB_PROBE).
    `  echo ${q(VMCB_PROBE)} >>$T/kprobe_events 2>/dev/null && echo 1 >$T/events/vmm/vmcb/enable`,
    "  echo 'traceoff if exit_reason == 127' >$T/events/kvm/kvm_exit/trigger",
    "  echo 1 >$T/tracing_on; : >/tmp/.vmm-nested/recording",
    "  ( n=0; while sleep 1; do",
    '    [ "$(cat $T/tracing_on)" = 0 ] || continue',
    `    n=$((n + 1)); f=/tmp/.vmm-nested/records/shutdown-$(printf %03d $n).txt; tail -n ${RECORD_LINES} $T/trace >$f`,
    "    : >$T/trace; echo 1 >$T/tracing_on",
    // A guest that ran on L1's own registers (LOST) says nothing of vmm.
    `    why=$(timeout 120 bun ${q(REPO)}/test/support/l1_state.ts $f); [ $? -eq 3 ] && printf '${LOST_WHY}a guest triple-faulted (%s): %s\\n%s\\n' $(basename $f) "$why" ${q(LOST)}`,
    "  done ) &",
    "fi",
  ].join("\n");
}

/** The recorder's records in `dir`, oldest first, each printed to stderr as it is taken (and removed). */
function takeRecords(dir: string): string[] {
  return readdirSync(dir).sort().map((f) => {
    const text = readFileSync(join(dir, f), "utf8");
    rmSync(join(dir, f));
    process.stderr.write(`vmm-nested: a guest in L1 shut down (KVM_EXIT_SHUTDOWN: a triple fault); L1's KVM events before it, the last one its exit:\n${text}`);
    return text;
  });
}

/** `/vmm/run.sh` for L1's init, and the script's wrapper that runs in the chroot. */
function runFiles(script: string, cwd: string, shares: string[], env: Record<string, string>, recorder: boolean, hangS: number): CpioEntry[] {
  const path = [`${REPO}/node_modules/.bin`, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
  const wrap = [
    "export HOME=/tmp/home",
    `export PATH=${q(path.join(":"))}`,
    "export TERM=dumb LANG=C.UTF-8 VMM_NESTED=1",
    // vmm run's snapshots (loop/run_cache.ts) in L1's tmpfs: its root, where
    // vmm's cache is, is this machine's, read-only.
    "export VMM_SNAPSHOT_CACHE=/tmp/vmm-snapshots",
    ...Object.entries(env).map(([k, v]) => `export ${k}=${q(v)}`),
    'mkdir -p "$HOME"',
    `cd ${q(cwd)} || exit 125`,
    ...(recorder ? [kvmRecorder()] : []),
    hangWatch(hangS),
    `exec /bin/sh -c ${q(script)}`,
  ];
  const R = "/mnt/root";
  // 9p: msize raises the 8 KiB default so Bun and Deno load in big reads;
  // cache=loose is safe on the read-only root and makes repeated reads local.
  const P9 = "trans=virtio,version=9p2000.L,msize=512000";
  const run = [
    "fail() { echo \"vmm-nested: $*\"; exit 125; }",
    "echo 1 >/proc/sys/kernel/printk", // only emergencies may interleave with the script's output
    `R=${R}`,
    'mkdir -p "$R"',
    `mount -t 9p -o ${P9},cache=loose,ro root "$R" || fail "cannot mount the host root over 9p"`,
    'mount -t proc proc "$R/proc" || fail "cannot mount proc"',
    'mount -t sysfs sysfs "$R/sys" || fail "cannot mount sysfs"',
    'mount -t devtmpfs devtmpfs "$R/dev" || fail "cannot mount devtmpfs"',
    'mkdir -p "$R/dev/pts" "$R/dev/shm"',
    'mount -t devpts devpts "$R/dev/pts"',
    'mount -t tmpfs tmpfs "$R/dev/shm"',
    // The chroot's /tmp and /run must be writable, so they are tmpfs; the
    // host's are kept at /mnt/host so that what lives there can be bound back.
    'mkdir -p /mnt/host/tmp /mnt/host/run',
    'mount --bind "$R/tmp" /mnt/host/tmp && mount --bind "$R/run" /mnt/host/run || fail "cannot keep the host /tmp and /run"',
    'mount -t tmpfs tmpfs "$R/tmp" || fail "cannot mount /tmp"',
    'mount -t tmpfs tmpfs "$R/run" || fail "cannot mount /run"',
    ...[
      ...shares.map((p, i) => ({ p, cmd: `mount -t 9p -o ${P9} rw${i}` })),
      ...hiddenPaths([REPO, cwd], shares).map(({ p, real }) => ({ p, cmd: `mount --bind ${bindSource(real)}` })),
    ]
      .sort((a, b) => a.p.length - b.p.length) // parents before children
      .map(({ p, cmd }) => `mkdir -p "$R"${q(p)} && ${cmd} "$R"${q(p)} || fail ${q(`cannot mount ${p}`)}`),
    'mkdir -p "$R/tmp/.vmm-nested/records" && cp /vmm/wrap.sh "$R/tmp/.vmm-nested/wrap.sh"',
    `mount -t 9p -o ${P9} records "$R/tmp/.vmm-nested/records" || fail "cannot mount the recorder's share"`,
    // `wait` returns at once for a trapped TERM; a `cat` in hand finishes first.
    `( trap 'exit 0' TERM; while :; do sleep ${HEARTBEAT_S} & wait $!; cat /vmm/beat; done ) &`,
    "beat=$!",
    'echo $beat >"$R/tmp/.vmm-nested/beat.pid"', // a test stops it to play a frozen L1
    `echo ${q(START)}`,
    'env -i chroot "$R" /bin/sh /tmp/.vmm-nested/wrap.sh </dev/null',
    "rc=$?",
    "kill $beat; wait $beat",
    "printf '\\n@@vmm-nested: exit %d@@\\n' $rc",
    "exit $rc",
  ];
  const enc = new TextEncoder();
  return [
    { path: "vmm/run.sh", mode: S_IFREG | 0o755, data: enc.encode(run.join("\n") + "\n") },
    { path: "vmm/beat", mode: S_IFREG | 0o644, data: enc.encode(BEAT) },
    { path: "vmm/wrap.sh", mode: S_IFREG | 0o755, data: enc.encode(wrap.join("\n") + "\n") },
  ];
}

/** Directories under /tmp or /run: the chroot's tmpfs hides the host's there. */
const HIDDEN_RE = /^\/(tmp|run)(\/|$)/;

/**
 * Of `paths` (the checkout, the working directory), those the chroot's tmpfs
 * would hide and no rw share shows, with where they really are on the host:
 * they are bound back read-only from the host root, so a checkout in /tmp works.
 */
function hiddenPaths(paths: string[], shares: string[]): { p: string; real: string }[] {
  const within = (p: string, dir: string) => p === dir || p.startsWith(dir + "/");
  const out: { p: string; real: string }[] = [];
  for (const p of [...paths].sort((a, b) => a.length - b.length)) {
    // /tmp or /run itself stays L1's writable tmpfs; a path already shown is skipped.
    if (!HIDDEN_RE.test(p) || p === "/tmp" || p === "/run" || !existsSync(p)) continue;
    if ([...shares, ...out.map((o) => o.p)].some((d) => within(p, d))) continue;
    out.push({ p, real: realpathSync(p) });
  }
  return out;
}

/** Where L1 finds a host directory to bind: under /mnt/host if the tmpfs hides it, else in the 9p root. */
function bindSource(real: string): string {
  return HIDDEN_RE.test(real) ? `/mnt/host${q(real)}` : `"$R"${q(real)}`;
}

/** QEMU's command line for L1. */
function qemuArgs(kernel: string, initrd: string, shares: string[], qmp: string, records: string): string[] {
  const cmdline = [
    "console=ttyS0",
    "panic=-1",
    "quiet",
    "loglevel=1",
    `tsc_early_khz=${hostTscKhz()}`, // TCG's TSC ticks at the host's rate
    "tsc=reliable", // TCG timing jitter must not make the watchdog drop the TSC
    "mitigations=off", // nothing to protect in a throwaway L1; costs time under TCG
    // A periodic local APIC timer on every CPU, not one-shot: QEMU's TCG (7.2 to 10.0)
    // can lose an interrupt sent to a vCPU while it executes VMRUN (the
    // helper sets CPU_INTERRUPT_VIRQ with a plain read-modify-write of
    // interrupt_request, outside the lock other threads raise interrupts
    // under). A one-shot tick that is lost is never re-armed: the vCPU halts
    // with interrupts pending, and the other one, waiting for its IPI with
    // interrupts off, spins forever (the whole L1 goes silent). Each periodic
    // expiry raises the interrupt line again, so a lost one costs one tick.
    // The TSC-deadline timer has no periodic mode, so it is turned off too.
    "nohz=off",
    "highres=off",
    "lapic=notscdeadline",
    // A panic before the console is up still shows (quiet and loglevel=1
    // let nothing less than an emergency through, on either console).
    "earlyprintk=serial,ttyS0",
    process.env.VMM_NESTED_APPEND ?? "",
  ].filter(Boolean).join(" ");
  const args = [
    "-accel", `tcg,thread=${process.env.VMM_NESTED_TCG_THREAD || "multi"}`,
    "-cpu", "max", // exposes SVM
    // microvm: no PCI, no BIOS scan: the fastest TCG boot; ACPI lists virtio-mmio.
    // No PIT: on an AMD EPYC host (a Firecracker VM, kernel 6.18) about one L1
    // boot in ten died 0.4 s in, "divide error" in start_kernel with RIP on a
    // `ret` that divides nothing (the harness retried each; its own tests,
    // which expect no retry, failed three times in one CI pass). Boots without
    // the PIT: 0 deaths in 42, against 4 in 42 with it (QEMU alone with this
    // command line, 6 s per boot, a panic on the console counted). A vector-0 interrupt from
    // the PIT before the kernel programs its PIC fits; not proven. L1 needs no
    // PIT: its TSC rate comes from tsc_early_khz below and its ticks from the
    // local APIC; L2's PIT is KVM's, inside L1.
    "-M", "microvm,pit=off",
    "-smp", process.env.VMM_NESTED_SMP || "2",
    "-m", "4G",
    "-nodefaults", "-no-user-config", "-no-reboot",
    "-display", "none",
    "-serial", "stdio",
    "-qmp", `unix:${qmp},server=on,wait=off`, // asked where L1's CPUs are if it freezes
    "-kernel", kernel,
    "-initrd", initrd,
    "-append", cmdline,
    "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    "-fsdev", "local,id=root,path=/,readonly=on,multidevs=remap,security_model=none",
    "-device", "virtio-9p-device,fsdev=root,mount_tag=root",
    "-fsdev", `local,id=records,path=${records},security_model=none`,
    "-device", "virtio-9p-device,fsdev=records,mount_tag=records",
  ];
  shares.forEach((p, i) => {
    args.push("-fsdev", `local,id=rw${i},path=${p},multidevs=remap,security_model=none`);
    args.push("-device", `virtio-9p-device,fsdev=rw${i},mount_tag=rw${i}`);
  });
  return args;
}

/**
 * Runs QEMU to its end and parses the console. Rejects with
 * `NestedHostError` when L1 stops: no script start within `BOOT_LIMIT_MS`,
 * or no heartbeat for `frozenMs` (the error names where L1's CPUs stood),
 * or QEMU ends by itself (status 0: L1's kernel reset, which -no-reboot
 * makes QEMU's end) before the script's exit status, started or not.
 */
function boot(args: string[], timeoutMs: number, frozenMs: number, qmp: string): Promise<Omit<NestedResult, "shutdowns">> {
  const debug = !!process.env.VMM_NESTED_DEBUG;
  const t0 = Date.now();
  return new Promise((resolvePromise, reject) => {
    const qemu = spawn(QEMU, args, { stdio: ["ignore", "pipe", "pipe"] });
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    let boot = 0; // when the script started (Date.now()), 0 before
    let lastBeat = 0;
    let seen = "";
    let ended: "timeout" | "frozen" | "lost" | "" = "";
    let frozenWhy = "";
    const timer = setTimeout(() => {
      ended = "timeout";
      qemu.kill("SIGKILL");
    }, timeoutMs);
    const watch = setInterval(() => {
      const now = Date.now();
      const silent = boot ? now - lastBeat : now - t0;
      if (ended || silent < (boot ? frozenMs : BOOT_LIMIT_MS)) return;
      ended = "frozen";
      frozenWhy = boot
        ? `L1 froze: no heartbeat for ${Math.round(silent / 1000)} s, ${Math.round((now - t0) / 1000)} s into the run`
        : `L1 froze while booting: the script had not started after ${Math.round(silent / 1000)} s`;
      qmpState(qmp).then((cpus) => {
        frozenWhy += `; ${cpus}`;
        qemu.kill("SIGKILL");
      });
    }, 1000);
    qemu.stdout.on("data", (b: Uint8Array) => {
      out.push(b);
      if (debug) process.stderr.write(b);
      seen = (seen + new TextDecoder().decode(b)).replace(/\r\n/g, "\n");
      if (!boot && seen.includes(START)) boot = lastBeat = Date.now();
      if (boot && !ended && seen.includes(LOST)) {
        ended = "lost";
        qemu.kill("SIGKILL");
      }
      const beat = seen.lastIndexOf(BEAT.trim());
      if (boot && beat >= 0) lastBeat = Date.now();
      // What is kept can hold the start of a marker, never a whole one seen already.
      seen = seen.slice(beat >= 0 ? beat + BEAT.length - 2 : 0).slice(-(Math.max(START.length, LOST.length) + BEAT.length));
    });
    qemu.stderr.on("data", (b: Uint8Array) => err.push(b));
    qemu.on("error", (e) => {
      clearTimeout(timer);
      clearInterval(watch);
      reject(new Error(`qemu-system-x86_64: ${e.message}`));
    });
    qemu.on("close", (status, signal) => {
      clearTimeout(timer);
      clearInterval(watch);
      const total = Date.now() - t0;
      const text = decode(out).replace(/\r\n/g, "\n").replaceAll(BEAT, "");
      const tail = () => text.slice(-2000) + decode(err).slice(-500);
      if (ended === "frozen") return reject(new NestedHostError(`${frozenWhy}; console ends:\n${tail()}`));
      if (ended === "lost") {
        const why = text.split("\n").findLast((l) => l.startsWith(LOST_WHY)) ?? "";
        return reject(new NestedHostError(`L1's KVM lost a guest's state (${why.slice(LOST_WHY.length)}); console ends:\n${tail()}`));
      }
      if (ended === "timeout") return reject(new Error(`Nested run timed out after ${timeoutMs} ms; console ends:\n${tail()}`));
      const start = text.indexOf(START + "\n");
      if (start < 0 && status === 0) {
        // QEMU ended by itself, as -no-reboot makes it on a reset: L1's kernel
        // died while it booted, before the script (and vmm) ran at all. A
        // panic shows on the console (earlyprintk, in qemuArgs); a reset
        // with nothing there is a triple fault the kernel did not ask for.
        const why = `L1 died while it booted: QEMU ended (status 0) ${((Date.now() - t0) / 1000).toFixed(1)} s after its start, before the script's`;
        return reject(new NestedHostError(`${why}; console ends:\n${tail()}`));
      }
      if (start < 0) return reject(new Error(`L1 did not start the script (QEMU status ${status}); console ends:\n${tail()}`));
      const body = text.slice(start + START.length + 1);
      const m = EXIT_RE.exec(body);
      if (!m && signal) return reject(new Error(`QEMU was killed (${signal}) before the script's exit status; console ends:\n${tail()}`));
      if (!m) {
        // Only L1's kernel dying (a panic, then -no-reboot) ends QEMU there by itself.
        const why = `L1 died: QEMU ended (status ${status}) ${Math.round((Date.now() - boot) / 1000)} s into the script, without its exit status`;
        return reject(new NestedHostError(`${why}; console ends:\n${tail()}`));
      }
      resolvePromise({ code: Number(m[1]), output: body.slice(0, m.index), ms: { boot: boot - t0, total } });
    });
  });
}

/**
 * Where a frozen L1's CPUs stand, asked of QEMU's monitor: each CPU's RIP,
 * whether it is halted, its interrupt flag, and its local APIC's pending
 * (IRR) and in-service (ISR) vectors. A CPU halted with a vector pending in
 * IRR is the lost interrupt of `qemuArgs`; a CPU spinning with IF=0 is the
 * one waiting for it. At most 10 s; any failure is said in the answer.
 */
function qmpState(path: string): Promise<string> {
  const cmds = ["info registers -a", "info lapic 0", "info lapic 1"];
  return new Promise((done) => {
    let buf = "";
    const sock = connect(path);
    const stop = setTimeout(() => finish("QEMU's monitor did not answer in 10 s"), 10_000);
    function finish(why: string) {
      clearTimeout(stop);
      sock.destroy();
      done(why);
    }
    sock.on("error", (e) => finish(`QEMU's monitor: ${e.message}`));
    sock.on("connect", () => {
      sock.write('{"execute":"qmp_capabilities"}\n');
      for (const c of cmds) {
        sock.write(JSON.stringify({ execute: "human-monitor-command", arguments: { "command-line": c } }) + "\n");
      }
    });
    sock.on("data", (b: Uint8Array) => {
      buf += new TextDecoder().decode(b);
      const answers = buf.split("\n").filter((l) => l.includes('"return"')).map((l) => JSON.parse(l).return);
      // The capabilities' answer, then one per command.
      if (answers.length < cmds.length + 1) return;
      const text = answers.slice(1).map((a) => (typeof a === "string" ? a : "")).join("\n");
      const keep = text.split(/\r?\n/).filter((l) => /^(CPU#|RIP=|dumping local APIC|ISR|IRR|LVTT |Timer)/.test(l.trim()));
      finish(`L1's CPUs: ${keep.map((l) => l.trim().replace(/\s+/g, " ")).join(" | ")}`);
    });
  });
}

/**
 * The host's TSC rate in kHz, for L1's `tsc_early_khz`: the kernel log's
 * calibration, else `cpu MHz` of a CPU whose TSC is constant.
 */
export function hostTscKhz(): number {
  try {
    const log = execFileSync("dmesg", [], { stdio: ["ignore", "pipe", "ignore"], maxBuffer: 1 << 26 }).toString();
    const m = log.match(/tsc: Refined TSC clocksource calibration: ([\d.]+) MHz/) ??
      log.match(/tsc: Detected ([\d.]+) MHz (processor|TSC)/);
    if (m) return Math.round(Number(m[1]) * 1000);
  } catch { /* no dmesg, or not allowed: try cpuinfo */ }
  const cpu = readFileSync("/proc/cpuinfo", "utf8");
  const mhz = cpu.match(/^cpu MHz\s*:\s*([\d.]+)/m);
  if (mhz && /^flags\s*:.*\bconstant_tsc\b/m.test(cpu)) return Math.round(Number(mhz[1]) * 1000);
  throw new Error("Cannot tell the host's TSC rate: no tsc line in dmesg, no constant_tsc cpu MHz in /proc/cpuinfo");
}

let available: { ok: boolean; why: string } | undefined;

/** Whether `runNested()` can work here, and if not, why. */
export function nestedAvailable(): { ok: boolean; why: string } {
  if (available) return available;
  const no = (why: string) => (available = { ok: false, why });
  let version: string;
  try {
    const v = execFileSync(QEMU, ["--version"], { stdio: ["ignore", "pipe", "ignore"] }).toString();
    version = /version (\S+)/.exec(v)?.[1] ?? "of unknown version";
  } catch {
    return no("qemu-system-x86_64 is not installed (bash scripts/setup.sh)");
  }
  if (!builtImage("nested")) return no("the nested host image is not built (bash scripts/setup.sh)");
  try {
    hostTscKhz();
  } catch (e) {
    return no((e as Error).message);
  }
  // Ask QEMU itself whether its TCG "max" CPU has SVM.
  const qmp = [
    '{"execute":"qmp_capabilities"}',
    '{"execute":"query-cpu-model-expansion","arguments":{"type":"full","model":{"name":"max"}}}',
    '{"execute":"quit"}',
  ].join("\n") + "\n";
  try {
    const out = execFileSync(
      QEMU,
      ["-M", "none", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-qmp", "stdio"],
      { input: qmp, stdio: ["pipe", "pipe", "pipe"], timeout: 20_000 },
    ).toString();
    if (!/"svm":\s*true/.test(out)) return no("QEMU's TCG -cpu max has no SVM");
  } catch (e) {
    return no(`qemu-system-x86_64 -qmp: ${(e as Error).message.split("\n")[0]}`);
  }
  return (available = { ok: true, why: `QEMU ${version} TCG with SVM and the nested host image are here` });
}

/** Single-quotes a string for sh. */
function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function decode(chunks: Uint8Array[]): string {
  const dec = new TextDecoder();
  return chunks.map((c) => dec.decode(c, { stream: true })).join("") + dec.decode();
}
