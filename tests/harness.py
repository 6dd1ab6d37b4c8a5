"""harness.py -- the small counting kit the Python tests share.

check() records one result and prints what failed with its detail; skip() counts a part that
could not run and prints why (never silent); summary() prints the closing line
"NAME: N passed, N failed, N skipped" and returns the exit status.
"""
import sys

passed = failed = skipped = 0


def check(cond, what, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}\n    {detail}", file=sys.stderr)
    return bool(cond)


def skip(reason):
    global skipped
    skipped += 1
    print(f"skipped: {reason}", file=sys.stderr)


def summary(name):
    print(f"{name}: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0
