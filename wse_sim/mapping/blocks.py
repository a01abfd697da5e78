"""The block layout every mapping shares: where each activation row, column, attention head and KV-cache position
lives on the grid, and what that costs in SRAM.

Every activation tensor ``[tokens, width]`` is resident on the grid, its token rows split over tile rows and its
feature columns over tile columns (balanced splits, so any shape works); inside a tile, over its PEs the same
way. Each tile column owns the KV heads ``g % TC == j`` (and their query heads); KV-cache positions split over
tile rows. The op planners (:mod:`.ops_elementwise`, :mod:`.ops_attention`, :mod:`.ops_decode`) and the matmul
algorithms build their tasks on this geometry with a :class:`Builder`.
"""

from __future__ import annotations

from ..arch import WaferSpec
from ..precision import BYTES_PER_ELEM
from ..workloads import OpKind, OpSpec, WorkloadGraph
from .collectives import Message, route
from .plan import SramOverflowError, Task, TaskKind, TileGrid, ceil_div, memo_method, split

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
        self.tasks.append(Task.of(kind, **kw))
        return len(self.tasks) - 1

    def send(self, messages: list[Message], deps: tuple[int, ...] = (), **kw) -> tuple[int, ...]:
        """One transfer for a set of messages routed on the grid (its links, busiest-link load, longest route and
        turns); ``()`` when nothing leaves its tile."""
        r = route(self.grid, messages)
        if r.empty:
            return ()
        return (self.add(TaskKind.TRANSFER, deps=deps, links=r.links, bytes_per_lane=r.bytes_per_lane, hops=r.hops,
                         turns=r.turns, nbytes=r.nbytes, **kw),)

    def finish(self, trailing: frozenset[int] = frozenset()) -> tuple[Task, ...]:
        """The tasks, closed by the op's end: a barrier after every task but ``trailing`` (tasks that run on
        past the op's end, e.g. a weight gradient's stream-outs overlapping the ops after it)."""
        self.add(TaskKind.BARRIER, deps=tuple(x for x in range(len(self.tasks)) if x not in trailing), label="end")
        return tuple(self.tasks)


class Blocks:
    """The block layout of ``graph``'s activations on ``grid``: rows, columns, heads and cache positions per tile
    and per PE, and the SRAM checks every planner shares.

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
    # ---- attention heads ------------------------------------------------------------------------------------
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


    # ---- the KV cache ---------------------------------------------------------------------------------------
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

