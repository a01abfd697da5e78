"""Planner of decode attention over the KV cache on the block layout (flash-decoding on the grid)."""

from __future__ import annotations

import math

from ..workloads import OpKind, OpSpec
from ..workloads.graph import FLOPS_PER_ELEM
from .blocks import ACC_BYTES, Blocks, Builder
from .ops_attention import context_home, rope, to_head_columns
from .plan import DecodeAttnCombine, DecodeAttnPartial, Elementwise, OpPlan, Ref, TaskKind, ceil_div


def plan_attn_decode(lay: Blocks, op: OpSpec) -> OpPlan:
    """Decode attention (flash-decoding on the grid): the new token's q | k | v move to their head columns,
    get rotated (rotary models), k and v are appended to the cache row that holds position ``context``, q is
    broadcast down the column, every tile scores its cache rows and keeps (max, sum, weighted V), and the
    partials are reduced up each column (a binary tree over PE rows inside a tile, then a chain across tile
    rows) before the context returns to the block layout."""
    t = Builder()
    redist = {i: to_head_columns(lay, t, i, "new q,k,v to head columns") for i in range(lay.TR)
              if lay.rows(i)[1] > lay.rows(i)[0]}
    roots = []
    for j in range(lay.TC):
        if not lay.heads_of(j):
            continue
        ready = [rope(lay, t, op, i, j, (r,), lambda bidx, lo: lay.graph.context) if lay.graph.config.is_llama
                 else r for i, r in redist.items()]
        bcast = _q_down_and_kv_to_cache(lay, t, op, j, tuple(ready), list(redist))
        partials, bufs = _attend_to_cache_rows(lay, t, op, j, bcast)
        roots.append(_reduce_up_column(lay, t, op, j, partials, bufs))
    context_home(lay, t, lambda i: roots if i in redist else [], "context back to owners")
    return OpPlan(op=op, mapping=lay.name, tasks=t.finish(),
                  sram_bytes_per_pe=lay.check_sram(op, _sram_bytes_per_pe(lay), "q, new k/v and attention partials "
                                                   "(the KV cache is counted with the resident bytes)"),
                  notes=f"KV cache of {lay.graph.cache_positions} positions over tile rows, KV heads on columns")


def _q_down_and_kv_to_cache(lay: Blocks, t: Builder, op: OpSpec, j: int, ready: tuple[int, ...],
                            rows: list[int]) -> int:
    """Column ``j``'s new q, k and v go down the column; k and v land in the cache at position ``context``."""
    g, b, cfg, C = lay.grid, lay.b, lay.graph.config, lay.graph.context
    dh, kvs = cfg.head_dim, lay.kv_heads_of(j)
    qk, k0 = lay.qk_tensor(op.block)
    sources = (("k", qk, k0), ("v", op.inputs[0], cfg.d_model + cfg.kv_width))
    append = [Elementwise("copy", Ref(lay.cache_tensor(op.block, which, bidx), (C, C + 1), (kv * dh, (kv + 1) * dh)),
                          (Ref(src, (lo, lo + 1), (src0 + kv * dh, src0 + (kv + 1) * dh)),))
              for i in rows for bidx, lo, _ in lay.segments(i) for kv in kvs for which, src, src0 in sources]
    width = (len(lay.heads_of(j)) + 2 * len(kvs)) * dh
    return t.add(TaskKind.TRANSFER, deps=ready, label=f"q down col {j}, k,v to cache",
                 links=lay.col_transfer_links(j), bytes_per_lane=ceil_div(lay.M * width * b, g.width(j)),
                 hops=g.col_hops(0, lay.TR - 1), nbytes=lay.M * width * b * (lay.TR - 1), actions=tuple(append))


def _attend_to_cache_rows(lay: Blocks, t: Builder, op: OpSpec, j: int, bcast: int):
    """Every tile of column ``j`` that holds cache rows scores them: ({tile row: task}, {(sequence, head): the
    partials' buffer names})."""
    g, dh, heads = lay.grid, lay.graph.config.head_dim, lay.heads_of(j)
    qk, _ = lay.qk_tensor(op.block)
    scale = 1.0 / math.sqrt(dh)
    partials: dict[int, int] = {}
    bufs: dict[tuple[int, int], list[str]] = {}
    for i in range(lay.TR):
        p0, p1 = lay.cache_rows(i)
        if p1 == p0:
            continue
        acts = []
        for bidx in range(lay.graph.batch):  # decode: token row = sequence index
            for h in heads:
                key = f"{op.block}.part#{bidx},{h},{i}"
                bufs.setdefault((bidx, h), []).append(key)
                cols = (lay.kv_head(h) * dh, (lay.kv_head(h) + 1) * dh)
                acts.append(DecodeAttnPartial(
                    key, Ref(qk, (bidx, bidx + 1), (h * dh, (h + 1) * dh)),
                    Ref(lay.cache_tensor(op.block, "k", bidx), (p0, p1), cols),
                    Ref(lay.cache_tensor(op.block, "v", bidx), (p0, p1), cols), scale))
        work = lay.graph.batch * ceil_div(p1 - p0, g.height(i)) * ceil_div(len(heads) * dh, g.width(j))
        partials[i] = t.add(TaskKind.COMPUTE, deps=(bcast,), tile=(i, j), label="attend to cache rows",
                            macs_per_pe=2 * work, elem_ops_per_pe=FLOPS_PER_ELEM[OpKind.SOFTMAX] * work // dh + 1,
                            actions=tuple(acts))
    return partials, bufs


def _reduce_up_column(lay: Blocks, t: Builder, op: OpSpec, j: int, partials: dict[int, int],
                      bufs: dict[tuple[int, int], list[str]]) -> int:
    """The partials of column ``j``: a binary tree over each tile's PE rows, then a chain up to tile row 0,
    which combines them into the context."""
    g, dh = lay.grid, lay.graph.config.head_dim
    vec = lay.M * len(lay.heads_of(j)) * (dh + 2) * ACC_BYTES
    tallest = max(g.height(i) for i in partials)
    lv = max(1, math.ceil(math.log2(max(2, tallest))))
    inner = t.add(TaskKind.TRANSFER, deps=tuple(partials.values()), label=f"tree over PE rows, col {j}",
                  bytes_per_lane=lv * ceil_div(vec, g.width(j)), hops=tallest - 1, stages=lv)
    last = max(partials)
    combine = tuple(DecodeAttnCombine(Ref(op.name, (bidx, bidx + 1), (h * dh, (h + 1) * dh)), tuple(keys))
                    for (bidx, h), keys in bufs.items())
    return t.add(TaskKind.TRANSFER, deps=(inner,), label=f"chain up col {j}", links=g.col_path(j, last, 0),
                 bytes_per_lane=ceil_div(vec, g.width(j)), hops=g.col_hops(0, last), stages=last,
                 nbytes=vec * last, actions=combine)


def _sram_bytes_per_pe(lay: Blocks) -> int:
    """The fullest PE's q, new k and v, and fp32 partials, beside its resident blocks (the cache is resident)."""
    g, b, cfg = lay.grid, lay.b, lay.graph.config
    dh = cfg.head_dim
    return max(lay.resident_bytes_per_pe([cfg.qkv_width, cfg.d_model], i, j)
               + ceil_div(lay.M * (len(lay.heads_of(j)) + 2 * len(lay.kv_heads_of(j))) * dh * b, g.pes((i, j)))
               + ceil_div(lay.M * len(lay.heads_of(j)) * (dh + 2) * ACC_BYTES, g.width(j))
               for i in range(lay.TR) for j in range(lay.TC))
