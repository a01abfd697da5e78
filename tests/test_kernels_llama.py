"""Llama-family kernels (RMSNorm, RoPE, SwiGLU gate) against float64 numpy and against transformers/torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import wse_sim.kernels as K
from hypothesis import example, given, settings
from hypothesis import strategies as st
from wse_sim.kernels import rmsnorm, rope, silu_gate

U32 = 2.0**-24  # fp32 unit roundoff
THETAS = [100.0, 10000.0, 500000.0, 1000000.0]  # GPT-NeoX-ish toy, Llama 2, Llama 3, Qwen2


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_public_api_is_exported():
    for name in ("rmsnorm", "rope", "silu_gate"):
        assert name in K.__all__
        assert callable(getattr(K, name))


# ---- RMSNorm -----------------------------------------------------------------------------------------------
def _rmsnorm_ref(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps) * gamma.astype(np.float64)


def _rmsnorm_tol(ref: np.ndarray, d: int) -> np.ndarray:
    """Elementwise bound on an fp32 RMSNorm's error. All summands are squares (no cancellation), so an fp32
    sum in any order is within d*u relative; the division by d and the + eps add 2u, the square root halves
    all of that and adds u, then the reciprocal and the two multiplies add u each: ((d + 2)/2 + 4) u relative
    to the output, rounded up to +6 for slack. (eps is rounded to fp32 in the kernel: at most u/4 more.)"""
    return ((d + 2) / 2 + 6) * U32 * np.abs(ref)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 9),
    d=st.integers(1, 300),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    eps=st.sampled_from([1e-6, 1e-5]),
    seed=st.integers(0, 2**32 - 1),
)
@example(m=1, d=1, scale=1.0, eps=1e-6, seed=0)
@example(m=1, d=13, scale=1e-3, eps=1e-5, seed=1)  # eps comparable to mean(x^2)
@example(m=3, d=7, scale=30.0, eps=1e-6, seed=2)
def test_rmsnorm_matches_float64(m, d, scale, eps, seed):
    rng = np.random.default_rng(seed)
    x, gamma = _f32(rng, m, d, scale=scale), _f32(rng, d)
    y = rmsnorm(x, gamma, eps)
    assert y.dtype == np.float32
    assert y.shape == x.shape
    ref = _rmsnorm_ref(x, gamma, eps)
    err = np.abs(y - ref)
    assert np.all(err <= _rmsnorm_tol(ref, d)), f"max error {err.max()} for {m}x{d}"


def test_rmsnorm_matches_transformers_llama_and_qwen2():
    import torch
    import transformers.models.llama.modeling_llama as llama
    import transformers.models.qwen2.modeling_qwen2 as qwen2
    rng = np.random.default_rng(20)
    d, eps = 576, 1e-5
    x, gamma = _f32(rng, 2, 17, d, scale=3.0), _f32(rng, d)
    y = rmsnorm(x, gamma, eps)
    for cls in (llama.LlamaRMSNorm, qwen2.Qwen2RMSNorm):
        norm = cls(d, eps=eps)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(gamma))
            ref = norm(torch.from_numpy(x)).numpy()
        # Both are fp32 RMSNorms (torch sums in its own order), each within _rmsnorm_tol of the exact value.
        assert np.all(np.abs(y - ref) <= 2 * _rmsnorm_tol(ref, d))
    assert np.array_equal(y[1, 4:9], rmsnorm(np.ascontiguousarray(x[1, 4:9]), gamma, eps))  # rows independent


def test_rmsnorm_zero_rows_and_non_contiguous_input():
    rng = np.random.default_rng(21)
    gamma = _f32(rng, 12)
    assert np.array_equal(rmsnorm(np.zeros((2, 12), np.float32), gamma, 1e-6), np.zeros((2, 12), np.float32))
    wide = _f32(rng, 5, 30)
    view = wide[::2, 3:15]
    assert np.array_equal(rmsnorm(view, gamma, 1e-6), rmsnorm(np.ascontiguousarray(view), gamma, 1e-6))


def test_rmsnorm_rejects_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        rmsnorm(np.zeros((2, 4), np.float32), np.ones(3, np.float32), 1e-6)
    with pytest.raises(TypeError, match="float32"):
        rmsnorm(np.zeros((2, 4)), np.ones(4, np.float32), 1e-6)


# ---- RoPE --------------------------------------------------------------------------------------------------
def _rope_ref(x: np.ndarray, positions: np.ndarray, head_dim: int, theta: float) -> np.ndarray:
    """Exact-arithmetic RoPE in float64, HF rotate_half pairing: dim k with dim k + head_dim/2."""
    m = x.shape[0]
    half = head_dim // 2
    x64 = x.astype(np.float64).reshape(m, -1, head_dim)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angle = positions.astype(np.float64)[:, None, None] * inv_freq  # [m, 1, half]
    c, s = np.cos(angle), np.sin(angle)
    x1, x2 = x64[..., :half], x64[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).reshape(x.shape)


def _rope_tol(x: np.ndarray, positions: np.ndarray, head_dim: int, theta: float) -> np.ndarray:
    """Bound on the fp32 kernel's error against exact arithmetic, per output element.

    The kernel forms angles as transformers does: the exponent 2k/head_dim in fp32 (relative error u, i.e.
    absolute <= u, which moves theta**e by ln(theta) u relative), the power and the reciprocal rounded (u
    each), the product with the position rounded (u): angle error <= (ln(theta) + 3) u |angle|. cos and sin
    are then correctly rounded (u absolute, as |cos|, |sin| <= 1), and x1 c - x2 s takes three roundings
    (<= 2u (|x1| + |x2|)). So |err| <= (|x1| + |x2|) ((ln(theta) + 3) |angle| + 4) u; +1 on both for slack.
    """
    m = x.shape[0]
    half = head_dim // 2
    a = np.abs(x.astype(np.float64)).reshape(m, -1, head_dim)
    pair = a[..., :half] + a[..., half:]
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angle = np.abs(positions.astype(np.float64))[:, None, None] * inv_freq
    per_pair = pair * ((math.log(theta) + 4) * angle + 5) * U32
    return np.concatenate([per_pair, per_pair], axis=-1).reshape(x.shape)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 9),
    n_heads=st.sampled_from([1, 2, 3, 5]),
    head_dim=st.sampled_from([2, 6, 10, 16, 34, 64, 128]),  # halves 1, 3, 5, 17: odd, not multiples of 8
    theta=st.sampled_from(THETAS),
    max_pos=st.sampled_from([1, 64, 4096, 131072]),
    seed=st.integers(0, 2**32 - 1),
)
@example(m=1, n_heads=1, head_dim=2, theta=10000.0, max_pos=1, seed=0)
@example(m=1, n_heads=3, head_dim=6, theta=500000.0, max_pos=131072, seed=3)
def test_rope_matches_float64(m, n_heads, head_dim, theta, max_pos, seed):
    rng = np.random.default_rng(seed)
    x = _f32(rng, m, n_heads * head_dim, scale=2.0)
    positions = rng.integers(0, max_pos, size=m)
    y = rope(x, positions, head_dim, theta)
    assert y.dtype == np.float32
    assert y.shape == x.shape
    assert y is not x
    err = np.abs(y - _rope_ref(x, positions, head_dim, theta))
    tol = _rope_tol(x, positions, head_dim, theta)
    assert np.all(err <= tol), f"max error {err.max()} (tol there {tol.flat[np.argmax(err - tol)]})"


def test_rope_position_zero_is_identity_and_pairs_are_half_apart():
    rng = np.random.default_rng(22)
    x = _f32(rng, 3, 2 * 8)
    assert np.array_equal(rope(x, np.zeros(3, np.int64), 8, 10000.0), x)
    # A one-hot input at dim 0 of a head, position 1, inv_freq[0] = 1: the energy lands on dims 0 and 4
    # (rotate_half pairing), never on dim 1 (the interleaved convention's partner).
    e0 = np.zeros((1, 8), np.float32)
    e0[0, 0] = 1.0
    y = rope(e0, np.array([1]), 8, 10000.0)
    np.testing.assert_allclose(y[0], [math.cos(1), 0, 0, 0, math.sin(1), 0, 0, 0], atol=1e-7)


def test_rope_offset_blocks_match_full_sequence():
    """A block of rows carries its true positions (offset + arange): same bits as the whole sequence."""
    rng = np.random.default_rng(23)
    x = _f32(rng, 50, 4 * 64)
    offset = 1000
    full = rope(x, offset + np.arange(50), 64, 500000.0)
    for r0, r1 in ((0, 13), (13, 31), (31, 50)):
        block = rope(np.ascontiguousarray(x[r0:r1]), offset + np.arange(r0, r1), 64, 500000.0)
        assert np.array_equal(block, full[r0:r1])
    step = rope(x[49:50], np.array([offset + 49], np.int32), 64, 500000.0)  # one decode step, int32 ids
    assert np.array_equal(step, full[49:50])
    view = rope(x[:, 64:192], offset + np.arange(50), 64, 500000.0)  # a column block of whole heads
    assert np.array_equal(view, full[:, 64:192])


@pytest.mark.parametrize(("head_dim", "theta", "start"), [(64, 500000.0, 70000), (16, 10000.0, 0), (6, 1e6, 5)])
def test_rope_matches_transformers(head_dim, theta, start):
    import torch
    import transformers
    import transformers.models.llama.modeling_llama as llama
    rng = np.random.default_rng(24)
    m, n_heads = 21, 3
    x = _f32(rng, m, n_heads * head_dim, scale=3.0)
    positions = start + rng.permutation(m * 3)[:m]  # arbitrary, unsorted position ids
    config = transformers.LlamaConfig(
        hidden_size=n_heads * head_dim,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        head_dim=head_dim,
        rope_theta=theta,
        max_position_embeddings=start + 4 * m,
    )
    rotary = llama.LlamaRotaryEmbedding(config)
    from wse_sim.kernels.llama import rope_inv_freq

    assert np.array_equal(rope_inv_freq(head_dim, theta), rotary.inv_freq.numpy())
    q = torch.from_numpy(x).view(1, m, n_heads, head_dim).transpose(1, 2)  # [batch, heads, seq, head_dim]
    cos, sin = rotary(q, torch.from_numpy(positions)[None])
    q_embed, k_embed = llama.apply_rotary_pos_emb(q, q.clone(), cos, sin)
    ref = q_embed.transpose(1, 2).reshape(m, n_heads * head_dim).numpy()
    assert torch.equal(k_embed, q_embed)
    y = rope(x, positions, head_dim, theta)
    # Same fp32 angles (inv_freq equal, asserted above); torch's fp32 cos/sin are within 1 ulp (<= 2u absolute)
    # and ours within half an ulp, so the tables differ by <= 3u; the three roundings of x1 c - x2 s may
    # differ by <= 2u (|x1| + |x2|) on each side: 7u (|x1| + |x2|), rounded up to 8.
    half = head_dim // 2
    a = np.abs(x.astype(np.float64)).reshape(m, n_heads, head_dim)
    pair = a[..., :half] + a[..., half:]
    tol = 8 * U32 * np.concatenate([pair, pair], axis=-1).reshape(x.shape)
    assert np.all(np.abs(y - ref) <= tol)
    # At large positions transformers itself is off from exact arithmetic by the fp32 angle rounding, and the
    # kernel follows transformers there, not the float64 reference.
    if start >= 70000:
        exact = _rope_ref(x, positions, head_dim, theta)
        assert np.abs(ref - exact).max() > 100 * np.abs(y - ref).max()


def test_rope_rejects_bad_input():
    x = np.zeros((2, 12), np.float32)
    with pytest.raises(ValueError, match="even"):
        rope(x, np.arange(2), 3, 10000.0)
    with pytest.raises(ValueError, match="n_heads"):
        rope(x, np.arange(2), 8, 10000.0)
    with pytest.raises(ValueError, match="positions"):
        rope(x, np.arange(3), 6, 10000.0)
    with pytest.raises(ValueError, match="positions"):
        rope(x, np.arange(2, dtype=np.float32), 6, 10000.0)
    with pytest.raises(ValueError, match="theta"):
        rope(x, np.arange(2), 6, 0.0)


# ---- SwiGLU gate -------------------------------------------------------------------------------------------
def _silu_gate_ref(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g = gate.astype(np.float64)
    return g / (1.0 + np.exp(-g)) * up.astype(np.float64)  # float64 exp: finite for |g| < 700


def _silu_gate_tol(ref: np.ndarray, up: np.ndarray) -> np.ndarray:
    """v / (1 + exp(-v)) * up has no cancellation: expf (<= 1 ulp), the add, the divide and the multiply give
    <= 4u relative to the output (6u for slack). Where the true output is below fp32's normal range it is
    flushed or subnormal: for v < -88.72 exp(-v) overflows and the kernel returns 0 where the true value is
    at most 88.73 e^-88.72 |up| < 3e-37 |up|, and a subnormal product is off by at most 2^-150."""
    return 6 * U32 * np.abs(ref) + 3e-37 * np.abs(up.astype(np.float64)) + 2.0**-149


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 9),
    f=st.integers(1, 300),
    scale=st.sampled_from([1.0, 8.0, 40.0]),
    seed=st.integers(0, 2**32 - 1),
)
@example(m=1, f=1, scale=1.0, seed=0)
def test_silu_gate_matches_float64(m, f, scale, seed):
    rng = np.random.default_rng(seed)
    gate, up = _f32(rng, m, f, scale=scale), _f32(rng, m, f, scale=scale)
    y = silu_gate(gate, up)
    assert y.dtype == np.float32
    assert y.shape == gate.shape
    ref = _silu_gate_ref(gate, up)
    assert np.all(np.abs(y - ref) <= _silu_gate_tol(ref, up))


def test_silu_gate_matches_torch():
    import torch
    rng = np.random.default_rng(25)
    edges = np.array([0.0, -0.0, 1e-6, -1e-6, 20.0, -20.0, 88.0, -88.0, -87.5, -88.8, -100.0], np.float32)
    gate = np.concatenate([_f32(rng, 20000, scale=5.0), edges])
    up = _f32(rng, gate.size, scale=2.0)
    ref = (torch.nn.functional.silu(torch.from_numpy(gate)) * torch.from_numpy(up)).numpy()
    # Same formula as torch's CPU silu; its exp and ours are each within ~1 ulp: a few ulps of the output.
    np.testing.assert_allclose(silu_gate(gate, up), ref, rtol=1e-6, atol=1e-38)


def test_silu_gate_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        silu_gate(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))


# ---- extreme inputs ----------------------------------------------------------------------------------------
def test_extreme_inputs_stay_finite():
    """|x| up to 80 (and a gate pushed past exp's overflow): finite wherever the float64 reference is."""
    rng = np.random.default_rng(26)
    big = rng.uniform(-80.0, 80.0, size=(7, 96)).astype(np.float32)
    big[0, :] = 80.0
    big[1, ::2] = -80.0
    big[2, :] = 1e-30  # tiny row: eps dominates the mean of squares
    gamma = rng.uniform(-80.0, 80.0, size=96).astype(np.float32)
    for y, ref in (
        (rmsnorm(big, gamma, 1e-6), _rmsnorm_ref(big, gamma, 1e-6)),
        (rope(big, np.array([0, 1, 7, 4095, 8191, 100000, 2**24 - 1]), 32, 500000.0), None),
        (silu_gate(big, big[::-1].copy()), _silu_gate_ref(big, big[::-1])),
    ):
        assert np.all(np.isfinite(y))
        if ref is not None:
            assert np.all(np.isfinite(ref))
    past = np.array([-88.8, -89.0, -100.0, -1000.0, -3e38, 3e38, 88.8, 1000.0], np.float32)
    s = silu_gate(past, np.ones_like(past))
    assert np.all(np.isfinite(s))
    assert np.all(np.abs(s[:5]) < 1e-36)
    np.testing.assert_array_equal(s[5:], past[5:])
    np.testing.assert_allclose(rmsnorm(big[:1], np.ones(96, np.float32), 1e-6), 1.0, rtol=4 * U32)  # 80 / rms 80
