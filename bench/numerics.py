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
def act(bits, only=OPS):
    """act_qmax for inputs of `bits` bits in the matmuls named, 16 (the engine's) elsewhere."""
    return {op: (1 << (bits - 1)) - 1 if op in only else 32767 for op in OPS}


CONFIGS = [  # (act name, act_qmax, K/V name, kv)
    ("f64", None, "f16", "f16"),
    ("int16", act(16), "f16", "f16"),
    ("int12", act(12), "f16", "f16"),
    ("int12@qkv", act(12, ("qkv",)), "f16", "f16"),
    ("int12@gu", act(12, ("gu",)), "f16", "f16"),
    ("int12@qkv,gu", act(12, ("qkv", "gu")), "f16", "f16"),
    ("int16", act(16), "i8", "i8"),
    ("int16", act(16), "k:f16,v:i8", ("f16", "i8")),
    ("int16", act(16), "k:f16,v:i8a", ("f16", "i8a")),
    ("int16", act(16), "k:i8c,v:f16", ("i8c", "f16")),
    ("int16", act(16), "k:i8c,v:i8c", ("i8c", "i8c")),
]


def main():
    model = load_model()
    prompts = read_prompts(os.path.join(LOGITS, "prompts.bin"))
    exact = read_top(os.path.join(LOGITS, "exact.bin"))
    if sum(len(ids) for ids in prompts) != len(exact):
        raise SystemExit("numerics: prompts.bin and exact.bin describe different positions")
    for act_name, qmax, kv_name, kv in CONFIGS:
        fwd = forward_factory(model, act_qmax=qmax, kv=kv)
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
