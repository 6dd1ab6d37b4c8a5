#!/usr/bin/env python3
"""Write tiny Hugging Face model folders into tests/data/hf/ for tests/test_hf.c.

Uses the official `safetensors` and `tokenizers` packages (pip install safetensors
tokenizers numpy), so the C reader is checked against files written, and values read
back, by an independent implementation. Deterministic: fixed seed, fixed corpus.

    python3 tests/ref/make_hf_fixtures.py            # from the repository root

Folders:
  llama-tiny     llama, BF16, one model.safetensors (plus an ignored rotary inv_freq),
                 untied lm_head, llama3 rope scaling, byte-level BPE with the SmolLM
                 pre-tokenizer (Digits + ByteLevel), legacy "a b" merges, ChatML template.
  qwen2-tiny     qwen2, F16, q/k/v biases, tied embeddings (no lm_head), two shards with
                 model.safetensors.index.json, Qwen2 Split regex, [a, b] merges, a list of
                 named chat templates, generation_config with two eos ids.
  bad-model-type config.json with model_type gpt2.
  bad-truncated  llama-tiny with model.safetensors cut inside its header.
  bad-offsets    llama-tiny with a safetensors header whose data_offsets run past the end.

Each good folder gets ref_values.txt: "canonical_name flat_index value" lines, with values
read back through safetensors.deserialize and widened to f32 here.
"""
import json
import os
import shutil
import struct

import numpy as np
import safetensors
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "hf")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2024, there were 365 days and 12 months; in 2023 there were 365 too.",
    "Serverless inference starts cold: thaw loads the weights, then the first token.",
    "Hello, world! Hello again, world. Goodbye, world?",
    "the theory of the thing is that they think then throw the thread there",
    "Numbers like 3.14159 and 2.71828 and 1234567890 appear in text.",
    "def main():\n    return 0\n",
    "Tokenizers split text into pieces; merges join frequent pairs of pieces.",
] * 4

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")

# Qwen2's pre-tokenizer regex (numbers split into single digits)
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Hugging Face name -> canonical (GGUF-style) name, for the reference files only.
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}
LAYER = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
         "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
         "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_proj.bias": "attn_q.bias",
         "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
         "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
         "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def canonical(name):
    if name in TOP:
        return TOP[name]
    parts = name.split(".", 3)  # model, layers, N, rest
    return "blk.%s.%s" % (parts[2], LAYER[parts[3]])


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def weights(rng, cfg, bias, tied):
    """float32 tensors in Hugging Face names and shapes (out_features, in_features)."""
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    t = {"model.embed_tokens.weight": rng.normal(0, 0.02, (v, h)),
         "model.norm.weight": 1 + rng.normal(0, 0.1, (h,))}
    if not tied:
        t["lm_head.weight"] = rng.normal(0, 0.02, (v, h))
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        t[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, (h,))
        t[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.02, (q, h))
        t[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.02, (kv, h))
        t[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.02, (kv, h))
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.02, (h, q))
        if bias:
            t[p + "self_attn.q_proj.bias"] = rng.normal(0, 0.1, (q,))
            t[p + "self_attn.k_proj.bias"] = rng.normal(0, 0.1, (kv,))
            t[p + "self_attn.v_proj.bias"] = rng.normal(0, 0.1, (kv,))
        t[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, (h,))
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.02, (ff, h))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, 0.02, (ff, h))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, 0.02, (h, ff))
    return {k: a.astype(np.float32) for k, a in t.items()}


def to_bf16_bits(a):
    """float32 -> bfloat16 bits, round to nearest even (numpy has no bfloat16)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def save(path, tensors, dtype):
    """tensors: name -> float32 array; dtype 'bfloat16' | 'float16' | 'float32'."""
    keep, specs = [], {}
    for name, a in tensors.items():
        if dtype == "bfloat16":
            data = to_bf16_bits(a)
        else:
            data = np.ascontiguousarray(a.astype(np.float16 if dtype == "float16" else np.float32))
        keep.append(data)
        specs[name] = safetensors.TensorSpec(dtype=dtype, shape=list(a.shape), data_ptr=data.ctypes.data,
                                             data_len=data.nbytes)
    safetensors.serialize_file(specs, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)  # serialize_file creates 0600


def read_back(paths):
    """name -> (dtype, shape, float32 values), through the safetensors package's own parser."""
    out = {}
    for p in paths:
        with open(p, "rb") as f:
            for name, t in safetensors.deserialize(f.read()):
                raw = bytes(t["data"])
                if t["dtype"] == "BF16":
                    vals = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
                elif t["dtype"] == "F16":
                    vals = np.frombuffer(raw, "<f2").astype(np.float32)
                else:
                    vals = np.frombuffer(raw, "<f4")
                out[name] = (t["dtype"], t["shape"], vals)
    return out


def write_refs(folder, paths, picks):
    back = read_back(paths)
    lines = ["# canonical_name flat_index f32_value (read back with the safetensors package)"]
    for name, idx in picks:
        _, _, vals = back[name]
        if idx < 0:
            idx += len(vals)
        lines.append("%s %d %r" % (canonical(name), idx, float(vals[idx])))
    with open(os.path.join(folder, "ref_values.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def bpe_tokenizer(pre, vocab_size, specials_first):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=SPECIALS if specials_first else [],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if not specials_first:
        tok.add_special_tokens(SPECIALS)  # appended after the vocab, as in Qwen2
    return tok


def llama_tiny(rng):
    d = os.path.join(ROOT, "llama-tiny")
    os.makedirs(d)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 300,
           "max_position_embeddings": 2048, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
           "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
    write_json(os.path.join(d, "config.json"), cfg)

    t = weights(rng, cfg, bias=False, tied=False)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = rng.normal(0, 1, (8,)).astype(np.float32)
    st = os.path.join(d, "model.safetensors")
    save(st, t, "bfloat16")
    write_refs(d, [st], [("model.embed_tokens.weight", 0), ("model.embed_tokens.weight", 12345),
                         ("lm_head.weight", -1), ("model.layers.1.self_attn.k_proj.weight", 100),
                         ("model.norm.weight", 5), ("model.layers.0.mlp.down_proj.weight", 4321)])

    # SmolLM2's pre-tokenizer: single digits, then the GPT-2 regex via ByteLevel
    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok = bpe_tokenizer(pre, 296, specials_first=True)
    tok.add_tokens(["<think>"])  # a non-special added token: USER_DEFINED
    j = json.loads(tok.to_str())
    # legacy "a b" merges, as older tokenizer.json files spell them
    j["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    write_json(os.path.join(d, "tokenizer.json"), j)
    Tokenizer.from_file(os.path.join(d, "tokenizer.json"))  # still loads

    write_json(os.path.join(d, "tokenizer_config.json"), {
        "add_prefix_space": False, "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>", "chat_template": CHATML,
        "model_max_length": 2048, "tokenizer_class": "GPT2Tokenizer"})
    write_json(os.path.join(d, "generation_config.json"), {
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "temperature": 0.2, "top_p": 0.9,
        "transformers_version": "4.42.3"})
    return d


def qwen2_tiny(rng):
    d = os.path.join(ROOT, "qwen2-tiny")
    os.makedirs(d)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 288,
           "max_position_embeddings": 4096, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
           "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
           "sliding_window": 4096, "use_sliding_window": False, "max_window_layers": 2,
           "tie_word_embeddings": True, "torch_dtype": "float16", "bos_token_id": 280, "eos_token_id": 280}
    write_json(os.path.join(d, "config.json"), cfg)

    t = weights(rng, cfg, bias=True, tied=True)
    shard = [{k: a for k, a in t.items() if not k.startswith("model.layers.1.") and k != "model.norm.weight"},
             {k: a for k, a in t.items() if k.startswith("model.layers.1.") or k == "model.norm.weight"}]
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    paths = [os.path.join(d, n) for n in names]
    for s, p in zip(shard, paths):
        save(p, s, "float16")
    total = sum(a.size * 2 for a in t.values())
    write_json(os.path.join(d, "model.safetensors.index.json"), {
        "metadata": {"total_size": total},
        "weight_map": {k: names[i] for i, s in enumerate(shard) for k in sorted(s)}})
    write_refs(d, paths, [("model.embed_tokens.weight", 7), ("model.embed_tokens.weight", -1),
                          ("model.layers.0.self_attn.q_proj.bias", 7), ("model.layers.1.self_attn.v_proj.bias", 31),
                          ("model.layers.1.mlp.down_proj.weight", -1), ("model.norm.weight", 63)])

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = bpe_tokenizer(pre, 280, specials_first=False)
    tok.normalizer = normalizers.NFC()
    tok.save(os.path.join(d, "tokenizer.json"))

    write_json(os.path.join(d, "tokenizer_config.json"), {
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
        "chat_template": [{"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "default", "template": CHATML}],
        "model_max_length": 4096, "tokenizer_class": "Qwen2Tokenizer"})
    write_json(os.path.join(d, "generation_config.json"), {
        "bos_token_id": 280, "do_sample": True, "eos_token_id": [282, 280], "pad_token_id": 280,
        "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
        "transformers_version": "4.37.0"})
    return d


def bad_folders(llama):
    d = os.path.join(ROOT, "bad-model-type")
    os.makedirs(d)
    cfg = json.load(open(os.path.join(llama, "config.json")))
    cfg["model_type"] = "gpt2"
    write_json(os.path.join(d, "config.json"), cfg)

    # cut inside the header: the header length promises more bytes than the file has
    d = os.path.join(ROOT, "bad-truncated")
    os.makedirs(d)
    for n in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(llama, n), d)
    with open(os.path.join(llama, "model.safetensors"), "rb") as f:
        head = f.read(200)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(head)

    # a well-formed header whose first tensor's data runs past the end of the file
    d = os.path.join(ROOT, "bad-offsets")
    os.makedirs(d)
    for n in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(llama, n), d)
    hdr = json.dumps({"__metadata__": {"format": "pt"},
                      "model.embed_tokens.weight": {"dtype": "BF16", "shape": [300, 64],
                                                    "data_offsets": [0, 38400]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr + bytes(256))


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(ROOT)
    rng = np.random.default_rng(20240611)
    llama = llama_tiny(rng)
    qwen2_tiny(rng)
    bad_folders(llama)
    size = sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(ROOT) for f in fs)
    print("wrote %s (%d bytes)" % (os.path.normpath(ROOT), size))


if __name__ == "__main__":
    main()
