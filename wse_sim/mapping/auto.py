"""The auto-mapper: per matmul, the mapping with the fewest simulated cycles that fits in SRAM.

For each candidate tile grid shape and each distinct matmul shape (memoized: a 40-layer model has five), every
mapping plans the op on the shared block layout; the analytical bound of :mod:`.estimate` ranks the candidates
and the discrete-event engine confirms them in that order, stopping once the next bound cannot beat the best
simulated time (branch and bound). Resident-weight choices then share the SRAM left by the largest working
set; when the weights chosen to stay resident do not fit, the ops that gain least per byte fall back to weight
streaming. The tile grid with the least total matmul time wins. Non-matmul ops use the weight-streaming
layout's plans in every case.

The engine is injected (``simulate``): the mapping layer never imports the simulator, so data still flows one
way; :func:`wse_sim.app.scenario.make_mapping` wires them together.

The decisions, with every runner-up's bound and simulated cycles (or why it was infeasible), go into the plan's
``params["decisions"]`` and from there into report.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ..arch import WaferSpec
from ..arch.costs import TaskCosts
from ..errors import UserError
from ..gc_pause import gc_paused
from ..workloads import OpKind, OpSpec, WorkloadGraph
from .estimate import bound_cycles
from .layout import BlockLayout
from .plan import DEFAULT_TILES, ModelPlan, OpPlan, SramOverflowError, TileGrid
from .registry import get_mapping, mapping_info, register
from .resident import ResidentLayout

# The search order (candidates with equal bounds are simulated in this order).
CANDIDATE_MAPPINGS = ("weight-streaming", "summa", "cannon", "meshgemm", "systolic", "gemv-tree", "gemv-allreduce")
# Tile grids tried when the user does not fix one (``--tiles``); PE-level granularity is too slow for whole models.
CANDIDATE_TILE_GRIDS = (DEFAULT_TILES, (12, 12))


# (wafer, plan) -> simulated cycles: the discrete-event engine, passed in by wse_sim.app.scenario.make_mapping.
Simulate = Callable[[WaferSpec, ModelPlan], int]


@dataclass
class Candidate:
    mapping: str
    bound_cycles: int | None = None
    simulated_cycles: int | None = None
    kept_bytes_per_pe: int = 0
    working_bytes_per_pe: int = 0
    infeasible: str | None = None
    plan: OpPlan | None = None
    op: OpSpec | None = None  # the op of this shape it was planned for (its footprint's)

    def as_dict(self) -> dict:
        out = {"mapping": self.mapping, "bound_cycles": self.bound_cycles, "simulated_cycles": self.simulated_cycles,
               "kept_bytes_per_pe": self.kept_bytes_per_pe}
        if self.infeasible:
            out["infeasible"] = self.infeasible
        elif self.simulated_cycles is None:
            out["pruned"] = "bound above the best simulated time"
        return out


@dataclass
class Search:
    grid: TileGrid
    layouts: dict
    memo: dict  # shape key -> [Candidate]
    chosen: dict  # shape key -> Candidate
    demoted: dict  # shape key -> mapping it would have had without the SRAM limit
    total_cycles: int


def _shape_key(op: OpSpec) -> tuple:
    return (op.m, op.k, op.n, op.bias is not None)


def resident_candidates() -> tuple[str, ...]:
    """The resident candidates, GEMV mappings first (serving decodes): what serving's auto-mapper tries."""
    resident = (name for name in CANDIDATE_MAPPINGS if mapping_info(name).resident)
    return tuple(sorted(resident, key=lambda name: not mapping_info(name).gemv))


def streaming_mapping() -> str:
    """The candidate mapping that streams weights: non-matmul ops are planned on its layout."""
    return next(name for name in CANDIDATE_MAPPINGS if not mapping_info(name).resident)


def streaming_candidate(candidates: list[Candidate]) -> Candidate:
    """The candidate that keeps no weight resident: always feasible, the last resort when SRAM runs out."""
    return next(c for c in candidates if not mapping_info(c.mapping).resident)


@register("auto", searches=True)
class Auto:
    name = "auto"

    def __init__(self, simulate: Simulate | None = None, candidates: tuple[str, ...] = CANDIDATE_MAPPINGS,
                 tile_grids=None, fixed_tiles: bool = False):
        self.simulate = simulate  # the engine, injected from above (mappings never import the simulator)
        self.candidates = candidates
        self.tile_grids = tile_grids  # None: the grid given to plan() plus CANDIDATE_TILE_GRIDS
        self.fixed_tiles = fixed_tiles  # the user fixed the tile grid: search no other

    def plan(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid, fixed_tiles: bool | None = None
             ) -> ModelPlan:
        best = None
        errors = []
        for tr, tc in self.grid_shapes(grid, self.fixed_tiles if fixed_tiles is None else fixed_tiles):
            g = TileGrid.make(grid.rows, grid.cols, tr, tc)
            try:
                search = self.search(graph, wafer, g)
            except UserError as exc:
                errors.append(f"{tr}x{tc} tiles: {exc}")
                continue
            if best is None or search.total_cycles < best.total_cycles:
                best = search
        if best is None:
            raise UserError("auto: no mapping fits on any tile grid tried: " + "; ".join(errors))
        return self.build(graph, wafer, best)

    def grid_shapes(self, grid: TileGrid, fixed_tiles: bool) -> list[tuple[int, int]]:
        if fixed_tiles:
            return [grid.shape]
        shapes = [grid.shape, *(self.tile_grids or CANDIDATE_TILE_GRIDS)]
        return list(dict.fromkeys((min(tr, grid.rows), min(tc, grid.cols)) for tr, tc in shapes))

    @gc_paused()  # plans and simulations allocate many objects and no cycles: see wse_sim.gc_pause
    def search(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> Search:
        """Rank and simulate the candidates of every distinct matmul shape on one tile grid."""
        if self.simulate is None:
            raise UserError("auto needs a simulator to confirm its estimates: build it with "
                            "wse_sim.app.scenario.make_mapping('auto')")
        layouts = {name: get_mapping(name).layout(graph, wafer, grid) for name in self.candidates
                   if not (mapping_info(name).square_tiles and grid.tile_rows != grid.tile_cols)}

        def simulate(op_plan: OpPlan) -> int:
            return self.simulate(wafer, ModelPlan(mapping=self.name, grid=grid, precision=graph.precision,
                                                  ops=(op_plan,)))

        costs = TaskCosts(wafer, graph.precision)  # every candidate's tasks priced once per distinct task
        memo: dict[tuple, list[Candidate]] = {}
        count: dict[tuple, int] = {}
        plans: dict[tuple, dict[str, OpPlan]] = {}  # shape key -> feasible candidates' plans, for the SRAM fallback
        for op in graph.ops():
            if op.kind != OpKind.MATMUL:
                continue
            key = _shape_key(op)
            count[key] = count.get(key, 0) + 1
            if key in memo:
                continue
            cands = [self._rank(name, ctx, op, costs) for name, ctx in layouts.items()]
            best_sim = self._confirm(cands, simulate)
            plans[key] = {c.mapping: c.plan for c in cands if c.plan is not None}
            for c in cands:
                c.plan = None  # plans hold real op names; the final plan is built per op in build()
            if best_sim is None:
                raise UserError(f"no mapping fits op {op.name}: " + "; ".join(f"{c.mapping}: {c.infeasible}"
                                                                             for c in cands))
            memo[key] = cands

        chosen = {key: min((c for c in cands if c.simulated_cycles is not None),
                           key=lambda c: (c.simulated_cycles, c.mapping)) for key, cands in memo.items()}
        demoted = self._fit_resident(memo, chosen, count, lambda k, c: simulate(plans[k][c.mapping]),
                                     wafer.sram_bytes_per_pe)
        total = sum(count[k] * self._estimate(chosen[k]) for k in memo)
        return Search(grid, layouts, memo, chosen, demoted, total)

    @staticmethod
    def _rank(name: str, ctx: BlockLayout, op: OpSpec, costs: TaskCosts) -> Candidate:
        """Candidate ``name`` for ``op``: its plan and analytical bound (tasks priced by ``costs``, on the
        search's wafer and precision), or why it does not fit."""
        wafer = costs.wafer
        c = Candidate(name, op=op)
        try:
            plan = ctx.matmul(op)
            c.bound_cycles = bound_cycles(wafer, costs.precision, plan, costs)
            c.working_bytes_per_pe = plan.sram_bytes_per_pe
            if isinstance(ctx, ResidentLayout):
                c.kept_bytes_per_pe = ctx.kept_bytes_per_pe(op)
                if c.kept_bytes_per_pe + plan.sram_bytes_per_pe > wafer.sram_bytes_per_pe:
                    raise SramOverflowError(op.name, c.kept_bytes_per_pe + plan.sram_bytes_per_pe,
                                            wafer.sram_bytes_per_pe, "resident weights + working set")
            c.plan = plan
        except (SramOverflowError, UserError) as exc:
            c.infeasible = str(exc)
        return c

    @staticmethod
    def _confirm(cands: list[Candidate], simulate: Callable[[OpPlan], int]) -> int | None:
        """Simulate the feasible candidates in order of their bounds until the next bound cannot beat the best
        simulated time (branch and bound); returns that time (None: nothing feasible)."""
        best_sim = None
        for c in sorted((c for c in cands if c.plan is not None), key=lambda c: c.bound_cycles):
            if best_sim is not None and c.bound_cycles >= best_sim:
                break  # pruned: its lower bound cannot beat what is already simulated
            c.simulated_cycles = simulate(c.plan)
            best_sim = c.simulated_cycles if best_sim is None else min(best_sim, c.simulated_cycles)
        return best_sim

    def _fit_resident(self, memo: dict, chosen: dict, count: dict, simulate: Callable[[tuple, Candidate], int],
                      sram: int) -> dict[tuple, str]:
        """Resident weights of all ops chosen resident must fit beside the largest working set. Until they do, the
        shape that loses least per byte freed moves (in ``chosen``) to its best candidate with a smaller
        footprint (weight streaming keeps nothing resident, so this ends). Returns {shape key: mapping it had}."""
        demoted: dict[tuple, str] = {}
        while True:
            kept = {k: c for k, c in chosen.items() if c.kept_bytes_per_pe}
            reserved = sum(count[k] * c.kept_bytes_per_pe for k, c in kept.items())
            working = max((c.working_bytes_per_pe for c in kept.values()), default=0)
            if not kept or reserved + working <= sram:
                return demoted

            def fallback(k):
                smaller = [c for c in memo[k] if not c.infeasible and c.kept_bytes_per_pe < chosen[k].kept_bytes_per_pe]
                return min(smaller, key=self._estimate) if smaller else None

            def loss_per_byte(k):
                fb = fallback(k)
                if fb is None:
                    return float("inf")
                freed = count[k] * (chosen[k].kept_bytes_per_pe - fb.kept_bytes_per_pe)
                return (self._estimate(fb) - self._estimate(chosen[k])) / freed

            k = min(kept, key=loss_per_byte)
            fb = fallback(k)
            if fb is None:
                return demoted  # nothing smaller fits; build() reports the overflow
            if fb.simulated_cycles is None:
                fb.simulated_cycles = simulate(k, fb)
            demoted.setdefault(k, chosen[k].mapping)
            chosen[k] = fb

    @gc_paused()
    def build(self, graph: WorkloadGraph, wafer: WaferSpec, search: Search) -> ModelPlan:
        """Plan every op with the chosen mappings; if SRAM still overflows, demote more shapes and retry."""
        layouts, memo, chosen = search.layouts, search.memo, dict(search.chosen)
        demoted = dict(search.demoted)  # shape key -> the mapping it had before SRAM forced a smaller one
        streaming = streaming_mapping()
        base = get_mapping(streaming).layout(graph, wafer, search.grid)
        ops = list(graph.ops())
        while True:
            kept = {k for k, c in chosen.items() if c.kept_bytes_per_pe}
            reserved = sum(chosen[_shape_key(o)].kept_bytes_per_pe for o in ops
                           if o.kind == OpKind.MATMUL and _shape_key(o) in kept)
            for ctx in (*layouts.values(), base):
                ctx.reserved_bytes_per_pe = reserved
            try:
                op_plans = []
                for op in ops:
                    if op.kind != OpKind.MATMUL:
                        op_plans.append(base.plan_op(op))
                        continue
                    key = _shape_key(op)
                    name = chosen[key].mapping if key in kept else streaming
                    p = (layouts[name] if name in layouts else base).matmul(op)
                    op_plans.append(replace(p, notes=f"auto chose {name}: {p.notes}"))
                break
            except SramOverflowError:
                if not kept:
                    raise
                k = min(kept, key=lambda k: chosen[k].kept_bytes_per_pe)
                demoted.setdefault(k, chosen[k].mapping)
                chosen[k] = streaming_candidate(memo[k])
        decisions = []
        for key, cands in memo.items():
            names = [op.name for op in ops if op.kind == OpKind.MATMUL and _shape_key(op) == key]
            entry = {"shape_mkn": list(key[:3]), "ops": names, "chosen": chosen[key].mapping,
                     "candidates": [c.as_dict() for c in cands]}
            if key in demoted:
                entry["instead_of"] = demoted[key]
                entry["why"] = (f"{demoted[key]} was faster, but the resident weights of all ops did not fit in SRAM; "
                                f"{chosen[key].mapping} lost least per byte freed")
            else:
                entry["why"] = "fewest simulated cycles among the candidates that fit"
            decisions.append(entry)
        for d in decisions:
            d["ops"] = d["ops"] if len(d["ops"]) <= 4 else [*d["ops"][:3], f"... {len(d['ops'])} ops"]
        return ModelPlan(mapping=self.name, grid=search.grid, precision=graph.precision, ops=tuple(op_plans),
                         params={"tile_grid": list(search.grid.shape), "estimated_matmul_cycles": search.total_cycles,
                                 "decisions": decisions},
                         resident_bytes_per_pe=reserved)

    @staticmethod
    def _estimate(c: Candidate) -> int:
        """Simulated cycles when confirmed, else the analytical bound."""
        return c.simulated_cycles if c.simulated_cycles is not None else c.bound_cycles
