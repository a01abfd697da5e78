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
    g, TR, TC, b = lay.grid, lay.TR, lay.TC, lay.b
    cfg = lay.graph.config
    d, dh, C = cfg.d_model, cfg.head_dim, lay.graph.context
    qkv = op.inputs[0]
    qk, k0 = lay.qk_tensor(op.block)
    v0 = d + cfg.kv_width
    scale = 1.0 / math.sqrt(dh)
    t = Builder()
    redist = {i: to_head_columns(lay, t, i, "new q,k,v to head columns") for i in range(TR)
              if lay.rows(i)[1] > lay.rows(i)[0]}
    home: dict[int, list[int]] = {i: [] for i in redist}
    for j in range(TC):
        heads, kvs = lay.heads_of(j), lay.kv_heads_of(j)
        if not heads:
            continue
        ready = {i: (rope(lay, t, op, i, j, (r,), lambda bidx, lo: C) if cfg.is_llama else r)
                 for i, r in redist.items()}
        append = []
        for i in redist:
            for bidx, lo, _ in lay.segments(i):
                for kv in kvs:
                    for which, src0 in (("k", k0), ("v", v0)):
                        src = qk if which == "k" else qkv
                        dst = Ref(lay.cache_tensor(op.block, which, bidx), (C, C + 1), (kv * dh, (kv + 1) * dh))
                        new = Ref(src, (lo, lo + 1), (src0 + kv * dh, src0 + (kv + 1) * dh))
                        append.append(Elementwise("copy", dst, (new,)))
        width = (len(heads) + 2 * len(kvs)) * dh
        bcast = t.add(TaskKind.TRANSFER, deps=tuple(ready.values()), label=f"q down col {j}, k,v to cache",
                      links=lay.col_transfer_links(j),
                      bytes_per_lane=ceil_div(lay.M * width * b, g.width(j)),
                      hops=g.col_hops(0, TR - 1), nbytes=lay.M * width * b * (TR - 1), actions=tuple(append))
        partials: dict[int, int] = {}
        bufs: dict[tuple[int, int], list[str]] = {}
        for i in range(TR):
            p0, p1 = lay.cache_rows(i)
            if p1 == p0:
                continue
            acts = []
            for bidx in range(lay.graph.batch):
                t_row = bidx  # decode: token row = sequence index
                for h in heads:
                    kv = lay.kv_head(h)
                    key = f"{op.block}.part#{bidx},{h},{i}"
                    bufs.setdefault((bidx, h), []).append(key)
                    cols = (kv * dh, (kv + 1) * dh)
                    acts.append(DecodeAttnPartial(
                        key, Ref(qk, (t_row, t_row + 1), (h * dh, (h + 1) * dh)),
                        Ref(lay.cache_tensor(op.block, "k", bidx), (p0, p1), cols),
                        Ref(lay.cache_tensor(op.block, "v", bidx), (p0, p1), cols), scale))
            work = lay.graph.batch * ceil_div(p1 - p0, g.height(i)) * ceil_div(len(heads) * dh, g.width(j))
            partials[i] = t.add(TaskKind.COMPUTE, deps=(bcast,), tile=(i, j), label="attend to cache rows",
                                macs_per_pe=2 * work,
                                elem_ops_per_pe=FLOPS_PER_ELEM[OpKind.SOFTMAX] * work // dh + 1,
                                actions=tuple(acts))
        # Reduce: a binary tree over each tile's PE rows, then a chain up the column to tile row 0.
        vec = lay.M * len(heads) * (dh + 2) * ACC_BYTES
        lv = max(1, math.ceil(math.log2(max(2, max(g.height(i) for i in partials)))))
        inner = t.add(TaskKind.TRANSFER, deps=tuple(partials.values()), label=f"tree over PE rows, col {j}",
                      bytes_per_lane=lv * ceil_div(vec, g.width(j)), hops=max(g.height(i) for i in partials) - 1,
                      stages=lv)
        last = max(partials)
        combine = tuple(DecodeAttnCombine(Ref(op.name, (bidx, bidx + 1), (h * dh, (h + 1) * dh)), tuple(keys))
                        for (bidx, h), keys in bufs.items())
        root = t.add(TaskKind.TRANSFER, deps=(inner,), label=f"chain up col {j}", links=g.col_path(j, last, 0),
                     bytes_per_lane=ceil_div(vec, g.width(j)), hops=g.col_hops(0, last), stages=last,
                     nbytes=vec * last, actions=combine)
        for i in home:
            home[i].append(root)
    context_home(lay, t, lambda i: home.get(i, []), "context back to owners")
    sram = max(lay.resident_bytes_per_pe([cfg.qkv_width, d], i, j) + ceil_div(lay.M * (len(lay.heads_of(j))
               + 2 * len(lay.kv_heads_of(j))) * cfg.head_dim * b, g.pes((i, j)))
               + ceil_div(lay.M * len(lay.heads_of(j)) * (dh + 2) * ACC_BYTES, g.width(j))
               for i in range(TR) for j in range(TC))
    return OpPlan(op=op, mapping=lay.name, tasks=t.finish(),
                  sram_bytes_per_pe=lay.check_sram(op, sram, "q, new k/v and attention partials (the KV cache "
                                                              "is counted with the resident bytes)"),
                  notes=f"KV cache of {lay.graph.cache_positions} positions over tile rows, KV heads on columns")
