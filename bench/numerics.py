"""numerics.py -- what a rounding inside the forward pass costs in logits, on the default model.

    python3 bench/numerics.py        # from the repository root; needs gguf and numpy (tests/ref)

The float64 forward of tests/ref/make_logits_fixtures.py runs the logits fixture's 24 prompts
(tests/data/logits/prompts.bin, 613 positions) once exactly and once per configuration with
the engine's roundings simulated: matmul inputs quantized per 32 to integers of a given
width (the CPU engine: 16 bits), K/V kept in f16 (the engine) or int8. For each it prints the
measure tests/test_logits.c bounds, the largest logit difference over each position's exact
top 32 (bound 0.08), and top-1 agreement:

    numerics act=int16 kv=f16 max_logit_diff=0.0239 bound=0.08 ratio=0.30 top1=613/613

The simulation rounds only where named (the engine's f32 sums round too), so it answers
"what does this choice cost" rather than reproducing the engine's figure (0.036, measured).
"""
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
from make_logits_fixtures import forward_factory, load_model  # noqa: E402

BOUND = 0.08
CONFIGS = [  # (act name, integer range of a matmul input, K/V)
    ("f64", None, "f16"),
    ("int16", 32767, "f16"),
    ("int12", 2047, "f16"),
    ("int16", 32767, "i8"),
]


def prompts():
    buf = open(os.path.join(ROOT, "tests", "data", "logits", "prompts.bin"), "rb").read()
    out, o = [], 0
    while o < len(buf):
        n = struct.unpack_from("<I", buf, o)[0]
        out.append(list(struct.unpack_from(f"<{n}I", buf, o + 4)))
        o += 4 + 4 * n
    return out


def main():
    model = load_model()
    ids = prompts()
    exact = [forward_factory(model)(p) for p in ids]
    for act, qmax, kv in CONFIGS:
        fwd = forward_factory(model, act_qmax=qmax, kv=kv)
        worst, agree, n = 0.0, 0, 0
        for p, ex in zip(ids, exact):
            for e, y in zip(ex, fwd(p)):
                top = np.argsort(-e)[:32]
                worst = max(worst, float(np.abs(e[top] - y[top]).max()))
                agree += int(np.argmax(y) == np.argmax(e))
                n += 1
        print(f"numerics act={act} kv={kv} max_logit_diff={worst:.4f} bound={BOUND} ratio={worst / BOUND:.2f} "
              f"top1={agree}/{n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
