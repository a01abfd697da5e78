"""Training numerics through the mapping: attention forward and backward, and the row-wise backward ops, on the
plan's tile blocks (:class:`PlanOps`; the weight matmuls run their own plans, :func:`~.numerics.run_matmul_plan`).

The weight-streaming plan's attention ops partition the work the same way forward and backward: tile column ``j``
owns the heads ``h % TC == j``, tile row ``i`` its token rows, and tile (i, j) multiplies, for each sequence its
rows overlap and each of its heads, its queries ``[lo, hi)`` against that sequence's keys ``[base, hi)`` (keys
after its last query are skipped). :func:`run_attention_plan` runs the forward scores, softmax and context
actions of those ops as the plan lists them (keeping every tile's probabilities: activations stay resident, no
recomputation); :func:`run_attention_backward` runs the four gradient products on the same blocks:

- ``dP = dC V^T`` and ``dQ = dS K`` are local to the tile (its queries' rows, all their keys): written directly;
- ``dK = dS^T Q`` and ``dV = P^T dC`` sum over query rows, i.e. over the tile rows that hold queries of the
  sequence: every tile keeps an fp32 partial for keys ``[base, hi)`` and the partials of one (sequence, head)
  are added in tile-row order (the order a reduction down the head's tile column delivers them), then rounded.

Stored values (probabilities, ``dP``, ``dS``, the gradients) are rounded to the storage precision, products and
partial sums accumulate in fp32, as :class:`~.numerics.Numerics` does for the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import gemm, round_to
from ..kernels.backward import causal_softmax_backward, cross_entropy, layernorm_backward, row_block_sum
from ..mapping.plan import ContextWrite, Free, MatmulBlock, OpPlan, Ref, split
from ..workloads.training import WholeTensorOps
from .numerics import Numerics


def run_attention_plan(scores: OpPlan, softmax: OpPlan, context: OpPlan, precision: str,
                       qkv: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One layer's attention forward from its plans: every tile's score block (:class:`MatmulBlock`, scaled and
    stored), causal softmax and context block (:class:`ContextWrite`), in plan order, on ``qkv [tokens, 3d]``.

    Returns the context ``[tokens, d]`` and the probabilities by buffer key (the plan's ``Free`` of them is
    skipped: the backward reads them)."""
    ex = Numerics.bare(precision)
    ex._put(context.op.inputs[1], qkv)
    ex.shapes[context.op.name] = (qkv.shape[0], qkv.shape[1] // 3)  # GPT-2: q, k and v each d wide
    for plan in (scores, softmax, context):
        for t in plan.tasks:
            acts = tuple(a for a in t.actions if not isinstance(a, Free))
            if acts:
                ex.run(acts)
    return ex.output(context.op.name), ex.buffers


@dataclass(frozen=True)
class AttentionBlock:
    """One tile's attention work for one sequence segment and head: queries ``q`` (rows ``[lo, hi)``), keys
    ``k`` and values ``v`` (rows ``[base, hi)``), its context block ``ctx`` and probability buffer ``probs``."""

    tile: tuple[int, int]
    probs: str
    q: Ref
    k: Ref
    v: Ref
    ctx: Ref
    scale: float

    @property
    def q_offset(self) -> int:
        return self.q.rows[0] - self.k.rows[0]


def attention_blocks(scores: OpPlan, context: OpPlan) -> list[AttentionBlock]:
    """The tile blocks of an attention op pair (forward or backward graph: the same partition), in plan order:
    the scores op's :class:`MatmulBlock` (queries, keys) joined with the context op's :class:`ContextWrite`
    (values, context block) by their probability buffer."""
    writes = {a.probs: a for t in context.tasks for a in t.actions if isinstance(a, ContextWrite)}
    out = []
    for t in scores.tasks:
        for a in t.actions:
            if isinstance(a, MatmulBlock):
                w = writes[a.out]
                k = Ref(a.b.tensor, a.b.cols, a.b.rows)  # the plan reads K^T: its transposed Ref
                out.append(AttentionBlock(t.tile, a.out, a.a, k, w.v, w.dst, a.scale))
    return out


def _block(t: np.ndarray, ref: Ref) -> np.ndarray:
    (r0, r1), (c0, c1) = ref.rows, ref.cols
    return t[r0:r1, c0:c1]


def run_attention_backward(blocks: list[AttentionBlock], precision: str, qkv: np.ndarray,
                           probs: dict[str, np.ndarray], dctx: np.ndarray) -> np.ndarray:
    """``dqkv [tokens, 3d]`` of one layer's attention given the context gradient ``dctx [tokens, d]``, block by
    block (see the module docstring): per tile block ``dP = dC V^T`` (stored), ``dS`` = the causal softmax's
    backward (scaled), ``dQ = dS K`` (written), fp32 partials ``dK = dS^T Q`` and ``dV = P^T dC``; then each
    (sequence, head)'s partials added in tile-row order and written."""
    rnd = (lambda x: x) if precision == "fp32" else (lambda x: round_to(x, precision))
    dqkv = np.zeros_like(qkv)
    partials: dict[tuple, list] = {}  # (sequence's first row, k cols, v cols) -> [(tile row, dK part, dV part)]
    for blk in blocks:
        p, dc = probs[blk.probs], np.ascontiguousarray(_block(dctx, blk.ctx))
        v, k, q = (np.ascontiguousarray(_block(qkv, r)) for r in (blk.v, blk.k, blk.q))
        dp = rnd(gemm(dc, v.T))
        ds = rnd(causal_softmax_backward(p, dp, blk.scale, blk.q_offset))
        (r0, r1), (c0, c1) = blk.q.rows, blk.q.cols
        dqkv[r0:r1, c0:c1] = rnd(gemm(ds, k))
        partials.setdefault((blk.k.rows[0], blk.k.cols, blk.v.cols), []).append(
            (blk.tile[0], gemm(np.ascontiguousarray(ds.T), q), gemm(np.ascontiguousarray(p.T), dc)))
    for (base, kc, vc), parts in partials.items():
        parts.sort(key=lambda x: x[0])  # tile-row order (stable: a tile row's own segments in plan order)
        n = max(part[1].shape[0] for part in parts)  # the keys up to the sequence's last query
        for which, cols in ((1, kc), (2, vc)):
            acc = np.zeros((n, cols[1] - cols[0]), np.float32)
            for part in parts:  # 0 + t0 is t0 exactly: the left fold of the partials, each on its own rows
                acc[:part[which].shape[0]] += part[which]
            dqkv[base:base + n, cols[0]:cols[1]] = rnd(acc)
    return dqkv


class PlanOps(WholeTensorOps):
    """The training numerics' ops other than the weight matmuls (see
    :class:`~wse_sim.workloads.training.WholeTensorOps`) on the tile blocks of a forward and a backward
    weight-streaming plan of the same pass size, which share the block layout: token rows split over the ``TR``
    tile rows, feature columns over the ``TC`` tile columns (``split``, as :class:`~..mapping.blocks.Blocks`).

    - attention: :func:`run_attention_plan` and :func:`run_attention_backward` on the plans' attention ops;
    - LayerNorm backward: rows by tile row; each row's two sums over ``d`` one fp32 partial per tile column
      (its columns of ``d``), added in tile-column order (the plan's row all-reduce, as a chain); ``dgamma`` and
      ``dbeta`` one partial per tile row, added down the tile columns in tile-row order;
    - bias gradients: one partial row sum per tile row, added in tile-row order (the wgrad's reduction);
    - the loss: the logits' vocabulary columns split over tile columns as the LM head's output is; each row's
      sum of exponentials one partial per tile column, added in column order (its max is order-free).

    GELU's backward is elementwise and the embedding's scatter-add adds rows in token order, which is tile-row
    order: their partition cannot change a bit, so they run as the whole-tensor kernels.
    """

    def __init__(self, forward_plan, backward_plan):
        self.ops = {p.op.name: p for plan in (forward_plan, backward_plan) for p in plan.ops}
        self.precision = forward_plan.precision
        self.tiles = forward_plan.grid.shape  # (TR, TC)

    def attention_forward(self, block: str, qkv: np.ndarray):
        o = self.ops
        return run_attention_plan(o[f"{block}.attn_scores"], o[f"{block}.softmax"], o[f"{block}.attn_context"],
                                  self.precision, qkv)

    def attention_backward(self, block: str, qkv: np.ndarray, probs, dctx: np.ndarray) -> np.ndarray:
        o = self.ops
        blocks = attention_blocks(o[f"{block}.attn_scores.bwd"], o[f"{block}.attn_context.bwd"])
        return run_attention_backward(blocks, self.precision, qkv, probs, dctx)

    def layernorm_backward(self, name: str, x: np.ndarray, gamma: np.ndarray, eps: float, dy: np.ndarray):
        TR, TC = self.tiles
        return layernorm_backward(x, gamma, eps, dy, split(x.shape[0], TR), split(x.shape[1], TC))

    def bias_grad(self, name: str, dy: np.ndarray) -> np.ndarray:
        return row_block_sum(dy, split(dy.shape[0], self.tiles[0]))

    def cross_entropy(self, name: str, logits: np.ndarray, targets: np.ndarray, scale: float):
        return cross_entropy(logits, targets, scale, split(logits.shape[1], self.tiles[1]))
