#!/bin/sh
# run.sh BUILD -- runs every test program, the fuzz corpus replays and the integration
# tests; prints one summary line "N passed, N failed" and exits nonzero on any failure.
build=${1:-build}
pass=0 fail=0 skip=0 failed=""
run() { # name, command...
    name=$1; shift
    log=$build/logs/$name.log
    mkdir -p "$build/logs"
    start=$(date +%s)
    if "$@" >"$log" 2>&1; then
        status=ok
    else
        status=FAIL
    fi
    # a program that skipped any test says so in its log: surface that
    if grep -q '^SKIP\|skipped:' "$log"; then
        skip=$((skip + 1))
        grep 'skipped:' "$log" | sed "s/^/  $name: /"
    fi
    if [ $status = ok ]; then
        pass=$((pass + 1))
        echo "ok    $name ($(( $(date +%s) - start ))s)"
    else
        fail=$((fail + 1)); failed="$failed $name"
        echo "FAIL  $name -- log: $log"
        tail -n 30 "$log" | sed 's/^/    /'
    fi
}
for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    run "$(basename "$t")" "$t"
done
for f in "$build"/fuzz/fuzz_*; do
    [ -x "$f" ] || continue
    n=$(basename "$f"); corpus=tests/fuzz/corpus/${n#fuzz_}
    run "$n-corpus" "$f" "$corpus"
done
for s in tests/test_*.sh; do
    [ -f "$s" ] || continue
    run "$(basename "$s" .sh)" sh "$s" "$build"
done
# the Python tests' packages (tests/requirements.txt) live in .venv (make pydeps)
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
for p in tests/test_*.py; do
    [ -f "$p" ] || continue
    run "$(basename "$p" .py)" "$py" "$p"
done
echo "test programs with skipped cases: $skip"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] || { echo "failed:$failed"; exit 1; }
