#!/usr/bin/env bash
# `make test` beside N busy loops (default 6: 4x oversubscription of a 2-core machine), the
# shared-CI condition the suite must hold in (docs/testing.md); RUNS=2 runs it twice in a row
# and stops at the first failure. The loops end with the script, by their own PIDs, however it ends.
set -uo pipefail
cd "$(dirname "$0")/.."
loops="${BUSY_LOOPS:-6}"
runs="${RUNS:-1}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
for _ in $(seq "$loops"); do
	yes >/dev/null &
	pids+=($!)
done
echo "make test beside $loops busy loops (pids ${pids[*]}), $runs run(s)"
for run in $(seq "$runs"); do
	start=$(date +%s)
	make test
	rc=$?
	echo "make test run $run/$runs exited $rc after $(($(date +%s) - start)) s beside $loops busy loops"
	[ "$rc" -eq 0 ] || exit "$rc"
done
