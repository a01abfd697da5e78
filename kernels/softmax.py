"""Causally masked softmax over attention scores in fp32, blockable along the query axis."""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .gemm import _claim, _f32_ptr, _run_shared, shared_threads
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


@njit(cache=True, nogil=True)
def _softmax_many_claimed(addrs, outs, shapes, q_offsets, row_start, scale, rows_per_claim, counter):
    """Rows of every block of :func:`causal_softmax_many` (block ``b``: ``shapes[b] = (h, sq, sk)`` float32 at
    address ``addrs[b]``, written at ``outs[b]``; its rows ``row_start[b]:row_start[b+1]`` of the whole), claimed
    ``rows_per_claim`` at a time: each row is the same :func:`_softmax_row` call as in :func:`causal_softmax`."""
    total = row_start[row_start.shape[0] - 1]
    while True:
        r0 = _claim(counter) * rows_per_claim
        if r0 >= total:
            return
        b = np.searchsorted(row_start, r0, side="right") - 1
        for r in range(r0, min(total, r0 + rows_per_claim)):
            while r >= row_start[b + 1]:
                b += 1
            sq, sk = shapes[b, 1], shapes[b, 2]
            local = r - row_start[b]
            i = local % sq
            x = numba.carray(_f32_ptr(addrs[b] + 4 * local * sk), sk)
            o = numba.carray(_f32_ptr(outs[b] + 4 * local * sk), sk)
            _softmax_row(x, o, scale, min(sk, i + q_offsets[b] + 1))


def causal_softmax_many(blocks: list[tuple[np.ndarray, int]], scale: float = 1.0) -> list[np.ndarray]:
    """:func:`causal_softmax` of each ``(scores, q_offset)`` in ``blocks``, as one call: the rows of all blocks
    shared with the GEMM helper threads, each row the same computation (so the same bits) as one block at a time.
    Returns new arrays of the blocks' shapes."""
    xs, outs, q_offsets = [], [], []
    for scores, q_offset in blocks:
        x = require_f32(scores, "causal_softmax_many: scores")
        if x.ndim not in (2, 3):
            raise ValueError(f"causal_softmax_many: scores must be [sq, sk] or [h, sq, sk], got shape {x.shape}")
        if int(q_offset) < 0:
            raise ValueError(f"causal_softmax_many: q_offset must be >= 0, got {q_offset}")
        xs.append(np.ascontiguousarray(x))
        outs.append(np.empty(x.shape, np.float32))
        q_offsets.append(int(q_offset))
    if not xs:
        return []
    shapes = np.array([(x.size // (x.shape[-2] * x.shape[-1]) if x.size else 0, *x.shape[-2:]) for x in xs],
                      np.int64)
    row_start = np.zeros(len(xs) + 1, np.int64)
    np.cumsum(shapes[:, 0] * shapes[:, 1], out=row_start[1:])
    threads = shared_threads() if sum(x.size for x in xs) >= SHARED_MIN_SIZE else 1
    args = (np.array([x.ctypes.data for x in xs], np.int64), np.array([o.ctypes.data for o in outs], np.int64),
            shapes, np.array(q_offsets, np.int64), row_start, np.float32(scale),
            max(1, int(row_start[-1]) // (8 * threads)), np.zeros(1, np.int64))
    if threads > 1:
        _run_shared(_softmax_many_claimed, args, threads)
    else:
        _softmax_many_claimed(*args)
    return outs
