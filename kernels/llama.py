"""Llama-family kernels in fp32: RMSNorm, rotary position embeddings (RoPE) and SwiGLU's gating product.

Each follows the arithmetic of transformers' Llama code (``LlamaRMSNorm``, ``LlamaRotaryEmbedding`` with
``apply_rotary_pos_emb``, and ``act_fn(gate_proj(x)) * up_proj(x)`` with ``hidden_act="silu"``) in float32,
so a simulated fp32 model tracks transformers closely. Serial and in a fixed order: results are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .norm import _sum_f32
from .precision import require_f32

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


# ---- RMSNorm -----------------------------------------------------------------------------------------------
@njit(cache=True)
def _rmsnorm_rows(x, gamma, eps, out):
    rows, d = x.shape
    fd = np.float32(d)
    for i in range(rows):
        row = x[i]
        ms = _sum_f32(row, _ZERO, True) / fd  # the same fixed 8-lane fp32 sum as layernorm's
        rstd = _ONE / np.sqrt(ms + eps)
        for j in range(d):
            out[i, j] = (row[j] * rstd) * gamma[j]  # transformers' order: weight * (x * rsqrt(var + eps))


def rmsnorm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    """RMS-normalise ``x [rows, d]`` over its last axis: ``x / sqrt(mean(x**2) + eps) * gamma``.

    Llama's and Qwen2's RMSNorm (no mean subtraction, no bias), with the mean of squares accumulated in fp32
    as ``LlamaRMSNorm`` does after upcasting. Leading axes beyond two are flattened into rows, and the result
    has ``x``'s shape. As in transformers, squares overflow fp32 for ``|x|`` beyond about 1.8e19, and a zero
    row with ``eps = 0`` gives NaN. Gemma's ``(1 + weight)`` variant is not this function: pass ``1 + w``.
    """
    x = require_f32(x, "rmsnorm: x")
    gamma = require_f32(gamma, "rmsnorm: gamma")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"rmsnorm: x of shape {x.shape} has no last axis to normalise")
    d = x.shape[-1]
    if gamma.shape != (d,):
        raise ValueError(f"rmsnorm: gamma {gamma.shape} must be ({d},)")
    x2 = np.ascontiguousarray(x).reshape(-1, d)
    out = np.empty_like(x2)
    _rmsnorm_rows(x2, np.ascontiguousarray(gamma), np.float32(eps), out)
    return out.reshape(x.shape)


# ---- rotary position embeddings ----------------------------------------------------------------------------
def rope_inv_freq(head_dim: int, theta: float, scaling=None) -> np.ndarray:
    """``1 / theta ** (arange(0, head_dim, 2) / head_dim)`` as float32, rounded as transformers rounds it.

    transformers builds the exponents in fp32, raises ``theta`` to them in fp32 and takes the fp32
    reciprocal; here the power is taken in float64 and rounded once, which gave torch's bits in all but
    24 of 2,940 (theta, head_dim) entries tried (those differ by one ulp).

    ``scaling``: None (the default rotary) or Llama 3.1's frequency scaling, any object with ``rope_type``
    ``"llama3"`` and the attributes ``factor``, ``low_freq_factor``, ``high_freq_factor`` and
    ``original_max_position_embeddings`` (``wse_sim.workloads.config.RopeScaling``); see
    :func:`llama3_scale_inv_freq`.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    powers = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    inv_freq = _ONE / powers
    if scaling is None:
        return inv_freq
    rope_type = getattr(scaling, "rope_type", None)
    if rope_type != "llama3":
        raise ValueError(f"rope: rope scaling type {rope_type!r} is not supported (only 'llama3')")
    return llama3_scale_inv_freq(inv_freq, scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor,
                                 scaling.original_max_position_embeddings)


def llama3_scale_inv_freq(inv_freq: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float,
                          original_max_position_embeddings: int) -> np.ndarray:
    """Llama 3.1's rescaling of fp32 rotary ``inv_freq`` (transformers' ``_compute_llama3_parameters``).

    With ``L = original_max_position_embeddings`` and ``wavelen = 2 pi / inv_freq``: wavelengths shorter than
    ``L / high_freq_factor`` are kept, those longer than ``L / low_freq_factor`` are divided by ``factor``, and
    in between ``(1 - s) * inv_freq / factor + s * inv_freq`` with ``s = (L / wavelen - low_freq_factor) /
    (high_freq_factor - low_freq_factor)``. Every step is the fp32 operation torch does, in its order
    (``a / t`` for a Python scalar ``a`` is ``t.reciprocal() * a``; scalars enter as fp32): for the same input
    this gave transformers' bits in all 3,520 (head_dim, theta, factor, low, high, L) cases tried, 11,364
    of whose frequencies were in the interpolated band.
    """
    f32 = np.float32
    inv = np.asarray(inv_freq, dtype=f32)
    if not (factor >= 1.0 and 0.0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0):
        raise ValueError(f"rope: bad llama3 scaling (factor {factor}, low_freq_factor {low_freq_factor}, "
                         f"high_freq_factor {high_freq_factor}, original_max_position_embeddings "
                         f"{original_max_position_embeddings})")
    orig = original_max_position_embeddings
    low_wavelen = f32(orig / low_freq_factor)  # Python floats (double), compared in fp32
    high_wavelen = f32(orig / high_freq_factor)
    wavelen = (_ONE / inv) * f32(2 * math.pi)
    scaled = np.where(wavelen > low_wavelen, inv / f32(factor), inv)
    smooth = ((_ONE / wavelen) * f32(orig) - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)
    smoothed = (_ONE - smooth) * scaled / f32(factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(f32)


@njit(cache=True)
def _rope_rows(x, positions, inv_freq, head_dim, out):
    rows, width = x.shape
    half = head_dim // 2
    cos = np.empty(half, np.float32)
    sin = np.empty(half, np.float32)
    for i in range(rows):
        p = np.float32(positions[i])  # transformers: position_ids.float()
        for k in range(half):
            angle = np.float64(p * inv_freq[k])  # the fp32 product, as transformers forms it
            cos[k] = np.float32(math.cos(angle))  # correctly rounded (torch's fp32 cos/sin are within 1 ulp)
            sin[k] = np.float32(math.sin(angle))
        for h0 in range(0, width, head_dim):
            for k in range(half):
                x1 = x[i, h0 + k]
                x2 = x[i, h0 + half + k]
                # q * cos + rotate_half(q) * sin, with rotate_half(q) = cat(-q2, q1): three fp32 roundings each
                out[i, h0 + k] = x1 * cos[k] - x2 * sin[k]
                out[i, h0 + half + k] = x2 * cos[k] + x1 * sin[k]


def rope(x: np.ndarray, positions: np.ndarray, head_dim: int, theta: float, scaling=None) -> np.ndarray:
    """Rotate each head of ``x [m, n_heads*head_dim]`` by the angles of its row's position; a new array.

    Hugging Face Llama convention (``rotate_half``): in each head, dim ``k`` pairs with dim ``k + head_dim/2``
    (not interleaved ``2k, 2k+1`` pairs as in Meta's original code), and the pair rotates by
    ``positions[row] * inv_freq[k]`` with ``inv_freq = 1 / theta ** (arange(0, head_dim, 2) / head_dim)``.
    ``positions [m]`` are integers given explicitly, so a block of a longer sequence (or a decode step after
    a KV cache) passes its true positions, e.g. ``offset + arange(m)``.

    Angles are formed in fp32 exactly as transformers forms them (fp32 ``inv_freq``, fp32 ``position *
    inv_freq``), so at large positions the result follows transformers rather than exact arithmetic: the
    angle's rounding error grows like ``|position| * 2**-24``.

    ``scaling`` (None: the default rope) applies Llama 3.1's ``rope_type: "llama3"`` frequency scaling to
    ``inv_freq`` (see :func:`rope_inv_freq`); the angles are then formed in fp32 from the scaled ``inv_freq``
    as above. Other rope scalings (linear, dynamic NTK, YaRN, ...), an ``attention_scaling`` factor and a
    partial rotary factor are not supported.
    """
    x = require_f32(x, "rope: x")
    positions = np.asarray(positions)
    head_dim = int(head_dim)
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"rope: head_dim must be a positive even number, got {head_dim}")
    if x.ndim != 2 or x.shape[1] % head_dim:
        raise ValueError(f"rope: x must be [m, n_heads*head_dim] with head_dim {head_dim}, got shape {x.shape}")
    if positions.shape != (x.shape[0],) or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"rope: positions must be {x.shape[0]} integers, got {positions.dtype} {positions.shape}")
    if not theta > 0:
        raise ValueError(f"rope: theta must be positive, got {theta}")
    x2 = np.ascontiguousarray(x)
    out = np.empty_like(x2)
    _rope_rows(x2, positions.astype(np.int64), rope_inv_freq(head_dim, theta, scaling), head_dim, out)
    return out


# ---- SwiGLU ------------------------------------------------------------------------------------------------
@njit(cache=True)
def _silu_gate(g, u, out):
    for i in range(g.shape[0]):
        v = g[i]
        # silu(v) = v * sigmoid(v) as v / (1 + exp(-v)), torch's formula: for v << 0 exp(-v) overflows to inf
        # and the quotient is -0 (the true value is below 1e-36), for v >> 0 it is v; no NaN for finite v.
        out[i] = (v / (_ONE + np.exp(-v))) * u[i]


def silu_gate(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """SwiGLU's elementwise part ``silu(gate) * up`` with ``silu(x) = x * sigmoid(x)``; a new float32 array.

    ``gate`` and ``up`` must have the same shape (any). Finite inputs give finite outputs up to fp32
    overflow of the product; ``silu(-inf)`` is NaN, as in torch.
    """
    gate = require_f32(gate, "silu_gate: gate")
    up = require_f32(up, "silu_gate: up")
    if gate.shape != up.shape:
        raise ValueError(f"silu_gate: shapes {gate.shape} and {up.shape} differ")
    g = np.ascontiguousarray(gate).reshape(-1)
    u = np.ascontiguousarray(up).reshape(-1)
    out = np.empty_like(g)
    _silu_gate(g, u, out)
    return out.reshape(gate.shape)
