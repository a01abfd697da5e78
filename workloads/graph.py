"""Lowering a GPT-style model to operator graphs: one networkx DiGraph per block (embed, each layer, head).

Every node carries an :class:`OpSpec` with its shapes, FLOPs and bytes. Shapes use a matmul view
``[groups] x (m x k) @ (k x n)``: a dense layer has ``groups = 1, m = batch*seq``; attention has one group
per (batch, head). Elementwise ops have ``k = 0`` and act on an ``m x n`` array.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import networkx as nx

from .config import ConfigError, ModelConfig

# FLOPs per element of the non-matmul ops (conventional counts; they matter little next to the matmuls).
LAYERNORM_FLOPS_PER_ELEM = 8  # mean, variance, normalise, scale, shift
SOFTMAX_FLOPS_PER_ELEM = 5  # scale, max, exp, sum, divide
GELU_FLOPS_PER_ELEM = 8
RESIDUAL_FLOPS_PER_ELEM = 1
EMBEDDING_FLOPS_PER_ELEM = 1  # token + position add

BYTES_PER_ELEM = {"fp32": 4, "fp16": 2, "bf16": 2}


class OpKind(StrEnum):
    EMBEDDING = "embedding"
    LAYERNORM = "layernorm"
    MATMUL = "matmul"
    ATTN_SCORES = "attn_scores"
    SOFTMAX = "softmax"
    ATTN_CONTEXT = "attn_context"
    GELU = "gelu"
    RESIDUAL = "residual"


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

    @property
    def is_matmul(self) -> bool:
        return self.kind in (OpKind.MATMUL, OpKind.ATTN_SCORES, OpKind.ATTN_CONTEXT)

    @property
    def macs(self) -> int:
        return self.groups * self.m * self.k * self.n if self.is_matmul else 0


@dataclass(frozen=True)
class WorkloadGraph:
    """The lowered model: blocks in program order, each an operator DiGraph (node attr ``op``)."""

    config: ModelConfig | None  # None for a single-operator workload (lower_gemm)
    batch: int
    seq: int
    precision: str
    blocks: tuple[tuple[str, nx.DiGraph], ...]

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def ops(self) -> Iterator[OpSpec]:
        """All operators in a valid execution order (topological within each block)."""
        for _, g in self.blocks:
            for node in nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"]):
                yield g.nodes[node]["op"]

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


def _elementwise(name, kind, block, layer, m, n, b, per_elem, inputs, gamma=None, beta=None, groups=1):
    w_bytes = 2 * n * b if gamma else 0
    return OpSpec(
        name=name,
        kind=kind,
        block=block,
        layer=layer,
        groups=groups,
        m=m,
        k=0,
        n=n,
        flops=groups * m * n * per_elem,
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


def lower_model(config: ModelConfig, batch: int, seq: int, precision: str = "fp32") -> WorkloadGraph:
    """Lower ``config`` for a forward pass over ``batch`` sequences of ``seq`` tokens."""
    if not isinstance(batch, int) or batch <= 0:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    if not isinstance(seq, int) or seq <= 0:
        raise ConfigError(f"seq must be a positive integer, got {seq!r}")
    if seq > config.n_positions:
        raise ConfigError(
            f"sequence length {seq} exceeds the context of {config.name} ({config.n_positions} positions)"
        )
    if precision not in BYTES_PER_ELEM:
        raise ConfigError(f"unknown precision {precision!r} (known: {', '.join(BYTES_PER_ELEM)})")
    b = BYTES_PER_ELEM[precision]
    d, f, h, dh, v = config.d_model, config.d_ff, config.n_head, config.head_dim, config.vocab_size
    tokens = batch * seq

    embed = OpSpec(
        name="embed",
        kind=OpKind.EMBEDDING,
        block="embed",
        layer=-1,
        groups=1,
        m=tokens,
        k=0,
        n=d,
        flops=tokens * d * EMBEDDING_FLOPS_PER_ELEM,
        weight_bytes=2 * tokens * d * b,  # the gathered rows of wte and wpe
        act_in_bytes=tokens * 4,  # int32 token ids
        act_out_bytes=tokens * d * b,
        weight="wte",
        inputs=("tokens",),
    )
    blocks: list[tuple[str, nx.DiGraph]] = [("embed", _block_graph("embed", [embed]))]
    block_in = "embed"

    for layer in range(config.n_layer):
        blk = f"layer{layer}"
        p = f"{blk}."
        ops = [
            _elementwise(p + "ln_1", OpKind.LAYERNORM, blk, layer, tokens, d, b, LAYERNORM_FLOPS_PER_ELEM,
                         (block_in,), gamma="ln1_g", beta="ln1_b"),
            _matmul(p + "qkv", blk, layer, tokens, d, 3 * d, b, "w_qkv", "b_qkv", (p + "ln_1",)),
            OpSpec(
                name=p + "attn_scores", kind=OpKind.ATTN_SCORES, block=blk, layer=layer,
                groups=batch * h, m=seq, k=dh, n=seq,
                flops=2 * batch * h * seq * seq * dh, weight_bytes=0,
                act_in_bytes=2 * tokens * d * b, act_out_bytes=batch * h * seq * seq * b,
                inputs=(p + "qkv",),
            ),
            _elementwise(p + "softmax", OpKind.SOFTMAX, blk, layer, seq, seq, b, SOFTMAX_FLOPS_PER_ELEM,
                         (p + "attn_scores",), groups=batch * h),
            OpSpec(
                name=p + "attn_context", kind=OpKind.ATTN_CONTEXT, block=blk, layer=layer,
                groups=batch * h, m=seq, k=seq, n=dh,
                flops=2 * batch * h * seq * seq * dh, weight_bytes=0,
                act_in_bytes=batch * h * seq * seq * b + tokens * d * b, act_out_bytes=tokens * d * b,
                inputs=(p + "softmax", p + "qkv"),
            ),
            _matmul(p + "attn_proj", blk, layer, tokens, d, d, b, "w_attn_proj", "b_attn_proj",
                    (p + "attn_context",)),
            _elementwise(p + "residual_1", OpKind.RESIDUAL, blk, layer, tokens, d, b, RESIDUAL_FLOPS_PER_ELEM,
                         (block_in, p + "attn_proj")),
            _elementwise(p + "ln_2", OpKind.LAYERNORM, blk, layer, tokens, d, b, LAYERNORM_FLOPS_PER_ELEM,
                         (p + "residual_1",), gamma="ln2_g", beta="ln2_b"),
            _matmul(p + "fc", blk, layer, tokens, d, f, b, "w_fc", "b_fc", (p + "ln_2",)),
            _elementwise(p + "gelu", OpKind.GELU, blk, layer, tokens, f, b, GELU_FLOPS_PER_ELEM, (p + "fc",)),
            _matmul(p + "fc_proj", blk, layer, tokens, f, d, b, "w_fc_proj", "b_fc_proj", (p + "gelu",)),
            _elementwise(p + "residual_2", OpKind.RESIDUAL, blk, layer, tokens, d, b, RESIDUAL_FLOPS_PER_ELEM,
                         (p + "residual_1", p + "fc_proj")),
        ]
        blocks.append((blk, _block_graph(blk, ops)))
        block_in = p + "residual_2"

    head_ops = [
        _elementwise("head.ln_f", OpKind.LAYERNORM, "head", config.n_layer, tokens, d, b,
                     LAYERNORM_FLOPS_PER_ELEM, (block_in,), gamma="lnf_g", beta="lnf_b"),
        # The LM head reads the (tied) token embedding transposed: weight "wte" of block "head".
        _matmul("head.lm_head", "head", config.n_layer, tokens, d, v, b, "wte", None, ("head.ln_f",)),
    ]
    blocks.append(("head", _block_graph("head", head_ops)))
    return WorkloadGraph(config=config, batch=batch, seq=seq, precision=precision, blocks=tuple(blocks))


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
