"""logits_io.py -- the fixture record both logits scripts write (see make_logits_fixtures.py):
per position, f32 logsumexp then the TOP most likely (u32 id, f32 logit) pairs."""
import struct

import numpy as np

TOP = 32


def write_top(f, row):
    m = row.max()
    lse = m + np.log(np.exp(row - m).sum())
    top = np.argsort(-row, kind="stable")[:TOP]
    f.write(struct.pack("<f", lse))
    for t in top:
        f.write(struct.pack("<If", int(t), float(row[t])))
