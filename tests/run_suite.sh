#!/bin/sh
# `make test`: the whole suite as four pytest processes side by side. One keeps about 0.7 of a
# core busy on average (many tests wait on servers, leases and deadlines): three used 162 % of
# this 2-core machine, four use 187 % and end in 443 s where three took 500 s (2026-12-04, the
# same host an hour apart). The groups below run in the background and show their reports when
# done; every other folder, including any new one, runs in the foreground. They were balanced by
# their durations (`--durations=0`).
# Arguments go to every process; the exit status is the first failing one's. pytest's 5 ("no
# tests collected") is named here, because `make` reports any failing command as 2: an empty
# selection is a broken suite, not a pass.
set -u
PY="$1"
shift
# Each line is one background process's folders and files, and any `--ignore=` of its own (a
# subfolder another line runs). The engine tests run DuckDB in the process; the
# remote-datasource tests share MariaDB's and PostgreSQL's `test` databases, so they stay in one
# process. (Not named GROUPS, which bash reserves.)
BACKGROUND_GROUPS="tests/api_server --ignore=tests/api_server/uploads --ignore=tests/api_server/file_areas
tests/contract tests/shared tests/e2e/test_launcher.py tests/api_server/file_areas
tests/sql_templating tests/data_server/test_engine.py tests/data_server/remote_datasources tests/client tests/e2e/executions tests/data_server/test_sql_sandbox.py tests/api_server/uploads"

# A subfolder one line leaves out must be another line's, or nothing would run it (the foreground
# leaves out every folder a line names, with its subfolders).
# shellcheck disable=SC2086 # flattened to one line of words on purpose
all_named=" $(echo $BACKGROUND_GROUPS) "
for word in $BACKGROUND_GROUPS; do
    case "$word" in
        --ignore=*)
            case "$all_named" in
                *" ${word#--ignore=} "*) ;;
                *)
                    echo "run_suite.sh: ${word#--ignore=} is left out by one group and run by none" >&2
                    exit 2
                    ;;
            esac
            ;;
    esac
done

logs=""
pids=""
ignored=""
newline='
'
old_ifs="$IFS"
IFS="$newline"
for group in $BACKGROUND_GROUPS; do
    IFS="$old_ifs"
    log="$(mktemp)"
    printf '\n=== background tests: %s ===\n' "$group" >"$log"
    # shellcheck disable=SC2086 # the folder list is meant to split
    "$PY" -m pytest -p no:cacheprovider "$@" $group >>"$log" 2>&1 &
    pids="$pids $!"
    logs="$logs $log"
    for folder in $group; do
        case "$folder" in
            --*) ;;
            *) ignored="$ignored --ignore=$folder" ;;
        esac
    done
    IFS="$newline"
done
IFS="$old_ifs"

# shellcheck disable=SC2086
"$PY" -m pytest "$@" $ignored
first_failure=$?
if [ "$first_failure" -eq 5 ]; then
    echo "pytest collected no tests (exit code 5): that is a broken suite, not a pass" >&2
fi

set -- $logs
for pid in $pids; do
    wait "$pid"
    status=$?
    cat "$1"
    rm -f "$1"
    shift
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests (exit code 5): that is a broken suite, not a pass" >&2
    fi
    if [ "$first_failure" -eq 0 ]; then
        first_failure=$status
    fi
done
exit "$first_failure"
