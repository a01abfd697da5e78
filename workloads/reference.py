"""An independent float64 numpy forward pass of GPT-2 and of the Llama family, the numerics oracle.

Written for clarity rather than speed: one batch row at a time (bounding the attention scores to
``[n_head, seq, seq]``), weights upcast to float64 one layer at a time, the LM head a block of vocabulary rows at
a time (:func:`logit_blocks`), numpy's BLAS on one thread (:mod:`wse_sim.workloads.blas`). It shares no code with
the simulator's kernels or with ``transformers``, so agreement with both is meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial

import numpy as np

from .blas import one_blas_thread
from .config import ModelConfig, RopeScaling
from .tokens import check_token_ids
from .weights import ModelWeights, layer_fields


def layer_norm(x: np.ndarray, gain: np.ndarray, shift: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with the biased variance, as torch.nn.LayerNorm."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + shift


def activation(x: np.ndarray, name: str) -> np.ndarray:
    """The MLP nonlinearity named by ``config.activation``."""
    if name == "gelu":  # exact: x * Phi(x)
        # scipy's vectorised erf: within 2 ulp of math.erf and about 7x faster than a Python call per element
        # (about 3 s of the 111M model's reference at seq 512); imported here so other activations skip scipy.
        from scipy.special import erf

        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if name in ("gelu_new", "gelu_pytorch_tanh"):  # tanh approximation used by the original GPT-2
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return np.maximum(x, 0.0)
    raise ValueError(f"unknown activation {name!r}")


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; ``-inf`` entries get probability 0."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_softmax_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``softmax(q k^T / sqrt(dh)) v`` per head with a causal mask: ``[head, seq, dh]`` in and out."""
    seq, dh = q.shape[1], q.shape[2]
    scores = q @ k.transpose(0, 2, 1)  # [head, seq, seq]
    scores /= math.sqrt(dh)
    scores[:, np.triu(np.ones((seq, seq), dtype=bool), k=1)] = -np.inf  # position i may not see j > i
    # softmax(scores) in place: the same operations in the same order as softmax(), without a temporary
    # [head, seq, seq] array per step (the elementwise passes were most of the reference's attention time)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores @ v


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    """``[seq, n * dh]`` -> ``[n, seq, dh]``."""
    return x.reshape(x.shape[0], n, -1).transpose(1, 0, 2)


def causal_attention(x: np.ndarray, w: dict[str, np.ndarray], n_head: int) -> np.ndarray:
    """Multi-head causal self-attention of one sequence ``x [seq, d]``, output projection included."""
    seq, d = x.shape
    qkv = x @ w["w_qkv"] + w["b_qkv"]  # [seq, 3d], columns q | k | v
    q, k, v = (_heads(qkv[:, i * d:(i + 1) * d], n_head) for i in range(3))
    context = causal_softmax_attention(q, k, v).transpose(1, 0, 2).reshape(seq, d)
    return context @ w["w_attn_proj"] + w["b_attn_proj"]


def decoder_block(x: np.ndarray, w: dict[str, np.ndarray], config: ModelConfig) -> np.ndarray:
    """One pre-LayerNorm GPT-2 block on ``x [seq, d]``."""
    eps = config.layer_norm_epsilon
    x = x + causal_attention(layer_norm(x, w["ln1_g"], w["ln1_b"], eps), w, config.n_head)
    hidden = activation(layer_norm(x, w["ln2_g"], w["ln2_b"], eps) @ w["w_fc"] + w["b_fc"], config.activation)
    return x + hidden @ w["w_fc_proj"] + w["b_fc_proj"]


def rms_norm(x: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis: ``x / sqrt(mean(x^2) + eps) * gain`` (no mean subtraction, no shift)."""
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * gain


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)``, written as ``x / (1 + exp(-x))``."""
    return x / (1.0 + np.exp(-x))


def llama3_inv_freq(inv_freq: np.ndarray, scaling: RopeScaling) -> np.ndarray:
    """Llama 3.1's frequency scaling, in float64.

    With ``L = original_max_position_embeddings`` and wavelength ``2 pi / inv_freq``: wavelengths under
    ``L / high_freq_factor`` (high frequencies) are kept, those over ``L / low_freq_factor`` are slowed down by
    ``factor``, and in between the frequency blends the two, ``inv_freq * ((1 - s) / factor + s)``, with
    ``s = (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)`` going from 0 to 1 across
    the band (Meta's ``apply_scaling`` in the Llama 3.1 reference code).
    """
    length = float(scaling.original_max_position_embeddings)
    low, high, factor = scaling.low_freq_factor, scaling.high_freq_factor, scaling.factor
    wavelength = 2.0 * math.pi / inv_freq
    s = (length / wavelength - low) / (high - low)
    blended = inv_freq * ((1.0 - s) / factor + s)
    return np.where(wavelength < length / high, inv_freq,
                    np.where(wavelength > length / low, inv_freq / factor, blended))


def rotary_angles(seq: int, head_dim: int, theta: float,
                  scaling: RopeScaling | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` ``[seq, head_dim]`` of the rotary angles ``pos * theta^(-2i/head_dim)``.

    Half-split layout: frequency ``i`` applies to dimensions ``i`` and ``i + head_dim/2`` (Hugging Face's
    rotate-half convention, not the interleaved pairs of the original Llama code). ``scaling``: Llama 3.1's
    rope scaling of the frequencies (:func:`llama3_inv_freq`), or None.
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [head_dim/2]
    if scaling is not None:
        inv_freq = llama3_inv_freq(inv_freq, scaling)
    angles = np.arange(seq, dtype=np.float64)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate each pair ``(x[i], x[i + dh/2])`` of ``x [..., seq, dh]`` by its position's angle."""
    half = x.shape[-1] // 2
    rotated_half = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated_half * sin


def grouped_query_attention(x: np.ndarray, w: dict[str, np.ndarray], config: ModelConfig,
                            rope: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Causal GQA of one sequence ``x [seq, d]`` with rotary q and k, output projection included.

    Query head ``h`` attends with key/value head ``h // (n_head / n_kv_head)``.
    """
    seq, d = x.shape
    kv = config.kv_width
    qkv = x @ w["w_qkv"]  # [seq, d + 2 kv], columns q | k | v
    if "b_qkv" in w:
        qkv = qkv + w["b_qkv"]
    q = rotate(_heads(qkv[:, :d], config.n_head), *rope)
    k = rotate(_heads(qkv[:, d:d + kv], config.n_kv_head), *rope)
    v = _heads(qkv[:, d + kv:], config.n_kv_head)
    group = config.n_head // config.n_kv_head
    k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)  # kv head j serves heads j*group ...
    context = causal_softmax_attention(q, k, v).transpose(1, 0, 2).reshape(seq, d)
    return context @ w["w_attn_proj"]


def llama_block(x: np.ndarray, w: dict[str, np.ndarray], config: ModelConfig,
                rope: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One pre-RMSNorm Llama block on ``x [seq, d]``: GQA, then the SwiGLU MLP."""
    eps = config.layer_norm_epsilon
    x = x + grouped_query_attention(rms_norm(x, w["ln1_g"], eps), w, config, rope)
    h = rms_norm(x, w["ln2_g"], eps)
    return x + (silu(h @ w["w_gate"]) * (h @ w["w_up"])) @ w["w_down"]


# Vocabulary rows of the LM head upcast and multiplied at a time (:func:`logit_blocks`): the float64 head of the
# 111M model is 309 MB and its logits 206 MB, fresh memory whose first touch cost up to 2.8 s per GB of system time
# on the machine of benchmarks/README.md, against 25 MB and 16 MB per block. Wide enough that OpenBLAS takes the
# same kernel path as for the whole matrix: 2048 and more gave the 111M logits bit for bit, 1024 did not.
VOCAB_BLOCK = 4096


def final_hidden(weights: ModelWeights, token_ids: np.ndarray) -> np.ndarray:
    """The final-normed hidden states float64 ``[batch, seq, d]`` for int ``token_ids [batch, seq]``: what the LM
    head multiplies (GPT-2 or Llama family)."""
    config = weights.config
    ids = check_token_ids(token_ids, config)
    batch, seq = ids.shape
    f64 = np.float64

    x = weights.wte[ids].astype(f64)  # [batch, seq, d]
    if config.is_llama:
        rope = rotary_angles(seq, config.head_dim, config.rope_theta, config.rope_scaling)
        block = partial(llama_block, config=config, rope=rope)
    else:
        x += weights.wpe[:seq].astype(f64)
        block = partial(decoder_block, config=config)
    for layer in weights.layers:
        w = {name: getattr(layer, name).astype(f64) for name in layer_fields(config)}
        for b in range(batch):
            x[b] = block(x[b], w)

    gain, eps = weights.lnf_g.astype(f64), config.layer_norm_epsilon
    if config.is_llama:
        final_norm = partial(rms_norm, gain=gain, eps=eps)
    else:
        final_norm = partial(layer_norm, gain=gain, shift=weights.lnf_b.astype(f64), eps=eps)
    for b in range(batch):
        x[b] = final_norm(x[b])
    return x


def logit_blocks(weights: ModelWeights, hidden: np.ndarray,
                 block: int = VOCAB_BLOCK) -> Iterator[tuple[slice, np.ndarray]]:
    """``(vocab slice, logits float64 [batch, seq, slice])`` of :func:`final_hidden`'s ``hidden``, ``block``
    vocabulary rows at a time, in order: the logits without the whole float64 head and logits in memory."""
    head = weights.head_weight()  # [vocab, d]
    batch, seq, _ = hidden.shape
    for v0 in range(0, head.shape[0], block):
        cols = slice(v0, min(v0 + block, head.shape[0]))
        part = head[cols].astype(np.float64).T  # [d, block]
        out = np.empty((batch, seq, cols.stop - v0), dtype=np.float64)
        for b in range(batch):
            np.matmul(hidden[b], part, out=out[b])
        yield cols, out


def reference_logits(weights: ModelWeights, token_ids: np.ndarray) -> np.ndarray:
    """Logits float64 ``[batch, seq, vocab]`` for int ``token_ids [batch, seq]`` (GPT-2 or Llama family)."""
    with one_blas_thread():
        hidden = final_hidden(weights, token_ids)
        logits = np.empty((*hidden.shape[:2], weights.config.vocab_size), dtype=np.float64)
        for cols, part in logit_blocks(weights, hidden):
            logits[..., cols] = part
    return logits
