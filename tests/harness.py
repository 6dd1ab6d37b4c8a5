"""harness.py -- the small counting kit the Python tests share.

check() records one result and prints what failed with its detail; skip() counts a part that
could not run and prints why (never silent); summary() prints the closing line
"NAME: N passed, N failed, N skipped" and returns the exit status. chunk_table() reads a
snapshot's chunk table, for the tests that damage chunks on purpose.
"""
import struct
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


def chunk_table(path):
    """(file_offset, stored_size) of every chunk, from the header per FORMAT.md."""
    with open(path, "rb") as f:
        h = f.read(128)
        n_chunks = struct.unpack_from("<I", h, 40)[0]
        ct = struct.unpack_from("<Q", h, 80)[0]
        f.seek(ct)
        raw = f.read(32 * n_chunks)
    return [struct.unpack_from("<QI", raw, 32 * i) for i in range(n_chunks)]
