"""The GEMM drivers against two references, bit for bit, on random shapes and layouts.

The contract (kernels/gemm.py): every element of ``A @ B`` is one fused multiply-add chain over ``p = 0..k-1``
in order, starting from zero. The references are

- ``_chain``: that chain written out element by element with a scalar ``llvm.fma.f32`` (independent of the
  kernel's packing, tiling, loop order and threads), and
- ``_gemm_serial_before``: the serial driver as it was before the short-wide path (each B panel packed just
  before use) and the thread-pool ``gemm_blocks``, kept here as written then.

``gemm`` (serial and parallel drivers) and ``gemm_blocks`` must give the same bits as both.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from wse_sim.kernels import gemm, gemm_blocks

G = importlib.import_module("wse_sim.kernels.gemm")


@intrinsic
def _fma32(typingctx, a, b, c):
    """``a*b + c`` in float32 with one rounding (``llvm.fma.f32``, always fused)."""

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(cache=True)
def _chain(a, b):
    m, k = a.shape
    n = b.shape[1]
    c = np.zeros((m, n), np.float32)
    for i in range(m):
        for j in range(n):
            acc = np.float32(0.0)
            for p in range(k):
                acc = _fma32(a[i, p], b[p, j], acc)
            c[i, j] = acc
    return c


@njit(cache=True)
def _gemm_serial_before(ab, aoff, sa0, sa1, bb, boff, sb0, sb1, m, k, n, c):
    """The serial driver before this branch: all B panels of a KC x NC slab packed, then every MC block."""
    direct = sb1 == 1 and m <= G.DIRECT_B_MAX_M
    cf = c.reshape(-1)
    kcap = min(G.KC, k)
    bp = np.empty(kcap * (min(G.NC, n) + G.NR), np.float32)
    ap = np.empty(kcap * (min(G.MC, m) + G.MR), np.float32)
    scratch = np.empty(G.MR * G.NR, np.float32)
    for jc in range(0, n, G.NC):
        npan = (min(G.NC, n - jc) + G.NR - 1) // G.NR
        for pc in range(0, k, G.KC):
            kc = min(G.KC, k - pc)
            for jp in range(npan):
                if not direct or jc + (jp + 1) * G.NR > n:
                    G._pack_b_panel(bb, boff, sb0, sb1, pc, kc, jc + jp * G.NR, n, jp * kc * G.NR, bp)
            for ic in range(0, m, G.MC):
                mc = min(G.MC, m - ic)
                G._pack_a(ab, aoff, sa0, sa1, ic, mc, pc, kc, ap)
                b_row0 = boff + pc * sb0
                G._block(ap, bp, 0, bb, b_row0, sb0, direct, cf, n, ic, mc, jc, 0, npan, n, kc, pc > 0, False,
                         scratch)


def _before(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab, sa0, sa1 = G._flat_view(a)
    bb, sb0, sb1 = G._flat_view(b)
    c = np.empty((a.shape[0], b.shape[1]), np.float32)
    _gemm_serial_before(ab, 0, sa0, sa1, bb, 0, sb0, sb1, a.shape[0], a.shape[1], b.shape[1], c)
    return c


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint32)


def _view(rng: np.random.Generator, rows: int, cols: int, transposed: bool, pad: int) -> tuple:
    """A ``[rows, cols]`` float32 view into a larger C-contiguous tensor, and its (offset, s0, s1) there."""
    if transposed:  # rows of the view are columns of the tensor, as Ref(transpose=True) gives
        t = rng.standard_normal((cols + pad, rows + 2 * pad), dtype=np.float32)
        return t, t[pad:pad + cols, pad:pad + rows].T, (pad * t.shape[1] + pad, 1, t.shape[1])
    t = rng.standard_normal((rows + pad, cols + 2 * pad), dtype=np.float32)
    return t, t[pad:pad + rows, pad:pad + cols], (pad * t.shape[1] + pad, t.shape[1], 1)


dims = st.integers(1, 140) | st.sampled_from([12, 13, 32, 33, 64, 96, 257, 300])


@settings(max_examples=40, deadline=None)
@given(m=dims, k=dims, n=dims | st.sampled_from([700, 4100]), ta=st.booleans(), tb=st.booleans(),
       pad=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_gemm_is_the_fma_chain_and_the_old_driver(m, k, n, ta, tb, pad, seed):
    """Short-wide (m <= MC), tall, k across KC blocks, n across NC slabs, either operand transposed."""
    rng = np.random.default_rng(seed)
    _, a, _ = _view(rng, m, k, ta, pad)
    _, b, _ = _view(rng, k, n, tb, pad)
    got = gemm(a, b)
    assert np.array_equal(_bits(got), _bits(_before(a, b)))
    assert np.array_equal(_bits(got), _bits(_chain(np.ascontiguousarray(a), np.ascontiguousarray(b))))


@settings(max_examples=25, deadline=None)
@given(blocks=st.lists(st.tuples(dims, dims, dims), min_size=1, max_size=6), ta=st.booleans(), tb=st.booleans(),
       seed=st.integers(0, 2**32 - 1), threads_work=st.booleans())
def test_gemm_blocks_is_the_fma_chain_and_the_old_driver(blocks, ta, tb, seed, threads_work):
    """Blocks of two shared tensors, in the thread pool (or this thread alone when the work is small)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(G, "PARALLEL_MIN_WORK", 0 if threads_work else G.PARALLEL_MIN_WORK)
        _check_blocks(blocks, ta, tb, seed)


def _check_blocks(blocks, ta, tb, seed):
    rng = np.random.default_rng(seed)
    mmax, kmax, nmax = (max(x[i] for x in blocks) for i in range(3))
    pad = 2
    ta_t, _, _ = _view(rng, mmax + pad, kmax + pad, ta, 0)
    tb_t, _, _ = _view(rng, kmax + pad, nmax + pad, tb, 0)
    spec, views = [], []
    for i, (m, k, n) in enumerate(blocks):
        r0, p0, j0 = i % (pad + 1), (i + 1) % (pad + 1), (2 * i) % (pad + 1)
        a = (ta_t.T if ta else ta_t)[r0:r0 + m, p0:p0 + k]
        b = (tb_t.T if tb else tb_t)[p0:p0 + k, j0:j0 + n]
        wa, wb = ta_t.shape[1], tb_t.shape[1]
        sa = (p0 * wa + r0, 1, wa) if ta else (r0 * wa + p0, wa, 1)
        sb = (j0 * wb + p0, 1, wb) if tb else (p0 * wb + j0, wb, 1)
        spec.append((*sa, *sb, m, k, n))
        views.append((a, b))
    outs = gemm_blocks(ta_t, tb_t, np.array(spec))
    for (a, b), out in zip(views, outs, strict=True):
        assert out.shape == (a.shape[0], b.shape[1])
        assert np.array_equal(_bits(out), _bits(_before(a, b)))
        assert np.array_equal(_bits(out), _bits(_chain(np.ascontiguousarray(a), np.ascontiguousarray(b))))


def test_chain_reference_is_fused():
    """The reference itself: ``-(1 + 2**-22)`` then ``+ (1 + 2**-23)**2`` is ``2**-46`` only when fused."""
    x = np.float32(1 + 2**-23)
    a = np.array([[np.float32(-(1 + 2**-22)), x]], np.float32)
    b = np.array([[np.float32(1.0)], [x]], np.float32)
    assert _chain(a, b)[0, 0] == np.float32(2**-46)
    assert gemm(a, b)[0, 0] == np.float32(2**-46)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_gemm_blocks_any_helper_count(threads, monkeypatch):
    """Whatever the number of threads taking part (more than blocks, or one), the same bits."""
    monkeypatch.setattr(G, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(G.numba, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(threads)
    a = rng.standard_normal((64, 96), dtype=np.float32)
    wte = rng.standard_normal((700, 96), dtype=np.float32)  # B = wte.T, as the LM head reads it
    spec = np.array([(r * 32 * 96, 96, 1, 0, 1, 96, 32, 96, 700) for r in range(2)])
    outs = gemm_blocks(a, wte, spec)
    for r, out in enumerate(outs):
        assert np.array_equal(_bits(out), _bits(_chain(a[32 * r:32 * r + 32], np.ascontiguousarray(wte.T))))
