"""One training step of a GPT-2 model with the simulator's fp32 kernels: loss, gradients, AdamW.

The loss is the causal-LM loss transformers computes with ``labels = input_ids``: the mean over every predicted
token of the global batch (position ``s`` predicts token ``s + 1``). Gradients are keyed by Hugging Face
parameter names (``transformer.h.0.attn.c_attn.weight``...; the tied LM head is ``transformer.wte.weight``,
as in ``model.named_parameters()``). Micro-batches are processed one after another and their gradients summed,
each scaled by ``1 / predicted tokens of the global batch``, so accumulation gives the big batch's gradient.

Layout follows the forward kernels: activations ``[tokens, features]``, matrices ``[in, out]`` (GPT-2's Conv1D
layout), attention per (sequence, head) with the ``1 / sqrt(head_dim)`` scale inside the softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..kernels import causal_softmax, embedding, gelu, gemm, layernorm, round_to
from ..kernels.backward import (
    adamw_step,
    causal_lm_targets,
    causal_softmax_backward,
    clip_grad_norm,
    cross_entropy,
    embedding_backward,
    gelu_backward,
    layernorm_backward,
)
from .checkpoint import _PREFIX
from .config import ConfigError
from .tokens import check_token_ids
from .weights import HF_LAYER_NAMES, HF_TOP_NAMES, LayerWeights, ModelWeights


@dataclass(frozen=True)
class AdamWConfig:
    """The Cerebras-GPT recipe's optimizer (training.md section 1): AdamW, betas 0.9/0.95, eps 1e-8, weight
    decay 0.1 on every parameter, global-norm clipping at 1.0."""

    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0


def hf_param_names(weights: ModelWeights) -> dict[str, str]:
    """``named_arrays`` name -> Hugging Face parameter name (GPT-2, tied head: no ``lm_head.weight``)."""
    out = {f: _PREFIX + hf for f, hf in HF_TOP_NAMES.items()}
    for i in range(len(weights.layers)):
        out |= {f"layers[{i}].{f}": f"{_PREFIX}h.{i}.{hf}" for f, hf in HF_LAYER_NAMES.items()}
    return out


def _bias_add(y: np.ndarray, b: np.ndarray) -> np.ndarray:
    y += b
    return y


def _plain(mm):
    """``weight_matmul(name, a, b, bias=None)`` by the plain matmul ``mm`` (the name unused)."""
    return lambda name, a, b, bias=None: mm(a, b) if bias is None else _bias_add(mm(a, b), bias)


class WholeTensorOps:
    """The step's ops other than the weight matmuls, on whole tensors: each layer's causal self-attention
    (``attention_forward(block, qkv)`` returns the context ``[tokens, d]`` and the probabilities the backward
    keeps, ``attention_backward(block, qkv, probs, dctx)`` returns ``dqkv``), the LayerNorm backward, the bias
    gradients (row sums) and the loss. The simulator passes a subclass that runs them on the mapping's tile
    blocks (:class:`wse_sim.sim.train_numerics.PlanOps`); the names (the forward graph's op names: ``layer0``,
    ``layer0.ln_2``, ``layer0.fc``, ``head.lm_head``) say which op's partition applies (unused here)."""

    def __init__(self, mm, batch: int, seq: int, n_head: int):
        self.mm, self.batch, self.seq, self.n_head = mm, batch, seq, n_head

    def _heads(self, d: int):
        dh = d // self.n_head
        for b in range(self.batch):
            rows = slice(b * self.seq, (b + 1) * self.seq)
            for h in range(self.n_head):
                yield b, h, rows, tuple(slice(o + h * dh, o + (h + 1) * dh) for o in (0, d, 2 * d))

    def attention_forward(self, block: str, qkv: np.ndarray):
        mm, d = self.mm, qkv.shape[1] // 3
        scale = 1.0 / math.sqrt(d // self.n_head)
        probs = np.empty((self.batch, self.n_head, self.seq, self.seq), np.float32)
        ctx = np.empty((qkv.shape[0], d), np.float32)
        for b, h, rows, (cq, ck, cv) in self._heads(d):
            probs[b, h] = causal_softmax(mm(qkv[rows, cq], qkv[rows, ck].T), scale)
            ctx[rows, cq] = mm(probs[b, h], qkv[rows, cv])
        return ctx, probs

    def attention_backward(self, block: str, qkv: np.ndarray, probs, dctx: np.ndarray) -> np.ndarray:
        mm, d = self.mm, qkv.shape[1] // 3
        scale = 1.0 / math.sqrt(d // self.n_head)
        dqkv = np.empty_like(qkv)
        for b, h, rows, (cq, ck, cv) in self._heads(d):
            p, dc = probs[b, h], np.ascontiguousarray(dctx[rows, cq])
            dqkv[rows, cv] = mm(p.T, dc)
            ds = causal_softmax_backward(p, mm(dc, qkv[rows, cv].T), scale)
            dqkv[rows, cq] = mm(ds, qkv[rows, ck])
            dqkv[rows, ck] = mm(ds.T, qkv[rows, cq])
        return dqkv

    def layernorm_backward(self, name: str, x: np.ndarray, gamma: np.ndarray, eps: float, dy: np.ndarray):
        """``(dx, dgamma, dbeta)`` of LayerNorm op ``name``."""
        return layernorm_backward(x, gamma, eps, dy)

    def bias_grad(self, name: str, dy: np.ndarray) -> np.ndarray:
        """The bias gradient of weight op ``name``: ``dy`` summed over its rows (tokens)."""
        return dy.sum(axis=0, dtype=np.float32)

    def cross_entropy(self, name: str, logits: np.ndarray, targets: np.ndarray, scale: float):
        """``(summed loss, dlogits)`` of the logits of op ``name`` (see :func:`~..kernels.backward.cross_entropy`)."""
        return cross_entropy(logits, targets, scale)


def _layer_forward(x: np.ndarray, w: LayerWeights, eps: float, act: str, wmm, ops, prefix: str):
    """One block on ``x [tokens, d]``; returns the output and what the backward pass keeps. ``wmm(name, a, b,
    bias)`` runs the weight matmuls, named as the forward graph's ops (``<prefix>.qkv``...), ``ops`` the
    attention (a :class:`WholeTensorOps`)."""
    h1 = layernorm(x, w.ln1_g, w.ln1_b, eps)
    qkv = wmm(f"{prefix}.qkv", h1, w.w_qkv, w.b_qkv)
    ctx, probs = ops.attention_forward(prefix, qkv)
    x_mid = x + wmm(f"{prefix}.attn_proj", ctx, w.w_attn_proj, w.b_attn_proj)
    h2 = layernorm(x_mid, w.ln2_g, w.ln2_b, eps)
    f = wmm(f"{prefix}.fc", h2, w.w_fc, w.b_fc)
    g = gelu(f, act)
    out = x_mid + wmm(f"{prefix}.fc_proj", g, w.w_fc_proj, w.b_fc_proj)
    return out, (x, h1, qkv, probs, ctx, x_mid, h2, f, g)


def _layer_backward(dout: np.ndarray, w: LayerWeights, saved, eps: float, act: str, grads: dict[str, np.ndarray],
                    wmm, ops, prefix: str) -> np.ndarray:
    """Add the block's weight gradients into ``grads`` (field names) and return ``dx``. ``wmm(name, a, b)``
    runs the weight matmuls' gradients, named as the backward graph's ops (``<prefix>.fc.dgrad``...)."""
    x, h1, qkv, probs, ctx, x_mid, h2, f, g = saved
    # MLP: out = x_mid + gelu(h2 W_fc + b) W_proj + b
    grads["w_fc_proj"] += wmm(f"{prefix}.fc_proj.wgrad", g.T, dout)
    grads["b_fc_proj"] += ops.bias_grad(f"{prefix}.fc_proj", dout)
    df = gelu_backward(f, wmm(f"{prefix}.fc_proj.dgrad", dout, w.w_fc_proj.T), act)
    grads["w_fc"] += wmm(f"{prefix}.fc.wgrad", h2.T, df)
    grads["b_fc"] += ops.bias_grad(f"{prefix}.fc", df)
    dh2 = wmm(f"{prefix}.fc.dgrad", df, w.w_fc.T)
    dx_ln, dg, db = ops.layernorm_backward(f"{prefix}.ln_2", x_mid, w.ln2_g, eps, dh2)
    grads["ln2_g"] += dg
    grads["ln2_b"] += db
    dx_mid = dout + dx_ln
    # attention: x_mid = x + attn(ln1(x)) W_o + b_o
    grads["w_attn_proj"] += wmm(f"{prefix}.attn_proj.wgrad", ctx.T, dx_mid)
    grads["b_attn_proj"] += ops.bias_grad(f"{prefix}.attn_proj", dx_mid)
    dctx = wmm(f"{prefix}.attn_proj.dgrad", dx_mid, w.w_attn_proj.T)
    dqkv = ops.attention_backward(prefix, qkv, probs, dctx)
    grads["w_qkv"] += wmm(f"{prefix}.qkv.wgrad", h1.T, dqkv)
    grads["b_qkv"] += ops.bias_grad(f"{prefix}.qkv", dqkv)
    dh1 = wmm(f"{prefix}.qkv.dgrad", dqkv, w.w_qkv.T)
    dx_ln, dg, db = ops.layernorm_backward(f"{prefix}.ln_1", x, w.ln1_g, eps, dh1)
    grads["ln1_g"] += dg
    grads["ln1_b"] += db
    return dx_mid + dx_ln


@dataclass
class StepResult:
    loss: float  # mean causal-LM loss over the global batch
    grads: dict[str, np.ndarray]  # Hugging Face name -> gradient (float32, HF layout)
    predicted_tokens: int
    grad_norm: float | None = None  # global norm before clipping, when an optimizer step ran
    extras: dict = field(default_factory=dict)


def _check(weights: ModelWeights) -> None:
    cfg = weights.config
    if cfg.is_llama or weights.lm_head is not None or weights.wpe is None:
        raise ConfigError("training numerics cover GPT-2 models with a tied LM head only")


def mixed_precision_matmul(precision: str):
    """The matmul of a ``precision`` run: fp32 as is; ``bf16``/``fp16`` as torch autocast runs a matmul: operands
    rounded to the 16-bit format, fp32 accumulation, the product rounded to it. Everything else (norms, softmax,
    GELU, the loss, gradient accumulation, AdamW on fp32 master weights) stays fp32."""
    if precision == "fp32":
        return gemm

    def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return round_to(gemm(round_to(np.ascontiguousarray(a), precision), round_to(np.ascontiguousarray(b),
                                                                                    precision)), precision)

    return mm


def loss_and_grads(weights: ModelWeights, token_ids: np.ndarray, micro_batch: int | None = None,
                   global_predicted: int | None = None, precision: str = "fp32",
                   weight_matmul=None, ops=None) -> StepResult:
    """The causal-LM loss of ``token_ids [batch, seq]`` (labels = input ids) and its gradients, fp32.

    ``micro_batch`` sequences at a time (default: all), gradients accumulated in fp32 in micro-batch order.
    ``global_predicted``: the predicted tokens of the whole global batch when this is one replica's share (the
    gradient is then this share's part of the global mean; ``loss`` stays this share's own mean).
    ``weight_matmul(name, a, b, bias=None)``: runs every matmul with a weight: the forward's (``a @ W + bias``,
    named as the ops of ``lower_model``: ``layer0.qkv``, ``head.lm_head``) and its gradients (``dX = dY W^T``,
    ``dW = X^T dY``, named as the ops of :func:`~.training_graph.lower_backward`: ``layer0.fc.wgrad``,
    ``head.lm_head.dgrad``); the simulator passes one that executes the op's mapping plan. Default: the
    precision's plain matmul. ``ops``: the attention (forward and backward), LayerNorm backward, bias
    gradients and loss (a :class:`WholeTensorOps` for ``micro_batch`` sequences); the simulator passes one that
    runs the mapping's tile blocks. Default: :class:`WholeTensorOps` with the precision's matmul.
    """
    _check(weights)
    cfg = weights.config
    ids = check_token_ids(token_ids, cfg)
    batch, seq = ids.shape
    mb = batch if micro_batch is None else int(micro_batch)
    if mb < 1 or batch % mb:
        raise ValueError(f"micro-batch {mb} must divide the batch {batch}")
    predicted = batch * (seq - 1)
    if predicted == 0:
        raise ValueError("a training step needs sequences of at least 2 tokens")
    scale = 1.0 / (global_predicted or predicted)
    mm = mixed_precision_matmul(precision)
    wmm = weight_matmul or _plain(mm)
    ops = ops or WholeTensorOps(mm, mb, seq, cfg.n_head)
    eps, act = cfg.layer_norm_epsilon, cfg.activation
    layer_grads = [{f: np.zeros_like(getattr(lw, f)) for f in HF_LAYER_NAMES} for lw in weights.layers]
    dwte = np.zeros_like(weights.wte)
    dwpe = np.zeros_like(weights.wpe)
    dlnf_g = np.zeros_like(weights.lnf_g)
    dlnf_b = np.zeros_like(weights.lnf_b)
    loss_sum = 0.0
    for b0 in range(0, batch, mb):
        mids = ids[b0:b0 + mb]
        x = embedding(mids, weights.wte, weights.wpe)
        saved = []
        for i, lw in enumerate(weights.layers):
            x, keep = _layer_forward(x, lw, eps, act, wmm, ops, f"layer{i}")
            saved.append(keep)
        hf = layernorm(x, weights.lnf_g, weights.lnf_b, eps)
        logits = wmm("head.lm_head", hf, weights.wte.T)
        part, dlogits = ops.cross_entropy("head.lm_head", logits, causal_lm_targets(mids), scale)
        loss_sum += part
        # tied head: logits = hf wte^T
        dwte += wmm("head.lm_head.wgrad", hf.T, dlogits).T
        dx, dg, db = ops.layernorm_backward("head.ln_f", x, weights.lnf_g, eps,
                                            wmm("head.lm_head.dgrad", dlogits, weights.wte))
        dlnf_g += dg
        dlnf_b += db
        for i in reversed(range(len(weights.layers))):
            dx = _layer_backward(dx, weights.layers[i], saved[i], eps, act, layer_grads[i], wmm, ops,
                                 f"layer{i}")
        embedding_backward(mids, dx, dwte, dwpe)
    grads = {_PREFIX + "wte.weight": dwte, _PREFIX + "wpe.weight": dwpe,
             _PREFIX + "ln_f.weight": dlnf_g, _PREFIX + "ln_f.bias": dlnf_b}
    for i, lg in enumerate(layer_grads):
        grads |= {f"{_PREFIX}h.{i}.{HF_LAYER_NAMES[f]}": g for f, g in lg.items()}
    return StepResult(loss=loss_sum / predicted, grads=grads, predicted_tokens=predicted,
                      extras={"loss_sum": loss_sum})


def sum_grads(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Element-wise sum of gradient dicts in list order (a data-parallel all-reduce, in SwarmX's tree order the
    caller chooses)."""
    out = {k: v.copy() for k, v in parts[0].items()}
    for p in parts[1:]:
        for k, v in p.items():
            out[k] += v
    return out


class AdamW:
    """AdamW state for a :class:`ModelWeights` (moments keyed by HF name), as MemoryX keeps it."""

    def __init__(self, weights: ModelWeights, config: AdamWConfig | None = None):
        _check(weights)
        self.config = config or AdamWConfig()
        self.names = hf_param_names(weights)
        arrays = dict(weights.named_arrays())
        self.params = {hf: np.array(arrays[f], dtype=np.float32, order="C") for f, hf in self.names.items()}
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.step_count = 0
        self.config_model = weights.config

    def step(self, grads: dict[str, np.ndarray]) -> float:
        """Clip (a copy of) ``grads`` to the global norm, update every parameter; returns the pre-clip norm."""
        c = self.config
        g = {k: np.array(grads[k], dtype=np.float32, order="C") for k in self.params}
        norm = clip_grad_norm(list(g.values()), c.max_grad_norm) if c.max_grad_norm is not None else float("nan")
        self.step_count += 1
        for k, p in self.params.items():
            adamw_step(p, g[k], self.m[k], self.v[k], self.step_count, c.lr, c.betas, c.eps, c.weight_decay)
        return norm

    def weights(self) -> ModelWeights:
        """The current parameters as ModelWeights (tied head)."""
        by_field = {f: self.params[hf] for f, hf in self.names.items()}
        layers = tuple(
            LayerWeights(**{f: by_field[f"layers[{i}].{f}"] for f in HF_LAYER_NAMES})
            for i in range(self.config_model.n_layer)
        )
        return ModelWeights(config=self.config_model, wte=by_field["wte"], wpe=by_field["wpe"], layers=layers,
                            lnf_g=by_field["lnf_g"], lnf_b=by_field["lnf_b"])


def train_step(weights: ModelWeights, token_ids: np.ndarray, config: AdamWConfig | None = None,
               micro_batch: int | None = None, systems: int = 1, precision: str = "fp32",
               weight_matmul=None, ops=None) -> tuple[StepResult, ModelWeights]:
    """One optimizer step: ``systems`` data-parallel replicas each accumulate their share of the batch in
    micro-batches, the gradients are summed (SwarmX), clipped and applied by AdamW (MemoryX)."""
    ids = np.asarray(token_ids)
    if ids.shape[0] % systems:
        raise ValueError(f"batch {ids.shape[0]} does not split over {systems} systems")
    per = ids.shape[0] // systems
    predicted = ids.shape[0] * (ids.shape[1] - 1)
    parts = []
    loss = 0.0
    for s in range(systems):
        r = loss_and_grads(weights, ids[s * per:(s + 1) * per], micro_batch, global_predicted=predicted,
                           precision=precision, weight_matmul=weight_matmul, ops=ops)
        parts.append(r.grads)
        loss += r.extras["loss_sum"] / predicted
    grads = sum_grads(parts)
    opt = AdamW(weights, config)
    norm = opt.step(grads)
    return StepResult(loss=loss, grads=grads, predicted_tokens=predicted, grad_norm=norm), opt.weights()
