"""Resident-weight mappings: every weight sits in PE SRAM for the whole run, placed as the mapping's GEMM wants.

This is how published wafer inference runs (WaferLLM, OSDI'25): nothing streams from MemoryX, so a matmul's
time is its on-wafer compute and communication. The price is SRAM: all layers' weight blocks stay on the grid
next to the activations, and a model that does not fit is refused with the bytes needed and available.

Subclasses of :class:`ResidentLayout` define ``matmul(op)`` (the algorithm's tasks) and
``weight_bytes_per_pe(op)`` (the SRAM its weight layout takes on the fullest PE). The output always lands in the
shared block layout, so any algorithm composes with the ops of :mod:`.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import WaferSpec
from ..workloads import OpKind, OpSpec, WorkloadGraph
from .layout import ACC_BYTES, BlockLayout, Builder, weight_tensor
from .plan import Free, ModelPlan, ReduceWrite, Ref, SramOverflowError, TaskKind, TileGrid


@dataclass(frozen=True)
class Operands:
    """Tensor names of ``y = x @ w + bias`` in the numerics store."""

    x: str
    y: str
    w: str
    w_transposed: bool  # the tied LM head reads the [vocab, d] embedding as [d, vocab]
    bias: str | None

    @classmethod
    def of(cls, op: OpSpec) -> Operands:
        return cls(op.inputs[0], op.name, weight_tensor(op, op.weight), op.weight == "wte",
                   weight_tensor(op, op.bias) if op.bias else None)

    def w_ref(self, k: tuple[int, int], n: tuple[int, int]) -> Ref:
        return Ref(self.w, k, n, transpose=self.w_transposed)


class ResidentLayout(BlockLayout):
    params_streamed = False

    def weight_bytes_per_pe(self, op: OpSpec) -> int:
        raise NotImplementedError

    def bias_bytes_per_pe(self, op: OpSpec) -> int:
        """Every tile of column ``j`` keeps the bias slice of its output columns."""
        return max(self.cols_per_pe(op.n, j) * self.b for j in range(self.TC)) if op.bias else 0

    def kept_bytes_per_pe(self, op: OpSpec) -> int:
        """SRAM per PE this op's weights (or LayerNorm parameters) occupy for the whole run."""
        if op.kind == OpKind.MATMUL:
            return self.weight_bytes_per_pe(op) + self.bias_bytes_per_pe(op)
        return self.param_bytes_per_pe(op)

    def write_output(self, t: Builder, op: OpSpec, ops: Operands, i: int, j: int, acc: str, deps) -> int:
        """Tile (i, j) adds the bias to its fp32 accumulator and stores its output block (block layout)."""
        m0, m1 = self.rows(i)
        n0, n1 = self.cols(op.n, j)
        return t.add(
            TaskKind.COMPUTE, deps=tuple(deps), tile=(i, j), label="write",
            elem_ops_per_pe=self.rows_per_pe(i) * self.cols_per_pe(op.n, j),
            actions=(ReduceWrite(Ref(ops.y, (m0, m1), (n0, n1)), ((acc,),),
                                 Ref(ops.bias, (0, 1), (n0, n1)) if ops.bias else None), Free((acc,))),
        )

    def io_bytes_per_pe(self, op: OpSpec, i: int, j: int) -> int:
        """Resident input and output blocks, the residual stream and the fp32 accumulator of tile (i, j)."""
        return (self.resident_bytes_per_pe([op.k, op.n], i, j)
                + self.rows_per_pe(i) * self.cols_per_pe(op.n, j) * ACC_BYTES)


class ResidentMapping:
    """A model-level mapping: non-matmul ops on the block layout, matmuls by ``layout_cls``'s algorithm."""

    name = "resident"
    layout_cls: type[ResidentLayout] = ResidentLayout

    def layout(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> ResidentLayout:
        return self.layout_cls(graph, wafer, grid)

    def plan(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> ModelPlan:
        ctx = self.layout(graph, wafer, grid)
        ops = tuple(ctx.plan_op(op) for op in graph.ops())
        resident = sum(ctx.kept_bytes_per_pe(op) for op in graph.ops())
        plan = ModelPlan(mapping=self.name, grid=grid, precision=graph.precision, ops=ops,
                         params={"weights": "resident"}, resident_bytes_per_pe=resident)
        check_resident_fit(plan, wafer)
        return plan


def check_resident_fit(plan: ModelPlan, wafer: WaferSpec) -> None:
    worst = max(plan.ops, key=lambda o: o.sram_bytes_per_pe)
    if plan.sram_peak_bytes_per_pe > wafer.sram_bytes_per_pe:
        grid = plan.grid
        pes = grid.rows * grid.cols
        raise SramOverflowError(
            "model", plan.sram_peak_bytes_per_pe, wafer.sram_bytes_per_pe,
            f"{plan.mapping} keeps all weights resident: {plan.resident_bytes_per_pe:,} B/PE of weights "
            f"({plan.resident_bytes_per_pe * pes / 1e9:.2f} GB on {pes:,} PEs) plus {worst.sram_bytes_per_pe:,} "
            f"B/PE working set of {worst.op.name}",
        )
