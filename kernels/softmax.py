"""Causally masked softmax over attention scores in fp32, blockable along the query axis."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .gemm import _claim, _run_shared, shared_threads
from .precision import require_f32

# Above this many score entries the rows are spread over threads.
PARALLEL_MIN_SIZE = 1 << 18
# From this many score entries (about 30 us of work) up to PARALLEL_MIN_SIZE the rows are shared with the GEMM
# helper threads (a handful of microseconds to wake, against a millisecond-scale numba parallel region).
SHARED_MIN_SIZE = 1 << 14


@njit(cache=True)
def _softmax_row(s, o, scale, allowed):
    """``o = softmax(scale * s[:allowed])`` with ``o[allowed:] = 0``; max-subtracted, fp32 throughout."""
    mx = np.float32(-np.inf)
    for j in range(allowed):
        v = scale * s[j]
        if v > mx:
            mx = v
    total = np.float32(0.0)
    for j in range(allowed):
        e = np.exp(scale * s[j] - mx)
        o[j] = e
        total += e
    for j in range(allowed):
        o[j] = o[j] / total
    for j in range(allowed, s.shape[0]):
        o[j] = 0.0


@njit(cache=True)
def _softmax_serial(x, out, scale, q_offset):
    sq, sk = x.shape[1], x.shape[2]
    for r in range(x.shape[0] * sq):
        h, i = r // sq, r % sq
        _softmax_row(x[h, i], out[h, i], scale, min(sk, i + q_offset + 1))


@njit(cache=True, parallel=True)
def _softmax_parallel(x, out, scale, q_offset):
    sq, sk = x.shape[1], x.shape[2]
    for r in prange(x.shape[0] * sq):
        h, i = r // sq, r % sq
        _softmax_row(x[h, i], out[h, i], scale, min(sk, i + q_offset + 1))


@njit(cache=True, nogil=True)
def _softmax_claimed(x, out, scale, q_offset, rows_per_claim, counter):
    """:func:`_softmax_serial`'s rows, ``rows_per_claim`` at a time from the shared ``counter``, for every
    thread taking part: each row is the same :func:`_softmax_row` call whichever thread runs it."""
    sq, sk = x.shape[1], x.shape[2]
    rows = x.shape[0] * sq
    while True:
        r0 = _claim(counter) * rows_per_claim
        if r0 >= rows:
            return
        for r in range(r0, min(rows, r0 + rows_per_claim)):
            h, i = r // sq, r % sq
            _softmax_row(x[h, i], out[h, i], scale, min(sk, i + q_offset + 1))


def causal_softmax(scores: np.ndarray, scale: float = 1.0, q_offset: int = 0) -> np.ndarray:
    """Softmax of ``scale * scores`` over the last axis of ``scores [..., sq, sk]`` with a causal mask.

    Key ``j`` is visible to query row ``i`` iff ``j <= i + q_offset``; masked entries are exactly 0. A block
    of query rows that starts at row ``r0`` of a longer sequence passes ``q_offset = r0``. 2-D or 3-D input.
    """
    x = require_f32(scores, "causal_softmax: scores")
    if x.ndim not in (2, 3):
        raise ValueError(f"causal_softmax: scores must be [sq, sk] or [h, sq, sk], got shape {x.shape}")
    q_offset = int(q_offset)
    if q_offset < 0:
        raise ValueError(f"causal_softmax: q_offset must be >= 0, got {q_offset} (row 0 would see no key)")
    x3 = np.ascontiguousarray(x).reshape((-1, *x.shape[-2:]))
    out = np.empty_like(x3)
    threads = shared_threads()
    if x3.size >= PARALLEL_MIN_SIZE:
        _softmax_parallel(x3, out, np.float32(scale), q_offset)
    elif x3.size >= SHARED_MIN_SIZE and threads > 1:
        rows = x3.shape[0] * x3.shape[1]
        per_claim = max(1, rows // (8 * threads))
        _run_shared(_softmax_claimed, (x3, out, np.float32(scale), q_offset, per_claim, np.zeros(1, np.int64)),
                    threads)
    else:
        _softmax_serial(x3, out, np.float32(scale), q_offset)
    return out.reshape(x.shape)
