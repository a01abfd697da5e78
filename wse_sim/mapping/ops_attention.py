"""Planners of prefill attention on the block layout: scores, causal softmax and context.

Attention has no weights: each tile column owns the heads ``h % TC == j``; Q/K/V columns are redistributed
along tile rows to their head's column, K and V are all-gathered down that column, and every tile computes
scores, causal softmax and context for its query rows and heads (keys past its last query are skipped).
"""

from __future__ import annotations

import math

from ..workloads import OpSpec
from ..workloads.graph import FLOPS_PER_ELEM, ROPE_FLOPS_PER_ELEM
from .blocks import Blocks, Builder
from .plan import ContextWrite, Free, MatmulBlock, OpPlan, Ref, Rope, SoftmaxBlock, TaskKind, ceil_div


def attn_sram(lay: Blocks, op: OpSpec) -> int:
    cfg, b = lay.graph.config, lay.b
    dh, seq = cfg.head_dim, lay.graph.seq
    worst = 0
    for i in range(lay.TR):
        for j in range(lay.TC):
            pes = lay.grid.pes((i, j))
            batches = {bidx for bidx, _, _ in lay.segments(i)}
            kv = ceil_div(len(batches) * seq * 2 * dh * len(lay.kv_heads_of(j)) * b, pes)
            scores = lay.attn_work_per_pe(i, j) * b
            rope = lay.block_bytes_per_pe(cfg.d_model + cfg.kv_width, i, j) if cfg.is_llama else 0
            worst = max(worst, lay.resident_bytes_per_pe([cfg.qkv_width, cfg.d_model], i, j) + kv + scores
                        + rope)
    return lay.check_sram(op, worst, "Q/K/V, gathered keys and values, and scores")


def probs_buffer(op_block: str, bidx: int, h: int, i: int) -> str:
    return f"{op_block}.probs#{bidx},{h},{i}"


def to_head_columns(lay: Blocks, t: Builder, i: int, label: str) -> int:
    """Tile row ``i``'s q | k | v blocks move along the row to the columns that own their heads."""
    g, TC, b, w = lay.grid, lay.TC, lay.b, lay.graph.config.qkv_width
    return t.add(TaskKind.TRANSFER, label=f"{label}, row {i}", links=lay.row_transfer_links(i),
                 bytes_per_lane=lay.rows_per_pe(i) * ceil_div(w, TC) * b, hops=g.row_hops(0, TC - 1),
                 nbytes=(lay.rows(i)[1] - lay.rows(i)[0]) * w * b * (TC - 1) // TC)


def rope(lay: Blocks, t: Builder, op: OpSpec, i: int, j: int, deps: tuple[int, ...], pos0_of) -> int:
    """Rotary embedding of tile (i, j)'s rows for the query and key heads of column ``j``."""
    cfg = lay.graph.config
    dh, d = cfg.head_dim, cfg.d_model
    qkv = op.inputs[0]
    dst, k0 = lay.qk_tensor(op.block)
    acts = []
    for bidx, lo, hi in lay.segments(i):
        for h in lay.heads_of(j):
            acts.append(Rope(Ref(dst, (lo, hi), (h * dh, (h + 1) * dh)),
                             Ref(qkv, (lo, hi), (h * dh, (h + 1) * dh)), pos0_of(bidx, lo)))
        for kv in lay.kv_heads_of(j):
            c = (d + kv * dh, d + (kv + 1) * dh)
            acts.append(Rope(Ref(dst, (lo, hi), (k0 + kv * dh, k0 + (kv + 1) * dh)), Ref(qkv, (lo, hi), c),
                             pos0_of(bidx, lo)))
    width = (len(lay.heads_of(j)) + len(lay.kv_heads_of(j))) * dh
    return t.add(TaskKind.COMPUTE, deps=deps, tile=(i, j), label="rope",
                 elem_ops_per_pe=ROPE_FLOPS_PER_ELEM * lay.rows_per_pe(i) * ceil_div(width, lay.grid.width(j)),
                 actions=tuple(acts))


def plan_attn_scores(lay: Blocks, op: OpSpec) -> OpPlan:
    g, TR, TC, b = lay.grid, lay.TR, lay.TC, lay.b
    cfg = lay.graph.config
    dh, seq = cfg.head_dim, lay.graph.seq
    qk, k0 = lay.qk_tensor(op.block)
    scale = 1.0 / math.sqrt(dh)
    t = Builder()
    redist = [to_head_columns(lay, t, i, "qkv to head columns") for i in range(TR)]
    for j in range(TC):
        heads = lay.heads_of(j)
        if not heads:
            continue
        ready = redist
        if cfg.is_llama:
            ready = [rope(lay, t, op, i, j, (redist[i],), lambda bidx, lo: lo - bidx * seq) for i in range(TR)]
        kvh = len(lay.kv_heads_of(j))
        gather = t.add(
            TaskKind.TRANSFER, deps=tuple(ready), label=f"all-gather K,V col {j}",
            links=lay.col_transfer_links(j),
            bytes_per_lane=ceil_div(lay.M * 2 * dh * kvh * b, g.width(j)),
            hops=g.col_hops(0, TR - 1), nbytes=lay.M * 2 * dh * kvh * b * (TR - 1),
        )
        for i in range(TR):
            actions = []
            for bidx, lo, hi in lay.segments(i):
                base = bidx * seq
                for h in heads:
                    kv = lay.kv_head(h)
                    actions.append(MatmulBlock(
                        out=probs_buffer(op.block, bidx, h, i),
                        a=Ref(qk, (lo, hi), (h * dh, (h + 1) * dh)),
                        b=Ref(qk, (k0 + kv * dh, k0 + (kv + 1) * dh), (base, hi), transpose=True),
                        scale=scale, round_output=True,
                    ))
            t.add(TaskKind.COMPUTE, deps=(gather, ready[i]), tile=(i, j), label="scores",
                  macs_per_pe=lay.attn_work_per_pe(i, j) * dh, actions=tuple(actions))
    return OpPlan(op=op, mapping=lay.name, tasks=t.finish(), sram_bytes_per_pe=attn_sram(lay, op),
                  notes="KV heads on tile columns (g % TC); causal key skipping")


def plan_softmax(lay: Blocks, op: OpSpec) -> OpPlan:
    seq = lay.graph.seq
    t = Builder()
    for j in range(lay.TC):
        heads = lay.heads_of(j)
        for i in range(lay.TR) if heads else ():
            acts = tuple(SoftmaxBlock(probs_buffer(op.block, bidx, h, i), lo - bidx * seq)
                         for bidx, lo, _ in lay.segments(i) for h in heads)
            t.add(TaskKind.COMPUTE, tile=(i, j), label="softmax",
                  elem_ops_per_pe=FLOPS_PER_ELEM[op.kind] * lay.attn_work_per_pe(i, j), actions=acts)
    return OpPlan(op=op, mapping=lay.name, tasks=t.finish(), sram_bytes_per_pe=attn_sram(lay, op))


def context_home(lay: Blocks, t: Builder, deps_of_row, label: str) -> None:
    """Each tile row's context blocks (by head column) go back along the row to the block layout."""
    g, TR, TC, b, d = lay.grid, lay.TR, lay.TC, lay.b, lay.graph.config.d_model
    for i in range(TR):
        m0, m1 = lay.rows(i)
        if m1 == m0 or not deps_of_row(i):
            continue
        t.add(TaskKind.TRANSFER, deps=tuple(deps_of_row(i)), label=f"{label}, row {i}",
              links=lay.row_transfer_links(i), bytes_per_lane=lay.rows_per_pe(i) * ceil_div(d, TC) * b,
              hops=g.row_hops(0, TC - 1), nbytes=(m1 - m0) * d * b * (TC - 1) // TC)


def plan_attn_context(lay: Blocks, op: OpSpec) -> OpPlan:
    TR, TC = lay.TR, lay.TC
    cfg = lay.graph.config
    d, dh, seq = cfg.d_model, cfg.head_dim, lay.graph.seq
    v0 = d + cfg.kv_width
    qkv = op.inputs[1]
    t = Builder()
    row_computes: list[list[int]] = [[] for _ in range(TR)]
    for j in range(TC):
        heads = lay.heads_of(j)
        for i in range(TR) if heads else ():
            acts, bufs = [], []
            for bidx, lo, hi in lay.segments(i):
                base = bidx * seq
                for h in heads:
                    key = probs_buffer(op.block, bidx, h, i)
                    bufs.append(key)
                    kv = lay.kv_head(h)
                    acts.append(ContextWrite(dst=Ref(op.name, (lo, hi), (h * dh, (h + 1) * dh)), probs=key,
                                             v=Ref(qkv, (base, hi), (v0 + kv * dh, v0 + (kv + 1) * dh))))
            acts.append(Free(tuple(bufs)))
            row_computes[i].append(t.add(TaskKind.COMPUTE, tile=(i, j), label="context",
                                         macs_per_pe=lay.attn_work_per_pe(i, j) * dh, actions=tuple(acts)))
    context_home(lay, t, lambda i: row_computes[i], "context back to owners")
    return OpPlan(op=op, mapping=lay.name, tasks=t.finish(), sram_bytes_per_pe=attn_sram(lay, op))
