"""Layer normalisation in fp32 (the wafer's arithmetic precision), matching ``torch.nn.LayerNorm``."""

from __future__ import annotations

import numpy as np
from numba import njit

from .precision import require_f32

_LANES = 8  # independent partial sums: shorter rounding chains than one running sum, and a fixed order


@njit(cache=True)
def _sum_f32(v: np.ndarray, shift: np.float32, square: bool) -> np.float32:
    """fp32 sum of ``v - shift`` (or of its squares) in a fixed 8-lane order, then the lanes pairwise."""
    acc = np.zeros(_LANES, np.float32)
    d = v.shape[0]
    main = d - d % _LANES
    for j0 in range(0, main, _LANES):
        for lane in range(_LANES):
            t = v[j0 + lane] - shift
            acc[lane] += t * t if square else t
    for j in range(main, d):
        t = v[j] - shift
        acc[j - main] += t * t if square else t
    w = _LANES
    while w > 1:
        w //= 2
        for lane in range(w):
            acc[lane] += acc[lane + w]
    return acc[0]


@njit(cache=True)
def _layernorm_rows(x, gamma, beta, eps, out):
    rows, d = x.shape
    inv_d = np.float32(1.0) / np.float32(d)
    zero = np.float32(0.0)
    for i in range(rows):
        row = x[i]
        mean = _sum_f32(row, zero, False) * inv_d
        var = _sum_f32(row, mean, True) * inv_d  # two-pass: no cancellation from E[x^2] - E[x]^2
        rstd = np.float32(1.0) / np.sqrt(var + eps)
        for j in range(d):
            out[i, j] = (row[j] - mean) * rstd * gamma[j] + beta[j]


def layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """Normalise ``x [rows, d]`` over its last axis: ``(x - mean) / sqrt(var + eps) * gamma + beta``.

    Biased variance and fp32 throughout, as in torch. Leading axes beyond two are flattened into rows, and the
    result has ``x``'s shape.
    """
    x = require_f32(x, "layernorm: x")
    gamma = require_f32(gamma, "layernorm: gamma")
    beta = require_f32(beta, "layernorm: beta")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"layernorm: x of shape {x.shape} has no last axis to normalise")
    d = x.shape[-1]
    if gamma.shape != (d,) or beta.shape != (d,):
        raise ValueError(f"layernorm: gamma {gamma.shape} and beta {beta.shape} must both be ({d},)")
    x2 = np.ascontiguousarray(x).reshape(-1, d)
    out = np.empty_like(x2)
    _layernorm_rows(x2, np.ascontiguousarray(gamma), np.ascontiguousarray(beta), np.float32(eps), out)
    return out.reshape(x.shape)
