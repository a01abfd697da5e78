"""The block layout every mapping shares for activations, and the non-matmul ops on it.

Every activation tensor ``[tokens, width]`` is resident on the grid, its token rows split over tile rows and its
feature columns over tile columns (balanced splits, so any shape works); inside a tile, over its PEs the same
way. Mappings differ in how matmuls move operands (``weight_streaming``, ``summa``, ``cannon``, ...); LayerNorm,
GELU, residual adds, the embedding gather and attention are planned here once for all of them.

Attention has no weights: each tile column owns the heads ``h % TC == j``; Q/K/V columns are redistributed
along tile rows to their head's column, K and V are all-gathered down that column, and every tile computes
scores, causal softmax and context for its query rows and heads (keys past its last query are skipped).
"""

from __future__ import annotations

import math

from ..arch import WaferSpec
from ..kernels.precision import BYTES_PER_ELEM
from ..workloads import OpKind, OpSpec, WorkloadGraph
from ..workloads.graph import FLOPS_PER_ELEM, NORM_STATS_FLOPS_PER_ELEM, ROPE_FLOPS_PER_ELEM
from .collectives import Message, route
from .plan import (
    ContextWrite,
    DecodeAttnCombine,
    DecodeAttnPartial,
    Elementwise,
    Free,
    MatmulBlock,
    OpPlan,
    Ref,
    Rope,
    SoftmaxBlock,
    SramOverflowError,
    Task,
    TaskKind,
    TileGrid,
    ceil_div,
    memo_method,
    split,
)

ACC_BYTES = 4  # partial sums travel and accumulate in fp32, whatever the storage precision
STAT_BYTES = 8  # LayerNorm row statistics (sum, sum of squares) in fp32


def weight_tensor(op: OpSpec, attr: str) -> str:
    """Name of a weight in the numerics store: ``<block>.<attribute>`` (e.g. ``layer3.w_fc``, ``head.wte``)."""
    return f"{op.block}.{attr}"


class Builder:
    """Accumulates the tasks of one op on ``grid``; returns indices for dependencies."""

    def __init__(self, grid: TileGrid | None = None) -> None:
        self.grid = grid
        self.tasks: list[Task] = []

    def add(self, kind: TaskKind, **kw) -> int:
        self.tasks.append(Task(kind=kind, **kw))
        return len(self.tasks) - 1

    def send(self, messages: list[Message], deps: tuple[int, ...] = (), **kw) -> tuple[int, ...]:
        """One transfer for a set of messages routed on the grid (its links, busiest-link load, longest route and
        turns); ``()`` when nothing leaves its tile."""
        r = route(self.grid, messages)
        if r.empty:
            return ()
        return (self.add(TaskKind.TRANSFER, deps=deps, links=r.links, bytes_per_lane=r.bytes_per_lane, hops=r.hops,
                         turns=r.turns, nbytes=r.nbytes, **kw),)

    def finish(self) -> tuple[Task, ...]:
        self.add(TaskKind.BARRIER, deps=tuple(range(len(self.tasks))), label="end")
        return tuple(self.tasks)


class BlockLayout:
    """Plans ops on the block layout of ``grid``. Subclasses add ``matmul(op) -> OpPlan``.

    ``params_streamed``: LayerNorm scale/shift come from MemoryX with each op (weight streaming) or sit in SRAM
    for the whole run (resident-weight mappings, which count them in :meth:`param_bytes_per_pe`).
    """

    name = "block-layout"
    params_streamed = True
    reserved_bytes_per_pe = 0  # SRAM per PE held for the whole run by resident weights (set by the planner)
    enforce_sram = True  # False: plan anyway and report the bytes (to size regions before planning for real)

    def __init__(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid):
        self.graph, self.wafer, self.grid = graph, wafer, grid
        self.b = BYTES_PER_ELEM[graph.precision]
        self.M = graph.tokens
        self.TR, self.TC = grid.shape
        self.m_edges = split(self.M, self.TR)
        self.d = graph.config.d_model if graph.config is not None else 0  # residual stream width

    # per-PE helpers -------------------------------------------------------------------------------------------
    def rows(self, i: int) -> tuple[int, int]:
        return self.m_edges[i], self.m_edges[i + 1]

    @memo_method
    def rows_per_pe(self, i: int) -> int:
        return ceil_div(self.m_edges[i + 1] - self.m_edges[i], self.grid.height(i))

    def cols(self, width: int, j: int) -> tuple[int, int]:
        e = split(width, self.TC)
        return e[j], e[j + 1]

    @memo_method
    def cols_per_pe(self, width: int, j: int) -> int:
        lo, hi = self.cols(width, j)
        return ceil_div(hi - lo, self.grid.width(j))

    def block_bytes_per_pe(self, width: int, i: int, j: int) -> int:
        """Bytes per PE of tile (i, j)'s block of a resident ``[tokens, width]`` activation."""
        return self.rows_per_pe(i) * self.cols_per_pe(width, j) * self.b

    def resident_bytes_per_pe(self, widths: list[int], i: int, j: int) -> int:
        # The residual stream ([tokens, d]) stays resident through every op of a layer.
        return sum(self.block_bytes_per_pe(w, i, j) for w in [self.d, *widths] if w)

    def check_sram(self, op: OpSpec, needed: int, detail: str) -> int:
        """``needed`` (the op's working set per PE), after checking it fits beside the reserved bytes."""
        if self.enforce_sram and needed + self.reserved_bytes_per_pe > self.wafer.sram_bytes_per_pe:
            if self.reserved_bytes_per_pe:
                detail += f"; {self.reserved_bytes_per_pe:,} B/PE hold resident weights"
            raise SramOverflowError(op.name, needed + self.reserved_bytes_per_pe, self.wafer.sram_bytes_per_pe,
                                    detail)
        return needed

    def row_transfer_links(self, i: int):
        g = self.grid
        return g.row_path(i, 0, self.TC - 1) + g.row_path(i, self.TC - 1, 0)

    def col_transfer_links(self, j: int):
        g = self.grid
        return g.col_path(j, 0, self.TR - 1) + g.col_path(j, self.TR - 1, 0)

    def matmul(self, op: OpSpec) -> OpPlan:
        raise NotImplementedError  # each mapping defines how a matmul moves its operands

    def param_bytes_per_pe(self, op: OpSpec) -> int:
        """SRAM per PE that a resident-weight mapping keeps for this non-matmul op's parameters."""
        if op.kind in (OpKind.LAYERNORM, OpKind.RMSNORM) and not self.params_streamed:
            return max(self.n_params(op) * self.cols_per_pe(op.n, j) * self.b for j in range(self.TC))
        return 0

    @staticmethod
    def n_params(op: OpSpec) -> int:
        """Parameter vectors of a norm: scale and shift (LayerNorm) or scale only (RMSNorm)."""
        return (op.gamma is not None) + (op.beta is not None)

    # dispatch --------------------------------------------------------------------------------------------------
    def plan_op(self, op: OpSpec) -> OpPlan:
        kind = op.kind
        if kind == OpKind.MATMUL:
            return self.matmul(op)
        if kind in (OpKind.LAYERNORM, OpKind.RMSNORM):
            return self.layernorm(op)
        if kind in (OpKind.GELU, OpKind.RESIDUAL, OpKind.SWIGLU):
            return self.pointwise(op)
        if kind == OpKind.EMBEDDING:
            return self.embedding(op)
        if kind == OpKind.ATTN_SCORES:
            return self.attn_scores(op)
        if kind == OpKind.SOFTMAX:
            return self.softmax(op)
        if kind == OpKind.ATTN_CONTEXT:
            return self.attn_context(op)
        if kind == OpKind.ATTN_DECODE:
            return self.attn_decode(op)
        raise NotImplementedError(f"{self.name} has no plan for op kind {kind}")

    # ---- elementwise -----------------------------------------------------------------------------------------
    def layernorm(self, op: OpSpec) -> OpPlan:
        """LayerNorm or RMSNorm: per-row statistics all-reduced along each tile row (a binary tree over the row's
        PEs rooted in its middle: one add stage per level, half the row in and half back out), then normalised in
        place."""
        g, TR, TC, d = self.grid, self.TR, self.TC, op.n
        x, y = op.inputs[0], op.name
        rms = op.kind == OpKind.RMSNORM
        fn = "rmsnorm" if rms else "layernorm"
        npar = self.n_params(op)
        stats_ops = NORM_STATS_FLOPS_PER_ELEM[op.kind]  # the graph's count, split at the row all-reduce
        apply_ops = FLOPS_PER_ELEM[op.kind] - stats_ops
        params = tuple(Ref(weight_tensor(op, a), (0, 1), (0, d)) for a in (op.gamma, op.beta) if a is not None)
        t = Builder()
        s = None
        bcast: list[tuple[int, ...]] = [()] * TC
        if self.params_streamed:
            s = t.add(TaskKind.STREAM, label="stream norm parameters", nbytes=npar * d * self.b)
            bcast = [
                (t.add(TaskKind.TRANSFER, deps=(s,), label=f"bcast col {j}", links=g.col_path(j, 0, TR - 1),
                       bytes_per_lane=npar * self.cols_per_pe(d, j) * self.b, hops=g.col_hops(0, TR - 1) + 1,
                       nbytes=npar * (self.cols(d, j)[1] - self.cols(d, j)[0]) * self.b * TR),)
                for j in range(TC)
            ]
        norm = []
        for i in range(TR):
            m0, m1 = self.rows(i)
            stats = [
                t.add(TaskKind.COMPUTE, tile=(i, j), label="norm stats",
                      elem_ops_per_pe=stats_ops * self.rows_per_pe(i) * self.cols_per_pe(d, j))
                for j in range(TC)
            ]
            red = t.add(
                TaskKind.TRANSFER, deps=tuple(stats), label=f"allreduce row {i}", links=self.row_transfer_links(i),
                # a binary tree rooted mid-row: the partial sums reach the middle PE and the result returns,
                # one row width of hops in all, one add stage per level
                bytes_per_lane=self.rows_per_pe(i) * STAT_BYTES, hops=g.row_hops(0, TC - 1),
                stages=math.ceil(math.log2(max(2, g.cols))),
                nbytes=2 * (TC - 1) * (m1 - m0) * STAT_BYTES,
                actions=(Elementwise(fn, Ref(y, (m0, m1), (0, d)), (Ref(x, (m0, m1), (0, d)),), params),),
            )
            norm.extend(
                t.add(TaskKind.COMPUTE, deps=(red, *bcast[j]), tile=(i, j), label="norm apply",
                      elem_ops_per_pe=apply_ops * self.rows_per_pe(i) * self.cols_per_pe(d, j))
                for j in range(TC)
            )
        if s is not None:
            t.add(TaskKind.BARRIER, deps=tuple(norm), label="params consumed", frees_buffer_of=s)
        streamed = npar if self.params_streamed else 0  # resident params are counted in param_bytes_per_pe
        sram = max(self.resident_bytes_per_pe([d, d], i, j) + streamed * self.cols_per_pe(d, j) * self.b
                   for i in range(TR) for j in range(TC))
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, f"{fn} blocks"))

    def pointwise(self, op: OpSpec) -> OpPlan:
        """GELU, SwiGLU gate and residual add: purely local to each tile's block."""
        TR, TC, width = self.TR, self.TC, op.n
        fn = {OpKind.GELU: "gelu", OpKind.SWIGLU: "swiglu"}.get(op.kind, "add")
        t = Builder()
        per_elem = FLOPS_PER_ELEM[op.kind]
        for i in range(TR):
            m0, m1 = self.rows(i)
            for j in range(TC):
                c0, c1 = self.cols(width, j)
                t.add(TaskKind.COMPUTE, tile=(i, j), label=fn,
                      elem_ops_per_pe=per_elem * self.rows_per_pe(i) * self.cols_per_pe(width, j),
                      actions=(Elementwise(fn, Ref(op.name, (m0, m1), (c0, c1)),
                                           tuple(Ref(src, (m0, m1), (c0, c1)) for src in op.inputs)),))
        sram = max(self.resident_bytes_per_pe([width] * (len(op.inputs) + 1), i, j)
                   for i in range(TR) for j in range(TC))
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, f"{fn} blocks"))

    def embedding(self, op: OpSpec) -> OpPlan:
        """Token and position rows are gathered from MemoryX and sent down each tile column."""
        g, TR, TC, d, b = self.grid, self.TR, self.TC, op.n, self.b
        t = Builder()
        s = t.add(TaskKind.STREAM, label="gather embedding rows", nbytes=op.weight_bytes)
        for j in range(TC):
            c0, c1 = self.cols(d, j)
            bc = t.add(TaskKind.TRANSFER, deps=(s,), label=f"rows down col {j}", links=g.col_path(j, 0, TR - 1),
                       bytes_per_lane=2 * self.M * self.cols_per_pe(d, j) * b, hops=g.col_hops(0, TR - 1) + 1,
                       nbytes=2 * self.M * (c1 - c0) * b * TR)
            for i in range(TR):
                m0, m1 = self.rows(i)
                t.add(TaskKind.COMPUTE, deps=(bc,), tile=(i, j), label="embed add",
                      elem_ops_per_pe=FLOPS_PER_ELEM[op.kind] * self.rows_per_pe(i) * self.cols_per_pe(d, j),
                      actions=(Elementwise("embedding", Ref(op.name, (m0, m1), (c0, c1)), ()),))
        t.add(TaskKind.BARRIER, deps=tuple(range(len(t.tasks))), label="rows consumed", frees_buffer_of=s)
        sram = max(self.resident_bytes_per_pe([d], i, j) + 2 * self.block_bytes_per_pe(d, i, j)
                   for i in range(TR) for j in range(TC))
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, "embedding rows"))

    # ---- attention -------------------------------------------------------------------------------------------
    @memo_method
    def kv_heads_of(self, j: int) -> tuple[int, ...]:
        """KV heads owned by tile column ``j`` (``g % TC == j``); their query heads come with them."""
        return tuple(g for g in range(self.graph.config.n_kv_head) if g % self.TC == j)

    @memo_method
    def heads_of(self, j: int) -> tuple[int, ...]:
        cfg = self.graph.config
        group = cfg.n_head // cfg.n_kv_head
        return tuple(h for h in range(cfg.n_head) if (h // group) % self.TC == j)

    def kv_head(self, h: int) -> int:
        cfg = self.graph.config
        return h // (cfg.n_head // cfg.n_kv_head)

    def qk_tensor(self, op_block: str) -> tuple[str, int]:
        """(tensor holding rotated q | k, column where k starts): ``<block>.qk_rope`` for rotary models, else
        the qkv output itself."""
        cfg = self.graph.config
        if cfg.is_llama:
            return f"{op_block}.qk_rope", cfg.d_model
        return f"{op_block}.qkv", cfg.d_model

    def segments(self, i: int):
        """(batch, first row, last row + 1) of each sequence that tile row ``i``'s token rows overlap."""
        m0, m1 = self.rows(i)
        seq = self.graph.seq
        for bidx in range(m0 // seq, ceil_div(m1, seq)):
            lo, hi = max(m0, bidx * seq), min(m1, (bidx + 1) * seq)
            if hi > lo:
                yield bidx, lo, hi

    @memo_method
    def attn_work_per_pe(self, i: int, j: int) -> int:
        """Per-PE (query row x key x head) count for tile (i, j): PE rows take queries, PE columns take keys."""
        seq = self.graph.seq
        total = 0
        for bidx, lo, hi in self.segments(i):
            keys = hi - bidx * seq  # causal: no key after the block's last query
            total += ceil_div(hi - lo, self.grid.height(i)) * ceil_div(len(self.heads_of(j)) * keys,
                                                                          self.grid.width(j))
        return total

    def attn_sram(self, op: OpSpec) -> int:
        cfg, b = self.graph.config, self.b
        dh, seq = cfg.head_dim, self.graph.seq
        worst = 0
        for i in range(self.TR):
            for j in range(self.TC):
                pes = self.grid.pes((i, j))
                batches = {bidx for bidx, _, _ in self.segments(i)}
                kv = ceil_div(len(batches) * seq * 2 * dh * len(self.kv_heads_of(j)) * b, pes)
                scores = self.attn_work_per_pe(i, j) * b
                rope = self.block_bytes_per_pe(cfg.d_model + cfg.kv_width, i, j) if cfg.is_llama else 0
                worst = max(worst, self.resident_bytes_per_pe([cfg.qkv_width, cfg.d_model], i, j) + kv + scores
                            + rope)
        return self.check_sram(op, worst, "Q/K/V, gathered keys and values, and scores")

    def buf(self, op_block: str, bidx: int, h: int, i: int) -> str:
        return f"{op_block}.probs#{bidx},{h},{i}"

    def _to_head_columns(self, t: Builder, i: int, label: str) -> int:
        """Tile row ``i``'s q | k | v blocks move along the row to the columns that own their heads."""
        g, TC, b, w = self.grid, self.TC, self.b, self.graph.config.qkv_width
        return t.add(TaskKind.TRANSFER, label=f"{label}, row {i}", links=self.row_transfer_links(i),
                     bytes_per_lane=self.rows_per_pe(i) * ceil_div(w, TC) * b, hops=g.row_hops(0, TC - 1),
                     nbytes=(self.rows(i)[1] - self.rows(i)[0]) * w * b * (TC - 1) // TC)

    def _rope(self, t: Builder, op: OpSpec, i: int, j: int, deps: tuple[int, ...], pos0_of) -> int:
        """Rotary embedding of tile (i, j)'s rows for the query and key heads of column ``j``."""
        cfg = self.graph.config
        dh, d = cfg.head_dim, cfg.d_model
        qkv = op.inputs[0]
        dst, k0 = self.qk_tensor(op.block)
        acts = []
        for bidx, lo, hi in self.segments(i):
            for h in self.heads_of(j):
                acts.append(Rope(Ref(dst, (lo, hi), (h * dh, (h + 1) * dh)),
                                 Ref(qkv, (lo, hi), (h * dh, (h + 1) * dh)), pos0_of(bidx, lo)))
            for kv in self.kv_heads_of(j):
                c = (d + kv * dh, d + (kv + 1) * dh)
                acts.append(Rope(Ref(dst, (lo, hi), (k0 + kv * dh, k0 + (kv + 1) * dh)), Ref(qkv, (lo, hi), c),
                                 pos0_of(bidx, lo)))
        width = (len(self.heads_of(j)) + len(self.kv_heads_of(j))) * dh
        return t.add(TaskKind.COMPUTE, deps=deps, tile=(i, j), label="rope",
                     elem_ops_per_pe=ROPE_FLOPS_PER_ELEM * self.rows_per_pe(i) * ceil_div(width, self.grid.width(j)),
                     actions=tuple(acts))

    def attn_scores(self, op: OpSpec) -> OpPlan:
        g, TR, TC, b = self.grid, self.TR, self.TC, self.b
        cfg = self.graph.config
        dh, seq = cfg.head_dim, self.graph.seq
        qk, k0 = self.qk_tensor(op.block)
        scale = 1.0 / math.sqrt(dh)
        t = Builder()
        redist = [self._to_head_columns(t, i, "qkv to head columns") for i in range(TR)]
        for j in range(TC):
            heads = self.heads_of(j)
            if not heads:
                continue
            ready = redist
            if cfg.is_llama:
                ready = [self._rope(t, op, i, j, (redist[i],), lambda bidx, lo: lo - bidx * seq) for i in range(TR)]
            kvh = len(self.kv_heads_of(j))
            gather = t.add(
                TaskKind.TRANSFER, deps=tuple(ready), label=f"all-gather K,V col {j}",
                links=self.col_transfer_links(j),
                bytes_per_lane=ceil_div(self.M * 2 * dh * kvh * b, g.width(j)),
                hops=g.col_hops(0, TR - 1), nbytes=self.M * 2 * dh * kvh * b * (TR - 1),
            )
            for i in range(TR):
                actions = []
                for bidx, lo, hi in self.segments(i):
                    base = bidx * seq
                    for h in heads:
                        kv = self.kv_head(h)
                        actions.append(MatmulBlock(
                            out=self.buf(op.block, bidx, h, i),
                            a=Ref(qk, (lo, hi), (h * dh, (h + 1) * dh)),
                            b=Ref(qk, (k0 + kv * dh, k0 + (kv + 1) * dh), (base, hi), transpose=True),
                            scale=scale, round_output=True,
                        ))
                t.add(TaskKind.COMPUTE, deps=(gather, ready[i]), tile=(i, j), label="scores",
                      macs_per_pe=self.attn_work_per_pe(i, j) * dh, actions=tuple(actions))
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(), sram_bytes_per_pe=self.attn_sram(op),
                      notes="KV heads on tile columns (g % TC); causal key skipping")

    def softmax(self, op: OpSpec) -> OpPlan:
        seq = self.graph.seq
        t = Builder()
        for j in range(self.TC):
            heads = self.heads_of(j)
            for i in range(self.TR) if heads else ():
                acts = tuple(SoftmaxBlock(self.buf(op.block, bidx, h, i), lo - bidx * seq)
                             for bidx, lo, _ in self.segments(i) for h in heads)
                t.add(TaskKind.COMPUTE, tile=(i, j), label="softmax",
                      elem_ops_per_pe=FLOPS_PER_ELEM[op.kind] * self.attn_work_per_pe(i, j), actions=acts)
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(), sram_bytes_per_pe=self.attn_sram(op))

    def _context_home(self, t: Builder, deps_of_row, label: str, src_row=None) -> None:
        """Each tile row's context blocks (by head column) go back along the row to the block layout."""
        g, TR, TC, b, d = self.grid, self.TR, self.TC, self.b, self.graph.config.d_model
        for i in range(TR):
            m0, m1 = self.rows(i)
            if m1 == m0 or not deps_of_row(i):
                continue
            t.add(TaskKind.TRANSFER, deps=tuple(deps_of_row(i)), label=f"{label}, row {i}",
                  links=self.row_transfer_links(i), bytes_per_lane=self.rows_per_pe(i) * ceil_div(d, TC) * b,
                  hops=g.row_hops(0, TC - 1), nbytes=(m1 - m0) * d * b * (TC - 1) // TC)

    def attn_context(self, op: OpSpec) -> OpPlan:
        TR, TC = self.TR, self.TC
        cfg = self.graph.config
        d, dh, seq = cfg.d_model, cfg.head_dim, self.graph.seq
        v0 = d + cfg.kv_width
        qkv = op.inputs[1]
        t = Builder()
        row_computes: list[list[int]] = [[] for _ in range(TR)]
        for j in range(TC):
            heads = self.heads_of(j)
            for i in range(TR) if heads else ():
                acts, bufs = [], []
                for bidx, lo, hi in self.segments(i):
                    base = bidx * seq
                    for h in heads:
                        key = self.buf(op.block, bidx, h, i)
                        bufs.append(key)
                        kv = self.kv_head(h)
                        acts.append(ContextWrite(dst=Ref(op.name, (lo, hi), (h * dh, (h + 1) * dh)), probs=key,
                                                 v=Ref(qkv, (base, hi), (v0 + kv * dh, v0 + (kv + 1) * dh))))
                acts.append(Free(tuple(bufs)))
                row_computes[i].append(t.add(TaskKind.COMPUTE, tile=(i, j), label="context",
                                             macs_per_pe=self.attn_work_per_pe(i, j) * dh, actions=tuple(acts)))
        self._context_home(t, lambda i: row_computes[i], "context back to owners")
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(), sram_bytes_per_pe=self.attn_sram(op))

    # ---- decode attention over the KV cache ------------------------------------------------------------------
    def cache_rows(self, i: int) -> tuple[int, int]:
        """Cache positions (of every sequence) held by tile row ``i``: positions split over tile rows."""
        e = split(self.graph.cache_positions, self.TR)
        return e[i], e[i + 1]

    @staticmethod
    def cache_tensor(op_block: str, which: str, bidx: int) -> str:
        """``<layer>.k_cache#<sequence>`` / ``v_cache``: ``[positions, kv_width]`` per sequence."""
        return f"{op_block}.{which}_cache#{bidx}"

    def kv_cache_bytes_per_pe(self, positions: int) -> int:
        """The fullest PE's share of one layer's K and V cache holding ``positions`` positions per sequence: on
        tile (i, j), its positions over PE rows and its KV heads' columns over PE columns."""
        g, dh = self.grid, self.graph.config.head_dim
        e = split(positions, self.TR)
        return max(self.graph.batch * ceil_div(e[i + 1] - e[i], g.height(i))
                   * ceil_div(2 * len(self.kv_heads_of(j)) * dh, g.width(j)) * self.b
                   for i in range(self.TR) for j in range(self.TC))

    def attn_decode(self, op: OpSpec) -> OpPlan:
        """Decode attention (flash-decoding on the grid): the new token's q | k | v move to their head columns,
        get rotated (rotary models), k and v are appended to the cache row that holds position ``context``, q is
        broadcast down the column, every tile scores its cache rows and keeps (max, sum, weighted V), and the
        partials are reduced up each column (a binary tree over PE rows inside a tile, then a chain across tile
        rows) before the context returns to the block layout."""
        g, TR, TC, b = self.grid, self.TR, self.TC, self.b
        cfg = self.graph.config
        d, dh, C = cfg.d_model, cfg.head_dim, self.graph.context
        qkv = op.inputs[0]
        qk, k0 = self.qk_tensor(op.block)
        v0 = d + cfg.kv_width
        scale = 1.0 / math.sqrt(dh)
        t = Builder()
        redist = {i: self._to_head_columns(t, i, "new q,k,v to head columns") for i in range(TR)
                  if self.rows(i)[1] > self.rows(i)[0]}
        home: dict[int, list[int]] = {i: [] for i in redist}
        for j in range(TC):
            heads, kvs = self.heads_of(j), self.kv_heads_of(j)
            if not heads:
                continue
            ready = {i: (self._rope(t, op, i, j, (r,), lambda bidx, lo: C) if cfg.is_llama else r)
                     for i, r in redist.items()}
            append = []
            for i in redist:
                for bidx, lo, _ in self.segments(i):
                    for kv in kvs:
                        for which, src0 in (("k", k0), ("v", v0)):
                            src = qk if which == "k" else qkv
                            dst = Ref(self.cache_tensor(op.block, which, bidx), (C, C + 1), (kv * dh, (kv + 1) * dh))
                            new = Ref(src, (lo, lo + 1), (src0 + kv * dh, src0 + (kv + 1) * dh))
                            append.append(Elementwise("copy", dst, (new,)))
            width = (len(heads) + 2 * len(kvs)) * dh
            bcast = t.add(TaskKind.TRANSFER, deps=tuple(ready.values()), label=f"q down col {j}, k,v to cache",
                          links=self.col_transfer_links(j),
                          bytes_per_lane=ceil_div(self.M * width * b, g.width(j)),
                          hops=g.col_hops(0, TR - 1), nbytes=self.M * width * b * (TR - 1), actions=tuple(append))
            partials: dict[int, int] = {}
            bufs: dict[tuple[int, int], list[str]] = {}
            for i in range(TR):
                p0, p1 = self.cache_rows(i)
                if p1 == p0:
                    continue
                acts = []
                for bidx in range(self.graph.batch):
                    t_row = bidx  # decode: token row = sequence index
                    for h in heads:
                        kv = self.kv_head(h)
                        key = f"{op.block}.part#{bidx},{h},{i}"
                        bufs.setdefault((bidx, h), []).append(key)
                        cols = (kv * dh, (kv + 1) * dh)
                        acts.append(DecodeAttnPartial(
                            key, Ref(qk, (t_row, t_row + 1), (h * dh, (h + 1) * dh)),
                            Ref(self.cache_tensor(op.block, "k", bidx), (p0, p1), cols),
                            Ref(self.cache_tensor(op.block, "v", bidx), (p0, p1), cols), scale))
                work = self.graph.batch * ceil_div(p1 - p0, g.height(i)) * ceil_div(len(heads) * dh, g.width(j))
                partials[i] = t.add(TaskKind.COMPUTE, deps=(bcast,), tile=(i, j), label="attend to cache rows",
                                    macs_per_pe=2 * work,
                                    elem_ops_per_pe=FLOPS_PER_ELEM[OpKind.SOFTMAX] * work // dh + 1,
                                    actions=tuple(acts))
            # Reduce: a binary tree over each tile's PE rows, then a chain up the column to tile row 0.
            vec = self.M * len(heads) * (dh + 2) * ACC_BYTES
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
        self._context_home(t, lambda i: home.get(i, []), "context back to owners")
        sram = max(self.resident_bytes_per_pe([cfg.qkv_width, d], i, j) + ceil_div(self.M * (len(self.heads_of(j))
                   + 2 * len(self.kv_heads_of(j))) * cfg.head_dim * b, g.pes((i, j)))
                   + ceil_div(self.M * len(self.heads_of(j)) * (dh + 2) * ACC_BYTES, g.width(j))
                   for i in range(TR) for j in range(TC))
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, "q, new k/v and attention partials (the KV cache "
                                                                  "is counted with the resident bytes)"),
                      notes=f"KV cache of {self.graph.cache_positions} positions over tile rows, KV heads on columns")
