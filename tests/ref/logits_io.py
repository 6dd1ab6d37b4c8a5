"""logits_io.py -- what both logits scripts share (see make_logits_fixtures.py): the fixture
record (per position, f32 logsumexp then the TOP most likely (u32 id, f32 logit) pairs) and
the perplexity over windows."""
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
