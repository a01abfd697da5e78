"""Backward (gradient) kernels of the GPT-2 ops and the AdamW update, fp32 like the forward kernels.

Matmul gradients need no kernel of their own: for ``Y = X W`` they are ``dX = dY W^T`` and ``dW = X^T dY``,
the forward :func:`~kernels.gemm.gemm` on transposed views (it takes any strides). Here: LayerNorm, GELU (exact
and tanh), the causally masked softmax, the shifted causal-LM cross-entropy, the embedding scatter-add, and one
AdamW step with torch's update order. Each is checked against torch autograd in ``tests/test_training.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numba import njit

from .precision import require_f32

_INV_SQRT2 = np.float32(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = np.float32(1.0 / math.sqrt(2.0 * math.pi))
_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
_TANH_COEF = np.float32(0.044715)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
IGNORE_INDEX = -100  # labels equal to this are not predicted (torch's cross_entropy default)


# ---- LayerNorm -------------------------------------------------------------------------------------------------
@njit(cache=True)
def _layernorm_bwd(x, gamma, eps, dy, row_edges, col_edges, dx, dgamma, dbeta):
    d = x.shape[1]
    inv_d = np.float32(1.0) / np.float32(d)
    xhat = np.empty(d, np.float32)
    pg = np.empty(d, np.float32)  # one tile row's partial dgamma, dbeta
    pb = np.empty(d, np.float32)
    for t in range(row_edges.shape[0] - 1):
        pg[:] = 0.0
        pb[:] = 0.0
        for i in range(row_edges[t], row_edges[t + 1]):
            mean = np.float32(0.0)
            for j in range(d):
                mean += x[i, j]
            mean *= inv_d
            var = np.float32(0.0)
            for j in range(d):
                u = x[i, j] - mean
                var += u * u
            var *= inv_d
            rstd = np.float32(1.0) / np.sqrt(var + eps)
            s1 = np.float32(0.0)  # sum of g, folded over the tile columns' partials in column order
            s2 = np.float32(0.0)  # sum of g * xhat
            for c in range(col_edges.shape[0] - 1):
                p1 = np.float32(0.0)
                p2 = np.float32(0.0)
                for j in range(col_edges[c], col_edges[c + 1]):
                    xhat[j] = (x[i, j] - mean) * rstd
                    g = dy[i, j] * gamma[j]
                    p1 += g
                    p2 += g * xhat[j]
                    pg[j] += dy[i, j] * xhat[j]
                    pb[j] += dy[i, j]
                s1 += p1
                s2 += p2
            s1 *= inv_d
            s2 *= inv_d
            for j in range(d):
                dx[i, j] = rstd * (dy[i, j] * gamma[j] - s1 - xhat[j] * s2)
        for j in range(d):
            dgamma[j] += pg[j]
            dbeta[j] += pb[j]


def _edges(edges, n: int, what: str) -> np.ndarray:
    """``edges`` (increasing, from 0 to ``n``) as int64, or ``(0, n)`` when None."""
    e = np.asarray((0, n) if edges is None else edges, dtype=np.int64)
    if e.ndim != 1 or e.shape[0] < 2 or e[0] != 0 or e[-1] != n or (np.diff(e) < 0).any():
        raise ValueError(f"{what} edges {tuple(e)} must rise from 0 to {n}")
    return e


def layernorm_backward(x: np.ndarray, gamma: np.ndarray, eps: float, dy: np.ndarray, row_edges=None,
                       col_edges=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dx, dgamma, dbeta)`` of ``layernorm(x [rows, d], gamma, beta, eps)`` given ``dy``.

    ``dx = rstd (g - mean(g) - xhat mean(g xhat))`` with ``g = dy gamma``; the statistics are recomputed from
    ``x`` (nothing but the input is kept from the forward pass). With a tile partition (``row_edges`` over the
    rows, ``col_edges`` over ``d``; default one block): each row's two sums over ``d`` are one fp32 partial per
    column block, added in column order, and ``dgamma``/``dbeta`` one fp32 partial per row block, added in row
    order (one block each: a plain sequential sum, as the single kernel).
    """
    x = np.ascontiguousarray(require_f32(x, "layernorm_backward: x"))
    dy = np.ascontiguousarray(require_f32(dy, "layernorm_backward: dy"))
    gamma = np.ascontiguousarray(require_f32(gamma, "layernorm_backward: gamma"))
    if x.shape != dy.shape or x.ndim != 2 or gamma.shape != (x.shape[1],):
        raise ValueError(f"layernorm_backward: x {x.shape}, dy {dy.shape}, gamma {gamma.shape} do not agree")
    dx = np.empty_like(x)
    dgamma = np.zeros(x.shape[1], np.float32)
    dbeta = np.zeros(x.shape[1], np.float32)
    _layernorm_bwd(x, gamma, np.float32(eps), dy, _edges(row_edges, x.shape[0], "row"),
                   _edges(col_edges, x.shape[1], "column"), dx, dgamma, dbeta)
    return dx, dgamma, dbeta


def row_block_sum(dy: np.ndarray, row_edges) -> np.ndarray:
    """``dy [rows, n]`` summed over rows as a partitioned reduction: one fp32 partial per row block (numpy's
    sum inside it), the partials added in block order (a bias gradient summed down the tile rows)."""
    e = _edges(row_edges, dy.shape[0], "row")
    total = np.zeros(dy.shape[1], np.float32)
    for r0, r1 in itertools.pairwise(e):
        total += dy[r0:r1].sum(axis=0, dtype=np.float32)
    return total


# ---- GELU ------------------------------------------------------------------------------------------------------
@njit(cache=True)
def _gelu_erf_bwd(x, dy, dx):
    for i in range(x.shape[0]):
        v = x[i]
        cdf = _HALF * (_ONE + np.float32(math.erf(v * _INV_SQRT2)))
        pdf = _INV_SQRT_2PI * np.exp(-_HALF * v * v)
        dx[i] = dy[i] * (cdf + v * pdf)


@njit(cache=True)
def _gelu_tanh_bwd(x, dy, dx):
    for i in range(x.shape[0]):
        v = x[i]
        u = _SQRT_2_OVER_PI * (v + _TANH_COEF * v * v * v)
        t = np.tanh(u)
        du = _SQRT_2_OVER_PI * (_ONE + np.float32(3.0) * _TANH_COEF * v * v)
        dx[i] = dy[i] * (_HALF * (_ONE + t) + _HALF * v * (_ONE - t * t) * du)


@njit(cache=True)
def _relu_bwd(x, dy, dx):
    for i in range(x.shape[0]):
        dx[i] = dy[i] if x[i] > 0 else np.float32(0.0)


def gelu_backward(x: np.ndarray, dy: np.ndarray, variant: str) -> np.ndarray:
    """``dy * act'(x)`` for the activation named by ``variant`` (see :func:`kernels.activations.gelu`)."""
    kernels = {"gelu": _gelu_erf_bwd, "gelu_new": _gelu_tanh_bwd, "gelu_pytorch_tanh": _gelu_tanh_bwd,
               "relu": _relu_bwd}
    if variant not in kernels:
        raise ValueError(f"unknown activation {variant!r}")
    x = require_f32(x, "gelu_backward: x")
    dy = require_f32(dy, "gelu_backward: dy")
    if x.shape != dy.shape:
        raise ValueError(f"gelu_backward: x {x.shape} and dy {dy.shape} differ")
    xf, df = np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(dy).reshape(-1)
    out = np.empty_like(xf)
    kernels[variant](xf, df, out)
    return out.reshape(x.shape)


# ---- softmax ---------------------------------------------------------------------------------------------------
@njit(cache=True)
def _softmax_bwd(p, dp, scale, q_offset, ds):
    sq, sk = p.shape[1], p.shape[2]
    for h in range(p.shape[0]):
        for i in range(sq):
            allowed = min(sk, i + q_offset + 1)
            dot = np.float32(0.0)
            for j in range(allowed):
                dot += p[h, i, j] * dp[h, i, j]
            for j in range(allowed):
                ds[h, i, j] = scale * p[h, i, j] * (dp[h, i, j] - dot)
            for j in range(allowed, sk):
                ds[h, i, j] = 0.0


def causal_softmax_backward(probs: np.ndarray, dprobs: np.ndarray, scale: float = 1.0,
                            q_offset: int = 0) -> np.ndarray:
    """Gradient w.r.t. the raw scores of ``causal_softmax(scores, scale, q_offset)`` given its output ``probs``.

    ``dscores = scale * p * (dp - sum_j p dp)`` over the visible keys; masked entries get exactly 0.
    """
    p = np.ascontiguousarray(require_f32(probs, "causal_softmax_backward: probs"))
    dp = np.ascontiguousarray(require_f32(dprobs, "causal_softmax_backward: dprobs"))
    if p.shape != dp.shape or p.ndim not in (2, 3):
        raise ValueError(f"causal_softmax_backward: probs {p.shape} and dprobs {dp.shape}")
    p3, dp3 = p.reshape((-1, *p.shape[-2:])), dp.reshape((-1, *p.shape[-2:]))
    out = np.empty_like(p3)
    _softmax_bwd(p3, dp3, np.float32(scale), int(q_offset), out)
    return out.reshape(p.shape)


# ---- cross-entropy ---------------------------------------------------------------------------------------------
@njit(cache=True)
def _xent(logits, targets, scale, col_edges, dlogits):
    rows, vocab = logits.shape
    total = 0.0  # float64: the loss sum over many rows (a reported scalar, not a stored tensor)
    for i in range(rows):
        t = targets[i]
        if t == IGNORE_INDEX:
            for j in range(vocab):
                dlogits[i, j] = 0.0
            continue
        mx = np.float32(-np.inf)  # a max: the same whatever the order
        for j in range(vocab):
            if logits[i, j] > mx:
                mx = logits[i, j]
        s = np.float32(0.0)  # one partial per column block, added in column order
        for c in range(col_edges.shape[0] - 1):
            p = np.float32(0.0)
            for j in range(col_edges[c], col_edges[c + 1]):
                e = np.exp(logits[i, j] - mx)
                dlogits[i, j] = e
                p += e
            s += p
        lse = mx + np.log(s)
        total += lse - logits[i, t]
        inv = np.float32(1.0) / s
        for j in range(vocab):
            dlogits[i, j] = dlogits[i, j] * inv * scale
        dlogits[i, t] -= scale
    return total


def cross_entropy(logits: np.ndarray, targets: np.ndarray, scale: float,
                  col_edges=None) -> tuple[float, np.ndarray]:
    """Summed cross-entropy of ``logits [rows, vocab]`` against int ``targets [rows]`` and its gradient.

    Returns ``(sum of -log softmax(logits)[t] over rows, scale * (softmax - onehot))``; rows whose target is
    ``IGNORE_INDEX`` add nothing and get zero gradient. ``scale = 1 / (predicted tokens of the global batch)``
    makes the gradient that of the mean loss, so micro-batches simply add. ``col_edges``: the vocabulary's
    blocks (default one); each row's sum of exponentials is one fp32 partial per block, added in block order.
    """
    logits = np.ascontiguousarray(require_f32(logits, "cross_entropy: logits"))
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy: logits {logits.shape} and targets {targets.shape}")
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= logits.shape[1]))
    if bad.any():
        raise ValueError(f"cross_entropy: target {int(targets[np.argmax(bad)])} outside the vocabulary")
    d = np.empty_like(logits)
    total = _xent(logits, targets, np.float32(scale), _edges(col_edges, logits.shape[1], "column"), d)
    return float(total), d


def causal_lm_targets(ids: np.ndarray) -> np.ndarray:
    """Targets ``[batch * seq]`` of ``labels = input_ids``: position ``s`` predicts ``ids[s + 1]``, and the last
    position of every sequence predicts nothing (``IGNORE_INDEX``), as transformers' shifted loss."""
    ids = np.asarray(ids, dtype=np.int64)
    t = np.full(ids.shape, IGNORE_INDEX, np.int64)
    t[:, :-1] = ids[:, 1:]
    return t.reshape(-1)


# ---- embedding -------------------------------------------------------------------------------------------------
@njit(cache=True)
def _embed_bwd(flat_ids, seq, pos_offset, dx, dwte, dwpe):
    for r in range(flat_ids.shape[0]):
        tok, pos = flat_ids[r], pos_offset + r % seq
        for j in range(dx.shape[1]):
            dwte[tok, j] += dx[r, j]
            dwpe[pos, j] += dx[r, j]


def embedding_backward(ids: np.ndarray, dx: np.ndarray, dwte: np.ndarray, dwpe: np.ndarray,
                       pos_offset: int = 0) -> None:
    """Add the gradient of ``embedding(ids [batch, seq], wte, wpe)`` given ``dx [batch*seq, d]`` into ``dwte``
    and ``dwpe`` (in place, rows in token order: the scatter-add a tied head's gradient is added to)."""
    ids = np.asarray(ids)
    dx = np.ascontiguousarray(require_f32(dx, "embedding_backward: dx"))
    if dx.shape != (ids.size, dwte.shape[1]):
        raise ValueError(f"embedding_backward: dx {dx.shape} for ids {ids.shape}")
    _embed_bwd(np.ascontiguousarray(ids.reshape(-1), dtype=np.int64), ids.shape[1], int(pos_offset), dx, dwte, dwpe)


# ---- AdamW -----------------------------------------------------------------------------------------------------
@njit(cache=True)
def _adamw(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2_sqrt):
    one = np.float32(1.0)
    step_size = lr / bc1
    for i in range(p.shape[0]):
        p[i] = p[i] * (one - lr * wd)
        m[i] = m[i] * b1 + g[i] * (one - b1)  # torch: exp_avg.lerp_(grad, 1 - beta1)
        v[i] = v[i] * b2 + (one - b2) * g[i] * g[i]
        denom = np.sqrt(v[i]) / bc2_sqrt + eps
        p[i] = p[i] - step_size * m[i] / denom


def adamw_step(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step: int, lr: float,
               betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1) -> None:
    """One AdamW update of float32 ``p`` in place (``m``, ``v`` the moments, updated in place; ``step`` >= 1).

    torch.optim.AdamW's order: decoupled decay ``p *= 1 - lr wd``, moments, then
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """
    for name, a in (("p", p), ("g", g), ("m", m), ("v", v)):
        require_f32(a, f"adamw_step: {name}")
        if not a.flags.c_contiguous or a.shape != p.shape:
            raise ValueError(f"adamw_step: {name} must be C-contiguous with p's shape {p.shape}")
    b1, b2 = betas
    bc1 = 1.0 - b1**step
    bc2_sqrt = math.sqrt(1.0 - b2**step)
    _adamw(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), np.float32(lr), np.float32(b1),
           np.float32(b2), np.float32(eps), np.float32(weight_decay), np.float32(bc1), np.float32(bc2_sqrt))


def clip_grad_norm(grads: list[np.ndarray], max_norm: float) -> float:
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm``; returns the norm before.

    As ``torch.nn.utils.clip_grad_norm_``: coefficient ``max_norm / (norm + 1e-6)`` clamped to 1.
    """
    norms = np.array([np.linalg.norm(g.reshape(-1).astype(np.float64)) for g in grads])
    total = float(np.sqrt((norms**2).sum()))
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for g in grads:
            g *= np.float32(coef)
    return total
