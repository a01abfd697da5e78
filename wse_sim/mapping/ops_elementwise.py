"""Planners of the elementwise ops on the block layout: the norms, pointwise ops and the embedding gather.

Each takes the layout and the op and returns the op's plan; :mod:`.layout` dispatches to them by op kind. Their
per-element op counts come from the workload graph (``FLOPS_PER_ELEM``), the same the graph's FLOPs count.
"""

from __future__ import annotations

import math

from ..workloads import OpKind, OpSpec
from ..workloads.graph import FLOPS_PER_ELEM, NORM_STATS_FLOPS_PER_ELEM
from .blocks import STAT_BYTES, Blocks, Builder, weight_tensor
from .plan import Elementwise, OpPlan, Ref, TaskKind


def plan_norm(lay: Blocks, op: OpSpec) -> OpPlan:
    """LayerNorm or RMSNorm: per-row statistics all-reduced along each tile row (a binary tree over the row's
    PEs rooted in its middle: one add stage per level, half the row in and half back out), then normalised in
    place."""
    g, TR, TC, d = lay.grid, lay.TR, lay.TC, op.n
    x, y = op.inputs[0], op.name
    rms = op.kind == OpKind.RMSNORM
    fn = "rmsnorm" if rms else "layernorm"
    npar = lay.n_params(op)
    stats_ops = NORM_STATS_FLOPS_PER_ELEM[op.kind]  # the graph's count, split at the row all-reduce
    apply_ops = FLOPS_PER_ELEM[op.kind] - stats_ops
    params = tuple(Ref(weight_tensor(op, a), (0, 1), (0, d)) for a in (op.gamma, op.beta) if a is not None)
    t = Builder()
    s = None
    bcast: list[tuple[int, ...]] = [()] * TC
    if lay.params_streamed:
        s = t.add(TaskKind.STREAM, label="stream norm parameters", nbytes=npar * d * lay.b)
        bcast = [
            (t.add(TaskKind.TRANSFER, deps=(s,), label=f"bcast col {j}", links=g.col_path(j, 0, TR - 1),
                   bytes_per_lane=npar * lay.cols_per_pe(d, j) * lay.b, hops=g.col_hops(0, TR - 1) + 1,
                   nbytes=npar * (lay.cols(d, j)[1] - lay.cols(d, j)[0]) * lay.b * TR),)
            for j in range(TC)
        ]
    norm = []
    for i in range(TR):
        m0, m1 = lay.rows(i)
        stats = [
            t.add(TaskKind.COMPUTE, tile=(i, j), label="norm stats",
                  elem_ops_per_pe=stats_ops * lay.rows_per_pe(i) * lay.cols_per_pe(d, j))
            for j in range(TC)
        ]
        red = t.add(
            TaskKind.TRANSFER, deps=tuple(stats), label=f"allreduce row {i}", links=lay.row_transfer_links(i),
            # a binary tree rooted mid-row: the partial sums reach the middle PE and the result returns,
            # one row width of hops in all, one add stage per level
            bytes_per_lane=lay.rows_per_pe(i) * STAT_BYTES, hops=g.row_hops(0, TC - 1),
            stages=math.ceil(math.log2(max(2, g.cols))),
            nbytes=2 * (TC - 1) * (m1 - m0) * STAT_BYTES,
            actions=(Elementwise(fn, Ref(y, (m0, m1), (0, d)), (Ref(x, (m0, m1), (0, d)),), params),),
        )
        norm.extend(
            t.add(TaskKind.COMPUTE, deps=(red, *bcast[j]), tile=(i, j), label="norm apply",
                  elem_ops_per_pe=apply_ops * lay.rows_per_pe(i) * lay.cols_per_pe(d, j))
            for j in range(TC)
        )
    if s is not None:
        t.add(TaskKind.BARRIER, deps=tuple(norm), label="params consumed", frees_buffer_of=s)
    streamed = npar if lay.params_streamed else 0  # resident params are counted in param_bytes_per_pe
    sram = max(lay.resident_bytes_per_pe([d, d], i, j) + streamed * lay.cols_per_pe(d, j) * lay.b
               for i in range(TR) for j in range(TC))
    return OpPlan(op=op, mapping=lay.name, tasks=t.finish(),
                  sram_bytes_per_pe=lay.check_sram(op, sram, f"{fn} blocks"))


def plan_pointwise(lay: Blocks, op: OpSpec) -> OpPlan:
    """GELU, SwiGLU gate and residual add: purely local to each tile's block."""
    TR, TC, width = lay.TR, lay.TC, op.n
    fn = {OpKind.GELU: "gelu", OpKind.SWIGLU: "swiglu"}.get(op.kind, "add")
    t = Builder()
    per_elem = FLOPS_PER_ELEM[op.kind]
    for i in range(TR):
        m0, m1 = lay.rows(i)
        for j in range(TC):
            c0, c1 = lay.cols(width, j)
            t.add(TaskKind.COMPUTE, tile=(i, j), label=fn,
                  elem_ops_per_pe=per_elem * lay.rows_per_pe(i) * lay.cols_per_pe(width, j),
                  actions=(Elementwise(fn, Ref(op.name, (m0, m1), (c0, c1)),
                                       tuple(Ref(src, (m0, m1), (c0, c1)) for src in op.inputs)),))
    sram = max(lay.resident_bytes_per_pe([width] * (len(op.inputs) + 1), i, j)
               for i in range(TR) for j in range(TC))
    return OpPlan(op=op, mapping=lay.name, tasks=t.finish(),
                  sram_bytes_per_pe=lay.check_sram(op, sram, f"{fn} blocks"))


def plan_embedding(lay: Blocks, op: OpSpec) -> OpPlan:
    """Token and position rows are gathered from MemoryX and sent down each tile column."""
    g, TR, TC, d, b = lay.grid, lay.TR, lay.TC, op.n, lay.b
    t = Builder()
    s = t.add(TaskKind.STREAM, label="gather embedding rows", nbytes=op.weight_bytes)
    for j in range(TC):
        c0, c1 = lay.cols(d, j)
        bc = t.add(TaskKind.TRANSFER, deps=(s,), label=f"rows down col {j}", links=g.col_path(j, 0, TR - 1),
                   bytes_per_lane=2 * lay.M * lay.cols_per_pe(d, j) * b, hops=g.col_hops(0, TR - 1) + 1,
                   nbytes=2 * lay.M * (c1 - c0) * b * TR)
        for i in range(TR):
            m0, m1 = lay.rows(i)
            t.add(TaskKind.COMPUTE, deps=(bc,), tile=(i, j), label="embed add",
                  elem_ops_per_pe=FLOPS_PER_ELEM[op.kind] * lay.rows_per_pe(i) * lay.cols_per_pe(d, j),
                  actions=(Elementwise("embedding", Ref(op.name, (m0, m1), (c0, c1)), ()),))
    t.add(TaskKind.BARRIER, deps=tuple(range(len(t.tasks))), label="rows consumed", frees_buffer_of=s)
    sram = max(lay.resident_bytes_per_pe([d], i, j) + 2 * lay.block_bytes_per_pe(d, i, j)
               for i in range(TR) for j in range(TC))
    return OpPlan(op=op, mapping=lay.name, tasks=t.finish(),
                  sram_bytes_per_pe=lay.check_sram(op, sram, "embedding rows"))
