"""The block layout every mapping shares for activations, and the planners of its non-matmul ops by kind.

Mappings differ in how matmuls move operands (``weight_streaming``, ``summa``, ``cannon``, ...): each subclasses
:class:`BlockLayout` with its ``matmul(op)``. LayerNorm, GELU, residual adds, the embedding gather and attention
are planned once for all of them, by one planner per op family (:mod:`.ops_elementwise`, :mod:`.ops_attention`,
:mod:`.ops_decode`) on the shared geometry of :mod:`.blocks`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..workloads import OpKind, OpSpec
from .blocks import ACC_BYTES, STAT_BYTES, Blocks, Builder, weight_tensor
from .ops_attention import plan_attn_context, plan_attn_scores, plan_softmax
from .ops_decode import plan_attn_decode
from .ops_elementwise import plan_embedding, plan_norm, plan_pointwise
from .plan import OpPlan

# The planner of each non-matmul op kind: (layout, op) -> the op's plan.
OP_PLANNERS: dict[OpKind, Callable[[Blocks, OpSpec], OpPlan]] = {
    OpKind.LAYERNORM: plan_norm,
    OpKind.RMSNORM: plan_norm,
    OpKind.GELU: plan_pointwise,
    OpKind.RESIDUAL: plan_pointwise,
    OpKind.SWIGLU: plan_pointwise,
    OpKind.EMBEDDING: plan_embedding,
    OpKind.ATTN_SCORES: plan_attn_scores,
    OpKind.SOFTMAX: plan_softmax,
    OpKind.ATTN_CONTEXT: plan_attn_context,
    OpKind.ATTN_DECODE: plan_attn_decode,
}


class BlockLayout(Blocks):
    """Plans ops on the block layout of ``grid``: matmuls by the subclass's ``matmul(op)``, the rest by
    :data:`OP_PLANNERS`."""

    def matmul(self, op: OpSpec) -> OpPlan:
        raise NotImplementedError  # each mapping defines how a matmul moves its operands

    def plan_op(self, op: OpSpec) -> OpPlan:
        if op.kind == OpKind.MATMUL:
            return self.matmul(op)
        planner = OP_PLANNERS.get(op.kind)
        if planner is None:
            raise NotImplementedError(f"{self.name} has no plan for op kind {op.kind}")
        return planner(self, op)


__all__ = ["ACC_BYTES", "OP_PLANNERS", "STAT_BYTES", "BlockLayout", "Builder", "weight_tensor"]
