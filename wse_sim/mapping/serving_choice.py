"""The auto-mapper's choice for serving, made with the whole model's SRAM in view.

The search (:class:`.auto.Auto`) ranks each matmul shape's resident candidates on one layer; a fast candidate
may replicate weights (``systolic`` keeps a copy per tile row) so that one layer fits a region but the whole
model, packed into the wafer's regions, does not. Here every combination of the shapes' candidates (less those
another candidate beats on time, kept bytes and working set at once) is judged by the per-stage SRAM needs of
all layers, the KV cache and the working sets, packed into the regions of the given wafers as the placement
packs them: the fastest combination the placement accepts wins; when none fits, the one that needs the fewest
wafers (then the fastest) is returned, so the placement's refusal names the fewest wafers any mapping needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

from ..workloads import OpKind, OpSpec, WorkloadGraph
from .placement import stage_count, stage_of

ShapeKey = tuple  # (m, k, n, has bias): one matmul shape, as the auto-mapper memoizes it
# Combinations judged at most (the candidates that no other beats on every count are few: about 3^5 in practice).
MAX_COMBINATIONS = 20_000


def shape_key(op: OpSpec) -> ShapeKey:
    return (op.m, op.k, op.n, op.bias is not None)


@dataclass(frozen=True)
class Option:
    """One candidate mapping of one matmul shape: its time and the SRAM per PE it takes in a region."""

    mapping: str
    cycles: int  # simulated when the search confirmed it, else its analytical lower bound
    simulated: bool
    kept_bytes_per_pe: int
    working_bytes_per_pe: int

    def beaten_by(self, other: Option) -> bool:
        """``other`` is no slower and takes no more SRAM (kept or working), and is better on one count or, equal
        on all, ranks first."""
        mine = (self.cycles, self.kept_bytes_per_pe, self.working_bytes_per_pe)
        theirs = (other.cycles, other.kept_bytes_per_pe, other.working_bytes_per_pe)
        if other.mapping == self.mapping or any(t > m for t, m in zip(theirs, mine, strict=True)):
            return False
        return theirs != mine or _rank(other) < _rank(self)


def options(candidates: list) -> list[Option]:
    """The feasible candidates of one shape (``auto`` Candidates ranked in the region: their kept and working
    bytes per PE are the shape's footprint there), fastest first, those beaten on every count dropped."""
    out = []
    for c in candidates:
        if c.infeasible or c.bound_cycles is None:
            continue
        simulated = c.simulated_cycles is not None
        out.append(Option(c.mapping, c.simulated_cycles if simulated else c.bound_cycles, simulated,
                          c.kept_bytes_per_pe, c.working_bytes_per_pe))
    kept_options = [o for o in out if not any(o.beaten_by(p) for p in out)]
    return sorted(kept_options, key=_rank)


def _rank(o: Option) -> tuple:
    return (o.cycles, not o.simulated, o.mapping)


@dataclass(frozen=True)
class StageShape:
    """What one stage holds: the fixed part (non-matmul parameters, their largest working set) and its matmuls."""

    kept_bytes_per_pe: int
    working_bytes_per_pe: int
    matmuls: tuple[ShapeKey, ...]


def stage_shapes(graph: WorkloadGraph, fixed: Callable[[OpSpec], tuple[int, int]]) -> list[StageShape]:
    """Per stage (layers, then the head), its fixed footprint (``fixed(op) -> (kept, working)`` of a non-matmul
    op) and matmul shapes."""
    n = stage_count(graph)
    kept, working, mm = [0] * n, [0] * n, [[] for _ in range(n)]
    for op in graph.ops():
        s = stage_of(op)
        if op.kind == OpKind.MATMUL:
            mm[s].append(shape_key(op))
            continue
        k, w = fixed(op)
        kept[s] += k
        working[s] = max(working[s], w)
    return [StageShape(kept[s], working[s], tuple(mm[s])) for s in range(n)]


@dataclass(frozen=True)
class Choice:
    """The chosen mapping per shape, the estimated matmul cycles of the whole pass, and the fastest per shape
    (what each shape would have had without the whole-model SRAM limit)."""

    mappings: dict
    cycles: int
    fastest: dict
    fits: bool
    wafers_needed: int | None


def choose(shapes: list[StageShape], opts: dict[ShapeKey, list[Option]],
           needs_fit: Callable[[list[tuple[int, int]]], bool],
           wafers_needed: Callable[[list[tuple[int, int]]], int | None]) -> Choice:
    """The fastest combination whose stage needs fit (``needs_fit([(kept, working) per stage])``); else the one
    needing the fewest wafers, then the fastest."""
    keys = list(opts)
    count = {k: sum(s.matmuls.count(k) for s in shapes) for k in keys}
    combos = list(product(*(opts[k] for k in keys)))
    if len(combos) > MAX_COMBINATIONS:  # keep each shape's fastest and smallest options only
        opts = {k: _ends(v) for k, v in opts.items()}
        combos = list(product(*(opts[k] for k in keys)))
    ranked = sorted(combos, key=lambda combo: (sum(count[k] * o.cycles for k, o in zip(keys, combo, strict=True)),
                                               [_rank(o) for o in combo]))
    fastest = {k: opts[k][0].mapping for k in keys}
    memo: dict[tuple, list[tuple[int, int]]] = {}

    def needs(combo) -> list[tuple[int, int]]:
        by = dict(zip(keys, combo, strict=True))
        sig = tuple((o.kept_bytes_per_pe, o.working_bytes_per_pe) for o in combo)
        if sig not in memo:
            memo[sig] = [(s.kept_bytes_per_pe + sum(by[k].kept_bytes_per_pe for k in s.matmuls),
                          max([s.working_bytes_per_pe, *(by[k].working_bytes_per_pe for k in s.matmuls)]))
                         for s in shapes]
        return memo[sig]

    def result(combo, fits, wafers):
        cycles = sum(count[k] * o.cycles for k, o in zip(keys, combo, strict=True))
        return Choice({k: o.mapping for k, o in zip(keys, combo, strict=True)}, cycles, fastest, fits, wafers)

    for combo in ranked:
        if needs_fit(needs(combo)):
            return result(combo, True, None)
    best, best_w = ranked[0], None
    seen: dict[tuple, int | None] = {}
    for combo in ranked:
        sig = tuple((o.kept_bytes_per_pe, o.working_bytes_per_pe) for o in combo)
        if sig not in seen:
            seen[sig] = wafers_needed(needs(combo))
        w = seen[sig]
        if w is not None and (best_w is None or w < best_w):
            best, best_w = combo, w
    return result(best, False, best_w)


def smallest(shapes: list[StageShape], opts: dict[ShapeKey, list[Option]], region_pes: int, pes: int) -> Choice:
    """The combination that leaves the most SRAM for a KV cache (``wse-sim capacity``): the fewest bytes kept
    over all stages' regions of ``region_pes`` PEs plus the largest working set on each of the ``pes`` PEs, then
    the fastest."""
    keys = list(opts)
    count = {k: sum(s.matmuls.count(k) for s in shapes) for k in keys}

    def cost(combo):
        by = dict(zip(keys, combo, strict=True))
        kept = sum(count[k] * by[k].kept_bytes_per_pe for k in keys)
        working = max([0, *(s.working_bytes_per_pe for s in shapes), *(o.working_bytes_per_pe for o in combo)])
        return kept * region_pes + working * pes, sum(count[k] * by[k].cycles for k in keys), \
            [_rank(o) for o in combo]

    best = min(product(*(_ends(opts[k]) for k in keys)), key=cost)
    return Choice({k: o.mapping for k, o in zip(keys, best, strict=True)}, cost(best)[1],
                  {k: opts[k][0].mapping for k in keys}, True, None)


def _ends(opts: list[Option]) -> list[Option]:
    """The fastest option and those with the fewest kept bytes and the smallest working set."""
    kept = min(opts, key=lambda o: (o.kept_bytes_per_pe, o.working_bytes_per_pe, _rank(o)))
    working = min(opts, key=lambda o: (o.working_bytes_per_pe, o.kept_bytes_per_pe, _rank(o)))
    return list(dict.fromkeys([opts[0], kept, working]))
