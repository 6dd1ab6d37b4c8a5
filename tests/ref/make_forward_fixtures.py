"""make_forward_fixtures.py -- reference logits for the tiny HF fixtures, from a NumPy
forward pass written from the architectures' definitions (float64 throughout).

Covers what the SmolLM2 reference cannot: Qwen2 (Q/K/V biases, tied embeddings, NEOX RoPE)
and Llama with Hugging Face's unpermuted Q/K (NEOX RoPE) and llama3 RoPE scaling.

    python3 tests/ref/make_forward_fixtures.py     # from the repository root

Writes tests/data/forward/NAME.tokens (uint32 LE ids) and NAME.logits (float32 LE,
[n_tokens][vocab]: the logits after each token).
"""
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HF = os.path.join(ROOT, "tests", "data", "hf")
OUT = os.path.join(ROOT, "tests", "data", "forward")


def load_weights(folder):
    """Reads safetensors by hand: NumPy has no bfloat16, so BF16 is widened bit-exactly."""
    import struct
    w = {}
    index = os.path.join(folder, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    for f in files:
        data = open(os.path.join(folder, f), "rb").read()
        n = struct.unpack_from("<Q", data, 0)[0]
        header = json.loads(data[8:8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            raw = data[base + a:base + b]
            if info["dtype"] == "BF16":
                u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                arr = u.view(np.float32)
            elif info["dtype"] == "F16":
                arr = np.frombuffer(raw, dtype=np.float16)
            else:
                arr = np.frombuffer(raw, dtype=np.float32)
            w[name] = arr.astype(np.float64).reshape(info["shape"])
    return w


def inv_freqs(cfg, head_dim):
    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        lo_wl, hi_wl = orig / lo, orig / hi
        out = []
        for f in inv:
            wl = 2 * np.pi / f
            if wl < hi_wl:
                out.append(f)
            elif wl > lo_wl:
                out.append(f / factor)
            else:
                s = (orig / wl - lo) / (hi - lo)
                out.append((1 - s) * f / factor + s * f)
        inv = np.array(out)
    elif rs and rs.get("rope_type", rs.get("type")) == "linear":
        inv = inv / rs["factor"]
    return inv


def rope_neox(x, pos, inv):
    # x: [heads, D]; rotate (i, i + D/2)
    d = x.shape[-1]
    ang = pos * inv
    c, s = np.cos(ang), np.sin(ang)
    x1, x2 = x[:, : d // 2], x[:, d // 2:]
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x) + eps) * w


def forward(folder, tokens):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    w = load_weights(folder)
    E, H = cfg["hidden_size"], cfg["num_attention_heads"]
    K = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim", E // H)
    eps = cfg["rms_norm_eps"]
    inv = inv_freqs(cfg, D)
    L = cfg["num_hidden_layers"]
    emb = w["model.embed_tokens.weight"]
    head = emb if cfg.get("tie_word_embeddings") or "lm_head.weight" not in w else w["lm_head.weight"]
    kcache = [[] for _ in range(L)]
    vcache = [[] for _ in range(L)]
    logits = []
    for pos, t in enumerate(tokens):
        x = emb[t].copy()
        for l in range(L):
            p = f"model.layers.{l}."
            h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
            q = w[p + "self_attn.q_proj.weight"] @ h + w.get(p + "self_attn.q_proj.bias", 0)
            k = w[p + "self_attn.k_proj.weight"] @ h + w.get(p + "self_attn.k_proj.bias", 0)
            v = w[p + "self_attn.v_proj.weight"] @ h + w.get(p + "self_attn.v_proj.bias", 0)
            q = rope_neox(q.reshape(H, D), pos, inv)
            k = rope_neox(k.reshape(K, D), pos, inv)
            kcache[l].append(k)
            vcache[l].append(v.reshape(K, D))
            ks, vs = np.stack(kcache[l]), np.stack(vcache[l])  # [pos+1, K, D]
            out = np.zeros((H, D))
            for hh in range(H):
                kv = hh // (H // K)
                sc = ks[:, kv, :] @ q[hh] / np.sqrt(D)
                sc = np.exp(sc - sc.max())
                sc /= sc.sum()
                out[hh] = sc @ vs[:, kv, :]
            x = x + w[p + "self_attn.o_proj.weight"] @ out.reshape(-1)
            h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
            g = w[p + "mlp.gate_proj.weight"] @ h
            u = w[p + "mlp.up_proj.weight"] @ h
            x = x + w[p + "mlp.down_proj.weight"] @ (g / (1 + np.exp(-g)) * u)
        logits.append(head @ rmsnorm(x, w["model.norm.weight"], eps))
    return np.array(logits, dtype=np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(7)
    for name in ("llama-tiny", "qwen2-tiny"):
        folder = os.path.join(HF, name)
        vocab = json.load(open(os.path.join(folder, "config.json")))["vocab_size"]
        tokens = rng.integers(0, vocab, size=40).astype(np.uint32)
        logits = forward(folder, [int(t) for t in tokens])
        tokens.astype("<u4").tofile(os.path.join(OUT, name + ".tokens"))
        logits.astype("<f4").tofile(os.path.join(OUT, name + ".logits"))
        print(name, logits.shape, float(np.abs(logits).max()))


if __name__ == "__main__":
    main()
