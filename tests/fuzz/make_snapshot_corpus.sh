#!/bin/sh
# make_snapshot_corpus.sh -- seeds for fuzz_snapshot: small valid snapshots packed from the
# committed HF fixtures, and cut/damaged copies of one. Run from the repo root after `make`.
set -eu
out=tests/fuzz/corpus/snapshot
mkdir -p "$out"
./thaw pack tests/data/hf/llama-tiny -o "$out/llama-tiny-q4-cpu.thaw" --quant q4 --target cpu
./thaw pack tests/data/hf/qwen2-tiny -o "$out/qwen2-tiny-q8-cuda.thaw" --quant q8 --target cuda
src="$out/llama-tiny-q4-cpu.thaw"
head -c 128 "$src" >"$out/header-only.bin"
head -c 8192 "$src" >"$out/metadata-cut.bin"
python3 - "$src" "$out/flipped-meta.bin" <<'PY'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
b[4096 + 64] ^= 0xFF
open(sys.argv[2], "wb").write(b)
PY
