"""An independent float64 numpy forward pass of GPT-2, the numerics oracle for the simulator.

Written for clarity rather than speed: one batch row at a time (bounding the attention scores to
``[n_head, seq, seq]``), weights upcast to float64 one layer at a time. It shares no code with the
simulator's kernels or with ``transformers``, so agreement with both is meaningful.
"""

from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig
from .tokens import check_token_ids
from .weights import LAYER_FIELDS, ModelWeights

_erf = np.frompyfunc(math.erf, 1, 1)  # exact erf elementwise, without a scipy dependency


def layer_norm(x: np.ndarray, gain: np.ndarray, shift: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with the biased variance, as torch.nn.LayerNorm."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + shift


def activation(x: np.ndarray, name: str) -> np.ndarray:
    """The MLP nonlinearity named by ``config.activation``."""
    if name == "gelu":  # exact: x * Phi(x)
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))
    if name in ("gelu_new", "gelu_pytorch_tanh"):  # tanh approximation used by the original GPT-2
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return np.maximum(x, 0.0)
    raise ValueError(f"unknown activation {name!r}")


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; ``-inf`` entries get probability 0."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_attention(x: np.ndarray, w: dict[str, np.ndarray], n_head: int) -> np.ndarray:
    """Multi-head causal self-attention of one sequence ``x [seq, d]``, output projection included."""
    seq, d = x.shape
    dh = d // n_head
    qkv = x @ w["w_qkv"] + w["b_qkv"]  # [seq, 3d], columns q | k | v
    q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(seq, n_head, dh).transpose(1, 0, 2) for i in range(3))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(dh)  # [head, seq, seq]
    future = np.triu(np.ones((seq, seq), dtype=bool), k=1)  # position i may not see j > i
    scores = np.where(future, -np.inf, scores)
    context = softmax(scores) @ v  # [head, seq, dh]
    context = context.transpose(1, 0, 2).reshape(seq, d)
    return context @ w["w_attn_proj"] + w["b_attn_proj"]


def decoder_block(x: np.ndarray, w: dict[str, np.ndarray], config: ModelConfig) -> np.ndarray:
    """One pre-LayerNorm GPT-2 block on ``x [seq, d]``."""
    eps = config.layer_norm_epsilon
    x = x + causal_attention(layer_norm(x, w["ln1_g"], w["ln1_b"], eps), w, config.n_head)
    hidden = activation(layer_norm(x, w["ln2_g"], w["ln2_b"], eps) @ w["w_fc"] + w["b_fc"], config.activation)
    return x + hidden @ w["w_fc_proj"] + w["b_fc_proj"]


def reference_logits(weights: ModelWeights, token_ids: np.ndarray) -> np.ndarray:
    """Logits float64 ``[batch, seq, vocab]`` of GPT-2 for int ``token_ids [batch, seq]``."""
    config = weights.config
    ids = check_token_ids(token_ids, config)
    batch, seq = ids.shape
    f64 = np.float64

    x = weights.wte[ids].astype(f64) + weights.wpe[:seq].astype(f64)  # [batch, seq, d]
    for layer in weights.layers:
        w = {name: getattr(layer, name).astype(f64) for name in LAYER_FIELDS}
        for b in range(batch):
            x[b] = decoder_block(x[b], w, config)

    head = weights.head_weight().astype(f64)  # [vocab, d]
    gain, shift = weights.lnf_g.astype(f64), weights.lnf_b.astype(f64)
    logits = np.empty((batch, seq, config.vocab_size), dtype=f64)
    for b in range(batch):
        logits[b] = layer_norm(x[b], gain, shift, config.layer_norm_epsilon) @ head.T
    return logits
