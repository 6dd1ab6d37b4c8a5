#!/usr/bin/env python3
"""Write tiny GGUF models into tests/data/gguf/ for tests/test_gguf.c, and fuzz seeds
into tests/fuzz/corpus/gguf/.

Uses the `gguf` package (pip install gguf numpy, see requirements.txt) to write the files
and its numpy implementation of every block format (gguf.quants.dequantize) to compute
the reference values, so the C reader and dequantizers are checked against an
independent implementation. Deterministic: fixed seeds, no timestamps.

    python3 tests/ref/make_gguf_fixtures.py            # from the repository root

Models (llama unless said otherwise): n_embd 64, 4 heads, 2 kv heads (head_dim 16),
n_ff 128, 2 layers, 300 tokens; norms are F32, every 2-D weight is the file's type.
The float weights are the same in every llama-* file (one seed), so the test can quantize
llama-f32's tensors and compare with llama-q8_0 / llama-q4_1 byte for byte.

  llama-f32    byte-level BPE (SmolLM pre-tokenizer), ChatML template, tied embeddings
  llama-f16    SentencePiece vocab with scores and <0xXX> byte tokens, add_bos and
               add_space_prefix left to their defaults, Llama 2 template
  llama-bf16   pre "llama-bpe", linear RoPE scaling x2, general.alignment 64
  llama-q8_0   untied output.weight, an eot token distinct from eos, sampling defaults
  llama-q4_0   a rope_freqs.weight tensor (Llama 3 style), no pre key (-> GPT-2)
  llama-q4_1   as the SmolLM2 Q4_1 release: the bytes thaw's Q4 uses as they are
  llama-q4_k   n_ff 256, ffn_down Q4_K (random valid blocks; gguf-py cannot quantize
  llama-q6_k   K-quants), every other 2-D weight Q8_0 -- as llama.cpp falls back
  qwen2-q8_0   qwen2: q/k/v biases, tied embeddings, pre "qwen2"
  bad-arch-gpt2  a well-formed GGUF for an unsupported architecture
  bad-v1         a GGUF version 1 header

Each good model NAME.gguf has NAME.ref.bin, the dequantized f32 values (little-endian) of
a few whole tensors, listed with their element counts in NAME.ref.txt ("name count").
"""
import os
import struct

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "data", "gguf")
CORPUS = os.path.join(HERE, "..", "fuzz", "corpus", "gguf")

N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_VOCAB = 64, 4, 2, 128, 2, 300
HEAD_DIM = N_EMBD // N_HEAD

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
LLAMA2_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
                   "message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}"
                   "{% endif %}{% endfor %}")

TEXT = ("the quick brown fox jumps over the lazy dog. the theory of the thing is that they think "
        "then throw the thread there. serverless inference starts cold and thaw loads the weights "
        "in the time it takes to read them. hello world, hello again world.") * 3


# ---- tokenizers ---------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map (byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return bs, [chr(c) for c in cs]


def train_merges(words, n_merges):
    """A plain BPE trainer: repeatedly merge the most frequent adjacent pair (ties broken
    by the pair's text, so the result is deterministic)."""
    seqs = [list(w) for w in words]
    merges = []
    for _ in range(n_merges):
        counts = {}
        for s in seqs:
            for a, b in zip(s, s[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == best:
                    s[i:i + 2] = [s[i] + s[i + 1]]
                i += 1
    return merges


def bpe_vocab():
    """<|endoftext|>, <|im_start|>, <|im_end|>, the 256 byte tokens, then merged tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    _, chars = bytes_to_unicode()
    space = chars[bytes_to_unicode()[0].index(ord(" "))]
    words = [(space if i else "") + w for i, w in enumerate(TEXT.split(" "))]
    merges = train_merges(words, N_VOCAB - len(specials) - 256)
    tokens = specials + chars + [a + b for a, b in merges]
    assert len(tokens) == N_VOCAB and len(set(tokens)) == N_VOCAB, len(tokens)
    types = [3] * len(specials) + [1] * (N_VOCAB - len(specials))
    return tokens, types, [a + " " + b for a, b in merges]


def spm_vocab():
    """<unk>, <s>, </s>, <0x00>..<0xFF>, then pieces with descending scores."""
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    pieces = []
    for w in TEXT.replace(".", " ").replace(",", " ").split():
        for piece in ("\u2581" + w, w[:2], "\u2581" + w[:1]):
            if piece not in pieces and piece not in tokens:
                pieces.append(piece)
    pieces = pieces[:N_VOCAB - len(tokens)]
    assert len(pieces) == N_VOCAB - len(tokens)
    tokens += pieces
    types += [1] * len(pieces)
    scores += [-1.0 - 0.25 * i for i in range(len(pieces))]
    return tokens, types, scores


# ---- weights ------------------------------------------------------------------------------

def base_weights(n_ff, qkv_bias, seed):
    """name -> float32 array, outermost dimension first (as numpy and thaw list shapes)."""
    rng = np.random.default_rng(seed)
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    w = {}
    emb = rng.normal(0, 0.05, (N_VOCAB, N_EMBD)).astype(np.float32)
    emb[0] = 0.0                                # an all-zero row (blocks with d = 0)
    emb[1] = 0.375                              # constant blocks
    emb[2] = 100.0 + rng.normal(0, 0.01, N_EMBD)  # large offset, tiny spread (min matters)
    w["token_embd.weight"] = emb
    for l in range(N_LAYER):
        p = "blk.%d." % l
        w[p + "attn_norm.weight"] = (1 + rng.normal(0, 0.1, N_EMBD)).astype(np.float32)
        w[p + "attn_q.weight"] = rng.normal(0, 0.1, (q, N_EMBD)).astype(np.float32)
        w[p + "attn_k.weight"] = rng.normal(0, 0.1, (kv, N_EMBD)).astype(np.float32)
        w[p + "attn_v.weight"] = rng.normal(0, 0.1, (kv, N_EMBD)).astype(np.float32)
        if qkv_bias:
            w[p + "attn_q.bias"] = rng.normal(0, 0.1, q).astype(np.float32)
            w[p + "attn_k.bias"] = rng.normal(0, 0.1, kv).astype(np.float32)
            w[p + "attn_v.bias"] = rng.normal(0, 0.1, kv).astype(np.float32)
        w[p + "attn_output.weight"] = rng.normal(0, 0.1, (N_EMBD, q)).astype(np.float32)
        w[p + "ffn_norm.weight"] = (1 + rng.normal(0, 0.1, N_EMBD)).astype(np.float32)
        w[p + "ffn_gate.weight"] = rng.normal(0, 0.1, (n_ff, N_EMBD)).astype(np.float32)
        w[p + "ffn_up.weight"] = rng.normal(0, 0.1, (n_ff, N_EMBD)).astype(np.float32)
        w[p + "ffn_down.weight"] = rng.normal(0, 0.1, (N_EMBD, n_ff)).astype(np.float32)
    w["output_norm.weight"] = (1 + rng.normal(0, 0.1, N_EMBD)).astype(np.float32)
    w["output.weight"] = rng.normal(0, 0.05, (N_VOCAB, N_EMBD)).astype(np.float32)
    return w


def random_k_blocks(rng, rows, cols, qtype):
    """Valid but random K-quant blocks: random quants, scales as f16 in a sane range."""
    n_blocks = rows * cols // 256
    if qtype == T.Q4_K:   # f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        d = rng.uniform(1e-4, 2e-3, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
        dmin = rng.uniform(1e-4, 2e-3, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
        rest = rng.integers(0, 256, (n_blocks, 140), dtype=np.uint8)
        blocks = np.concatenate([d, dmin, rest], axis=1)
    else:                 # Q6_K: 128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d
        q = rng.integers(0, 256, (n_blocks, 192), dtype=np.uint8)
        sc = rng.integers(-128, 128, (n_blocks, 16), dtype=np.int16).astype(np.int8).view(np.uint8)
        d = rng.uniform(1e-5, 5e-4, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
        blocks = np.concatenate([q, sc, d], axis=1)
    assert blocks.shape[1] == gguf.GGML_QUANT_SIZES[qtype][1]
    return blocks.reshape(rows, -1)


def encode(arr, qtype):
    """float32 array -> (array to hand GGUFWriter, raw_dtype)."""
    if qtype == T.F32:
        return arr, None
    if qtype == T.F16:
        return arr.astype(np.float16), None
    return gguf.quants.quantize(arr, qtype), qtype


# ---- writing ------------------------------------------------------------------------------

def write_model(stem, arch, main_type, *, n_ff=N_FF, tok="bpe", pre="smollm", tied=True, qkv_bias=False,
                template=CHATML, alignment=None, rope_linear=None, rope_freqs=False, eot=None,
                sampling=False, k_type=None, refs=(), seed=1, out_dir=ROOT, n_layer=N_LAYER):
    w = base_weights(n_ff, qkv_bias, seed)
    rng = np.random.default_rng(seed + 100)
    path = os.path.join(out_dir, stem + ".gguf")
    wr = gguf.GGUFWriter(path, arch)
    if alignment:
        wr.add_custom_alignment(alignment)
    wr.add_name("thaw-test " + stem)
    wr.add_context_length(2048)
    wr.add_embedding_length(N_EMBD)
    wr.add_block_count(n_layer)
    wr.add_feed_forward_length(n_ff)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_HEAD_KV)
    wr.add_rope_dimension_count(HEAD_DIM)
    wr.add_rope_freq_base(500000.0 if arch == "llama" else 1000000.0)
    wr.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    if rope_linear:
        wr.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        wr.add_rope_scaling_factor(rope_linear)
    if sampling:
        wr.add_sampling_temp(0.6)
        wr.add_sampling_top_p(0.9)
        wr.add_sampling_top_k(40)
    if tok == "bpe":
        tokens, types, merges = bpe_vocab()
        wr.add_tokenizer_model("gpt2")
        if pre:
            wr.add_tokenizer_pre(pre)
        wr.add_token_list(tokens)
        wr.add_token_types(types)
        wr.add_token_merges(merges)
        wr.add_bos_token_id(1)
        wr.add_eos_token_id(2)
        wr.add_unk_token_id(0)
        wr.add_pad_token_id(2)
        wr.add_add_bos_token(pre == "llama-bpe")
        if eot is not None:
            wr.add_eot_token_id(eot)
    else:
        tokens, types, scores = spm_vocab()
        wr.add_tokenizer_model("llama")
        wr.add_tokenizer_pre("default")
        wr.add_token_list(tokens)
        wr.add_token_scores(scores)
        wr.add_token_types(types)
        wr.add_bos_token_id(1)
        wr.add_eos_token_id(2)
        wr.add_unk_token_id(0)
    if template:
        wr.add_chat_template(template)

    ref_vals = []
    names = [n for n in w if n != "output.weight" or not tied]
    if rope_freqs:
        names.insert(1, "rope_freqs.weight")
        w["rope_freqs.weight"] = (1.0 / np.linspace(1, 8, HEAD_DIM // 2)).astype(np.float32)
    for name in names:
        if name.startswith("blk.") and int(name.split(".")[1]) >= n_layer:
            continue
        arr = w[name]
        if arr.ndim == 1:
            data, raw = arr, None
            qtype = T.F32
        elif k_type and name.endswith("ffn_down.weight"):
            data, raw = random_k_blocks(rng, arr.shape[0], arr.shape[1], k_type), k_type
            qtype = k_type
        else:
            qtype = main_type
            data, raw = encode(arr, qtype)
        wr.add_tensor(name, data, raw_dtype=raw)
        if name in refs:
            if qtype == T.F32:
                deq = data.astype(np.float32)
            else:
                deq = gguf.quants.dequantize(data.view(np.uint8) if raw is not None else data, qtype)
            deq = np.ascontiguousarray(deq, dtype=np.float32).reshape(-1)
            assert deq.size == arr.size
            ref_vals.append((name, deq))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()

    if refs:
        assert len(ref_vals) == len(refs), (stem, [n for n, _ in ref_vals])
        with open(os.path.join(out_dir, stem + ".ref.txt"), "w") as f:
            for name, deq in ref_vals:
                f.write("%s %d\n" % (name, deq.size))
        with open(os.path.join(out_dir, stem + ".ref.bin"), "wb") as f:
            for _, deq in ref_vals:
                f.write(deq.astype("<f4").tobytes())
    return path


def write_bad_arch(path):
    wr = gguf.GGUFWriter(path, "gpt2")
    wr.add_name("not-supported")
    wr.add_block_count(1)
    wr.add_context_length(64)
    wr.add_embedding_length(32)
    wr.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def write_v1(path):
    # GGUF v1: u32 counts and u32 string lengths; one key general.architecture = "llama"
    key, val = b"general.architecture", b"llama"
    b = b"GGUF" + struct.pack("<III", 1, 0, 1)
    b += struct.pack("<I", len(key)) + key + struct.pack("<I", 8) + struct.pack("<I", len(val)) + val
    with open(path, "wb") as f:
        f.write(b)


def write_micro(path):
    """The smallest complete model (about 3 KB): the fuzzer's best starting point."""
    rng = np.random.default_rng(7)
    e, ff = 32, 32
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_name("micro")
    wr.add_context_length(64)
    wr.add_embedding_length(e)
    wr.add_block_count(1)
    wr.add_feed_forward_length(ff)
    wr.add_head_count(2)
    wr.add_head_count_kv(1)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("smollm")
    wr.add_token_list(["<|endoftext|>", "a", "b", "c", "ab", "abc", "\u0120", "\u0120a"])
    wr.add_token_types([3, 1, 1, 1, 1, 1, 1, 1])
    wr.add_token_scores([0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0])
    wr.add_token_merges(["a b", "ab c", "\u0120 a"])
    wr.add_eos_token_id(0)
    wr.add_chat_template("{{ messages }}")
    shapes = {"token_embd.weight": (8, e), "blk.0.attn_norm.weight": (e,), "blk.0.attn_q.weight": (e, e),
              "blk.0.attn_k.weight": (16, e), "blk.0.attn_v.weight": (16, e), "blk.0.attn_output.weight": (e, e),
              "blk.0.ffn_norm.weight": (e,), "blk.0.ffn_gate.weight": (ff, e), "blk.0.ffn_up.weight": (ff, e),
              "blk.0.ffn_down.weight": (e, ff), "output_norm.weight": (e,)}
    for name, shape in shapes.items():
        a = rng.normal(0, 0.1, shape).astype(np.float32)
        if len(shape) == 1:
            wr.add_tensor(name, a)
        else:
            wr.add_tensor(name, gguf.quants.quantize(a, T.Q4_0), raw_dtype=T.Q4_0)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def main():
    os.makedirs(ROOT, exist_ok=True)
    os.makedirs(CORPUS, exist_ok=True)
    common = ("blk.0.attn_k.weight", "blk.1.ffn_down.weight")
    write_model("llama-f32", "llama", T.F32, refs=common + ("output_norm.weight",))
    write_model("llama-f16", "llama", T.F16, tok="spm", template=LLAMA2_TEMPLATE, refs=common)
    write_model("llama-bf16", "llama", T.BF16, pre="llama-bpe", alignment=64, rope_linear=2.0, refs=common)
    write_model("llama-q8_0", "llama", T.Q8_0, tied=False, eot=0, sampling=True,
                refs=common + ("blk.0.attn_q.weight",))
    write_model("llama-q4_0", "llama", T.Q4_0, pre=None, rope_freqs=True, refs=common + ("rope_freqs.weight",))
    write_model("llama-q4_1", "llama", T.Q4_1, refs=common + ("token_embd.weight",))
    write_model("llama-q4_k", "llama", T.Q8_0, n_ff=256, k_type=T.Q4_K, refs=common)
    write_model("llama-q6_k", "llama", T.Q8_0, n_ff=256, k_type=T.Q6_K, refs=common)
    write_model("qwen2-q8_0", "qwen2", T.Q8_0, pre="qwen2", qkv_bias=True, seed=2,
                refs=common + ("blk.0.attn_q.bias",))
    write_bad_arch(os.path.join(ROOT, "bad-arch-gpt2.gguf"))
    write_v1(os.path.join(ROOT, "bad-v1.gguf"))

    # fuzz seeds: small valid models (one layer) and broken variants, each < 64 KB
    seed_tmp = os.path.join(CORPUS, "_tmp")
    os.makedirs(seed_tmp, exist_ok=True)
    seeds = {}
    for stem, kw in (("seed-q4_0", dict(main_type=T.Q4_0, rope_freqs=True)),
                     ("seed-q4_k", dict(main_type=T.Q4_0, n_ff=256, k_type=T.Q4_K)),
                     ("seed-spm", dict(main_type=T.Q4_1, tok="spm", tied=False))):
        p = write_model(stem, "llama", n_layer=1, out_dir=seed_tmp, **kw)
        with open(p, "rb") as f:
            seeds[stem] = f.read()
        os.remove(p)
    write_micro(os.path.join(seed_tmp, "micro.gguf"))
    with open(os.path.join(seed_tmp, "micro.gguf"), "rb") as f:
        seeds["seed-micro"] = f.read()
    os.remove(os.path.join(seed_tmp, "micro.gguf"))
    os.rmdir(seed_tmp)
    small = seeds["seed-q4_0"]
    seeds["seed-truncated-kv"] = small[:600]
    seeds["seed-truncated-data"] = small[:len(small) - 1000]
    with open(os.path.join(ROOT, "bad-arch-gpt2.gguf"), "rb") as f:
        seeds["seed-bad-arch"] = f.read()
    with open(os.path.join(ROOT, "bad-v1.gguf"), "rb") as f:
        seeds["seed-v1"] = f.read()
    for name, data in seeds.items():
        assert len(data) < 64 * 1024, (name, len(data))
        with open(os.path.join(CORPUS, name + ".gguf"), "wb") as f:
            f.write(data)

    total = sum(os.path.getsize(os.path.join(ROOT, f)) for f in os.listdir(ROOT))
    print("wrote %s (%d files, %.0f KB)" % (os.path.relpath(ROOT), len(os.listdir(ROOT)), total / 1024))


if __name__ == "__main__":
    main()
