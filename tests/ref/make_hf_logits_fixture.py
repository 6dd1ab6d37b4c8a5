"""make_hf_logits_fixture.py -- a third reference for tests/test_logits.c: Hugging Face
transformers reading the same GGUF (transformers dequantizes GGUF weights into an ordinary
PyTorch Llama model), run in float32 on the token ids of prompts.bin and on the perplexity
windows of ppl.bin, both written by make_logits_fixtures.py.

    /tmp/refvenv/bin/pip install torch transformers gguf numpy
    /tmp/refvenv/bin/python tests/ref/make_hf_logits_fixture.py    # from the repository root

Files in tests/data/logits/:
  hf.bin       per position (prompts in order): f32 logsumexp, then 32 x (u32 id, f32 logit)
  hf_ppl.txt   its perplexity on ppl.bin's windows
"""
import os
import struct
import sys

from logits_io import perplexity, read_prompts, write_top
import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "tests", "data", "logits")


def main():
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()

    def logits(ids):
        with torch.no_grad():
            out = model(torch.tensor([ids], dtype=torch.long))
        return out.logits[0].double().numpy()

    n_pos = 0
    with open(os.path.join(OUT, "hf.bin"), "wb") as f:
        for ids in read_prompts(os.path.join(OUT, "prompts.bin")):
            for row in logits(ids):
                write_top(f, row)
            n_pos += len(ids)
    print(f"{n_pos} positions")

    data = open(os.path.join(OUT, "ppl.bin"), "rb").read()
    window, n_windows = struct.unpack_from("<II", data, 0)
    ids = list(struct.unpack_from(f"<{window * n_windows}I", data, 8))
    chunks = [ids[w * window:(w + 1) * window] for w in range(n_windows)]
    ppl = perplexity((chunk, logits(chunk)) for chunk in chunks)
    with open(os.path.join(OUT, "hf_ppl.txt"), "w") as f:
        f.write(f"{ppl:.6f}\n")
    print(f"perplexity on GPL-3 ({n_windows} windows of {window}): {ppl:.4f}")


if __name__ == "__main__":
    sys.exit(main())
