#!/usr/bin/env python3
"""Build the tokenizer test corpus and its reference token ids (tests/data/tokenizer/).

    python3 tests/ref/make_tokenizer_fixtures.py      # from the repository root, after `make model`

Needs: tokenizers, gguf, numpy, safetensors (tests/ref/requirements.txt) and sentencepiece. Deterministic for a
given machine: the corpus is assembled from files on a Debian machine and Python's own
files, plus text generated here with a fixed seed, and is committed, so the C test never
needs this script.

What it writes:
  corpus.txt, corpus.idx  The corpus (UTF-8, >1 MB): documents concatenated; corpus.idx has
                          one line per document: "byte_offset byte_length label".
                          Sources: English prose (/usr/share/common-licenses), C headers
                          (/usr/include/*.h), Python stdlib source, translated messages in
                          ~35 languages and scripts (gettext catalogs in /usr/share/locale:
                          Chinese, Japanese, Korean, Arabic, Hebrew, Cyrillic, Greek,
                          Devanagari, Thai, ...), Python's Lib/test/cjkencodings (decoded from
                          their encodings), and generated documents: emoji with ZWJ sequences
                          and skin tones, whitespace runs of 1..200 (spaces, tabs, newlines,
                          CRLF, mixed, Unicode spaces), digit strings of many lengths and
                          scripts, combining marks and other odd text, random assigned code
                          points, contractions in all cases, and chat transcripts that spell
                          special tokens.
  smollm2.ref             Reference ids for the SmolLM2 snapshot (models/*.thaw), every
                          document without special-token parsing, and with parsing for the
                          documents that spell special tokens.
  llama3-tiny/, qwen2-tiny/, spm-tiny/, spm-first-tiny/, spm-always-tiny/
                          Tiny Hugging Face model folders (config.json, a 2-wide
                          model.safetensors, tokenizer.json, tokenizer_config.json) whose
                          tokenizers were trained here with `tokenizers` on the corpus: the
                          Llama 3 pre-tokenizer (Split regex + ByteLevel, ignore_merges), the
                          Qwen2 one (single digits, NFC normalizer), and a Llama-2-style
                          SentencePiece BPE (Prepend/Replace "▁", byte_fallback, no
                          pre-tokenizer). The C test reads them through snap_read_hf.
  llama3-tiny.ref, qwen2-tiny.ref, spm-tiny.ref, spm-first-tiny.ref, spm-always-tiny.ref
                          Reference ids for a subset of the documents (Qwen2: only documents
                          that are already NFC, since thaw does not apply NFC).
  spm-scores.gguf, spm-scores.ref
                          A SentencePiece BPE model trained with the `sentencepiece` library
                          (Llama 2's settings), as a tiny GGUF with scores, and sentencepiece's
                          own ids for the subset: the score-ordered merge GGUF vocabularies use.

The reference implementation is Hugging Face `tokenizers` (Rust), independent of thaw: for
SmolLM2 a tokenizers.Tokenizer is built from the GGUF's vocab and merges (read with the
`gguf` package) with SmolLM2's tokenizer.json configuration: BPE, pre-tokenizer
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, trim_offsets=True,
use_regex=True)], ByteLevel decoder, and the 17 control tokens as special added tokens.

.ref format (little-endian): b"THAWTOK1", u32 n_entries, then per entry u32 doc index,
u32 flags (1 = parse_special, 2 = add_special), u32 n_ids, and the ids as unsigned LEB128.
"""
import glob
import gettext
import json
import os
import random
import shutil
import struct
import sys
import unicodedata

import numpy as np
from gguf import GGUFReader
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(REPO, "tests", "data", "tokenizer")
GGUF = os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
PYLIB = os.path.dirname(os.__file__)
DOC_MAX = 6000  # characters per document when a source is cut up

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SPM_SPECIALS = ["<unk>", "<s>", "</s>"]


# ---- corpus -----------------------------------------------------------------------------------

def cut(text, limit=DOC_MAX):
    """Split text into documents of at most ~limit characters at paragraph (or line) breaks."""
    docs, cur = [], ""
    for para in text.split("\n\n"):
        piece = para + "\n\n"
        while len(piece) > limit:  # a huge paragraph: cut at a line break, or anywhere
            k = piece.rfind("\n", 0, limit)
            k = k if k > 0 else limit
            if cur:
                docs.append(cur)
                cur = ""
            docs.append(piece[:k + 1])
            piece = piece[k + 1:]
        if cur and len(cur) + len(piece) > limit:
            docs.append(cur)
            cur = ""
        cur += piece
    if cur.strip():
        docs.append(cur)
    return docs


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def licenses():
    out, seen = [], set()
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        real = os.path.realpath(p)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        for i, d in enumerate(cut(read_text(real))):
            out.append(("license:%s#%d" % (os.path.basename(real), i), d))
    # CRLF line ends (Llama 3 / Qwen2 treat \r\n specially)
    for name in ("BSD", "Apache-2.0"):
        p = "/usr/share/common-licenses/" + name
        if os.path.isfile(p):
            for i, d in enumerate(cut(read_text(p))[:3]):
                out.append(("crlf:%s#%d" % (name, i), d.replace("\n", "\r\n")))
    return out


def headers(limit=150000):
    out, total = [], 0
    for p in sorted(glob.glob("/usr/include/*.h")):
        t = read_text(p)
        if len(t) > 40000:
            continue
        for i, d in enumerate(cut(t)):
            out.append(("c:%s#%d" % (os.path.basename(p), i), d))
            total += len(d)
        if total > limit:
            break
    return out


PY_FILES = ["textwrap.py", "heapq.py", "bisect.py", "fractions.py", "calendar.py", "base64.py",
            "csv.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "string.py", "shlex.py",
            "fnmatch.py", "glob.py", "getopt.py", "colorsys.py", "quopri.py", "stringprep.py", "this.py",
            "_strptime.py", "locale.py"]


def python_sources(limit=170000):
    out, total = [], 0
    for rel in PY_FILES:
        p = os.path.join(PYLIB, rel)
        if os.path.isfile(p):
            for i, d in enumerate(cut(read_text(p))):
                out.append(("py:%s#%d" % (rel, i), d))
                total += len(d)
        if total > limit:
            break
    return out


LANGS = ("zh_CN zh_TW ja ko ar he fa ur ru uk el hi mr ne bn ta te kn ml gu pa si th km my ka hy am "
         "vi tr de fr es pl cs").split()


def translations(per_lang=6000):
    out = []
    for lang in LANGS:
        msgs = []
        for f in sorted(glob.glob("/usr/share/locale/%s/LC_MESSAGES/*.mo" % lang)):
            try:
                with open(f, "rb") as fh:
                    cat = gettext.GNUTranslations(fh)._catalog
            except Exception:
                continue
            for k, v in sorted((k, v) for k, v in cat.items() if isinstance(k, str) and isinstance(v, str)):
                if k and v and v != k:
                    msgs.append((k, v))
        if not msgs:
            continue
        rng = random.Random("mo:" + lang)
        rng.shuffle(msgs)
        text, n = "", 0
        for k, v in msgs:
            # mostly the translation alone, sometimes with its English original
            text += (v + "\n\n") if n % 3 else (k + "\n" + v + "\n\n")
            n += 1
            if len(text) > per_lang:
                break
        for i, d in enumerate(cut(text, 3000)):
            out.append(("i18n:%s#%d" % (lang, i), d))
    return out


def cjk():
    d = os.path.join(PYLIB, "test", "cjkencodings")
    out, seen = [], set()
    for p in sorted(glob.glob(os.path.join(d, "*.txt"))):
        name = os.path.basename(p)[:-4]
        enc = "utf-8" if name.endswith("-utf8") else name
        try:
            with open(p, "rb") as f:
                t = f.read().decode(enc)
        except (LookupError, UnicodeDecodeError):
            continue
        if t in seen:
            continue
        seen.add(t)
        out.append(("cjk:%s" % name, t))
    # one long unbroken CJK line: a single \p{L}+ pre-token of hundreds of characters
    joined = "".join(t.replace("\n", "").replace(" ", "") for _, t in out if "gb" in _ or "big5" in _)
    out.append(("cjk:long-line", joined[:3000]))
    return out


EMOJI = ["😀", "😂", "🥲", "🤖", "👍", "👋", "🙏", "💪", "🎉", "🔥", "🚀", "❤️", "✨", "🌍", "🐍", "🦀", "🍕",
         "☕", "⚡", "✅", "❌", "⭐", "🙂", "😍", "🤔", "👀", "💯", "🫠", "🪐", "🧠"]
PEOPLE = ["👨", "👩", "🧑", "👧", "👦", "🧒"]
TONES = ["\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF"]
ZWJ = "\u200d"
ZWJ_SEQS = ["👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🏳️‍🌈", "🏴‍☠️", "👩‍💻", "🧑‍🚀", "👨‍🍳", "🧑‍🤝‍🧑", "🐕‍🦺", "❤️‍🔥",
            "🧔‍♀️", "👁️‍🗨️", "🐻‍❄️", "🧑🏽‍🤝‍🧑🏿", "👩🏾‍🔬", "🫱🏼‍🫲🏿"]
FLAGS = ["🇯🇵", "🇺🇸", "🇩🇪", "🇫🇷", "🇨🇳", "🇧🇷", "🇮🇳", "🇺🇦", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
KEYCAPS = ["1️⃣", "#️⃣", "*️⃣", "0️⃣"]
WORDS = ("the of and to in is that it for on with as was at by be this are or from an have not but they his "
         "serverless inference token model cold start thaw snapshot weights cache request stream").split()


def emoji_docs(rng, n=12):
    out = []
    for d in range(n):
        parts = []
        while sum(len(p) for p in parts) < 2500:
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(WORDS))
            elif r < 0.45:
                parts.append(rng.choice(EMOJI) * rng.randint(1, 3))
            elif r < 0.6:
                parts.append(rng.choice(PEOPLE + ["👍", "👋", "🙏", "💪"]) + rng.choice(TONES))
            elif r < 0.75:
                parts.append(rng.choice(ZWJ_SEQS))
            elif r < 0.85:
                a, b = rng.choice(PEOPLE), rng.choice(PEOPLE)
                parts.append(a + rng.choice(TONES) + ZWJ + "💻" + ZWJ + b)
            elif r < 0.93:
                parts.append(rng.choice(FLAGS) + rng.choice(FLAGS))
            else:
                parts.append(rng.choice(KEYCAPS))
            parts.append(rng.choice([" ", " ", "", "\n", ", ", "! "]))
        out.append(("emoji#%d" % d, "".join(parts)))
    return out


SPACES = [" ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2003", "\x0b", "\x0c", "\u2028", "\u0085"]


def whitespace_docs(rng, n=24):
    out = []
    for d in range(n):
        parts = []
        while sum(len(p) for p in parts) < 3000:
            k = rng.random()
            length = rng.choice([1, 1, 2, 2, 3, 4, 5, 8, 16, 31, 64, 100, 199, 200, rng.randint(1, 200)])
            if k < 0.3:
                ws = " " * length
            elif k < 0.45:
                ws = "\t" * length
            elif k < 0.6:
                ws = "\n" * length
            elif k < 0.68:
                ws = "\r\n" * max(1, length // 2)
            else:
                ws = "".join(rng.choice(SPACES[:5] if k < 0.9 else SPACES) for _ in range(length))
            parts.append(ws)
            parts.append(rng.choice(WORDS + ["x", "{", "}", "();", "42", "#", "'s", "'LL", "é", "日本", "---"]))
        out.append(("ws#%d" % d, "".join(parts)))
    # whitespace only, and whitespace at the very start and end
    out.append(("ws:only", "".join(rng.choice(SPACES) for _ in range(300))))
    out.append(("ws:edges", "   \t\n lead and trail \n\t   "))
    return out


OTHER_DIGITS = ["٠١٢٣٤٥٦٧٨٩", "۰۱۲۳", "०१२३४५६७८९", "০১২৩", "๐๑๒๓", "０１２３４５６７８９", "²³¹", "½¼¾", "ⅫⅣⅸ",
                "①②③⑳", "𝟎𝟏𝟐𝟑", "〇一二三", "፩፪፫", "𐄇𐄈"]


def digit_docs(rng, n=10):
    out = []
    for d in range(n):
        parts = []
        while sum(len(p) for p in parts) < 3000:
            L = rng.choice(list(range(1, 13)) + [16, 20, 25, 32, 40, 50, 60])
            num = "".join(rng.choice("0123456789") for _ in range(L))
            r = rng.random()
            if r < 0.35:
                parts.append(num)
            elif r < 0.45:
                parts.append("{:,}".format(int(num)))
            elif r < 0.55:
                parts.append(num[:max(1, L // 2)] + "." + num[L // 2:] if L > 1 else num)
            elif r < 0.62:
                parts.append("-" + num + rng.choice(["e10", "E-3", "%", "px", "ms", "k", "th"]))
            elif r < 0.7:
                parts.append("0x" + "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(L)))
            elif r < 0.78:
                parts.append(rng.choice(WORDS) + num + rng.choice(WORDS))
            elif r < 0.86:
                parts.append(rng.choice(OTHER_DIGITS))
            else:
                parts.append("%d-%02d-%02d %02d:%02d:%02d" % (rng.randint(1900, 2100), rng.randint(1, 12),
                                                             rng.randint(1, 28), rng.randint(0, 23),
                                                             rng.randint(0, 59), rng.randint(0, 59)))
            parts.append(rng.choice([" ", " ", "\n", ", ", "; ", "  ", "\t", "/", ""]))
        out.append(("digits#%d" % d, "".join(parts)))
    return out


def weird_docs(rng):
    out = []
    base = "Crème brûlée, naïve café, São Paulo, Ångström, Dvořák, Łódź, Ελληνικά, Русский, Tiếng Việt. "
    out.append(("weird:nfd", unicodedata.normalize("NFD", base * 20)))
    out.append(("weird:nfc", unicodedata.normalize("NFC", base * 20)))
    marks = [chr(c) for c in range(0x300, 0x370)]
    zalgo = "".join(ch + "".join(rng.choice(marks) for _ in range(rng.randint(0, 8)))
                    for ch in "He comes, the quick brown fox zalgo text " * 12)
    out.append(("weird:zalgo", zalgo))
    hangul = unicodedata.normalize("NFD", "한국어 텍스트 자모 분해 테스트입니다. " * 30)
    out.append(("weird:jamo", hangul))
    misc = [
        "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffbom\u00adsoft\u00adhyphen ",
        "rtl \u202eevil\u202c mark\u200f \u200eltr \u061c alm ",
        "variation \u2764\ufe0f \u2764\ufe0e \u263a\ufe0f \u0030\ufe0f ",
        "math 𝐀𝐁𝐂 𝑥𝑦𝑧 𝔸𝔹ℂ 𝓐𝓑𝓒 𝟘𝟙𝟚 ",
        "ligatures ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ Ĳ ĳ ǅ ǈ ǋ ",
        "fullwidth ＡＢＣ ａｂｃ ！？ halfwidth ｶﾀｶﾅ ",
        "controls \x01\x02\x03\x07\x08\x1b[31mred\x1b[0m \x1c\x1d\x1e\x1f \x7f ",
        "private \ue000\ue001\uf8ff \U000f0000 nonchar \ufffe\uffff \U0010ffff ",
        "symbols ©®™ ±×÷ ≤≥≠≈ ∑∏∫√∞ ←→↑↓ ♠♣♥♦ ★☆ ‰ § ¶ † ‡ • … ‹› «» „“ ‚‘ ",
        "quotes ‘single’ “double” ‹angle› «guillemets» 「括弧」 『二重』 ",
        "dashes - – — ― ‐ ‑ ‒ ⁃ ﹘ ",
        "apostrophes it's IT'S It'S we're WE'RE we'Re they've THEY'VE I'm I'M you'll YOU'LL he'd HE'D "
        "don't DON'T 's 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D ''s '''ll 'ſ 'ſt x'ſx ‘s’ ’s ",
        "mixed English日本語Русскийالعربيةעבריתελληνικάहिन्दीไทย한국어 in one word ",
        "tabs\tin\tthe\tmiddle\t\tand\t\t\tmore\n\n\n\nnewlines\r\n\r\nand\rcarriage\n \n \n ",
        "urls https://example.com/path?q=1&x=y#frag mailto:a.b@c.de ftp://h.org/~u/ ",
        "code fn main() { let x: Vec<u8> = vec![1, 2, 3]; println!(\"{x:?}\"); } // done ",
        "repeat " + "a" * 300 + " " + "=" * 200 + " " + "-" * 150 + " " + "ab" * 100 + " ",
        "hex 0123456789abcdef" * 10 + " ",
    ]
    out.append(("weird:misc", "".join(misc)))
    out.append(("weird:long-words", " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in
                                                      range(rng.randint(20, 120))) for _ in range(40))))
    # Long s (U+017F) case-folds to "s": Llama 3's (?i:'s) takes "'ſ". Frequent enough for the
    # tiny trainers to learn merges with it, so a wrong pre-token boundary shows.
    long_s = ("Die Geſchichte iſt ſehr ſchön, daſs es'ſt ſo bleibt; wie geht'ſ? Er'ſ ſagt: ES'ſ iſt "
              "Geſetz. ") * 25
    out.append(("weird:long-s#0", long_s))
    out.append(("weird:long-s#1", long_s.replace("Geſ", "geſ")))
    b64 = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(3000))
    out.append(("weird:base64", "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))))
    return out


def random_codepoint_docs(rng, n=8):
    """Assigned code points from every plane (the category tables' whole range)."""
    pool = []
    for cp in range(0x20, 0x32000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        cat = unicodedata.category(chr(cp))
        if cat not in ("Cn", "Cs", "Co"):
            pool.append(cp)
    out = []
    for d in range(n):
        s = []
        while len(s) < 1500:
            run = rng.randint(1, 12)
            s.extend(chr(rng.choice(pool)) for _ in range(run))
            s.append(rng.choice([" ", " ", "", "\n", "  "]))
        out.append(("random-cp#%d" % d, "".join(s)))
    return out


def special_docs():
    chat = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is the capital of France? Answer in 3 words.<|im_end|>\n"
            "<|im_start|>assistant\nThe capital is Paris.<|im_end|>\n<|im_start|>assistant\n")
    l3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|><|start_header_id|>assistant"
          "<|end_header_id|>\n\n<think>hmm</think> Hello!<|eot_id|>")
    l2 = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello there [/INST] Hi! </s><s>[INST] again [/INST]"
    tricky = ("<|im_start|><|im_start|><|im_end|>x<|im_end|> <|im_start <|im_end| <|endoftext|><|endoftext|>"
              "<repo_name>thaw<file_sep><filename>a.c<gh_stars>10<issue_start>bug<jupyter_code>x=1"
              "<empty_output> <|im_start|>  spaced  <|im_end|>\n<<|im_start|>>  <think><think></think>"
              "<|eot_id|><|eot_id|> <s></s><unk> < s > </ s>")
    return [("special:chatml", chat), ("special:chatml-x3", chat * 3), ("special:llama3", l3),
            ("special:llama2", l2), ("special:tricky", tricky),
            ("special:mixed", "Before " + chat + " middle " + l3 + " after " + l2 + " end.")]


def build_corpus():
    rng = random.Random(20240611)
    docs = []
    docs += licenses()
    docs += headers()
    docs += python_sources()
    docs += translations()
    docs += cjk()
    docs += emoji_docs(rng)
    docs += whitespace_docs(rng)
    docs += digit_docs(rng)
    docs += weird_docs(rng)
    docs += random_codepoint_docs(rng)
    docs += special_docs()
    # a few single characters and empties at the edges of the regexes
    for i, s in enumerate(["a", " ", "\n", "'", "'s", "1", "12345", " 1", "é", "日", "😀", "\r\n", "  a", "a  "]):
        docs.append(("tiny#%d" % i, s))
    for label, text in docs:
        text.encode("utf-8")  # no lone surrogates
    return docs


def write_corpus(docs):
    data, idx = bytearray(), []
    for label, text in docs:
        b = text.encode("utf-8")
        idx.append("%d %d %s" % (len(data), len(b), label.replace(" ", "_")))
        data += b
    with open(os.path.join(OUT, "corpus.txt"), "wb") as f:
        f.write(data)
    with open(os.path.join(OUT, "corpus.idx"), "w") as f:
        f.write("\n".join(idx) + "\n")
    return len(data)


# ---- references -------------------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_ref(path, entries):
    """entries: (doc, flags, ids)"""
    with open(path, "wb") as f:
        f.write(b"THAWTOK1" + struct.pack("<I", len(entries)))
        for doc, flags, ids in entries:
            f.write(struct.pack("<III", doc, flags, len(ids)))
            f.write(b"".join(varint(i) for i in ids))


def encode_all(tok, docs, picks, specials):
    """picks: doc indices to encode without parsing; documents spelling one of `specials` are
    also encoded with parsing (and once more with add_special)."""
    entries = []
    for i in picks:
        tok.encode_special_tokens = True
        entries.append((i, 0, tok.encode(docs[i][1], add_special_tokens=False).ids))
    for i, (label, text) in enumerate(docs):
        if any(s in text for s in specials):
            tok.encode_special_tokens = False
            entries.append((i, 1, tok.encode(text, add_special_tokens=False).ids))
            entries.append((i, 3, tok.encode(text, add_special_tokens=True).ids))
    tok.encode_special_tokens = False
    return entries


def smollm2_tokenizer():
    r = GGUFReader(GGUF)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if ty == 3]
    assert len(specials) == 17, specials
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok, specials


# ---- tiny Hugging Face folders ----------------------------------------------------------------

def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def tiny_model(folder, n_vocab):
    """config.json and a 2-wide one-layer llama in model.safetensors: only the tokenizer matters."""
    write_json(os.path.join(folder, "config.json"), {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": n_vocab,
        "max_position_embeddings": 128, "hidden_size": 2, "num_hidden_layers": 1, "num_attention_heads": 1,
        "num_key_value_heads": 1, "intermediate_size": 1, "hidden_act": "silu", "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "float16"})
    z = lambda *shape: np.zeros(shape, dtype=np.float16)
    t = {"model.embed_tokens.weight": z(n_vocab, 2), "model.norm.weight": z(2),
         "model.layers.0.input_layernorm.weight": z(2), "model.layers.0.post_attention_layernorm.weight": z(2),
         "model.layers.0.self_attn.q_proj.weight": z(2, 2), "model.layers.0.self_attn.k_proj.weight": z(2, 2),
         "model.layers.0.self_attn.v_proj.weight": z(2, 2), "model.layers.0.self_attn.o_proj.weight": z(2, 2),
         "model.layers.0.mlp.gate_proj.weight": z(1, 2), "model.layers.0.mlp.up_proj.weight": z(1, 2),
         "model.layers.0.mlp.down_proj.weight": z(2, 1)}
    path = os.path.join(folder, "model.safetensors")
    save_file(t, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)


def train_bpe(pre, texts, vocab_size, alphabet=None, limit_alphabet=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    kw = {"vocab_size": vocab_size, "show_progress": False}
    if alphabet:
        kw["initial_alphabet"] = alphabet
    if limit_alphabet:
        kw["limit_alphabet"] = limit_alphabet
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(**kw))
    return json.loads(tok.to_str())["model"]


def added(id_, content, special):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


def byte_level_json(model, regex, ignore_merges, specials, user_defined, normalizer, bos):
    vocab = dict(model["vocab"])
    adds = []
    for s in specials:
        adds.append(added(len(vocab), s, True))
        vocab[s] = len(vocab)
    for s in user_defined:
        adds.append(added(len(vocab), s, False))
        vocab[s] = len(vocab)
    post = None
    if bos:
        post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                                         {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": adds, "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": post, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                            "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": {k: v for k, v in model["vocab"].items()},
                  "merges": model["merges"]},
    }, len(vocab)


def spm_json(model):
    """Llama 2's tokenizer.json layout: <unk> <s> </s>, 256 byte tokens, then the learned ones."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                     {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(i, s, True) for i, s in enumerate(SPM_SPECIALS)],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "▁"}]},
        "pre_tokenizer": None, "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": model["merges"]},
    }, len(vocab)


def make_folder(name, tj, n_tokens, pad, tok_config):
    d = os.path.join(OUT, name)
    os.makedirs(d)
    write_json(os.path.join(d, "tokenizer.json"), tj)
    write_json(os.path.join(d, "tokenizer_config.json"), tok_config)
    tiny_model(d, n_tokens + pad)
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))


def tiny_fixtures(docs):
    train = [t for i, (_, t) in enumerate(docs) if i % 2 == 0]
    picks = [i for i in range(len(docs)) if i % 5 == 0 or docs[i][0].startswith(("special", "tiny", "weird",
                                                                                   "ws", "crlf"))]
    # Llama 3: Split regex + ByteLevel, ignore_merges, a non-special added token, BOS by post-processor
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    model = train_bpe(pre, train, 4000, alphabet=pre_tokenizers.ByteLevel.alphabet())
    tj, n = byte_level_json(model, LLAMA3_REGEX, True, LLAMA3_SPECIALS, ["<think>", "</think>"], None,
                            "<|begin_of_text|>")
    tok = make_folder("llama3-tiny", tj, n, 3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                                "tokenizer_class": "PreTrainedTokenizerFast"})
    write_ref(os.path.join(OUT, "llama3-tiny.ref"),
              encode_all(tok, docs, picks, LLAMA3_SPECIALS + ["<think>", "</think>"]))

    # Qwen2: single digits, NFC (so only documents that are already NFC are compared)
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    model = train_bpe(pre, train, 3000, alphabet=pre_tokenizers.ByteLevel.alphabet())
    tj, n = byte_level_json(model, QWEN2_REGEX, False, QWEN2_SPECIALS, [], {"type": "NFC"}, None)
    tok = make_folder("qwen2-tiny", tj, n, 0, {"bos_token": None, "eos_token": "<|im_end|>",
                                               "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer"})
    nfc = [i for i in picks if unicodedata.normalize("NFC", docs[i][1]) == docs[i][1]]
    nfc_docs = [d if unicodedata.normalize("NFC", d[1]) == d[1] else ("skip", "") for d in docs]
    write_ref(os.path.join(OUT, "qwen2-tiny.ref"), encode_all(tok, nfc_docs, nfc, QWEN2_SPECIALS))

    # SentencePiece-style: trained on "▁"-joined words (as SentencePiece learns), encoded with
    # no pre-tokenizer over whole texts, byte fallback for the characters it did not keep
    # The 400 most frequent characters (ties by code point) are its alphabet; the trainer
    # never sees the others. (Its own limit_alphabet breaks ties at random.)
    counts = {}
    for text in train:
        for ch in text:
            counts[ch] = counts.get(ch, 0) + 1
    keep = set(sorted(counts, key=lambda ch: (-counts[ch], ord(ch)))[:400]) | {" "}
    spm_train = ["".join(ch for ch in text if ch in keep) for text in train]
    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t = Tokenizer(models.BPE())
    t.normalizer = norm
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    t.train_from_iterator(spm_train, trainer=trainers.BpeTrainer(vocab_size=3000, show_progress=False))
    model = json.loads(t.to_str())["model"]
    tj, n = spm_json(model)
    tok = make_folder("spm-tiny", tj, n, 0, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                             "add_bos_token": True, "tokenizer_class": "LlamaTokenizer"})
    write_ref(os.path.join(OUT, "spm-tiny.ref"), encode_all(tok, docs, picks, SPM_SPECIALS))
    metaspace_fixtures(tj, n, docs, picks)

    spm_scores_fixture(docs, [i for i in picks if i % 10 == 0 or docs[i][0].startswith(("tiny", "weird", "ws",
                                                                                          "crlf"))])


def metaspace_fixtures(tj, n, docs, picks):
    """The same vocabulary as spm-tiny with the space rule in a Metaspace pre-tokenizer, as
    tokenizer.json files converted without the legacy rule have it: "first" (a "▁" before the
    text's start only, not after special tokens, none when the text starts with a space; no
    split: Mistral v0.3's setting) and "always" with split (a "▁" before every piece between
    special tokens unless it starts with a space; each "▁" starts a new word). "▁▁" and "▁▁▁"
    are added with the last merges, so whether runs of spaces merge across words shows."""
    tj = json.loads(json.dumps(tj))
    vocab = tj["model"]["vocab"]
    for t in ("▁▁", "▁▁▁"):
        vocab[t] = len(vocab)
    tj["model"]["merges"] += [["▁", "▁"], ["▁▁", "▁"]]
    tj["normalizer"] = None
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
              "legacy": False, "tokenizer_class": "LlamaTokenizer"}
    for name, scheme, split in (("spm-first-tiny", "first", False), ("spm-always-tiny", "always", True)):
        tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split}
        tok = make_folder(name, tj, n + 2, 0, config)
        write_ref(os.path.join(OUT, name + ".ref"), encode_all(tok, docs, picks, SPM_SPECIALS))
        # texts the corpus lacks: a literal "▁" first (no second one is put before it), spaces
        # around special tokens; one line each: parse_special, the text's UTF-8 in hex, the ids
        with open(os.path.join(OUT, name + ".extra"), "w") as f:
            for text in ("\u2581Hello world", "a<s>\u2581Hello", " <s> b  c", "<s>\u2581\u2581x", "\u2581"):
                f.write("1 %s %s\n" % (text.encode().hex(), ",".join(map(str, tok.encode(text, add_special_tokens=False).ids))))


def spm_scores_fixture(docs, picks):
    """A SentencePiece BPE model trained with the `sentencepiece` library (Llama 2's settings:
    identity normalization, dummy prefix, whitespace kept, byte fallback), written as a tiny
    GGUF with scores, so the C test covers the score-ordered merge GGUF vocabularies use.
    The reference ids are sentencepiece's own encoding."""
    import io
    import gguf
    import sentencepiece as spm

    lines = [ln for i, (_, t) in enumerate(docs) if i % 2 == 0 for ln in t.split("\n") if ln.strip()]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=proto, model_type="bpe", vocab_size=3000,
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.98, max_sentence_length=1 << 20, num_threads=1, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i)
             else 1 for i in range(n)]

    path = os.path.join(OUT, "spm-scores.gguf")
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_name("thaw-test spm-scores")
    wr.add_context_length(128)
    wr.add_embedding_length(2)
    wr.add_block_count(1)
    wr.add_feed_forward_length(1)
    wr.add_head_count(1)
    wr.add_head_count_kv(1)
    wr.add_rope_dimension_count(2)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_tokenizer_model("llama")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types(types)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)
    wr.add_add_bos_token(True)
    z = lambda *shape: np.zeros(shape, dtype=np.float32)
    for name, arr in [("token_embd.weight", z(n, 2)), ("output_norm.weight", z(2)), ("blk.0.attn_norm.weight", z(2)),
                      ("blk.0.attn_q.weight", z(2, 2)), ("blk.0.attn_k.weight", z(2, 2)),
                      ("blk.0.attn_v.weight", z(2, 2)), ("blk.0.attn_output.weight", z(2, 2)),
                      ("blk.0.ffn_norm.weight", z(2)), ("blk.0.ffn_gate.weight", z(1, 2)),
                      ("blk.0.ffn_up.weight", z(1, 2)), ("blk.0.ffn_down.weight", z(2, 1))]:
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    os.chmod(path, 0o644)

    entries = [(i, 0, sp.encode(docs[i][1])) for i in picks]
    entries += [(i, 2, [1] + sp.encode(docs[i][1])) for i in picks[:20]]
    write_ref(os.path.join(OUT, "spm-scores.ref"), entries)


def main():
    if not os.path.isfile(GGUF):
        sys.exit("%s is missing: run `make model` first" % GGUF)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    docs = build_corpus()
    size = write_corpus(docs)
    tok, specials = smollm2_tokenizer()
    entries = encode_all(tok, docs, range(len(docs)), specials)
    write_ref(os.path.join(OUT, "smollm2.ref"), entries)
    n_ids = sum(len(e[2]) for e in entries if e[1] == 0)
    tiny_fixtures(docs)
    total = sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(OUT) for f in fs)
    print("corpus: %d documents, %d bytes; SmolLM2: %d tokens; %s: %d bytes in all" %
          (len(docs), size, n_ids, os.path.relpath(OUT, REPO), total))


if __name__ == "__main__":
    main()
