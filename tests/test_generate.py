"""test_generate.py -- `thaw generate` as a user runs it.

Runs the built ./thaw binary on the default model (skipped, with the reason, when `make model`
has not been run): a greedy chat answer that must be right, seeded sampling that repeats for
one seed and varies across seeds, the timing lines on stderr, every bad flag refused with exit
status 2 and a message naming the flag, a prompt too long for --ctx, prompt bytes that are not
UTF-8, a corrupted snapshot, an unsupported architecture (through `thaw pack` of the GGUF
fixture: crafting a snapshot by hand would need XXH3, which Python's stdlib lacks), and chat
template overrides. Generations are kept short so the whole file runs in seconds.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

from harness import check, skip, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THAW = os.path.join(ROOT, "thaw")
MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct.thaw")
GGUF_DIR = os.path.join(ROOT, "tests", "data", "gguf")
CONFIG_OFFSET = 4096 + 16  # FORMAT.md: the config section's payload


def thaw(*args, timeout=60):
    """Run ./thaw; str arguments give text output, bytes arguments bytes output."""
    if any(isinstance(a, bytes) for a in args):
        argv = [os.fsencode(THAW)] + [a if isinstance(a, bytes) else a.encode() for a in args]
        return subprocess.run(argv, capture_output=True, timeout=timeout)
    return subprocess.run([THAW, *args], capture_output=True, text=True, timeout=timeout)


def gen(*args, n=8):
    return thaw("generate", "-m", MODEL, "-n", str(n), *args)


def no_crash(r, what):
    """A signal shows up as a negative return code."""
    check(r.returncode >= 0, f"{what}: no crash", f"rc={r.returncode}")


def test_answer():
    r = gen("--chat", "-p", "What is the capital of France?", "--temp", "0", n=16)
    check(r.returncode == 0, "chat answer: exit 0", r.stderr)
    check("Paris" in r.stdout, "chat answer names Paris", r.stdout)


def test_timings():
    r = gen("-p", "Once upon a time", "--temp", "0", n=6)
    check(r.returncode == 0, "timings: exit 0", r.stderr)
    for name, pat in [
        ("prompt tokens", r"prompt tokens (\d+)"),
        ("time to first token", r"time to first token ([\d.]+) ms"),
        ("prompt tok/s", r"prompt ([\d.]+) tok/s"),
        ("decode tok/s", r"decode ([\d.]+) tok/s"),
    ]:
        m = re.search(pat, r.stderr)
        check(m is not None and float(m.group(1)) > 0, f"stderr reports {name}", r.stderr)


def test_seeds():
    # a chat prompt: as a raw prompt the instruct model ends its turn at once 3 times in 4
    args = ("--chat", "-p", "Write a short poem about the sea.", "--temp", "0.8")
    a = gen(*args, "--seed", "7", n=12)
    b = gen(*args, "--seed", "7", n=12)
    check(a.returncode == 0 and b.returncode == 0, "seeded sampling: exit 0", a.stderr + b.stderr)
    check(a.stdout == b.stdout and len(a.stdout.strip()) > 0, "same seed, same text", f"{a.stdout!r} vs {b.stdout!r}")
    texts = {gen(*args, "--seed", str(s), n=12).stdout for s in (1, 2, 3, 4)}
    check(len(texts) > 1, "different seeds give different text", repr(texts))


def test_bad_flags():
    cases = [
        (("-p", "hi", "-n", "0"), "-n"),
        (("-p", "hi", "-n", "-1"), "-n"),
        (("-p", "hi", "--temp", "5"), "--temp"),
        (("-p", "hi", "--top-p", "0"), "--top-p"),
        (("-p", "hi", "--seed", "abc"), "--seed"),
        (("-p", "hi", "--frobnicate"), "--frobnicate"),
        ((), "-p"),  # no prompt
    ]
    for args, flag in cases:
        r = thaw("generate", "-m", MODEL, *args)
        what = "generate " + " ".join(args) if args else "generate without -p"
        check(r.returncode == 2, f"{what}: exit 2", f"rc={r.returncode} stderr={r.stderr!r}")
        check(flag in r.stderr, f"{what}: message names {flag}", r.stderr)


def test_too_long():
    r = gen("-p", "hello world " * 100, "--ctx", "64")
    check(r.returncode == 1, "prompt past --ctx 64: exit 1", f"rc={r.returncode} stderr={r.stderr!r}")
    m = re.search(r"prompt has (\d+) tokens", r.stderr)
    check(m is not None and int(m.group(1)) > 64, "prompt past --ctx: message gives the prompt's tokens", r.stderr)
    check("holds 64" in r.stderr, "prompt past --ctx: message gives the context's 64", r.stderr)


def test_invalid_utf8():
    r = thaw("generate", "-m", MODEL, "-n", "4", "--temp", "0", "-p", b"abc \xff\xfe\xc3 z \xed\xa0\x80 \xf8\x88")
    no_crash(r, "invalid UTF-8 prompt")
    check(r.returncode == 0, "invalid UTF-8 prompt: exit 0", r.stderr)
    # bytes the vocab has no token for (never part of UTF-8): refused cleanly or generated from
    r = thaw("generate", "-m", MODEL, "-n", "4", "--temp", "0", "-p", b"\xff\xfe")
    no_crash(r, "prompt of bytes 0xff 0xfe")
    check(r.returncode in (0, 1) and r.stderr, "prompt of bytes 0xff 0xfe: exit 0 or 1 with a message", repr(r.stderr))


def test_bad_files(tmp):
    bad = os.path.join(tmp, "flipped.thaw")
    shutil.copyfile(MODEL, bad)
    with open(bad, "r+b") as f:  # one byte of the config's n_vocab
        f.seek(CONFIG_OFFSET + 4)
        b = f.read(1)
        f.seek(CONFIG_OFFSET + 4)
        f.write(bytes([b[0] ^ 0x01]))
    r = thaw("generate", "-m", bad, "-p", "hi", "-n", "2")
    no_crash(r, "flipped config byte")
    check(r.returncode == 1, "flipped config byte: exit 1", f"rc={r.returncode} stderr={r.stderr!r}")
    check(bad in r.stderr and "checksum" in r.stderr, "flipped config byte: message names the file and checksum",
          r.stderr)
    os.unlink(bad)

    missing = os.path.join(tmp, "nothing-here.thaw")
    r = thaw("generate", "-m", missing, "-p", "hi", "-n", "2")
    check(r.returncode == 1 and missing in r.stderr, "missing snapshot: exit 1 naming the file", r.stderr)

    out = os.path.join(tmp, "gpt2.thaw")
    r = thaw("pack", os.path.join(GGUF_DIR, "bad-arch-gpt2.gguf"), "-o", out)
    check(r.returncode == 1, "pack of a gpt2 GGUF: exit 1", f"rc={r.returncode} stderr={r.stderr!r}")
    check("gpt2" in r.stderr and "architecture" in r.stderr, "pack of a gpt2 GGUF: message names the architecture",
          r.stderr)
    check(not os.path.exists(out), "pack of a gpt2 GGUF: no file left behind", out)


def test_templates():
    r = gen("--chat", "-p", "hi", "--chat-template", "bogus")
    check(r.returncode == 1, "--chat-template bogus: exit 1", f"rc={r.returncode} stderr={r.stderr!r}")
    check("--chat-template" in r.stderr, "--chat-template bogus: message names --chat-template", r.stderr)
    r = gen("--chat", "-p", "hi", "--chat-template", "llama3", "--temp", "0", n=4)
    check(r.returncode == 0, "--chat --chat-template llama3 on SmolLM2: exit 0", r.stderr)
    r = gen("--chat", "--system", "Answer in one word.", "-p", "hi", "--temp", "0", n=4)
    check(r.returncode == 0, "--chat --system: exit 0", r.stderr)


def main():
    if not os.path.exists(THAW):
        skip(f"{THAW} is not built (make thaw)")
    elif not os.path.exists(MODEL):
        skip(f"{MODEL} is missing (make model)")
    else:
        test_answer()
        test_timings()
        test_seeds()
        test_bad_flags()
        test_too_long()
        test_invalid_utf8()
        test_templates()
        with tempfile.TemporaryDirectory() as tmp:
            test_bad_files(tmp)
    return summary("test_generate.py")


if __name__ == "__main__":
    sys.exit(main())
