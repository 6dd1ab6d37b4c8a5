"""numerics.py -- what a rounding inside the forward pass costs in logits, on the default model.

    python3 bench/numerics.py        # from the repository root; needs gguf and numpy (tests/ref)

The float64 forward of tests/ref/make_logits_fixtures.py runs the logits fixture's 24 prompts
(tests/data/logits/prompts.bin, 613 positions) with the engine's roundings simulated: matmul
inputs quantized per 32 to integers of a given width (the CPU engine: 16 bits; "int12@qkv,gu"
rounds only those matmuls' inputs to 12 bits), K/V kept in f16 (the engine) or int8 (round_kv's
modes: per position, with or without a zero point, or per channel over each 16-position KV
block). Each configuration is compared with the exact forward's record of the same prompts
(exact.bin) by the measure tests/test_logits.c bounds, the largest logit difference over each
position's exact top 32 (bound 0.08 there), and top-1 agreement:

    numerics act=int16 kv=f16 max_logit_diff=0.0239 bound=0.08 ratio=0.30 top1=613/613

The simulation rounds only where named (the engine's f32 sums round too), so it answers
"what does this choice cost" rather than reproducing the engine's figure (0.036, measured).
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGITS = os.path.join(ROOT, "tests", "data", "logits")
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
from logits_io import read_prompts, read_top  # noqa: E402
from make_logits_fixtures import OPS, forward_factory, load_model  # noqa: E402

BOUND = 0.08  # tests/test_logits.c
CONFIGS = [  # (bits of the named matmuls' inputs, 16 elsewhere; None: exact; K/V form, or a (K, V) pair)
    (None, OPS, "f16"),
    (16, OPS, "f16"),
    (12, OPS, "f16"),
    (12, ("qkv",), "f16"),
    (12, ("gu",), "f16"),
    (12, ("qkv", "gu"), "f16"),
    (16, OPS, "i8"),
    (16, OPS, ("f16", "i8")),
    (16, OPS, ("f16", "i8a")),
    (16, OPS, ("i8c", "f16")),
    (16, OPS, ("i8c", "i8c")),
]


def act_qmax(bits, only):
    """forward_factory's act_qmax: `bits`-bit inputs in the matmuls named, 16 (the engine's) elsewhere."""
    return None if bits is None else {op: (1 << (bits - 1)) - 1 if op in only else 32767 for op in OPS}


def names(bits, only, kv):
    act = "f64" if bits is None else f"int{bits}" + ("" if only == OPS else "@" + ",".join(only))
    return act, kv if isinstance(kv, str) else f"k:{kv[0]},v:{kv[1]}"


def main():
    model = load_model()
    prompts = read_prompts(os.path.join(LOGITS, "prompts.bin"))
    exact = read_top(os.path.join(LOGITS, "exact.bin"))
    if sum(len(ids) for ids in prompts) != len(exact):
        raise SystemExit("numerics: prompts.bin and exact.bin describe different positions")
    for bits, only, kv in CONFIGS:
        act_name, kv_name = names(bits, only, kv)
        fwd = forward_factory(model, act_qmax=act_qmax(bits, only), kv=kv)
        rows = (row for ids in prompts for row in fwd(ids))
        worst, agree = 0.0, 0
        for (top, logit), y in zip(exact, rows):
            worst = max(worst, float(np.abs(y[top] - logit).max()))
            agree += int(np.argmax(y) == top[0])
        print(f"numerics act={act_name} kv={kv_name} max_logit_diff={worst:.4f} bound={BOUND} ratio={worst / BOUND:.2f} "
              f"top1={agree}/{len(exact)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
