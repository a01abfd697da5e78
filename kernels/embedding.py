"""Token + position embedding lookup (GPT-2 style: learned absolute positions)."""

from __future__ import annotations

import numpy as np

from .precision import require_f32


def embedding(ids: np.ndarray, wte: np.ndarray, wpe: np.ndarray, pos_offset: int = 0) -> np.ndarray:
    """``out[b*seq + s] = wte[ids[b, s]] + wpe[pos_offset + s]`` for integer ``ids [batch, seq]``.

    Returns ``[batch*seq, d]`` float32 (one fp32 rounding per element, like torch's add). ``pos_offset``
    places a block of a longer sequence at its true positions. Ids outside ``[0, vocab)`` and positions past
    the end of ``wpe`` raise ValueError.
    """
    ids = np.asarray(ids)
    wte = require_f32(wte, "embedding: wte")
    wpe = require_f32(wpe, "embedding: wpe")
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"embedding: ids must be an integer [batch, seq] array, not {ids.dtype} {ids.shape}")
    if wte.ndim != 2 or wpe.ndim != 2 or wte.shape[1] != wpe.shape[1]:
        raise ValueError(f"embedding: wte {wte.shape} and wpe {wpe.shape} must be [vocab, d] and [pos, d]")
    batch, seq = ids.shape
    vocab, d = wte.shape
    pos_offset = int(pos_offset)
    if pos_offset < 0 or pos_offset + seq > wpe.shape[0]:
        raise ValueError(
            f"embedding: positions {pos_offset}..{pos_offset + seq - 1} outside wpe's {wpe.shape[0]} rows"
        )
    flat = ids.reshape(-1)
    bad = (flat < 0) | (flat >= vocab)
    if bad.any():
        bad_id = int(flat[np.argmax(bad)])
        raise ValueError(f"embedding: token id {bad_id} out of range for vocab size {vocab}")
    out = wte[flat]  # fancy indexing: a new C-contiguous float32 array
    out.reshape(batch, seq, d)[...] += wpe[pos_offset : pos_offset + seq]
    return out
