"""make_logits_fixtures.py -- reference logits and perplexity for the default model from two
independent implementations reading the same GGUF:

  llama.cpp (llama-cpp-python from PyPI): the engine most GGUF users run. It rounds
      activations to 8 bits (q8_1/q8_0 blocks) and keeps K/V in f16, so it is close to, not
      equal to, what the stored weights compute.
  exact: the weights dequantized by the `gguf` package and the Llama forward pass in NumPy
      float64, written from the architecture's definition (RMSNorm, adjacent-pair RoPE as
      GGUF's permuted Q/K need, grouped-query attention, SwiGLU, tied head). This is what the
      model means; llama.cpp itself agrees with it on ~98 % of top-1 choices.

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install llama-cpp-python numpy
    /tmp/refvenv/bin/python tests/ref/make_logits_fixtures.py   # from the repository root

The full logits of 600 positions over a 49152-token vocabulary would be 118 MB, so for each
position the fixture keeps the reference's top 32 (id, logit) pairs and its log-sum-exp;
the C test compares our logits at those ids (largest difference), our argmax with theirs
(top-1 agreement), and our log-probabilities. Token ids come from llama.cpp's tokenizer and
are fed to both engines, so the comparison isolates the forward pass.

Files in tests/data/logits/:
  prompts.bin   per prompt: u32 n, then n x u32 token ids
  top.bin       llama.cpp, per position (prompts in order): f32 logsumexp, then 32 x (u32 id, f32 logit)
  exact.bin     the float64 forward, same layout
  ppl.bin       u32 window, u32 n_windows, then n_windows*window u32 ids (GPL-3 text)
  ppl.txt       the reference perplexity
"""
import os
import struct
import sys

import gguf
import numpy as np
from logits_io import perplexity, write_prompt, write_top
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "tests", "data", "logits")
WINDOW, N_WINDOWS = 512, 4

CHAT = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [
    CHAT.format("What is the capital of France?"),
    CHAT.format("Write a haiku about the sea."),
    CHAT.format("Explain what a hash table is in two sentences."),
    CHAT.format("How many legs does a spider have?"),
    CHAT.format("Translate 'good morning' into Spanish and German."),
    CHAT.format("List three prime numbers greater than 100."),
    CHAT.format("What is 17 times 23?"),
    CHAT.format("Give me a short recipe for pancakes."),
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "#include <stdio.h>\n\nint main(void)\n{\n    printf(\"hello, world\\n\");\n",
    "Once upon a time, in a small village at the foot of the mountains, there lived",
    "In 1969, Neil Armstrong became the first person to",
    "The mitochondria is the powerhouse of the",
    "1, 1, 2, 3, 5, 8, 13, 21, 34,",
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of",
    "SELECT name, email FROM users WHERE",
    "Water boils at 100 degrees Celsius at sea level, but at higher altitudes",
    "東京は日本の首都です。",
    "Les chats sont des animaux domestiques qui",
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer",
    "Q: What is the largest planet in our solar system?\nA:",
    "import numpy as np\nx = np.arange(10)\nprint(x.",
    CHAT.format("Summarize the plot of Romeo and Juliet in one paragraph."),
]


def load_model():
    """The GGUF's weights dequantized to float64, and the shapes the forward needs."""
    r = gguf.GGUFReader(GGUF)
    W = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        W[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if len(t.shape) > 1 else a.reshape(-1)
    f = {k: r.fields[k].contents() for k in ("llama.embedding_length", "llama.attention.head_count",
                                               "llama.attention.head_count_kv", "llama.block_count",
                                               "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base")}
    return W, f


def round_sym(x, qmax, axis=-1):
    """x quantized to integers in [-qmax, qmax] with one scale (max|x| / qmax) along axis."""
    s = np.abs(x).max(axis, keepdims=True) / qmax
    s[s == 0] = 1
    return np.clip(np.round(x / s), -qmax, qmax) * s


def round_asym(x, axis):
    """x quantized to 256 levels between its min and max along axis (int8 with a zero point)."""
    lo, hi = x.min(axis, keepdims=True), x.max(axis, keepdims=True)
    s = (hi - lo) / 255
    s[s == 0] = 1
    return np.round((x - lo) / s) * s + lo


def round_blocks(x, qmax):
    """x as quantizing each run of 32 to integers in [-qmax, qmax] (scale max|x| / qmax)
    leaves it: the CPU engine's matmul inputs use qmax 32767. x itself when qmax is None."""
    if qmax is None:
        return x
    return round_sym(x.reshape(x.shape[0], -1, 32), qmax).reshape(x.shape)


def round_kv(x, kv):
    """K or V [T, K, D] as a cache keeps them: exact (None), f16, or int8 -- "i8" with a scale
    per position and head, "i8a" the same with a zero point, "i8c" with a scale and zero point
    per channel over each full KV block of 16 positions (keys' outlier channels), as a cache
    that quantizes a block once it fills keeps them at the end; the last, partial block stays
    f16. The forward shows each query its own block in f16 (it was not full yet)."""
    if kv == "f16":
        return x.astype(np.float16).astype(np.float64)
    if kv == "i8":
        return round_sym(x, 127)
    if kv == "i8a":
        return round_asym(x, -1)
    if kv == "i8c":
        full = x.shape[0] // 16 * 16
        out = round_kv(x, "f16")
        if full:
            out[:full] = round_asym(x[:full].reshape(-1, 16, *x.shape[1:]), 1).reshape(full, *x.shape[1:])
        return out
    return x


OPS = ("qkv", "wo", "gu", "down", "head")  # the matmuls, by their inputs


def forward_factory(model=None, act_qmax=None, kv=None):
    """The Llama forward in float64; with act_qmax / kv set, matmul inputs / K and V are
    rounded as round_blocks / round_kv say (bench/numerics.py studies what each costs).
    act_qmax may be a dict by matmul (OPS), kv a (K, V) pair."""
    qmax = act_qmax if isinstance(act_qmax, dict) else dict.fromkeys(OPS, act_qmax)
    k_kv, v_kv = kv if isinstance(kv, tuple) else (kv, kv)
    by_block = "i8c" in (k_kv, v_kv)
    W, f = model or load_model()
    E, H, K, L = (f["llama.embedding_length"], f["llama.attention.head_count"],
                  f["llama.attention.head_count_kv"], f["llama.block_count"])
    eps, theta, D = f["llama.attention.layer_norm_rms_epsilon"], f["llama.rope.freq_base"], E // H
    inv = theta ** (-np.arange(0, D, 2) / D)
    head = W.get("output.weight", W["token_embd.weight"])

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x, pos):  # GGUF Llama: rotate adjacent pairs (2i, 2i+1)
        ang = pos[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
        out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return out

    def mm(x, w, op):
        return round_blocks(x, qmax[op]) @ w.T

    def forward(ids):
        T = len(ids)
        pos = np.arange(T, dtype=np.float64)
        x = W["token_embd.weight"][ids]
        mask = np.triu(np.full((T, T), -np.inf), 1)
        full = np.arange(T)[None, :] < (np.arange(T) // 16 * 16)[:, None]  # key j's block full for query i
        for l in range(L):
            p = f"blk.{l}."
            h = rms(x, W[p + "attn_norm.weight"])
            q = rope(mm(h, W[p + "attn_q.weight"], "qkv").reshape(T, H, D), pos)
            k0 = rope(mm(h, W[p + "attn_k.weight"], "qkv").reshape(T, K, D), pos)
            v0 = mm(h, W[p + "attn_v.weight"], "qkv").reshape(T, K, D)
            k, v = round_kv(k0, k_kv), round_kv(v0, v_kv)
            if by_block:  # what a query sees of its own, unfinished block
                kn = round_kv(k0, "f16") if k_kv == "i8c" else k
                vn = round_kv(v0, "f16") if v_kv == "i8c" else v
            out = np.zeros((T, H, D))
            for hh in range(H):
                g = hh // (H // K)
                if by_block:
                    sc = np.where(full, q[:, hh, :] @ k[:, g, :].T, q[:, hh, :] @ kn[:, g, :].T) / np.sqrt(D) + mask
                else:
                    sc = q[:, hh, :] @ k[:, g, :].T / np.sqrt(D) + mask
                sc = np.exp(sc - sc.max(-1, keepdims=True))
                sc /= sc.sum(-1, keepdims=True)
                out[:, hh, :] = (sc * full) @ v[:, g, :] + (sc * ~full) @ vn[:, g, :] if by_block else sc @ v[:, g, :]
            x = x + mm(out.reshape(T, -1), W[p + "attn_output.weight"], "wo")
            h = rms(x, W[p + "ffn_norm.weight"])
            g, u = mm(h, W[p + "ffn_gate.weight"], "gu"), mm(h, W[p + "ffn_up.weight"], "gu")
            x = x + mm(g / (1 + np.exp(-g)) * u, W[p + "ffn_down.weight"], "down")
        return mm(rms(x, W["output_norm.weight"]), head, "head")

    return forward


def main():
    from llama_cpp import Llama  # here, so the forward above imports without it

    llm = Llama(model_path=GGUF, n_ctx=2048, logits_all=True, n_threads=2, n_batch=512, verbose=False)
    os.makedirs(OUT, exist_ok=True)

    def llama_logits(ids):
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)

    exact = forward_factory()
    n_pos = 0
    with open(os.path.join(OUT, "prompts.bin"), "wb") as fp, open(os.path.join(OUT, "top.bin"), "wb") as ft, \
            open(os.path.join(OUT, "exact.bin"), "wb") as fe:
        for text in PROMPTS:
            ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            scores = llama_logits(ids)
            write_prompt(fp, ids)
            for row in scores:
                write_top(ft, row)
            for row in exact(ids):
                write_top(fe, row)
            n_pos += len(ids)
    print(f"{len(PROMPTS)} prompts, {n_pos} positions")

    text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    need = WINDOW * N_WINDOWS
    assert len(ids) >= need, len(ids)
    ids = ids[:need]

    chunks = [ids[w * WINDOW:(w + 1) * WINDOW] for w in range(N_WINDOWS)]
    ppl = perplexity((chunk, llama_logits(chunk)) for chunk in chunks)
    with open(os.path.join(OUT, "ppl.bin"), "wb") as f:
        f.write(struct.pack("<II", WINDOW, N_WINDOWS) + struct.pack(f"<{need}I", *ids))
    with open(os.path.join(OUT, "ppl.txt"), "w") as f:
        f.write(f"{ppl:.6f}\n")
    print(f"perplexity on GPL-3 ({N_WINDOWS} windows of {WINDOW}): {ppl:.4f}")


if __name__ == "__main__":
    sys.exit(main())
