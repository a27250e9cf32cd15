#!/usr/bin/env bash
# The test command (README): the whole suite on Deno, then on Bun.
# Unit tests and KVM tests with tiny guests run on /dev/kvm directly; the
# end-to-end tier boots the stock Debian kernel under vmm on real KVM
# (nested under QEMU where /dev/kvm is PVM) and prints which tier it used.
# Usage: bash scripts/test.sh [files or folders...]
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null || { echo "scripts/setup.sh failed" >&2; exit 1; }
bin=./node_modules/.bin
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

echo "== deno test"
"$bin/deno" test -A --no-check "$@" 2>&1 | tee "$log/deno"
deno_rc=${PIPESTATUS[0]}
echo "== bun test"
"$bin/bun" test --timeout 1200000 "$@" 2>&1 | tee "$log/bun"
bun_rc=${PIPESTATUS[0]}

# One closing line for both runtimes: "N passed, N failed".
dp=$(grep -aoE '[0-9]+ passed' "$log/deno" | tail -1 | grep -oE '[0-9]+'); dp=${dp:-0}
df=$(grep -aoE '[0-9]+ failed' "$log/deno" | tail -1 | grep -oE '[0-9]+'); df=${df:-0}
bp=$(grep -aE '^ *[0-9]+ pass$' "$log/bun" | tail -1 | grep -oE '[0-9]+'); bp=${bp:-0}
bf=$(grep -aE '^ *[0-9]+ fail$' "$log/bun" | tail -1 | grep -oE '[0-9]+'); bf=${bf:-0}
echo "deno: $dp passed, $df failed (exit $deno_rc); bun: $bp passed, $bf failed (exit $bun_rc)"
if [ "$deno_rc" -ne 0 ] && [ "$df" -eq 0 ]; then df=1; fi
if [ "$bun_rc" -ne 0 ] && [ "$bf" -eq 0 ]; then bf=1; fi
echo "$((dp + bp)) passed, $((df + bf)) failed"
[ "$deno_rc" -eq 0 ] && [ "$bun_rc" -eq 0 ]
