"""Numerical kernels against float64 numpy and, where torch is installed, against torch's own kernels."""

from __future__ import annotations

import importlib
import math
from fractions import Fraction

import numba
import numpy as np
import pytest
import wse_sim.kernels as K
from hypothesis import given, settings
from hypothesis import strategies as st
from wse_sim.kernels import (
    PRECISIONS,
    add,
    causal_softmax,
    causal_softmax_many,
    embedding,
    gelu,
    gemm,
    layernorm,
    round_in_place,
    round_to,
)

# The package re-exports functions named like their modules, so reach the modules through importlib.
gemm_mod = importlib.import_module("wse_sim.kernels.gemm")
softmax_mod = importlib.import_module("wse_sim.kernels.softmax")
activations_mod = importlib.import_module("wse_sim.kernels.activations")

U32 = 2.0**-24  # fp32 unit roundoff


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- API ---------------------------------------------------------------------------------------------------
def test_public_api_is_exported():
    for name in ("PRECISIONS", "round_to", "gemm", "layernorm", "gelu", "causal_softmax", "embedding", "add"):
        assert name in K.__all__
        assert callable(getattr(K, name)) or name == "PRECISIONS"
    assert PRECISIONS == ("fp32", "fp16", "bf16")


# ---- GEMM --------------------------------------------------------------------------------------------------
def _assert_fp32_gemm(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Check against float64 with the textbook fp32 dot-product bound |err| <= gamma_k * (|A| @ |B|).

    gamma_k = k*u / (1 - k*u) holds for any summation order, with or without FMA, so it is a hard bound for
    a correct fp32-accumulating GEMM; fp16/bf16 accumulation or an indexing slip breaks it by far.
    """
    m, k = a.shape
    n = b.shape[1]
    assert c.shape == (m, n)
    assert c.dtype == np.float32
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64
    gamma = k * U32 / (1 - k * U32)
    bound = gamma * (np.abs(a64) @ np.abs(b64))
    err = np.abs(c.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), f"error {err[worst]} > bound {bound[worst]} at {worst} for {m}x{k}x{n}"


_DIMS = [0, 1, 2, 3, 5, 7, 12, 13, 31, 32, 33, 43, 64, 97, 127, 192, 257, 300]


def _operand(rng, rows, cols, layout):
    """A float32 [rows, cols] operand in the given memory layout (all but 'c' are non-contiguous views)."""
    if layout == "c":
        return _f32(rng, rows, cols)
    if layout == "t":  # transposed view of a row-major array, as in q @ k.T
        return _f32(rng, cols, rows).T
    if layout == "slice":  # a column block of a wider array, as the simulator's tensor blocks are
        return _f32(rng, rows, cols + 9)[:, 4 : 4 + cols]
    if layout == "neg":  # negative strides
        return _f32(rng, rows, cols)[::-1, ::-1]
    if layout == "bcast":  # read-only, zero row stride
        return np.broadcast_to(_f32(rng, 1, cols), (rows, cols))
    return _f32(rng, 2 * rows, 3 * cols)[::2, ::3]  # "step": both strides > 1


@settings(max_examples=40, deadline=None)
@given(
    m=st.sampled_from(_DIMS),
    k=st.sampled_from(_DIMS),
    n=st.sampled_from(_DIMS),
    la=st.sampled_from(["c", "t", "slice", "step", "neg", "bcast"]),
    lb=st.sampled_from(["c", "t", "slice", "step", "neg", "bcast"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_matches_float64_within_fp32_bound(m, k, n, la, lb, seed):
    rng = np.random.default_rng(seed)
    a, b = _operand(rng, m, k, la), _operand(rng, k, n, lb)
    c = gemm(a, b)
    assert c.flags.c_contiguous
    _assert_fp32_gemm(c, a, b)
    if k == 0:
        assert np.all(c == 0)


@pytest.mark.parametrize(
    ("m", "k", "n", "lb"),
    [
        (300, 700, 515, "c"),  # parallel row blocks, three k blocks, ragged edges
        (7, 600, 2000, "t"),  # fewer rows than a tile: the column panels are split between threads
        (40, 300, 4500, "c"),  # n spans two NC slabs
        (43, 64, 192, "slice"),  # the simulator's typical block (serial path, B read in place)
    ],
)
def test_gemm_large_and_path_shapes(m, k, n, lb):
    rng = np.random.default_rng(m * 7 + n)
    a, b = _f32(rng, m, k), _operand(rng, k, n, lb)
    _assert_fp32_gemm(gemm(a, b), a, b)


def test_gemm_is_deterministic_across_paths_and_thread_counts(monkeypatch):
    """Every element is one FMA chain in k order, so the result cannot depend on how work is split."""
    rng = np.random.default_rng(3)
    a, b = _f32(rng, 250, 600), _f32(rng, 600, 333)
    parallel = gemm(a, b)
    assert np.array_equal(parallel, gemm(a, b))
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = gemm(a, b)
    finally:
        numba.set_num_threads(threads)
    monkeypatch.setattr(gemm_mod, "PARALLEL_MIN_WORK", 1 << 62)
    serial = gemm(a, b)
    assert np.array_equal(parallel, single)
    assert np.array_equal(parallel, serial)


def test_gemm_out_argument():
    rng = np.random.default_rng(4)
    a, b = _f32(rng, 37, 50), _f32(rng, 50, 29)
    expected = gemm(a, b)
    out = np.full((37, 29), np.nan, np.float32)
    assert gemm(a, b, out=out) is out
    assert np.array_equal(out, expected)
    big = np.zeros((40, 60), np.float32)
    view = big[1:38, 5:34]  # non-contiguous destination
    assert gemm(a, b, out=view) is view
    assert np.array_equal(view, expected)
    assert np.all(big[0] == 0)
    assert np.all(big[:, :5] == 0)
    sq = _f32(rng, 45, 45)
    expected_sq = gemm(sq, sq)
    gemm(sq, sq, out=sq)  # output aliases both inputs
    assert np.array_equal(sq, expected_sq)
    out0 = np.full((3, 4), 7.0, np.float32)
    gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), out=out0)
    assert np.all(out0 == 0)


def test_gemm_rejects_bad_input():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="not"):
        gemm(a, np.ones((5, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        gemm(a.astype(np.float64), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        gemm(a, np.ones((4, 2), np.float32), out=np.empty((3, 3), np.float32))


# ---- storage precision -------------------------------------------------------------------------------------
def _special_f32() -> np.ndarray:
    """Ties (low half exactly 0x8000, both lsb parities), near-ties, NaN, inf, extremes, subnormals, zeros."""
    bits = [
        0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF808000, 0xBF818000,  # (near) ties, both signs
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x7F7F8000,  # max float rounds to inf; largest that does not
        0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC12345,  # inf, NaN (signalling too)
        0x00000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x80008001,  # subnormals incl. ties
        0x00000000, 0x80000000, 0x00800000, 0x3F800000,  # zeros, min normal, one
    ]
    return np.array(bits, dtype=np.uint32).view(np.float32)


def _sweep_f32() -> np.ndarray:
    """Every 4099th float32 bit pattern (~1M values): all exponents, both signs, NaNs, and each low-half
    residue mod 4099, so ties and near-ties of both formats are hit many times."""
    return np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)


def test_bf16_matches_torch():
    import torch
    rng = np.random.default_rng(5)
    x = np.concatenate([_special_f32(), _sweep_f32(), _f32(rng, 5003, scale=3.0)]).reshape(-1, 4)
    got = round_to(x, "bf16")
    ref = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    assert got.dtype == np.float32
    assert got.shape == x.shape
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))
    assert np.all(got.view(np.uint32) & 0xFFFF == 0)  # representable in bf16, NaNs included


def _bf16_exact(x: float) -> float:
    """Independent float64 -> bf16 reference in exact rational arithmetic (RNE, overflow to inf)."""
    if math.isnan(x) or math.isinf(x) or x == 0:
        return x
    _, exp = math.frexp(abs(x))  # |x| = mant * 2**exp, mant in [0.5, 1)
    ulp = Fraction(2) ** max(exp - 8, -133)  # 8 significant bits; subnormal spacing 2**-133
    q, rem = divmod(Fraction(abs(x)), ulp)
    if rem * 2 > ulp or (rem * 2 == ulp and q % 2 == 1):
        q += 1
    mag = q * ulp
    if mag >= 2**128:
        return math.copysign(math.inf, x)
    return math.copysign(float(mag), x)


def test_bf16_from_float64_rounds_once():
    # Via RNE float32 this lands on the bf16 midpoint and ties to even (1.0); rounded once it is 1.0078125.
    x = np.array([1.00390625 + 2.0**-40, -(1.00390625 + 2.0**-40), 1.00390625 - 2.0**-40, 3.5e38, 1e-300])
    assert list(round_to(x, "bf16")) == [1.0078125, -1.0078125, 1.0, math.inf, 0.0]
    rng = np.random.default_rng(6)
    mids = rng.integers(0x0080, 0x7F7F, size=300).astype(np.uint32) << 16 | 0x8000
    near = mids.view(np.float32).astype(np.float64) * (1 + rng.choice([-1.0, 1.0], 300) * 2.0**-30)
    wide = rng.standard_normal(1000) * np.exp2(rng.integers(-140, 128, 1000))
    samples = np.concatenate([near, wide, [np.nan, np.inf, -np.inf, 0.0]])
    got = round_to(samples, "bf16")
    ref = np.array([_bf16_exact(float(v)) for v in samples], dtype=np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.array_equal(got[ok], ref[ok])
    f32_exact = wide.astype(np.float32)  # float64 input exactly representable in fp32: same as the fp32 path
    assert np.array_equal(round_to(f32_exact.astype(np.float64), "bf16"), round_to(f32_exact, "bf16"))


def test_fp16_matches_numpy_half():
    rng = np.random.default_rng(7)
    edges = np.array([65504.0, 65519.99, 65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-25], np.float32)
    randoms = [_f32(rng, 4000, scale=2e3), _f32(rng, 4000, scale=1e-5)]  # near overflow / subnormal halves
    x = np.concatenate([_special_f32(), _sweep_f32(), *randoms, edges])
    got = round_to(x, "fp16")
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.array_equal(got[ok].view(np.uint32), ref[ok].view(np.uint32))
    assert got[-4] == np.inf
    assert got[-5] == 65504.0
    assert got[-3] == 2.0**-24
    assert got[-2] == 0.0
    assert got[-1] == 2.0**-23
    x64 = rng.standard_normal(3000) * 100
    assert np.array_equal(round_to(x64, "fp16"), x64.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_round_in_place_matches_the_casts(precision):
    """A block of a larger array (C-contiguous, row-strided, column-strided) is rounded where it lies, to what
    numpy's half cast or torch's bfloat16 cast gives, and nothing outside the block changes."""
    import torch
    rng = np.random.default_rng(9)
    x = np.concatenate([_special_f32(), _sweep_f32()[:200_000], _f32(rng, 4000, scale=2e3)])
    x = x[: x.size // 500 * 500].reshape(-1, 500)
    with np.errstate(over="ignore"):
        if precision == "fp16":
            ref = x.astype(np.float16).astype(np.float32)
        else:
            ref = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    for block in (np.s_[:, :], np.s_[3:300, 17:433], np.s_[::3, 1::2]):
        got = x.copy()
        round_in_place(got[block], precision)
        want = x.copy()
        want[block] = ref[block]
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    same = x.copy()
    round_in_place(same[5:9], "fp32")
    assert np.array_equal(same.view(np.uint32), x.view(np.uint32))


def test_fp32_and_generic_behaviour():
    rng = np.random.default_rng(8)
    x = _f32(rng, 6, 7)
    y = round_to(x, "fp32")
    assert np.array_equal(y, x)
    assert y is not x
    x64 = rng.standard_normal((3, 4))
    assert np.array_equal(round_to(x64, "fp32"), x64.astype(np.float32))
    view = x[:, ::2]
    for p in PRECISIONS:
        r = round_to(view, p)
        assert r.dtype == np.float32
        assert r.shape == view.shape
        assert r.flags.c_contiguous
        assert np.array_equal(round_to(r, p), r)  # idempotent: already representable
    with pytest.raises(ValueError, match="fp8"):
        round_to(x, "fp8")


# ---- softmax -----------------------------------------------------------------------------------------------
def _softmax_ref(s: np.ndarray, scale: float, q_offset: int) -> np.ndarray:
    s64 = s.astype(np.float64) * np.float64(np.float32(scale))
    sq, sk = s.shape[-2:]
    allowed = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + q_offset
    z = np.where(allowed, s64, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(
    ("shape", "scale", "q_offset"),
    [((17, 17), 1.0, 0), ((5, 40), 0.125, 35), ((3, 9, 30), 1 / math.sqrt(64), 4), ((4, 6, 6), 2.5, 0)],
)
def test_causal_softmax_matches_float64(shape, scale, q_offset):
    rng = np.random.default_rng(9)
    s = _f32(rng, *shape, scale=4.0)
    p = causal_softmax(s, scale, q_offset)
    ref = _softmax_ref(s, scale, q_offset)
    assert p.dtype == np.float32
    assert p.shape == s.shape
    np.testing.assert_allclose(p, ref, rtol=2e-6, atol=1e-7)
    sq, sk = shape[-2:]
    masked = np.arange(sk)[None, :] > np.arange(sq)[:, None] + q_offset
    assert np.all(p[..., masked] == 0.0)
    np.testing.assert_allclose(p.astype(np.float64).sum(axis=-1), 1.0, atol=1e-6)


def test_causal_softmax_row_blocks_match_full_sequence():
    rng = np.random.default_rng(10)
    s = _f32(rng, 2, 50, 50, scale=3.0)
    full = causal_softmax(s, 0.5)
    for r0, r1 in ((0, 13), (13, 31), (31, 50)):
        block = causal_softmax(np.ascontiguousarray(s[:, r0:r1]), 0.5, q_offset=r0)
        assert np.array_equal(block, full[:, r0:r1])
    prefix = causal_softmax(np.ascontiguousarray(s[0, 20:30, :30]), 0.5, q_offset=20)  # keys cut at row end
    assert np.array_equal(prefix, full[0, 20:30, :30])


def test_causal_softmax_matches_torch_and_parallel_path(monkeypatch):
    import torch
    rng = np.random.default_rng(11)
    s = _f32(rng, 12, 64, 100, scale=5.0)
    scale, q_offset = 0.125, 36
    got = causal_softmax(s, scale, q_offset)
    mask = torch.ones(64, 100, dtype=torch.bool).tril(diagonal=q_offset)
    ref = torch.softmax((torch.from_numpy(s) * scale).masked_fill(~mask, -math.inf), dim=-1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(softmax_mod, "PARALLEL_MIN_SIZE", 0)
    assert np.array_equal(causal_softmax(s, scale, q_offset), got)
    monkeypatch.setattr(softmax_mod, "PARALLEL_MIN_SIZE", 1 << 62)
    assert np.array_equal(causal_softmax(s, scale, q_offset), got)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_shared_softmax_and_gelu_are_the_serial_bits(monkeypatch, threads):
    """Rows of softmax and chunks of the erf GELU claimed by the helper threads give the bits of the serial
    loop (sizes around the thresholds, a length that is not a whole number of chunks)."""
    rng = np.random.default_rng(21)
    s = _f32(rng, 5, 37, 90, scale=5.0)
    x = _f32(rng, 3 * activations_mod.SHARED_CHUNK + 17, scale=4.0)
    monkeypatch.setattr(softmax_mod, "SHARED_MIN_SIZE", 1 << 62)
    monkeypatch.setattr(activations_mod, "SHARED_MIN_SIZE", 1 << 62)
    serial_s, serial_x = causal_softmax(s, 0.3, 5), gelu(x, "gelu")
    monkeypatch.setattr(softmax_mod, "SHARED_MIN_SIZE", 0)
    monkeypatch.setattr(activations_mod, "SHARED_MIN_SIZE", 0)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        shared_s, shared_x = causal_softmax(s, 0.3, 5), gelu(x, "gelu")
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(shared_s.view(np.uint32), serial_s.view(np.uint32))
    assert np.array_equal(shared_x.view(np.uint32), serial_x.view(np.uint32))


def test_causal_softmax_rejects_bad_input():
    with pytest.raises(ValueError, match="sq, sk"):
        causal_softmax(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="q_offset"):
        causal_softmax(np.zeros((2, 2), np.float32), q_offset=-1)


# ---- activations -------------------------------------------------------------------------------------------
def _gelu_ref(x: np.ndarray, variant: str) -> np.ndarray:
    x64 = x.astype(np.float64)
    if variant == "gelu":
        return 0.5 * x64 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x64.ravel()]).reshape(x.shape))
    if variant == "relu":
        return np.maximum(x64, 0)
    return 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))


@pytest.mark.parametrize("variant", ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"])
def test_gelu_matches_float64(variant):
    rng = np.random.default_rng(12)
    x = _f32(rng, 3, 50, 40, scale=3.0)
    y = gelu(x, variant)
    assert y.shape == x.shape
    assert y.dtype == np.float32
    # A few fp32 roundings of values of size |x|: relative to |x|, not to y (which cancels to ~0 for x << 0).
    np.testing.assert_array_less(np.abs(y - _gelu_ref(x, variant)), 8 * U32 * (np.abs(x) + 1e-30) + 1e-38)


def test_gelu_matches_torch():
    import torch
    rng = np.random.default_rng(13)
    edges = np.array([0.0, -0.0, 10.0, -10.0, 1e-6, -30.0], np.float32)
    x = np.concatenate([_f32(rng, 20000, scale=4.0), edges])
    for variant, approximate in (("gelu", "none"), ("gelu_new", "tanh"), ("gelu_pytorch_tanh", "tanh")):
        ref = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approximate).numpy()
        np.testing.assert_allclose(gelu(x, variant), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gelu(x, "relu"), torch.relu(torch.from_numpy(x)).numpy())
    assert np.array_equal(gelu(x, "gelu_new"), gelu(x, "gelu_pytorch_tanh"))
    gap = np.abs(gelu(x, "gelu") - gelu(x, "gelu_new"))
    assert 1e-5 < gap.max() < 1e-3  # the variants really are different functions, and close


def test_gelu_rejects_unknown_variant():
    with pytest.raises(ValueError, match="swish"):
        gelu(np.zeros(3, np.float32), "swish")


# ---- layernorm ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "d", "offset"), [(43, 768, 0.0), (5, 13, 100.0), (1, 1, 0.0), (8, 64, -30.0)]
)
def test_layernorm_matches_float64(rows, d, offset):
    rng = np.random.default_rng(14)
    x = _f32(rng, rows, d, scale=2.0) + np.float32(offset)
    gamma, beta = _f32(rng, d), _f32(rng, d)
    eps = 1e-5
    y = layernorm(x, gamma, beta, eps)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    ref = (x64 - mean) / np.sqrt(var + np.float32(eps)) * gamma + beta
    # fp32 mean is off by ~d*u*|x|; normalising divides that by the std, then gamma scales it.
    spread = np.abs(x64).max(axis=-1, keepdims=True) / np.sqrt(var + eps)
    tol = 4 * d * U32 * (spread + 1) * (np.abs(gamma) + 1)
    assert y.dtype == np.float32
    assert y.shape == x.shape
    assert np.all(np.abs(y - ref) <= tol + np.abs(beta) * 2 * U32)


def test_layernorm_matches_torch_and_constant_rows():
    import torch
    rng = np.random.default_rng(15)
    x = _f32(rng, 2, 43, 768, scale=3.0)
    gamma, beta = _f32(rng, 768), _f32(rng, 768)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (768,), torch.from_numpy(gamma),
                                         torch.from_numpy(beta), eps=1e-5).numpy()
    np.testing.assert_allclose(layernorm(x, gamma, beta, 1e-5), ref, rtol=1e-5, atol=2e-5)
    const = np.full((3, 768), 2.5, np.float32)
    assert np.array_equal(layernorm(const, gamma, beta, 1e-5), np.broadcast_to(beta, (3, 768)))


def test_layernorm_rejects_mismatched_params():
    with pytest.raises(ValueError, match="gamma"):
        layernorm(np.zeros((2, 4), np.float32), np.ones(3, np.float32), np.zeros(4, np.float32), 1e-5)


# ---- embedding and add -------------------------------------------------------------------------------------
def test_embedding_gathers_and_adds_positions():
    rng = np.random.default_rng(16)
    wte_full, wpe_full = _f32(rng, 100, 24), _f32(rng, 40, 24)
    wte, wpe = wte_full[:, 8:20], wpe_full[:, 8:20]  # column blocks, as a tile holds them
    ids = rng.integers(0, 100, size=(3, 7))
    out = embedding(ids, wte, wpe, pos_offset=5)
    assert out.shape == (21, 12)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    for b in range(3):
        for s in range(7):
            expected = (wte[ids[b, s]].astype(np.float64) + wpe[5 + s]).astype(np.float32)
            assert np.array_equal(out[b * 7 + s], expected)


def test_embedding_rejects_bad_ids_and_positions():
    wte, wpe = np.zeros((10, 4), np.float32), np.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"token id 12 .*vocab size 10"):
        embedding(np.array([[1, 12, 3]]), wte, wpe)
    with pytest.raises(ValueError, match=r"token id -1 "):
        embedding(np.array([[-1, 2]]), wte, wpe)
    with pytest.raises(ValueError, match="positions"):
        embedding(np.array([[1, 2, 3]]), wte, wpe, pos_offset=6)


def test_add_is_fp32_elementwise():
    rng = np.random.default_rng(17)
    a, b = _f32(rng, 5, 6), _f32(rng, 5, 6, scale=1e-3)
    c = add(a, b)
    assert np.array_equal(c, (a.astype(np.float64) + b).astype(np.float32))
    with pytest.raises(ValueError, match="differ"):
        add(a, b[:, :3])


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40), st.integers(1, 70), st.integers(0, 30)),
                min_size=0, max_size=12), st.integers(0, 2 ** 16))
def test_causal_softmax_many_is_each_block_alone(blocks, seed):
    """Many score blocks (2-D when ``h`` is 0, else ``h`` heads; any query offset) in one call: each result is
    bit for bit ``causal_softmax`` of that block alone, whichever thread ran its rows."""
    rng = np.random.default_rng(seed)
    xs = [(rng.standard_normal((sq, sk) if h == 0 else (h, sq, sk)) * 4).astype(np.float32)
          for h, sq, sk, _ in blocks]
    outs = causal_softmax_many([(x, q) for x, (*_, q) in zip(xs, blocks, strict=True)], 0.7)
    for x, (*_, q), out in zip(xs, blocks, outs, strict=True):
        assert out.shape == x.shape
        assert np.array_equal(out.view(np.uint32), causal_softmax(x, 0.7, q).view(np.uint32))


def test_causal_softmax_many_refuses_bad_blocks():
    with pytest.raises(ValueError, match="q_offset"):
        causal_softmax_many([(np.zeros((2, 3), np.float32), -1)])
    with pytest.raises(ValueError, match="scores must be"):
        causal_softmax_many([(np.zeros(3, np.float32), 0)])
    with pytest.raises(TypeError, match="float32"):
        causal_softmax_many([(np.zeros((2, 3)), 0)])
