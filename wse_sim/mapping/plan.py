"""Mapping plans: what each tile computes and what moves over which links, as a task DAG per operator.

A plan is data, not code: the engine (``wse_sim.sim``) runs any plan without knowing which mapping made it,
and the numerics executor interprets the ``actions`` attached to tasks. Tasks of one op refer to each other by
index; the engine adds the dependencies between ops (see ``wse_sim.sim.engine``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cache, lru_cache

from ..arch.costs import TaskKind
from ..errors import UserError
from ..workloads import OpSpec

Tile = tuple[int, int]  # (tile row, tile col)
DEFAULT_TILES = (8, 8)  # tile rows x columns when a run names none (capped by its grid)
Link = tuple[Tile, Tile]  # directed link between adjacent tiles


@lru_cache(maxsize=4096)
def split(n: int, parts: int) -> tuple[int, ...]:
    """Balanced partition edges of ``range(n)`` into ``parts`` pieces (the first ``n % parts`` get one more)."""
    base, extra = divmod(n, parts)
    edges = [0]
    for p in range(parts):
        edges.append(edges[-1] + base + (1 if p < extra else 0))
    return tuple(edges)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class memo_method:  # a decorator, named like functools.cached_property
    """Memoise a method per instance, freed with it (``functools.cache`` on a method keeps every instance it has
    seen alive for the life of the process: a sweep's layouts, each with its graph). On first access the
    instance gets its own ``functools.cache`` of the bound method, so later calls cost what ``cache`` costs."""

    def __init__(self, method):
        self.method = method
        self.name = method.__name__
        self.__doc__ = method.__doc__

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        bound = obj.__dict__[self.name] = cache(self.method.__get__(obj, objtype))
        return bound


@dataclass(frozen=True)
class TileGrid:
    """A region of ``rows x cols`` PEs cut into tiles at the given PE-row and PE-column edges."""

    rows: int
    cols: int
    row_edges: tuple[int, ...]
    col_edges: tuple[int, ...]

    @classmethod
    def make(cls, rows: int, cols: int, tile_rows: int, tile_cols: int) -> TileGrid:
        tile_rows, tile_cols = min(tile_rows, rows), min(tile_cols, cols)
        return cls(rows, cols, split(rows, tile_rows), split(cols, tile_cols))

    def __hash__(self) -> int:
        """The hash of the fields (as the dataclass would compute it), computed once: grids key the path and hop
        caches below and the planners' route cache, which hash them on every lookup."""
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.rows, self.cols, self.row_edges, self.col_edges))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def tile_rows(self) -> int:
        return len(self.row_edges) - 1

    @property
    def tile_cols(self) -> int:
        return len(self.col_edges) - 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.tile_rows, self.tile_cols

    def height(self, i: int) -> int:
        return self.row_edges[i + 1] - self.row_edges[i]

    def width(self, j: int) -> int:
        return self.col_edges[j + 1] - self.col_edges[j]

    def pes(self, tile: Tile) -> int:
        return self.height(tile[0]) * self.width(tile[1])

    def tiles(self):
        for i in range(self.tile_rows):
            for j in range(self.tile_cols):
                yield (i, j)

    @cache  # noqa: B019  (TileGrid is frozen and hashable)
    def row_path(self, i: int, j_from: int, j_to: int) -> tuple[Link, ...]:
        """Links crossed going along tile row ``i`` from column ``j_from`` to ``j_to``."""
        step = 1 if j_to >= j_from else -1
        return tuple(((i, j), (i, j + step)) for j in range(j_from, j_to, step))

    @cache  # noqa: B019  (TileGrid is frozen and hashable)
    def col_path(self, j: int, i_from: int, i_to: int) -> tuple[Link, ...]:
        step = 1 if i_to >= i_from else -1
        return tuple(((i, j), (i + step, j)) for i in range(i_from, i_to, step))

    @cache  # noqa: B019  (TileGrid is frozen and hashable)
    def row_hops(self, j_from: int, j_to: int) -> int:
        """PE hops between the far edges of two tiles in a row (a message crosses every PE column between)."""
        lo, hi = min(j_from, j_to), max(j_from, j_to)
        return self.col_edges[hi + 1] - self.col_edges[lo] - 1

    @cache  # noqa: B019  (TileGrid is frozen and hashable)
    def col_hops(self, i_from: int, i_to: int) -> int:
        lo, hi = min(i_from, i_to), max(i_from, i_to)
        return self.row_edges[hi + 1] - self.row_edges[lo] - 1


# ---- numeric actions: what a task computes on real data (interpreted by wse_sim.sim.numerics) ------------------

Span = tuple[int, int]  # half-open index range


@dataclass(frozen=True)
class Ref:
    """A block of a named tensor: ``tensor[rows[0]:rows[1], cols[0]:cols[1]]`` (optionally transposed)."""

    tensor: str
    rows: Span
    cols: Span
    transpose: bool = False


@dataclass(frozen=True)
class MatmulBlock:
    """``buffers[out] = a @ b`` with fp32 accumulation (one tile's partial product)."""

    out: str
    a: Ref
    b: Ref
    scale: float = 1.0
    round_output: bool = False  # True when the product is stored (attention scores), not a partial sum
    accumulate: bool = False  # add into ``out`` (a tile's fp32 accumulator across k-steps) instead of replacing


@dataclass(frozen=True)
class ReduceWrite:
    """Sum partial buffers in the mapping's order, add a bias block, round to storage and write to ``dst``.

    ``groups`` are left-folded one by one, then the group sums are left-folded: a bidirectional chain to a root
    is ``((west..., own), (east...))``.
    """

    dst: Ref
    groups: tuple[tuple[str, ...], ...]
    bias: Ref | None = None


@dataclass(frozen=True)
class Combine:
    """``buffers[out] = keys[0] + keys[1] + ...`` in fp32, left to right: one stage of a reduction tree.

    ``out`` is usually ``keys[0]`` (the receiving tile's own partial); the other buffers are dropped."""

    out: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Elementwise:
    """A row-block elementwise op: ``dst = fn(srcs...)`` on ``rows x cols`` (layernorm needs whole rows)."""

    fn: str  # "layernorm" | "rmsnorm" | "gelu" | "swiglu" | "add" | "copy" | "embedding"
    dst: Ref
    srcs: tuple[Ref, ...]
    params: tuple[Ref, ...] = ()  # gamma/beta for layernorm


@dataclass(frozen=True)
class SoftmaxBlock:
    """Causal softmax of a scores buffer whose first row is query ``q_offset`` of its sequence."""

    buf: str
    q_offset: int


@dataclass(frozen=True)
class ContextWrite:
    """``dst = buffers[probs] @ v`` for one head and row block, rounded to storage."""

    dst: Ref
    probs: str
    v: Ref


@dataclass(frozen=True)
class Rope:
    """``dst = rope(src)``: rotary embedding of whole heads; row ``r`` of ``src`` is at position ``pos0 + r``."""

    dst: Ref
    src: Ref
    pos0: int


@dataclass(frozen=True)
class DecodeAttnPartial:
    """One tile's share of decode attention for one query and head over the cache rows it holds (flash-decoding):
    ``buffers[buf] = (max score, sum of exp, exp-weighted sum of V rows)`` in fp32."""

    buf: str
    q: Ref
    k: Ref
    v: Ref
    scale: float


@dataclass(frozen=True)
class DecodeAttnCombine:
    """Merge partials (left to right, rescaling by their maxima), normalise, round to storage, write ``dst``."""

    dst: Ref
    bufs: tuple[str, ...]


@dataclass(frozen=True)
class Free:
    """Drop buffers no longer needed (keeps memory bounded on big runs)."""

    keys: tuple[str, ...]


Action = (MatmulBlock | ReduceWrite | Combine | Elementwise | SoftmaxBlock | ContextWrite | Rope | DecodeAttnPartial
          | DecodeAttnCombine | Free)


# ---- tasks ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    kind: TaskKind
    deps: tuple[int, ...] = ()
    label: str = ""
    tile: Tile | None = None
    macs_per_pe: int = 0
    elem_ops_per_pe: int = 0
    dsd_ops_per_pe: int = 0  # compute: vector (DSD) instructions issued per PE, one per (k, n) of a GEMM block
    dsd_len: int = 0  # compute: elements per DSD instruction (the block's rows per PE, Mt)
    sw_steps: int = 0  # compute: PE-level GEMM steps it stands for; each costs the wafer's step software cycles
    links: tuple[Link, ...] = ()
    bytes_per_lane: float = 0.0
    hops: int = 0
    stages: int = 0  # receive-combine-send steps on the path (reductions); each costs the wafer's stage overhead
    turns: int = 0  # row-to-column turns on the longest route; each costs the wafer's turn cycles
    phases: int = 1  # transfer: fabric operations it stands for (PE-level steps); each costs the phase overhead
    nbytes: int = 0  # bytes delivered in total (stream, or transfer payload x destinations), for accounting
    frees_buffer_of: int | None = None  # barrier: index of the stream task whose weight buffer it releases
    actions: tuple[Action, ...] = ()
    ext_deps: tuple[tuple[int, int], ...] = ()  # (op index, task index) in earlier ops (ops with ``after``)
    wafer_link: int = -1  # interwafer: the link from wafer ``wafer_link`` to the next one
    link_share: int = 1  # transfer: most of its lanes sharing one physical link (detours; wse_sim.arch.defects)

    @classmethod
    def of(cls, kind: TaskKind, **given) -> Task:
        """``Task(kind=kind, **given)``, made from its fields directly like :meth:`without_actions`: planners
        build tens of thousands of tasks (a serving search about 16k per layer), and the frozen dataclass's
        ``__init__`` sets each of its 22 fields through ``object.__setattr__`` (2.7 us a task here, against 1.6).
        The same fields in the same order, so equal, hashed and copied alike."""
        if not _TASK_FIELDS.issuperset(given):
            raise TypeError(f"Task has no field(s) {', '.join(sorted(given.keys() - _TASK_FIELDS))}")
        task = object.__new__(cls)
        values = task.__dict__
        values["kind"] = kind
        values.update(_TASK_DEFAULTS)
        values.update(given)
        return task

    def without_actions(self) -> Task:
        """This task without numerics actions (what a timing-only run reads). Made from its fields directly: a
        13B plan strips about 11k tasks, and ``dataclasses.replace`` re-runs ``__init__`` for each (~20 us)."""
        if not self.actions:
            return self
        task = object.__new__(Task)
        task.__dict__.update(self.__dict__, actions=())
        return task

    def resources(self) -> tuple:
        """What the task holds while it runs (its cost's ``hold_cycles``): its tile, its links (sorted, each
        once), the MemoryX ingress port ``"memoryx"``, its egress port ``"memoryx_out"`` (a full-duplex link: see
        :func:`~wse_sim.arch.costs.stream_cycles`) or its inter-wafer link ``("interwafer", w)``; a barrier nothing."""
        kind = self.kind
        if kind == TaskKind.COMPUTE:
            return (self.tile,)
        if kind == TaskKind.TRANSFER:
            return tuple(sorted(set(self.links)))
        if kind == TaskKind.STREAM:
            return ("memoryx",)
        if kind == TaskKind.STREAM_OUT:
            return ("memoryx_out",)
        if kind == TaskKind.INTERWAFER:
            return (("interwafer", self.wafer_link),)
        return ()


# Every field of a Task but its kind, with its default, in declaration order (Task.of).
_TASK_DEFAULTS = {f.name: f.default for f in fields(Task) if f.name != "kind"}
_TASK_FIELDS = frozenset(_TASK_DEFAULTS)


@dataclass(frozen=True)
class OpPlan:
    """One operator on the grid: its tasks (the last one is the op's end) and its SRAM footprint.

    ``after=None`` (the default) runs the op in program order after the previous op. A tuple lists the earlier
    ops it waits for instead (possibly none), so ops on different regions can overlap (layer pipelining); such
    ops express finer waits with ``Task.ext_deps``.
    """

    op: OpSpec
    mapping: str
    tasks: tuple[Task, ...]
    sram_bytes_per_pe: int
    notes: str = ""
    after: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ModelPlan:
    mapping: str
    grid: TileGrid
    precision: str
    ops: tuple[OpPlan, ...]
    stream_buffers: int = 2
    params: dict = field(default_factory=dict)
    resident_bytes_per_pe: int = 0  # weights kept in SRAM for the whole run (resident-weight mappings)

    @property
    def streamed_bytes(self) -> int:
        """Bytes the plan streams from MemoryX (weights, embedding rows). Summed once per distinct task tuple:
        timing-only plans share them among ops (0.1 s less on a 13B run)."""
        per_tuple: dict[int, int] = {}
        total = 0
        for op in self.ops:
            b = per_tuple.get(id(op.tasks))
            if b is None:
                b = per_tuple[id(op.tasks)] = sum(t.nbytes for t in op.tasks if t.kind == TaskKind.STREAM)
            total += b
        return total

    @property
    def sram_peak_bytes_per_pe(self) -> int:
        return self.resident_bytes_per_pe + max(op.sram_bytes_per_pe for op in self.ops)


class SramOverflowError(UserError):
    """A plan needs more SRAM per PE than the wafer has."""

    def __init__(self, op_name: str, needed: int, available: int, detail: str = "", per_pe: bool = True):
        self.op_name, self.needed, self.available = op_name, needed, available
        if per_pe:
            msg = f"op {op_name} needs {needed:,} bytes of SRAM per PE but the wafer has {available:,}"
        else:
            msg = f"{op_name} needs {needed:,} bytes of SRAM in total but the grid has {available:,}"
        super().__init__(msg + (f" ({detail})" if detail else ""))
