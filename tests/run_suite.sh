#!/bin/sh
# `make test`: the whole suite as two pytest processes side by side, because each keeps about one
# of two cores busy on average. The in-process tests (IN_PROCESS below) run in the background and
# show their report when done; every other folder, including any new one, runs in the foreground
# (these start servers, workers and clients). Arguments go to both; the exit status is the first
# failing one's. pytest's 5 ("no tests collected") is named here, because `make` reports any
# failing command as 2: an empty selection is a broken suite, not a pass.
set -u
PY="$1"
shift
# The engine tests run DuckDB in this process; they are here for balance (about 20 s).
IN_PROCESS="tests/api_server tests/contract tests/shared tests/sql_templating tests/data_server/test_engine.py"

log="$(mktemp)"
# shellcheck disable=SC2086 # the folder list is meant to split
"$PY" -m pytest -p no:cacheprovider "$@" $IN_PROCESS >"$log" 2>&1 &
background=$!

ignored=""
for folder in $IN_PROCESS; do
    ignored="$ignored --ignore=$folder"
done
# shellcheck disable=SC2086
"$PY" -m pytest "$@" $ignored
foreground=$?

wait "$background"
background_status=$?
echo
echo "=== in-process tests ($IN_PROCESS) ==="
cat "$log"
rm -f "$log"

for status in "$foreground" "$background_status"; do
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests (exit code 5): that is a broken suite, not a pass" >&2
    fi
done
if [ "$foreground" -ne 0 ]; then
    exit "$foreground"
fi
exit "$background_status"
