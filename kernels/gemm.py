"""fp32 GEMM with fp32 accumulation: a packed, register-blocked numba kernel (no BLAS).

Structure (the BLIS/GotoBLAS scheme): B is packed into ``KC x NR`` column panels and A into ``MR x KC`` row
panels, both zero padded, and a micro-kernel keeps an ``MR x NR`` tile of C in vector registers while it walks
``k``. Numba has no SIMD types, so the micro-kernel is written with a small explicit vector type (an LLVM
``<VW x float>`` with load / store / broadcast / fused multiply-add intrinsics); LLVM's auto-vectoriser alone
spills or scalarises a tile this size. The tile is 12 x 32 (24 zmm accumulators) when the JIT target has
AVX-512, else 6 x 16 (12 ymm accumulators, fits AVX2's 16 registers).

Determinism: every C element is one fused multiply-add chain over ``p = 0..k-1`` in order (a ``KC`` block
reloads the partial sum from C and continues the chain), independent of how rows and columns are split between
threads. Results are therefore identical run to run, between the serial and the parallel driver, and for any
thread count. Because each step is a single-rounding FMA, the error is within the classic ``k*u*(|A||B|)``
bound for fp32 (``u = 2**-24``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model
from numpy.lib.stride_tricks import as_strided

from .precision import require_f32


def _target_has_avx512() -> bool:
    """Whether numba's JIT target (host CPU, or NUMBA_CPU_FEATURES when set) can use 512-bit vectors.

    Numba's on-disk cache is keyed by the same CPU name and feature string, so code compiled for one vector
    width is never loaded on a target where this answer differs.
    """
    feats = config.CPU_FEATURES
    if feats is None:
        try:
            feats = llvm_binding.get_host_cpu_features().flatten()
        except RuntimeError:
            return False
    flags = set(feats.split(","))
    return "+avx512f" in flags and "-evex512" not in flags


if _target_has_avx512():
    VW, MR = 16, 12
else:
    VW, MR = 8, 6
NR = 2 * VW  # two vectors per tile row
KC = 256  # k block: a KC x NR panel of B (32 KiB with AVX-512) stays in L1 while A panels stream from L2
NC = 4096  # n block: the packed KC x NC slab of B
MC = 22 * MR  # m block: an MC x KC slab of packed A (264 KiB with AVX-512) stays in L2

# Below this many multiply-adds (m*n*k) the serial driver wins: no thread wake-up, and small blocks such as
# 43x64 @ 64x192 (the simulator's bread and butter) are latency bound anyway.
PARALLEL_MIN_WORK = 1 << 23
# Up to this many rows of A, row-major B is read in place instead of packed: with so few A panels sharing a
# B panel the copy costs more than the strided reads (beyond it, strided B panels thrash L1 and TLB).
DIRECT_B_MAX_M = 4 * MR
# A chain of blocks adding into one result (gemm_blocks' ``after``) runs a column panel of the result at a time,
# this many bytes of it: with every block's adds on one panel before the next, the panel stays in L1/L2.
CHAIN_PANEL_BYTES = 64 << 10
# ... but at least this many columns: every block packs its A panels again for each panel of the result.
CHAIN_MIN_COLS = 256


# ---- a tiny explicit-SIMD vocabulary ----------------------------------------------------------------------
class _F32Vec(types.Type):
    """Numba type of an LLVM ``<VW x float>`` register value."""

    def __init__(self):
        super().__init__(name=f"f32x{VW}")


_f32vec = _F32Vec()
_LL_VEC = ir.VectorType(ir.FloatType(), VW)


@register_model(_F32Vec)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LL_VEC)


def _elem_ptr(context, builder, arrty, arr, idx):
    """Pointer to ``arr.data[idx]`` (flat index; no wraparound or bounds logic: callers index in range)."""
    return builder.gep(context.make_array(arrty)(context, builder, arr).data, [idx])


def _splat(builder, scalar):
    v = builder.insert_element(ir.Constant(_LL_VEC, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), VW), [0] * VW)
    return builder.shuffle_vector(v, ir.Constant(_LL_VEC, ir.Undefined), mask)


@intrinsic
def _vload(typingctx, arr, idx):
    """VW consecutive floats of a 1-D contiguous float32 array, starting at flat index ``idx`` (unaligned)."""

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _LL_VEC.as_pointer()), align=4)

    return _f32vec(arr, idx), codegen


@intrinsic
def _vstore(typingctx, arr, idx, vec):
    """Store a vector to ``arr[idx:idx+VW]`` (1-D contiguous float32, unaligned)."""

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _LL_VEC.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


@intrinsic
def _vbcast(typingctx, arr, idx):
    """``arr[idx]`` broadcast to all lanes (x86 folds it into the FMA as an embedded broadcast)."""

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        return _splat(builder, builder.load(ptr, align=4))

    return _f32vec(arr, idx), codegen


@intrinsic
def _sload(typingctx, arr, idx):
    """``arr[idx]`` without numba's negative-index wraparound (the packing loops index in range)."""

    def codegen(context, builder, sig, args):
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)

    return types.float32(arr, idx), codegen


@intrinsic
def _sstore(typingctx, arr, idx, val):
    """``arr[idx] = val`` without wraparound logic."""

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[2], sig.args[2], types.float32)
        builder.store(val, _elem_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, val), codegen


@intrinsic
def _vtranspose(typingctx, src, soff, sstride, dst, doff, dstride):
    """Transpose a VW x VW block: row ``r`` is ``src[soff + r*sstride :][:VW]``, column ``c`` goes to
    ``dst[doff + c*dstride :][:VW]``. log2(VW) butterfly stages of two-input shuffles, each swapping the
    off-diagonal sub-blocks of one size, so a transposed operand packs at vector speed."""

    def codegen(context, builder, sig, args):
        src_data = context.make_array(sig.args[0])(context, builder, args[0]).data
        dst_data = context.make_array(sig.args[3])(context, builder, args[3]).data
        soff, sstride, doff, dstride = (
            context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2, 4, 5)
        )
        intp = soff.type

        def vptr(data, off, stride, i):
            idx = builder.add(off, builder.mul(stride, ir.Constant(intp, i)))
            return builder.bitcast(builder.gep(data, [idx]), _LL_VEC.as_pointer())

        rows = _butterfly(builder, [builder.load(vptr(src_data, soff, sstride, r), align=4) for r in range(VW)])
        for c in range(VW):
            builder.store(rows[c], vptr(dst_data, doff, dstride, c), align=4)
        return context.get_dummy_value()

    return types.none(src, soff, sstride, dst, doff, dstride), codegen


def _butterfly(builder, rows: list) -> list:
    """The VW x VW transpose of ``rows`` (VW vector values): log2(VW) stages of two-input shuffles, each
    swapping the off-diagonal sub-blocks of one size."""
    rows = list(rows)
    mask_ty = ir.VectorType(ir.IntType(32), VW)
    b = 1
    while b < VW:
        keep_lo = ir.Constant(mask_ty, [j if not j & b else VW + (j ^ b) for j in range(VW)])
        keep_hi = ir.Constant(mask_ty, [j ^ b if not j & b else VW + j for j in range(VW)])
        for i in range(VW):
            if not i & b:
                lo, hi = rows[i], rows[i | b]
                rows[i] = builder.shuffle_vector(lo, hi, keep_lo)
                rows[i | b] = builder.shuffle_vector(lo, hi, keep_hi)
        b *= 2
    return rows


@intrinsic
def _vpack_a_cols(typingctx, src, soff, sstride, dst, doff):
    """Pack VW columns of an MR-row strip of row-major A: row ``r`` is ``src[soff + r*sstride :][:VW]``, and
    column ``c`` (MR values, then VW - MR zeros) is stored as one vector at ``dst[doff + c*MR :]``, columns
    in increasing order. Each store's zero tail lands on the next column's slot, which the next store
    overwrites; the last one reaches VW - MR values past the strip's VW columns (callers leave room, and
    whatever packs those positions later overwrites them)."""

    def codegen(context, builder, sig, args):
        src_data = context.make_array(sig.args[0])(context, builder, args[0]).data
        dst_data = context.make_array(sig.args[3])(context, builder, args[3]).data
        soff, sstride, doff = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2, 4))
        intp = soff.type

        def vptr(data, off, stride, i):
            idx = builder.add(off, builder.mul(stride, ir.Constant(intp, i)))
            return builder.bitcast(builder.gep(data, [idx]), _LL_VEC.as_pointer())

        zero = ir.Constant(_LL_VEC, [0.0] * VW)
        rows = [builder.load(vptr(src_data, soff, sstride, r), align=4) for r in range(MR)]
        cols = _butterfly(builder, rows + [zero] * (VW - MR))
        for c in range(VW):
            builder.store(cols[c], vptr(dst_data, doff, ir.Constant(intp, MR), c), align=4)
        return context.get_dummy_value()

    return types.none(src, soff, sstride, dst, doff), codegen


@intrinsic
def _prefetch_w(typingctx, arr, idx):
    """Hint that the cache line holding ``arr[idx]`` is about to be written (``llvm.prefetch``, write, high
    locality); no effect on any value."""

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_elem_ptr(context, builder, sig.args[0], args[0], args[1]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, idx), codegen


@intrinsic
def _vzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_LL_VEC, [0.0] * VW)

    return _f32vec(), codegen


@intrinsic
def _vfma(typingctx, a, b, c):
    """``a*b + c`` lane-wise; llvm.fmuladd is one fused, singly rounded op on FMA hardware."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_LL_VEC, [_LL_VEC, _LL_VEC, _LL_VEC])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fmuladd.v{VW}f32")
        return builder.call(fn, args)

    return _f32vec(_f32vec, _f32vec, _f32vec), codegen


@intrinsic
def _vadd(typingctx, a, b):
    """``a + b`` lane-wise (one fp32 rounding per lane, as numpy's float32 add)."""

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return _f32vec(_f32vec, _f32vec), codegen


@intrinsic
def _f32_ptr(typingctx, addr):
    """The int64 address ``addr`` as a float32 pointer (for ``numba.carray`` over a caller's array)."""

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())

    return types.CPointer(types.float32)(addr), codegen


# ---- micro-kernel ------------------------------------------------------------------------------------------
@njit(cache=True)
def _micro(kc, ap, ao, bp, bo, ldb, t, to, ldt, load, acc):
    """``T[MR, NR] (+)= Ap_panel @ B_panel`` with the tile in registers.

    ``ap[ao:]`` is a packed ``kc x MR`` panel (MR values per k), ``bp[bo:]`` holds kc rows of NR contiguous
    values ``ldb`` apart (a packed panel, or row-major B itself), and the tile lives in flat ``t`` at ``to``
    with row stride ``ldt``. ``load`` continues the chain from the values in ``t`` (later k blocks) instead
    of starting from zero; ``acc`` adds the finished chain to the values in ``t`` (``T += A @ B``: the
    product rounded once by its chain, then one fp32 add, as numpy's ``+=`` of the product). Rows 6..11 exist
    only for MR == 12 (a compile-time constant, so the untaken
    branches vanish). Row r's accumulators are ``c{r}0, c{r}1`` (r in hex).
    """
    if not load:
        for r in range(MR):
            _prefetch_w(t, to + r * ldt)
            _prefetch_w(t, to + r * ldt + NR - 1)
    z = _vzero()
    c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51 = z, z, z, z, z, z, z, z, z, z, z, z
    c60, c61, c70, c71, c80, c81, c90, c91, ca0, ca1, cb0, cb1 = z, z, z, z, z, z, z, z, z, z, z, z
    if load:
        r = to
        c00, c01 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c10, c11 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c20, c21 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c30, c31 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c40, c41 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c50, c51 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        if MR == 12:
            c60, c61 = _vload(t, r), _vload(t, r + VW)
            r += ldt
            c70, c71 = _vload(t, r), _vload(t, r + VW)
            r += ldt
            c80, c81 = _vload(t, r), _vload(t, r + VW)
            r += ldt
            c90, c91 = _vload(t, r), _vload(t, r + VW)
            r += ldt
            ca0, ca1 = _vload(t, r), _vload(t, r + VW)
            r += ldt
            cb0, cb1 = _vload(t, r), _vload(t, r + VW)
    for _ in range(kc):
        b0 = _vload(bp, bo)
        b1 = _vload(bp, bo + VW)
        a = _vbcast(ap, ao)
        c00, c01 = _vfma(a, b0, c00), _vfma(a, b1, c01)
        a = _vbcast(ap, ao + 1)
        c10, c11 = _vfma(a, b0, c10), _vfma(a, b1, c11)
        a = _vbcast(ap, ao + 2)
        c20, c21 = _vfma(a, b0, c20), _vfma(a, b1, c21)
        a = _vbcast(ap, ao + 3)
        c30, c31 = _vfma(a, b0, c30), _vfma(a, b1, c31)
        a = _vbcast(ap, ao + 4)
        c40, c41 = _vfma(a, b0, c40), _vfma(a, b1, c41)
        a = _vbcast(ap, ao + 5)
        c50, c51 = _vfma(a, b0, c50), _vfma(a, b1, c51)
        if MR == 12:
            a = _vbcast(ap, ao + 6)
            c60, c61 = _vfma(a, b0, c60), _vfma(a, b1, c61)
            a = _vbcast(ap, ao + 7)
            c70, c71 = _vfma(a, b0, c70), _vfma(a, b1, c71)
            a = _vbcast(ap, ao + 8)
            c80, c81 = _vfma(a, b0, c80), _vfma(a, b1, c81)
            a = _vbcast(ap, ao + 9)
            c90, c91 = _vfma(a, b0, c90), _vfma(a, b1, c91)
            a = _vbcast(ap, ao + 10)
            ca0, ca1 = _vfma(a, b0, ca0), _vfma(a, b1, ca1)
            a = _vbcast(ap, ao + 11)
            cb0, cb1 = _vfma(a, b0, cb0), _vfma(a, b1, cb1)
        ao += MR
        bo += ldb
    if acc:
        r = to
        c00, c01 = _vadd(_vload(t, r), c00), _vadd(_vload(t, r + VW), c01)
        r += ldt
        c10, c11 = _vadd(_vload(t, r), c10), _vadd(_vload(t, r + VW), c11)
        r += ldt
        c20, c21 = _vadd(_vload(t, r), c20), _vadd(_vload(t, r + VW), c21)
        r += ldt
        c30, c31 = _vadd(_vload(t, r), c30), _vadd(_vload(t, r + VW), c31)
        r += ldt
        c40, c41 = _vadd(_vload(t, r), c40), _vadd(_vload(t, r + VW), c41)
        r += ldt
        c50, c51 = _vadd(_vload(t, r), c50), _vadd(_vload(t, r + VW), c51)
        r += ldt
        if MR == 12:
            c60, c61 = _vadd(_vload(t, r), c60), _vadd(_vload(t, r + VW), c61)
            r += ldt
            c70, c71 = _vadd(_vload(t, r), c70), _vadd(_vload(t, r + VW), c71)
            r += ldt
            c80, c81 = _vadd(_vload(t, r), c80), _vadd(_vload(t, r + VW), c81)
            r += ldt
            c90, c91 = _vadd(_vload(t, r), c90), _vadd(_vload(t, r + VW), c91)
            r += ldt
            ca0, ca1 = _vadd(_vload(t, r), ca0), _vadd(_vload(t, r + VW), ca1)
            r += ldt
            cb0, cb1 = _vadd(_vload(t, r), cb0), _vadd(_vload(t, r + VW), cb1)
    r = to
    _vstore(t, r, c00)
    _vstore(t, r + VW, c01)
    r += ldt
    _vstore(t, r, c10)
    _vstore(t, r + VW, c11)
    r += ldt
    _vstore(t, r, c20)
    _vstore(t, r + VW, c21)
    r += ldt
    _vstore(t, r, c30)
    _vstore(t, r + VW, c31)
    r += ldt
    _vstore(t, r, c40)
    _vstore(t, r + VW, c41)
    r += ldt
    _vstore(t, r, c50)
    _vstore(t, r + VW, c51)
    r += ldt
    if MR == 12:
        _vstore(t, r, c60)
        _vstore(t, r + VW, c61)
        r += ldt
        _vstore(t, r, c70)
        _vstore(t, r + VW, c71)
        r += ldt
        _vstore(t, r, c80)
        _vstore(t, r + VW, c81)
        r += ldt
        _vstore(t, r, c90)
        _vstore(t, r + VW, c91)
        r += ldt
        _vstore(t, r, ca0)
        _vstore(t, r + VW, ca1)
        r += ldt
        _vstore(t, r, cb0)
        _vstore(t, r + VW, cb1)


@njit(cache=True)
def _micro_half(kc, ap, ao, bp, bo, ldb, t, to, ldt, load, acc):
    """:func:`_micro` for tile rows 0..5 only (MR == 12): the edge tile of a block whose last row panel has at
    most 6 rows (64-row products: 5 x 12 + 4) costs half a full tile instead of a whole one. Each element's
    chain is the same FMA sequence as in :func:`_micro`, so the bits are too. Rows 6..11 of the A panel are
    read past (its stride stays MR) and the tile rows 6..11 of ``t`` are left untouched."""
    z = _vzero()
    c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51 = z, z, z, z, z, z, z, z, z, z, z, z
    if load:
        r = to
        c00, c01 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c10, c11 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c20, c21 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c30, c31 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c40, c41 = _vload(t, r), _vload(t, r + VW)
        r += ldt
        c50, c51 = _vload(t, r), _vload(t, r + VW)
    for _ in range(kc):
        b0 = _vload(bp, bo)
        b1 = _vload(bp, bo + VW)
        a = _vbcast(ap, ao)
        c00, c01 = _vfma(a, b0, c00), _vfma(a, b1, c01)
        a = _vbcast(ap, ao + 1)
        c10, c11 = _vfma(a, b0, c10), _vfma(a, b1, c11)
        a = _vbcast(ap, ao + 2)
        c20, c21 = _vfma(a, b0, c20), _vfma(a, b1, c21)
        a = _vbcast(ap, ao + 3)
        c30, c31 = _vfma(a, b0, c30), _vfma(a, b1, c31)
        a = _vbcast(ap, ao + 4)
        c40, c41 = _vfma(a, b0, c40), _vfma(a, b1, c41)
        a = _vbcast(ap, ao + 5)
        c50, c51 = _vfma(a, b0, c50), _vfma(a, b1, c51)
        ao += MR
        bo += ldb
    if acc:
        r = to
        c00, c01 = _vadd(_vload(t, r), c00), _vadd(_vload(t, r + VW), c01)
        r += ldt
        c10, c11 = _vadd(_vload(t, r), c10), _vadd(_vload(t, r + VW), c11)
        r += ldt
        c20, c21 = _vadd(_vload(t, r), c20), _vadd(_vload(t, r + VW), c21)
        r += ldt
        c30, c31 = _vadd(_vload(t, r), c30), _vadd(_vload(t, r + VW), c31)
        r += ldt
        c40, c41 = _vadd(_vload(t, r), c40), _vadd(_vload(t, r + VW), c41)
        r += ldt
        c50, c51 = _vadd(_vload(t, r), c50), _vadd(_vload(t, r + VW), c51)
    r = to
    _vstore(t, r, c00)
    _vstore(t, r + VW, c01)
    r += ldt
    _vstore(t, r, c10)
    _vstore(t, r + VW, c11)
    r += ldt
    _vstore(t, r, c20)
    _vstore(t, r + VW, c21)
    r += ldt
    _vstore(t, r, c30)
    _vstore(t, r + VW, c31)
    r += ldt
    _vstore(t, r, c40)
    _vstore(t, r + VW, c41)
    r += ldt
    _vstore(t, r, c50)
    _vstore(t, r + VW, c51)


# ---- packing -----------------------------------------------------------------------------------------------
@njit(cache=True)
def _pack_b_panel(bb, boff, sb0, sb1, pc, kc, j0, n, dst, bp):
    """Copy ``B[pc:pc+kc, j0:j0+NR]`` (element strides sb0, sb1 into flat ``bb``) to ``bp[dst:]`` as kc rows
    of NR, zero-padding columns past ``n``. Row-major B is two vector copies per row, transposed B (``B.T``
    of a row-major array, as in ``q @ k.T``) goes through VW x VW register transposes."""
    nr = min(NR, n - j0)
    if nr == NR and sb1 == 1:
        for p in range(kc):
            src = boff + (pc + p) * sb0 + j0
            row = dst + p * NR
            _vstore(bp, row, _vload(bb, src))
            _vstore(bp, row + VW, _vload(bb, src + VW))
        return
    p_vec = kc - kc % VW if nr == NR and sb0 == 1 else 0
    for p0 in range(0, p_vec, VW):
        for h in range(0, NR, VW):
            _vtranspose(bb, boff + (pc + p0) + (j0 + h) * sb1, sb1, bp, dst + p0 * NR + h, NR)
    for p in range(p_vec, kc):
        src = boff + (pc + p) * sb0 + j0 * sb1
        row = dst + p * NR
        for j in range(nr):
            _sstore(bp, row + j, _sload(bb, src + j * sb1))
        for j in range(nr, NR):
            _sstore(bp, row + j, 0.0)


@njit(cache=True)
def _pack_a(ab, aoff, sa0, sa1, ic, mc, pc, kc, ap):
    """Copy ``A[ic:ic+mc, pc:pc+kc]`` to ``ap`` as MR-row panels, each kc groups of MR values.

    Padding rows only feed tile rows that are never stored; they are zeroed anyway so that stale memory
    (denormals, NaNs) cannot slow the FMA units down with microcode assists.
    """
    for ip in range((mc + MR - 1) // MR):
        i0 = ic + ip * MR
        mr = min(MR, ic + mc - i0)
        base = ip * kc * MR
        p_vec = kc - kc % VW if mr == MR and sa1 == 1 else 0
        for p0 in range(0, p_vec, VW):
            _vpack_a_cols(ab, aoff + i0 * sa0 + pc + p0, sa0, ap, base + p0 * MR)
        for r in range(MR):
            if r < mr:
                src = aoff + (i0 + r) * sa0 + pc * sa1
                for p in range(p_vec, kc):
                    _sstore(ap, base + p * MR + r, _sload(ab, src + p * sa1))
            else:
                for p in range(kc):
                    _sstore(ap, base + p * MR + r, 0.0)


@njit(cache=True)
def _block(ap, bp, bp0, bb, b_row0, sb0, direct, cf, ldc, ic, mc, jc, jp0, jp1, n, kc, load, acc, scratch):
    """``C[ic:ic+mc, cols of B panels jp0..jp1 of the jc slab]`` (+)= packed A @ B panels.

    B panels come from the packed ``bp`` (panel ``bp0`` first), or with ``direct`` (row-major B, few rows of A
    to reuse a panel) full-width panels are read in place from ``bb`` (row ``pc`` starts at ``b_row0``, rows
    ``sb0`` apart). Full tiles go straight to C; edge tiles run through ``scratch`` (an MR x NR buffer) so the
    micro-kernel never reads or writes outside C. ``acc`` (never with ``load``) adds the products to C.
    """
    for jp in range(jp0, jp1):
        j0 = jc + jp * NR
        nr = min(NR, n - j0)
        bsrc, bo, ldb = bp, (jp - bp0) * kc * NR, NR
        if direct and nr == NR:
            bsrc, bo, ldb = bb, b_row0 + j0, sb0
        for ip in range((mc + MR - 1) // MR):
            i0 = ic + ip * MR
            mr = min(MR, ic + mc - i0)
            ao = ip * kc * MR
            if mr == MR and nr == NR:
                _micro(kc, ap, ao, bsrc, bo, ldb, cf, i0 * ldc + j0, ldc, load, acc)
            else:
                if load:  # padding rows / columns of the tile are computed but never copied out
                    for r in range(mr):
                        for j in range(nr):
                            scratch[r * NR + j] = cf[(i0 + r) * ldc + j0 + j]
                if MR == 12 and mr <= 6:
                    _micro_half(kc, ap, ao, bsrc, bo, ldb, scratch, 0, NR, load, False)
                else:
                    _micro(kc, ap, ao, bsrc, bo, ldb, scratch, 0, NR, load, False)
                for r in range(mr):
                    for j in range(nr):
                        if acc:
                            cf[(i0 + r) * ldc + j0 + j] += scratch[r * NR + j]
                        else:
                            cf[(i0 + r) * ldc + j0 + j] = scratch[r * NR + j]


# ---- drivers -----------------------------------------------------------------------------------------------
@njit(cache=True)
def _gemm_serial(ab, aoff, sa0, sa1, bb, boff, sb0, sb1, m, k, n, c, acc):
    """Single-threaded driver for a C-contiguous ``c [m, n]``: :func:`_gemm_at` with C's rows ``n`` apart."""
    _gemm_at(ab, aoff, sa0, sa1, bb, boff, sb0, sb1, m, k, n, c.reshape(-1), n, acc)


@njit(cache=True)
def _gemm_at(ab, aoff, sa0, sa1, bb, boff, sb0, sb1, m, k, n, cf, ldc, acc):
    """Single-threaded driver: ``C (+)= A @ B`` with ``C[i, j] = cf[i*ldc + j]`` (``n <= ldc``: C may be a
    column panel of a wider array). Loops jc (NC) > pc (KC) > ic (MC) around the block kernel; ``acc`` (only
    with ``k <= KC``: one chain per element, no reload) adds the product to C instead of storing it.

    When A is one MC block (short, wide products such as the LM head's blocks), each B panel is packed just
    before the A panels use it, so it is still in L1; otherwise all panels of a KC x NC slab are packed first
    and every MC block of A reuses them."""
    direct = sb1 == 1 and m <= DIRECT_B_MAX_M
    one_block = m <= MC and not direct
    kcap = min(KC, k)
    bp = np.empty(kcap * (NR if one_block else min(NC, n) + NR), np.float32)
    ap = np.empty(kcap * (min(MC, m) + MR), np.float32)
    scratch = np.empty(MR * NR, np.float32)
    for jc in range(0, n, NC):
        npan = (min(NC, n - jc) + NR - 1) // NR
        for pc in range(0, k, KC):
            kc = min(KC, k - pc)
            b_row0 = boff + pc * sb0
            if one_block:
                _pack_a(ab, aoff, sa0, sa1, 0, m, pc, kc, ap)
                for jp in range(npan):
                    _pack_b_panel(bb, boff, sb0, sb1, pc, kc, jc + jp * NR, n, 0, bp)
                    _block(ap, bp, jp, bb, b_row0, sb0, False, cf, ldc, 0, m, jc, jp, jp + 1, n, kc, pc > 0, acc,
                           scratch)
                continue
            for jp in range(npan):
                if not direct or jc + (jp + 1) * NR > n:
                    _pack_b_panel(bb, boff, sb0, sb1, pc, kc, jc + jp * NR, n, jp * kc * NR, bp)
            for ic in range(0, m, MC):
                mc = min(MC, m - ic)
                _pack_a(ab, aoff, sa0, sa1, ic, mc, pc, kc, ap)
                _block(ap, bp, 0, bb, b_row0, sb0, direct, cf, ldc, ic, mc, jc, 0, npan, n, kc, pc > 0, acc,
                       scratch)


@njit(cache=True, parallel=True)
def _gemm_parallel(ab, aoff, sa0, sa1, bb, boff, sb0, sb1, m, k, n, c, mc_blk, jsplit):
    """Multi-threaded driver: B panels are packed in parallel, then (row block x column split) tasks run in
    parallel, each packing its own A block. Tasks write disjoint parts of C."""
    cf = c.reshape(-1)
    bp = np.empty(min(KC, k) * (min(NC, n) + NR), np.float32)
    nbm = (m + mc_blk - 1) // mc_blk
    ntask = nbm * jsplit
    for jc in range(0, n, NC):
        npan = (min(NC, n - jc) + NR - 1) // NR
        per_split = (npan + jsplit - 1) // jsplit
        for pc in range(0, k, KC):
            kc = min(KC, k - pc)
            for jp in prange(npan):
                _pack_b_panel(bb, boff, sb0, sb1, pc, kc, jc + jp * NR, n, jp * kc * NR, bp)
            for task in prange(ntask):
                ic = (task // jsplit) * mc_blk
                mc = min(mc_blk, m - ic)
                jp0 = (task % jsplit) * per_split
                jp1 = min(npan, jp0 + per_split)
                if jp0 < jp1:
                    ap = np.empty(((mc + MR - 1) // MR) * MR * kc + VW, np.float32)  # + _vpack_a_cols' tail
                    scratch = np.empty(MR * NR, np.float32)
                    _pack_a(ab, aoff, sa0, sa1, ic, mc, pc, kc, ap)
                    _block(ap, bp, 0, bb, 0, sb0, False, cf, n, ic, mc, jc, jp0, jp1, n, kc, pc > 0, False, scratch)


def _flat_view(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(buf, s0, s1)`` with ``x[i, j] == buf[i*s0 + j*s1]`` and ``buf`` 1-D contiguous, copying only when
    the strides are negative or not whole elements, or ``x`` is read-only. One array type reaches numba
    whatever the input layout, so transposed and sliced operands cost no extra compilations."""
    if not x.flags.writeable:  # numba types read-only arrays separately; a copy keeps one specialisation
        x = np.array(x, order="C")
    if x.flags.c_contiguous:
        return x.reshape(-1), x.shape[1], 1
    if x.flags.f_contiguous:
        return x.T.reshape(-1), 1, x.shape[0]
    s0, s1 = x.strides
    size = x.itemsize
    if s0 >= 0 and s1 >= 0 and s0 % size == 0 and s1 % size == 0:
        e0, e1 = s0 // size, s1 // size
        extent = (x.shape[0] - 1) * e0 + (x.shape[1] - 1) * e1 + 1
        # Every byte between x's first and last element belongs to x's base allocation.
        return as_strided(x, shape=(extent,), strides=(size,)), e0, e1
    x = np.ascontiguousarray(x)
    return x.reshape(-1), x.shape[1], 1


def _round_up(v: int, mult: int) -> int:
    return -(-v // mult) * mult


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``A @ B`` for float32 ``a [m, k]`` and ``b [k, n]`` (any strides) with fp32 accumulation.

    Returns a new C-contiguous ``[m, n]`` float32 array, or writes into and returns ``out`` (float32, shape
    ``[m, n]``; may overlap the inputs). ``k == 0`` gives zeros.
    """
    a = require_f32(a, "gemm: a")
    b = require_f32(b, "gemm: b")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: shapes {a.shape} and {b.shape} are not [m, k] @ [k, n]")
    m, k = a.shape
    n = b.shape[1]
    c = None
    if out is not None:
        out = require_f32(out, "gemm: out")
        if out.shape != (m, n):
            raise ValueError(f"gemm: out has shape {out.shape}, expected {(m, n)}")
        if out.flags.c_contiguous and out.flags.writeable and not (
            np.may_share_memory(out, a) or np.may_share_memory(out, b)
        ):
            c = out
    if c is None:
        c = np.empty((m, n), np.float32)
    if m and n:
        if k == 0:
            c.fill(0.0)
        else:
            ab, sa0, sa1 = _flat_view(a)
            bb, sb0, sb1 = _flat_view(b)
            threads = 1 if m * n * k < PARALLEL_MIN_WORK else numba.get_num_threads()
            if threads == 1:
                _gemm_serial(ab, 0, sa0, sa1, bb, 0, sb0, sb1, m, k, n, c, False)
            else:
                # Row blocks in a multiple of the thread count (balanced static schedule); if rows run out
                # (short, wide products such as the LM head) the B panels are split between tasks instead.
                nbm = _round_up(-(-m // MC), threads)
                mc_blk = _round_up(-(-m // nbm), MR)
                nbm = -(-m // mc_blk)
                jsplit = 1 if nbm >= threads else -(-threads // nbm)
                _gemm_parallel(ab, 0, sa0, sa1, bb, 0, sb0, sb1, m, k, n, c, mc_blk, jsplit)
    if out is not None and c is not out:
        out[...] = c
        return out
    return c


# ---- many independent blocks at once -----------------------------------------------------------------------
@intrinsic
def _claim(typingctx, counter):
    """Atomically ``counter[0] += 1``, returning the old value: the next unclaimed task for this thread."""

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], ir.Constant(ir.IntType(64), 0))
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "monotonic")

    return types.int64(counter), codegen


@njit(cache=True, nogil=True)
def _gemm_blocks_worker(ab, bb, spec, coff, slab, dest, add, members, ustart, ucols, counter):
    """Claim work units ``counter[0]++`` until none are left. Unit ``u`` is columns ``ucols[u, 0]:ucols[u, 1]``
    of the blocks ``members[ustart[u]:ustart[u+1]]``, run in that order through the serial driver: block ``i``
    goes into ``slab[coff[i]:]``, or, when ``dest[i]`` is not 0, into the ``[m, n]`` array at that address
    (added to it when ``add[i]``; fused into the micro-kernel's store when ``k <= KC``, else the product goes
    through the slab first). Every thread taking part runs this loop, so a thread the OS does not schedule
    simply claims fewer units (no static share to wait for)."""
    while True:
        u = _claim(counter)
        if u >= ucols.shape[0]:
            return
        c0, c1 = ucols[u, 0], ucols[u, 1]
        for t in range(ustart[u], ustart[u + 1]):
            i = members[t]
            m, k, n = spec[i, 6], spec[i, 7], spec[i, 8]
            boff = spec[i, 3] + c0 * spec[i, 5]
            fused = dest[i] != 0 and (k <= KC or not add[i])
            c = numba.carray(_f32_ptr(dest[i]), m * n) if fused else slab[coff[i]:coff[i] + m * n]
            _gemm_at(ab, spec[i, 0], spec[i, 1], spec[i, 2], bb, boff, spec[i, 4], spec[i, 5], m, k, c1 - c0,
                     c[c0:], n, fused and add[i])
            if dest[i] != 0 and not fused:
                target = numba.carray(_f32_ptr(dest[i]), m * n)
                for r in range(m):
                    for j in range(r * n + c0, r * n + c1):
                        target[j] += c[j]


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """Helper threads for :func:`gemm_blocks` (created on first use; a forked child makes its own)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, config.NUMBA_NUM_THREADS - 1),
                                   thread_name_prefix="wse-sim-gemm")
    return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def shared_threads() -> int:
    """How many threads :func:`_run_shared` may use: numba's thread count (``NUMBA_NUM_THREADS``, or
    ``numba.set_num_threads``), so one setting governs every kernel."""
    return numba.get_num_threads()


def _run_shared(fn, args: tuple, threads: int) -> None:
    """``fn(*args)`` in this thread and in ``threads - 1`` helper threads at once (``fn`` releases the GIL and
    claims its work from a shared counter). A helper that has not started by the time this thread's call
    returns finds no work left; it is cancelled when still queued."""
    futures = [_pool().submit(fn, *args) for _ in range(threads - 1)]
    try:
        fn(*args)
    finally:
        for f in futures:
            if not f.cancel():
                f.result()


def gemm_blocks(a: np.ndarray, b: np.ndarray, spec: np.ndarray, out: np.ndarray | None = None,
                into: list[np.ndarray | None] | None = None, after: list[int] | None = None) -> list[np.ndarray]:
    """Independent products of blocks of two tensors, in parallel: ``[A_i @ B_i for each row of spec]``.

    ``a`` and ``b`` are C-contiguous float32 arrays (any shape); row ``i`` of the int64 ``spec [n_blocks, 9]``
    is ``(a_off, a_s0, a_s1, b_off, b_s0, b_s1, m, k, n)``: ``A_i[r, p] = a.flat[a_off + r*a_s0 + p*a_s1]``
    and likewise ``B_i``, in elements (``m, n, k >= 1``; every element inside its array). Each block runs
    through the same serial driver as :func:`gemm`, so each result is bit for bit what ``gemm`` gives for that
    block (one FMA chain per element over ``k`` in order), whatever the thread count. The results are
    C-contiguous ``[m, n]`` views into one new buffer, or into ``out`` (a 1-D C-contiguous float32 array with
    at least :func:`slab_room` elements, e.g. a buffer the caller reuses so that its pages are not faulted in
    again).

    ``into`` (one entry per block, or None) names arrays to accumulate into: block ``i`` with ``into[i]`` (a
    writeable C-contiguous float32 ``[m, n]`` array, sharing no memory with ``a``, ``b`` or another entry) is
    added to it, ``into[i] += A_i @ B_i`` with the same bits as that numpy statement, and ``into[i]`` is its
    entry in the result. With ``k <= KC`` the add happens as the micro-kernel stores its tile, so the product
    never travels through memory (the LM head's accumulating blocks: half the memory traffic).

    ``after`` (one entry per block, or None) chains blocks: ``after[i] = j`` (``j < i``, ``after[j] == -1``,
    same ``m, n``, no ``into[i]``) adds block ``i``'s product to block ``j``'s result, after ``j`` and after
    every block of the chain before ``i``: the bits of ``r_j += A_i @ B_i`` run in block order, and ``i``'s
    entry in the result is ``j``'s array. A chain runs in column panels, all its blocks on one panel before the
    next (:data:`CHAIN_PANEL_BYTES`), every chain's panel ``p`` before any chain's panel ``p + 1``: the
    result's panel stays in cache across the adds, and chains that read the same B columns (a mesh GEMM's tiles
    of one column, each step an accumulating block) read them close together, from cache. On the 111M LM head
    (meshgemm, 64 x 96 x 6283 blocks) this took the product from about 95 to about 150 GFLOP/s on 2 threads.

    The threads are plain Python threads running a ``nogil`` kernel that claims units of work one at a time
    (single blocks largest first, then chain panels), not a numba ``prange``: a parallel region of numba's
    OpenMP layer costs milliseconds when the OpenMP runtime spins (loaded by torch before ``wse_sim`` set
    ``OMP_WAIT_POLICY``), and a static split waits for a thread that another process holds off its core.
    """
    a, b = require_f32(a, "gemm_blocks: a"), require_f32(b, "gemm_blocks: b")
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        raise ValueError("gemm_blocks: a and b must be C-contiguous")
    spec = np.ascontiguousarray(spec, dtype=np.int64)
    if spec.ndim != 2 or spec.shape[1] != 9 or (spec.shape[0] and spec[:, 6:].min() < 1):
        raise ValueError("gemm_blocks: spec must be [n_blocks, 9] with m, k, n >= 1")
    for arr, off, s0, s1, rows, cols in ((a, 0, 1, 2, 6, 7), (b, 3, 4, 5, 7, 8)):
        last = spec[:, off] + (spec[:, rows] - 1) * spec[:, s0] + (spec[:, cols] - 1) * spec[:, s1]
        if spec.shape[0] and (spec[:, off].min() < 0 or spec[:, (s0, s1)].min() < 0 or last.max() >= arr.size):
            raise ValueError("gemm_blocks: a block reaches outside its array")
    targets = _targets(into, spec, a, b)
    chain = _chain_roots(after, spec, targets)
    sizes = spec[:, 6] * spec[:, 8]
    room = sizes * _needs_slab(spec, targets, chain)
    coff = np.zeros(len(spec), np.int64)
    np.cumsum(room[:-1], out=coff[1:])
    slab = _slab(out, int(room.sum()))
    if len(spec):
        dest, add = targets.copy(), (targets != 0) | (chain >= 0)
        member = np.flatnonzero(chain >= 0)
        dest[member] = np.where(targets[chain[member]] != 0, targets[chain[member]],
                                slab.ctypes.data + 4 * coff[chain[member]])
        work = sizes * spec[:, 7]
        members, ustart, ucols = _units(spec, chain, work)
        threads = 1 if work.sum() < PARALLEL_MIN_WORK else min(numba.get_num_threads(), len(ucols))
        args = (_writeable_flat(a), _writeable_flat(b), spec, coff, slab, dest, add.astype(np.uint8), members,
                ustart, ucols, np.zeros(1, np.int64))
        _run_shared(_gemm_blocks_worker, args, threads)
    outs: list[np.ndarray] = []
    rows = zip(coff.tolist(), spec[:, 6].tolist(), spec[:, 8].tolist(), chain.tolist(), strict=True)
    for i, (o, m, n, j) in enumerate(rows):
        x = into[i] if into is not None else None
        outs.append(outs[j] if j >= 0 else x if x is not None else slab[o:o + m * n].reshape(m, n))
    return outs


def slab_room(spec: np.ndarray, into: list[np.ndarray | None] | None = None,
              after: list[int] | None = None) -> int:
    """Elements of the buffer :func:`gemm_blocks` writes products to for these arguments (its ``out``)."""
    spec = np.ascontiguousarray(spec, dtype=np.int64)
    targets = np.array([0 if x is None else 1 for x in into], np.int64) if into is not None else \
        np.zeros(len(spec), np.int64)
    chain = _chain_roots(after, spec, targets)
    return int((spec[:, 6] * spec[:, 8] * _needs_slab(spec, targets, chain)).sum())


def _needs_slab(spec: np.ndarray, targets: np.ndarray, chain: np.ndarray) -> np.ndarray:
    """Per block, whether its product needs room in the slab: it has no array of its own to go to (no
    ``into``, not in a chain), or it is added to one but only after a reload of its chain (``k > KC``)."""
    adds = (targets != 0) | (chain >= 0)
    return ~adds | (spec[:, 7] > KC)


def _chain_roots(after: list[int] | None, spec: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``after`` as an int64 array (-1: not added to another block), after checking each link."""
    if after is None:
        return np.full(len(spec), -1, np.int64)
    chain = np.asarray(after, dtype=np.int64)
    if chain.shape != (len(spec),):
        raise ValueError(f"gemm_blocks: after has {chain.size} entries for {len(spec)} blocks")
    member = np.flatnonzero(chain >= 0)
    head = np.minimum(chain[member], member)  # an index in range even for a bad link (which head >= member flags)
    bad = (chain[member] >= member) | (chain[head] >= 0) | (targets[member] != 0)
    bad |= (spec[member, 6] != spec[head, 6]) | (spec[member, 8] != spec[head, 8])
    if bad.any():
        i = int(member[np.argmax(bad)])
        raise ValueError(f"gemm_blocks: after[{i}] = {int(chain[i])} is not an earlier chain head of the same "
                         "shape (and a chained block has no into entry)")
    return chain


def _units(spec: np.ndarray, chain: np.ndarray, work: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The work units of :func:`_gemm_blocks_worker` as ``(members, ustart, ucols)``: every block outside a
    chain alone over all its columns, largest first; then each chain (its head and its members, in block
    order) over one column panel, panel by panel, the chains in order of their heads."""
    heads = np.unique(chain[chain >= 0])
    in_chain = np.zeros(len(spec), bool)
    in_chain[heads] = True
    in_chain[chain >= 0] = True
    single = np.flatnonzero(~in_chain)
    single = single[np.argsort(-work[single], kind="stable")]
    members, ustart, ucols = single.tolist(), list(range(len(single) + 1)), [(0, int(spec[i, 8])) for i in single]
    groups = [[h, *np.flatnonzero(chain == h).tolist()] for h in heads.tolist()]
    widths = [-(-max(CHAIN_MIN_COLS, CHAIN_PANEL_BYTES // (4 * int(spec[g[0], 6]))) // NR) * NR for g in groups]
    panels = max((-(-int(spec[g[0], 8]) // w) for g, w in zip(groups, widths, strict=True)), default=0)
    for p in range(panels):
        for g, w in zip(groups, widths, strict=True):
            n = int(spec[g[0], 8])
            if p * w < n:
                members += g
                ustart.append(len(members))
                ucols.append((p * w, min(n, p * w + w)))
    return (np.array(members, np.int64), np.array(ustart, np.int64),
            np.array(ucols, np.int64).reshape(-1, 2))


def _targets(into: list[np.ndarray | None] | None, spec: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The data addresses of ``into``'s arrays (0 for None), after checking each can take its block's sum and
    that none overlaps another, ``a`` or ``b`` (threads add into them while reading the operands)."""
    targets = np.zeros(len(spec), np.int64)
    if into is None:
        return targets
    if len(into) != len(spec):
        raise ValueError(f"gemm_blocks: into has {len(into)} entries for {len(spec)} blocks")
    spans = []
    for i, x in enumerate(into):
        if x is None:
            continue
        shape = (int(spec[i, 6]), int(spec[i, 8]))
        if x.dtype != np.float32 or x.shape != shape or not x.flags.c_contiguous or not x.flags.writeable:
            raise ValueError(f"gemm_blocks: into[{i}] must be a writeable C-contiguous float32 {shape} array")
        if np.may_share_memory(x, a) or np.may_share_memory(x, b):
            raise ValueError(f"gemm_blocks: into[{i}] overlaps an operand")
        targets[i] = x.ctypes.data
        spans.append((targets[i], targets[i] + x.nbytes))
    spans.sort()
    if any(end > start for (_, end), (start, _) in pairwise(spans)):
        raise ValueError("gemm_blocks: two entries of into overlap")
    return targets


def _slab(out: np.ndarray | None, size: int) -> np.ndarray:
    """The first ``size`` elements of ``out`` (checked), or a new float32 array of that size."""
    if out is None:
        return np.empty(size, np.float32)
    if out.dtype != np.float32 or out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("gemm_blocks: out must be a writeable 1-D C-contiguous float32 array")
    if out.shape[0] < size:
        raise ValueError(f"gemm_blocks: out holds {out.shape[0]} elements, the blocks need {size}")
    return out[:size]


def _writeable_flat(x: np.ndarray) -> np.ndarray:
    """``x`` as a 1-D array numba types like the others (a copy only when ``x`` is read-only)."""
    return (x if x.flags.writeable else np.array(x, order="C")).reshape(-1)
