"""Lowering a decoder model to operator graphs: one networkx DiGraph per block (embed, each layer, head).

Every node carries an :class:`OpSpec` with its shapes, FLOPs and bytes. Shapes use a matmul view
``[groups] x (m x k) @ (k x n)``: a dense layer has ``groups = 1, m = batch*seq``; attention has one group
per (batch, head). Elementwise ops have ``k = 0`` and act on an ``m x n`` array.

Two phases: ``prefill`` runs ``seq`` tokens per sequence from position 0; ``decode`` runs one new token per
sequence at position ``context``, attending to a KV cache of ``context`` earlier tokens (op ``attn_decode``,
which also appends the new token's key and value to the cache). A decode graph at another context is derived
from a lowered one (:func:`at_context`): serving lowers the model once per run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property

import networkx as nx

from ..precision import BYTES_PER_ELEM
from .config import ConfigError, ModelConfig


class OpKind(StrEnum):
    EMBEDDING = "embedding"
    LAYERNORM = "layernorm"
    MATMUL = "matmul"
    ATTN_SCORES = "attn_scores"
    SOFTMAX = "softmax"
    ATTN_CONTEXT = "attn_context"
    GELU = "gelu"
    RESIDUAL = "residual"
    RMSNORM = "rmsnorm"
    SWIGLU = "swiglu"  # silu(gate) * up
    ATTN_DECODE = "attn_decode"  # one query per sequence against the KV cache (scores, softmax, context)

PHASES = ("prefill", "decode")

# FLOPs per element of the non-matmul ops (conventional counts; they matter little next to the matmuls). One table:
# the graph's FLOPs (and so MFU) and the mappings' compute cycles (wse_sim.mapping.layout) both read it.
FLOPS_PER_ELEM: dict[OpKind, int] = {
    OpKind.EMBEDDING: 1,  # token + position add
    OpKind.LAYERNORM: 8,  # sum, square, sum of squares; centre, normalise (2), scale, shift
    # Square, add to the row's sum of squares; times the row's 1 / rms, times the gain. The mean, + eps and rsqrt
    # are once per row of d elements: nothing per element. (LayerNorm's centring has no counterpart here.)
    OpKind.RMSNORM: 4,
    OpKind.SOFTMAX: 5,  # scale, max, exp, sum, divide
    OpKind.GELU: 8,
    OpKind.SWIGLU: 6,  # sigmoid (exp, add, divide), two products
    OpKind.RESIDUAL: 1,
}
# Norms take two passes over a row, the row's statistics all-reduced between them: these many of the ops above
# come before (the sums), the rest after.
NORM_STATS_FLOPS_PER_ELEM: dict[OpKind, int] = {OpKind.LAYERNORM: 3, OpKind.RMSNORM: 2}
ROPE_FLOPS_PER_ELEM = 3  # two products and an add per rotated element (part of the attention ops)


@dataclass(frozen=True)
class OpSpec:
    """One operator of the lowered model, in the matmul view described in the module docstring."""

    name: str
    kind: OpKind
    block: str
    layer: int
    groups: int
    m: int
    k: int
    n: int
    flops: int
    weight_bytes: int
    act_in_bytes: int
    act_out_bytes: int
    weight: str | None = None  # attribute of LayerWeights, or "wte" (tied LM head, used transposed)
    bias: str | None = None
    gamma: str | None = None  # LayerNorm scale/shift attribute names
    beta: str | None = None
    inputs: tuple[str, ...] = ()  # names of the tensors this op reads: other ops' names, or "tokens"
    grad: str | None = None  # backward matmuls (training): "dgrad" (dX = dY W^T) or "wgrad" (dW = X^T dY)

    @property
    def is_matmul(self) -> bool:
        return self.kind in (OpKind.MATMUL, OpKind.ATTN_SCORES, OpKind.ATTN_CONTEXT)

    @property
    def macs(self) -> int:
        if self.kind == OpKind.ATTN_DECODE:  # q.k over the cache, then probabilities times V
            return 2 * self.groups * self.m * self.k * self.n
        return self.groups * self.m * self.k * self.n if self.is_matmul else 0


@dataclass(frozen=True)
class WorkloadGraph:
    """The lowered model: blocks in program order, each an operator DiGraph (node attr ``op``)."""

    config: ModelConfig | None  # None for a single-operator workload (lower_gemm)
    batch: int
    seq: int  # tokens per sequence in this pass (1 for decode)
    precision: str
    blocks: tuple[tuple[str, nx.DiGraph], ...]
    phase: str = "prefill"
    context: int = 0  # decode: tokens already in the KV cache (the new token's position)

    @property
    def cache_positions(self) -> int:
        """Positions in the KV cache after this pass (per sequence)."""
        return self.context + self.seq

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def ops(self) -> Iterator[OpSpec]:
        """All operators in a valid execution order (topological within each block)."""
        return iter(self.op_order)

    @cached_property
    def op_order(self) -> tuple[OpSpec, ...]:
        """:meth:`ops` as a tuple, sorted once (the block graphs are not changed after lowering)."""
        out = []
        for _, g in self.blocks:
            out += (g.nodes[node]["op"] for node in nx.lexicographical_topological_sort(
                g, key=lambda n: g.nodes[n]["order"]))
        return tuple(out)

    @property
    def total_flops(self) -> int:
        return sum(op.flops for op in self.ops())

    @property
    def streamed_weight_bytes(self) -> int:
        return sum(op.weight_bytes for op in self.ops())


def _matmul(name, block, layer, m, k, n, b, weight, bias, inputs, groups=1) -> OpSpec:
    has_bias = bias is not None
    w_elems = k * n + (n if has_bias else 0) if weight else 0
    return OpSpec(
        name=name,
        kind=OpKind.MATMUL,
        block=block,
        layer=layer,
        groups=groups,
        m=m,
        k=k,
        n=n,
        flops=groups * (2 * m * k * n + (m * n if has_bias else 0)),
        weight_bytes=w_elems * b,
        act_in_bytes=groups * m * k * b,
        act_out_bytes=groups * m * n * b,
        weight=weight,
        bias=bias,
        inputs=inputs,
    )


def _elementwise(name, kind, block, layer, m, n, b, inputs, gamma=None, beta=None, groups=1):
    """An ``m x n`` elementwise op at :data:`FLOPS_PER_ELEM` of its kind."""
    w_bytes = ((gamma is not None) + (beta is not None)) * n * b
    return OpSpec(
        name=name,
        kind=kind,
        block=block,
        layer=layer,
        groups=groups,
        m=m,
        k=0,
        n=n,
        flops=groups * m * n * FLOPS_PER_ELEM[kind],
        weight_bytes=w_bytes,
        act_in_bytes=len(inputs) * groups * m * n * b,
        act_out_bytes=groups * m * n * b,
        gamma=gamma,
        beta=beta,
        inputs=inputs,
    )


def _block_graph(block: str, ops: list[OpSpec]) -> nx.DiGraph:
    """Nodes are ops; an edge A -> B when B reads A's output (inputs from other blocks have no edge)."""
    g = nx.DiGraph(name=block)
    for i, op in enumerate(ops):
        g.add_node(op.name, op=op, order=i)
    for op in ops:
        for src in op.inputs:
            if src in g:
                g.add_edge(src, op.name)
    return g


def _check_run(config: ModelConfig, batch: int, seq: int, precision: str, phase: str, context: int) -> None:
    if not isinstance(batch, int) or batch <= 0:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    if not isinstance(seq, int) or seq <= 0:
        raise ConfigError(f"seq must be a positive integer, got {seq!r}")
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
    if not isinstance(context, int) or context < 0:
        raise ConfigError(f"context must be a non-negative integer, got {context!r}")
    if phase == "decode" and seq != 1:
        raise ConfigError("decode runs one new token per sequence (seq 1)")
    if phase == "prefill" and context:
        raise ConfigError("prefill starts at position 0 (context 0)")
    if context + seq > config.n_positions:
        what = f"sequence length {seq}" if not context else f"context {context} plus {seq} new token(s)"
        raise ConfigError(f"{what} exceeds the context of {config.name} ({config.n_positions} positions)")
    if precision not in BYTES_PER_ELEM:
        raise ConfigError(f"unknown precision {precision!r} (known: {', '.join(BYTES_PER_ELEM)})")


def _attention(config: ModelConfig, blk: str, layer: int, p: str, batch: int, seq: int, phase: str, context: int,
               b: int) -> list[OpSpec]:
    """Prefill: scores, causal softmax and context per (sequence, head). Decode: ``attn_decode`` over the cache."""
    h, dh, d = config.n_head, config.head_dim, config.d_model
    tokens = batch * seq
    rope = ROPE_FLOPS_PER_ELEM * tokens * (d + config.kv_width) if config.is_llama else 0
    if phase == "decode":
        keys = context + 1  # the cache and the new token itself
        return [OpSpec(
            name=p + "attn", kind=OpKind.ATTN_DECODE, block=blk, layer=layer, groups=batch * h, m=1, k=dh, n=keys,
            flops=batch * h * keys * (4 * dh + FLOPS_PER_ELEM[OpKind.SOFTMAX]) + rope, weight_bytes=0,
            act_in_bytes=tokens * config.qkv_width * b + batch * keys * 2 * config.kv_width * b,
            act_out_bytes=tokens * d * b, inputs=(p + "qkv",),
        )]
    return [
        OpSpec(
            name=p + "attn_scores", kind=OpKind.ATTN_SCORES, block=blk, layer=layer,
            groups=batch * h, m=seq, k=dh, n=seq,
            flops=2 * batch * h * seq * seq * dh + rope, weight_bytes=0,
            act_in_bytes=tokens * (d + config.kv_width) * b, act_out_bytes=batch * h * seq * seq * b,
            inputs=(p + "qkv",),
        ),
        _elementwise(p + "softmax", OpKind.SOFTMAX, blk, layer, seq, seq, b,
                     (p + "attn_scores",), groups=batch * h),
        OpSpec(
            name=p + "attn_context", kind=OpKind.ATTN_CONTEXT, block=blk, layer=layer,
            groups=batch * h, m=seq, k=seq, n=dh,
            flops=2 * batch * h * seq * seq * dh, weight_bytes=0,
            act_in_bytes=batch * h * seq * seq * b + tokens * config.kv_width * b, act_out_bytes=tokens * d * b,
            inputs=(p + "softmax", p + "qkv"),
        ),
    ]


def _layer_ops(config: ModelConfig, layer: int, block_in: str, batch: int, seq: int, phase: str, context: int,
               b: int) -> list[OpSpec]:
    """One decoder block: pre-norm attention and MLP, each with a residual add."""
    d, f = config.d_model, config.d_ff
    tokens = batch * seq
    blk = f"layer{layer}"
    p = f"{blk}."
    llama = config.is_llama
    attn_out = p + ("attn" if phase == "decode" else "attn_context")

    def norm(name, src, gamma, beta):
        if llama:
            return _elementwise(p + name, OpKind.RMSNORM, blk, layer, tokens, d, b, (src,),
                                gamma=gamma)
        return _elementwise(p + name, OpKind.LAYERNORM, blk, layer, tokens, d, b, (src,),
                            gamma=gamma, beta=beta)

    ops = [
        norm("ln_1", block_in, "ln1_g", "ln1_b"),
        _matmul(p + "qkv", blk, layer, tokens, d, config.qkv_width, b, "w_qkv", "b_qkv" if config.qkv_bias else None,
                (p + "ln_1",)),
        *_attention(config, blk, layer, p, batch, seq, phase, context, b),
        _matmul(p + "attn_proj", blk, layer, tokens, d, d, b, "w_attn_proj", None if llama else "b_attn_proj",
                (attn_out,)),
        _elementwise(p + "residual_1", OpKind.RESIDUAL, blk, layer, tokens, d, b,
                     (block_in, p + "attn_proj")),
        norm("ln_2", p + "residual_1", "ln2_g", "ln2_b"),
    ]
    if llama:
        ops += [
            _matmul(p + "gate", blk, layer, tokens, d, f, b, "w_gate", None, (p + "ln_2",)),
            _matmul(p + "up", blk, layer, tokens, d, f, b, "w_up", None, (p + "ln_2",)),
            _elementwise(p + "swiglu", OpKind.SWIGLU, blk, layer, tokens, f, b,
                         (p + "gate", p + "up")),
            _matmul(p + "down", blk, layer, tokens, f, d, b, "w_down", None, (p + "swiglu",)),
        ]
    else:
        ops += [
            _matmul(p + "fc", blk, layer, tokens, d, f, b, "w_fc", "b_fc", (p + "ln_2",)),
            _elementwise(p + "gelu", OpKind.GELU, blk, layer, tokens, f, b, (p + "fc",)),
            _matmul(p + "fc_proj", blk, layer, tokens, f, d, b, "w_fc_proj", "b_fc_proj", (p + "gelu",)),
        ]
    ops.append(_elementwise(p + "residual_2", OpKind.RESIDUAL, blk, layer, tokens, d, b,
                            (p + "residual_1", ops[-1].name)))
    return ops


def lower_model(config: ModelConfig, batch: int, seq: int, precision: str = "fp32", phase: str = "prefill",
                context: int = 0) -> WorkloadGraph:
    """Lower ``config`` for one forward pass: ``batch`` sequences of ``seq`` new tokens after ``context`` cached
    ones (prefill: ``context = 0``; decode: ``seq = 1``)."""
    _check_run(config, batch, seq, precision, phase, context)
    b = BYTES_PER_ELEM[precision]
    d, v = config.d_model, config.vocab_size
    tokens = batch * seq
    gathered = 1 if config.is_llama else 2  # token rows (and position rows when positions are learned)

    embed = OpSpec(
        name="embed",
        kind=OpKind.EMBEDDING,
        block="embed",
        layer=-1,
        groups=1,
        m=tokens,
        k=0,
        n=d,
        flops=tokens * d * FLOPS_PER_ELEM[OpKind.EMBEDDING],
        weight_bytes=gathered * tokens * d * b,  # the gathered rows of wte (and wpe)
        act_in_bytes=tokens * 4,  # int32 token ids
        act_out_bytes=tokens * d * b,
        weight="wte",
        inputs=("tokens",),
    )
    blocks: list[tuple[str, nx.DiGraph]] = [("embed", _block_graph("embed", [embed]))]
    block_in = "embed"
    for layer in range(config.n_layer):
        ops = _layer_ops(config, layer, block_in, batch, seq, phase, context, b)
        blocks.append((ops[0].block, _block_graph(ops[0].block, ops)))
        block_in = ops[-1].name

    n = config.n_layer
    if config.is_llama:
        final = _elementwise("head.ln_f", OpKind.RMSNORM, "head", n, tokens, d, b,
                             (block_in,), gamma="lnf_g")
    else:
        final = _elementwise("head.ln_f", OpKind.LAYERNORM, "head", n, tokens, d, b,
                             (block_in,), gamma="lnf_g", beta="lnf_b")
    # The LM head's weight is "wte" of block "head": the token embedding (tied, used transposed) or lm_head.
    head_ops = [final, _matmul("head.lm_head", "head", n, tokens, d, v, b, "wte", None, ("head.ln_f",))]
    blocks.append(("head", _block_graph("head", head_ops)))
    return WorkloadGraph(config=config, batch=batch, seq=seq, precision=precision, blocks=tuple(blocks),
                         phase=phase, context=context)


def at_context(graph: WorkloadGraph, context: int) -> WorkloadGraph:
    """Decode graph ``graph`` at ``context`` cached tokens: equal to lowering its model again for that context.

    Only the attention op (``attn_decode``, its keys, FLOPs and cache bytes) depends on the context, so each
    layer's block graph is copied with that node's op re-derived, and the other blocks are shared: a serving run
    lowers the model once and derives every decode step's graph from it."""
    config = graph.config
    if graph.phase != "decode" or config is None:
        raise ValueError(f"at_context derives decode graphs of a model, not a {graph.phase} graph")
    _check_run(config, graph.batch, graph.seq, graph.precision, "decode", context)
    b = BYTES_PER_ELEM[graph.precision]
    blocks, new = [], {}
    for name, g in graph.blocks:
        attn = [(node, op) for node, op in g.nodes(data="op") if op.kind == OpKind.ATTN_DECODE]
        if attn:
            g = g.copy()
            for node, op in attn:
                new[node], = _attention(config, op.block, op.layer, op.block + ".", graph.batch, graph.seq,
                                        "decode", context, b)
                g.nodes[node]["op"] = new[node]
        blocks.append((name, g))
    out = replace(graph, blocks=tuple(blocks), context=context)
    out.__dict__["op_order"] = tuple(new.get(op.name, op) for op in graph.op_order)  # same order, no re-sort
    return out


def lower_gemm(m: int, k: int, n: int, precision: str = "fp32", bias: bool = False) -> WorkloadGraph:
    """One matmul ``y = A @ B (+ bias)`` as a workload: input tensor ``A`` ``[m, k]``, weight ``gemm.B``
    ``[k, n]``. ``m = 1`` is a GEMV. No model config: there is no residual stream to keep resident."""
    for name, v in (("m", m), ("k", k), ("n", n)):
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(f"gemm {name} must be a positive integer, got {v!r}")
    if precision not in BYTES_PER_ELEM:
        raise ConfigError(f"unknown precision {precision!r} (known: {', '.join(BYTES_PER_ELEM)})")
    op = _matmul("gemm", "gemm", 0, m, k, n, BYTES_PER_ELEM[precision], "B", "bias" if bias else None, ("A",))
    block = ("gemm", _block_graph("gemm", [op]))
    return WorkloadGraph(config=None, batch=1, seq=m, precision=precision, blocks=(block,))
