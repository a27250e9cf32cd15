#!/usr/bin/env bash
# The test command (README): the whole suite on Deno, then on Bun.
#
# Three tiers, each run where it can be real:
# - unit tests: here, on both runtimes;
# - KVM tests (the files that call requireKvm: tiny guests on /dev/kvm): here
#   when this machine has /dev/kvm (hardware or PVM); otherwise inside the
#   nested host (QEMU TCG exposing SVM, real kvm-amd in it), one boot per
#   runtime (scripts/test-nested.ts);
# - end to end (test/e2e): the stock Debian kernel on real KVM, which the
#   files reach themselves (directly, or nested) and print the tier they use.
# Usage: bash scripts/test.sh [files or folders...]
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null || { echo "scripts/setup.sh failed" >&2; exit 1; }
bin=./node_modules/.bin
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

# The test files asked for (default: all), split into KVM files and the rest.
mapfile -t files < <(find "${@:-.}" -name node_modules -prune -o -name '*_test.ts' -print | sed 's#^\./##' | sort -u)
kvm=() other=()
for f in "${files[@]}"; do
	if [[ $f != test/e2e/* ]] && grep -q 'requireKvm(' "$f"; then kvm+=("$f"); else other+=("$f"); fi
done
if [ -e /dev/kvm ]; then
	here=("${files[@]}") nested=()
	echo "== KVM tests run here: /dev/kvm exists"
else
	here=("${other[@]}") nested=("${kvm[@]}")
	echo "== KVM tests run in the nested host: this machine has no /dev/kvm (${#nested[@]} files)"
fi

rc=0
for rt in deno bun; do
	echo "== $rt test"
	if [ ${#here[@]} -gt 0 ]; then
		if [ $rt = deno ]; then
			"$bin/deno" test -A --no-check "${here[@]}" 2>&1 | tee "$log/$rt.here"
		else
			# Past the longest nested bound (run_test.ts: 30 min), so that bound
			# fires first: it kills its QEMU and reports L1's console, where
			# Bun's own timeout would leave QEMU running into the next file.
			"$bin/bun" test --timeout 1900000 "${here[@]/#/./}" 2>&1 | tee "$log/$rt.here"
		fi
		[ "${PIPESTATUS[0]}" -eq 0 ] || { rc=1; echo "$rt: FAILED here" >>"$log/failed"; }
	fi
	if [ ${#nested[@]} -gt 0 ]; then
		echo "== $rt test, KVM files in the nested host"
		"$bin/bun" scripts/test-nested.ts $rt "${nested[@]}" 2>&1 | tee "$log/$rt.nested"
		[ "${PIPESTATUS[0]}" -eq 0 ] || { rc=1; echo "$rt: FAILED nested" >>"$log/failed"; }
	fi
done

# A runner's log as plain text: colour codes out (a runner in the nested host
# writes them), and the console's carriage returns.
plain() { sed -e 's/\x1b\[[0-9;]*m//g' -e 's/\r$//' "$1"; }

# One closing line for both runtimes: "N passed, N failed".
count() { # count RUNTIME WHAT: the runner's own closing numbers, summed over its parts
	local n=0 f v
	for f in "$log/$1".*; do
		[ -e "$f" ] || continue
		if [ "$1" = deno ]; then
			v=$(plain "$f" | grep -aoE "[0-9]+ $2" | tail -1 | grep -oE '[0-9]+')
		else
			v=$(plain "$f" | grep -aE "^ *[0-9]+ ${2%ed}$" | tail -1 | grep -oE '[0-9]+')
		fi
		n=$((n + ${v:-0}))
	done
	echo $n
}
# The failed tests' names last, where a tail of the log still shows them:
# Deno lists them under " FAILURES ", Bun marks each with "(fail)".
failures() {
	local f
	for f in "$log"/*.here "$log"/*.nested; do
		[ -e "$f" ] || continue
		plain "$f" |
			awk -v tag="$(basename "$f")" '/^ *FAILURES *$/ {on=1; next} /^(FAILED|ok) \|/ {on=0} on && NF {print tag ": " $0} /^\(fail\)/ {print tag ": " $0}'
	done
}
# Why each failed, briefly (a CI log may show only its tail): each error's
# first lines without the stack, at most 12 lines an error and 8 KB in all.
# Deno gathers them under " ERRORS "; Bun prints each above its "(fail)".
reasons() {
	local f
	for f in "$log"/*.here "$log"/*.nested; do
		[ -e "$f" ] || continue
		plain "$f" | awk -v tag="$(basename "$f")" '
			/^ *ERRORS *$/ {deno=1; next}
			/^ *FAILURES *$/ {deno=0}
			!deno && /^(error: |[A-Za-z]*Error: )/ {n=0; bun=1; print "-- " tag}
			/^\(fail\)/ {bun=0}
			/^ +at / || /^ *(generatedMessage|actual|expected|operator|diff|code): / || !NF {next}
			deno && / => / {n=0; print "-- " tag ": " $0; next}
			(deno || bun) && n++ < 12 {print "   " substr($0, 1, 200)}'
	done
}
why=$(reasons | head -c 8000)
[ -n "$why" ] && printf 'why they failed (first lines of each error):\n%s\n' "$why"
failed_names=$(failures)
[ -n "$failed_names" ] && printf 'failed tests:\n%s\n' "$failed_names"
dp=$(count deno passed) df=$(count deno failed) bp=$(count bun passed) bf=$(count bun failed)
echo "deno: $dp passed, $df failed; bun: $bp passed, $bf failed"
[ -e "$log/failed" ] && cat "$log/failed"
# A runner that failed without counting a failure (a crash, a timeout) still fails.
if [ $rc -ne 0 ] && [ $((df + bf)) -eq 0 ]; then df=1; fi
echo "$((dp + bp)) passed, $((df + bf)) failed"
exit $rc
