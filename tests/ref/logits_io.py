"""logits_io.py -- what the logits scripts share (see make_logits_fixtures.py): the prompts
file (per prompt, u32 n then n u32 token ids), the fixture record (per position, f32
logsumexp then the TOP most likely (u32 id, f32 logit) pairs) and the perplexity over
windows."""
import struct

import numpy as np

TOP = 32


def logsumexp(row):
    m = row.max()
    return m + np.log(np.exp(row - m).sum())


def perplexity(windows):
    """windows: (ids, rows) pairs, rows[i] the logits after ids[: i + 1]."""
    nll, count = 0.0, 0
    for ids, rows in windows:
        for i in range(len(ids) - 1):
            nll += logsumexp(rows[i]) - rows[i][ids[i + 1]]
            count += 1
    return float(np.exp(nll / count))


def write_top(f, row):
    lse = logsumexp(row)
    top = np.argsort(-row, kind="stable")[:TOP]
    f.write(struct.pack("<f", lse))
    for t in top:
        f.write(struct.pack("<If", int(t), float(row[t])))


def write_prompt(f, ids):
    """One prompt record: its token count, then the ids (u32 each)."""
    f.write(struct.pack("<I", len(ids)) + struct.pack(f"<{len(ids)}I", *ids))


def read_prompts(path):
    """The records write_prompt wrote, in order: lists of token ids."""
    data = open(path, "rb").read()
    off, prompts = 0, []
    while off < len(data):
        (n,) = struct.unpack_from("<I", data, off)
        prompts.append(list(struct.unpack_from(f"<{n}I", data, off + 4)))
        off += 4 + 4 * n
    return prompts


def read_top(path):
    """The records write_top wrote, in order: (ids, logits) arrays of TOP, most likely first."""
    data = open(path, "rb").read()
    size = 4 + 8 * TOP
    out = []
    for off in range(0, len(data), size):
        pairs = struct.unpack_from("<" + "If" * TOP, data, off + 4)
        out.append((np.array(pairs[0::2]), np.array(pairs[1::2], dtype=np.float64)))
    return out
