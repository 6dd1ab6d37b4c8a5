"""test_cli.py -- `thaw pack` and `thaw inspect` as a user runs them.

Runs the built ./thaw binary on the committed fixtures and, when `make model` has been run,
on the default model: pack, inspect --verify, a flipped byte in every chunk of the data area
named by --verify, truncation and other bad files failing with one clear line (never a
signal), and the packer refusing bad sources without leaving a file behind.
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile

from harness import check, chunk_table, skip, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THAW = os.path.join(ROOT, "thaw")
MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct.thaw")
GGUF_DIR = os.path.join(ROOT, "tests", "data", "gguf")
HF_DIR = os.path.join(ROOT, "tests", "data", "hf")


def thaw(*args, timeout=120):
    return subprocess.run([THAW, *args], capture_output=True, text=True, timeout=timeout)


def clean_failure(r, what, *needles):
    """exit status 1, one message on stderr naming what it should, no crash."""
    check(r.returncode == 1, f"{what}: exit 1", f"rc={r.returncode} stderr={r.stderr!r}")
    for n in needles:
        check(n in r.stderr, f"{what}: message names {n!r}", r.stderr)


def test_usage(tmp):
    r = thaw()
    check(r.returncode == 2 and "usage" in r.stderr, "no command prints usage", r.stderr)
    r = thaw("frobnicate")
    check(r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr, "unknown command", r.stderr)
    r = thaw("pack", "x.gguf")
    check(r.returncode == 2, "pack without -o is a usage error", r.stderr)
    r = thaw("pack", "x.gguf", "-o", "y", "--quant", "q3")
    check(r.returncode == 2 and "--quant" in r.stderr, "bad --quant", r.stderr)
    for cmd in ("pack", "inspect", "generate", "serve"):  # --help: usage on stdout, success
        r = thaw(cmd, "--help")
        check(r.returncode == 0 and "usage" in r.stdout.lower(), f"{cmd} --help", r.stdout + r.stderr)


def verify_corruptions(path, tmp, label, n_flips):
    r = thaw("inspect", "--verify", path)
    check(r.returncode == 0 and "verify     ok" in r.stdout, f"{label}: inspect --verify passes", r.stderr)
    chunks = chunk_table(path)
    bad = os.path.join(tmp, "bad.thaw")
    rng = random.Random(1234)
    picks = list(range(len(chunks))) if len(chunks) <= n_flips else rng.sample(range(len(chunks)), n_flips)
    for i in picks:
        off, size = chunks[i]
        shutil.copyfile(path, bad)
        pos = off + rng.randrange(size)
        with open(bad, "r+b") as f:
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0x01]))
        r = thaw("inspect", "--verify", "--no-tensors", bad)
        clean_failure(r, f"{label}: byte {pos} flipped in chunk {i}", f"chunk {i} at file offset {off}",
                      "checksum mismatch")
    size = os.path.getsize(path)
    for cut in sorted({0, 1, 100, 4096, 5000, size // 2, size - 4096, size - 1}):
        with open(path, "rb") as src, open(bad, "wb") as dst:
            dst.write(src.read(cut))
        r = thaw("inspect", "--verify", bad)
        clean_failure(r, f"{label}: truncated to {cut} bytes", bad)


def test_default_model(tmp):
    if not os.path.exists(MODEL):
        skip("default model not present (run `make model`)")
        return
    r = thaw("inspect", MODEL)
    check(r.returncode == 0, "inspect the default model", r.stderr)
    for want in ("arch llama", "layers 30, embd 576, heads 9/3 kv", "vocab 49152", "tied embeddings",
                 "pre-tokenizer smollm", "48900 merges", "blk.29.ffn_down.weight"):
        check(want in r.stdout, f"default model inspect shows {want!r}", r.stdout[:2000])
    verify_corruptions(MODEL, tmp, "default model", n_flips=6)


def test_pack_fixtures(tmp):
    srcs = []
    if os.path.isdir(GGUF_DIR):
        srcs += [os.path.join(GGUF_DIR, f) for f in sorted(os.listdir(GGUF_DIR))
                 if f.endswith(".gguf") and not f.startswith("bad")]
    if os.path.isdir(HF_DIR):
        srcs += [os.path.join(HF_DIR, d) for d in sorted(os.listdir(HF_DIR)) if not d.startswith("bad")]
    if not srcs:
        skip("no fixtures in tests/data")
        return
    for src in srcs:
        for quant in ("q4", "q8", "f16"):
            for target in ("cpu", "cuda"):
                out = os.path.join(tmp, f"fixture-{quant}-{target}.thaw")
                r = thaw("pack", src, "-o", out, "--quant", quant, "--target", target)
                check(r.returncode == 0 and os.path.exists(out), f"pack {os.path.basename(src)} {quant} {target}",
                      r.stderr)
                if r.returncode:
                    continue
                check(r.stderr == "", "pack is quiet when stderr is not a terminal", r.stderr)
                r = thaw("inspect", "--verify", out)
                check(r.returncode == 0, f"verify packed {os.path.basename(src)} {quant} {target}", r.stderr)
                check(f"target {target}, quant {quant}" in r.stdout, "inspect shows target and quant", r.stdout[:300])
    verify_corruptions(out, tmp, "fixture", n_flips=3)


def test_pack_refuses_bad_sources(tmp):
    out = os.path.join(tmp, "never.thaw")
    bad = []
    if os.path.isdir(GGUF_DIR):
        bad += [os.path.join(GGUF_DIR, f) for f in sorted(os.listdir(GGUF_DIR)) if f.startswith("bad")]
    if os.path.isdir(HF_DIR):
        bad += [os.path.join(HF_DIR, d) for d in sorted(os.listdir(HF_DIR)) if d.startswith("bad")]
    empty = os.path.join(tmp, "empty.gguf")
    open(empty, "wb").close()
    junk = os.path.join(tmp, "junk.gguf")
    with open(junk, "wb") as f:
        f.write(b"this is not a model" * 100)
    for src in bad + [empty, junk, os.path.join(tmp, "missing.gguf")]:
        r = thaw("pack", src, "-o", out)
        clean_failure(r, f"pack {os.path.basename(src)}", os.path.basename(src))
        left = [f for f in os.listdir(tmp) if f.startswith(os.path.basename(out))]
        check(not left, f"pack {os.path.basename(src)} leaves no file", left)
    # a source named like the output's old temporary file (OUT.tmp) is read, not overwritten
    src = os.path.join(tmp, "same.thaw.tmp")
    shutil.copy(os.path.join(GGUF_DIR, "llama-f32.gguf"), src)
    size = os.path.getsize(src)
    r = thaw("pack", src, "-o", os.path.join(tmp, "same.thaw"))
    check(r.returncode == 0 and os.path.getsize(src) == size, "pack OUT.tmp -o OUT keeps its source", r.stderr)


def main():
    if not os.access(THAW, os.X_OK):
        print(f"{THAW} is not built", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for t in (test_usage, test_pack_fixtures, test_pack_refuses_bad_sources, test_default_model):
            t(tmp)
    return summary("test_cli.py")


if __name__ == "__main__":
    sys.exit(main())
