"""Serving placement (WaferLLM-style): every weight resident, consecutive layers filling P x Q regions of the wafer.

``--grid PxQ`` is the region one layer's operators run on. The wafer holds ``floor(rows / P) * floor(cols / Q)``
such regions, visited in snake order so consecutive regions share an edge. Stages (layer 0 with the embedding,
each further layer, then the LM head) are packed into regions in order: a region takes the next stage while its
resident weights, its layers' KV cache and the largest working set still fit in every PE's SRAM, and the next
stage starts a new region otherwise. A token walks the regions in order: when consecutive stages sit in
different regions, the activations cross to the next region (every tile to the same tile of the next region,
counted on the links in between).

Inside a region, matmuls use the chosen resident mapping (``gemv-tree``, ``gemv-allreduce``, ... or ``auto``,
which ranks each matmul shape's candidates by simulated cycles on one layer and takes the fastest combination
the packing accepts with every stage in SRAM, :meth:`Serving.decide` and :mod:`.serving_choice`);
the KV cache is placed as :func:`.ops_decode.plan_attn_decode` reads it (positions over tile rows, KV heads
over tile columns).

With ``wafers`` > 1 (``--wafers N``) the stages are split layer-wise over N wafers in a pipeline: contiguous
stages, as even in count as the regions allow, each wafer's share packed into its own regions. A token leaves a
wafer from its last region: the activations cross the inter-wafer link (its bandwidth and latency are wafer
parameters) plus the PE hops from the region to the wafer's east edge and from the next wafer's west edge to
its first region (where a wafer's I/O meets its fabric is not published: the edges facing each other are an
assumption). Wafers sit side by side in the plan's tile grid, but no fabric link joins them.

When the model does not fit, planning fails with the regions needed and held (and the fewest wafers that
would hold it); with a KV cache the message also gives the longest context that fits. ``layer_subset`` (the
published practice) is applied by the caller: it lowers K layers and scales; see :func:`wse_sim.serve`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise

from ..arch import WaferSpec
from ..errors import UserError
from ..precision import BYTES_PER_ELEM
from ..workloads import OpKind, WorkloadGraph
from .auto import resident_candidates
from .collectives import Message
from .layout import Builder
from .placement import shift, stage_count, stage_of
from .plan import ModelPlan, OpPlan, SramOverflowError, Task, TaskKind, TileGrid, ceil_div, split
from .registry import get_mapping, mapping_info
from .resident import ResidentLayout
from .serving_choice import Choice, choose, options, shape_key, smallest, stage_shapes


def check_inner(name: str, what: str = "serving keeps weights resident") -> None:
    """A UserError unless ``name`` can run matmuls inside a serving region: a resident candidate, or a search."""
    if not mapping_info(name).searches and name not in resident_candidates():
        raise UserError(f"{what}: --mapping must be auto or one of {', '.join(resident_candidates())}, "
                        f"not {name!r}")


class DoesNotFit(UserError):
    """The model (weights, KV cache, working sets) needs more regions than the wafers hold."""


@dataclass(frozen=True)
class Region:
    """Region ``index`` in snake order at region row ``r``, region column ``c`` of the wafer."""

    index: int
    r: int
    c: int


def regions_on(wafer: WaferSpec, rows: int, cols: int) -> tuple[int, int]:
    """(region rows, region columns) of ``rows x cols`` regions that fit on the wafer's mesh."""
    return wafer.mesh_rows // rows, wafer.mesh_cols // cols


def snake(n: int, per_row: int) -> list[Region]:
    """The first ``n`` regions in boustrophedon order (left to right, then right to left, ...)."""
    out = []
    for k in range(n):
        r, c = divmod(k, per_row)
        out.append(Region(k, r, c if r % 2 == 0 else per_row - 1 - c))
    return out


@dataclass
class StageNeed:
    kept_bytes_per_pe: int = 0  # resident weights and norm parameters
    kv_bytes_per_pe: int = 0  # KV cache of the stage's layer (decode)
    working_bytes_per_pe: int = 0  # largest op working set

    def __add__(self, other: StageNeed) -> StageNeed:
        return StageNeed(self.kept_bytes_per_pe + other.kept_bytes_per_pe,
                         self.kv_bytes_per_pe + other.kv_bytes_per_pe,
                         max(self.working_bytes_per_pe, other.working_bytes_per_pe))

    @property
    def total(self) -> int:
        return self.kept_bytes_per_pe + self.kv_bytes_per_pe + self.working_bytes_per_pe


def pack(needs: list[StageNeed], sram_bytes_per_pe: int, first: int = 0) -> list[list[int]]:
    """Consecutive stages per region (numbered from ``first``): a region takes the next stage while the sum
    still fits."""
    groups: list[list[int]] = []
    held = working = 0  # the current region's kept and cached bytes, and its largest working set (StageNeed.__add__)
    for s, need in enumerate(needs, start=first):
        more, work = need.kept_bytes_per_pe + need.kv_bytes_per_pe, need.working_bytes_per_pe
        if groups and held + more + max(working, work) <= sram_bytes_per_pe:
            groups[-1].append(s)
            held, working = held + more, max(working, work)
        else:
            groups.append([s])
            held, working = more, work
    return groups


def assign_wafers(needs: list[StageNeed], sram: int, regions_per_wafer: int, wafers: int
                  ) -> list[list[list[int]]] | None:
    """Per wafer, its regions' stages; None when the stages do not fit ``wafers`` wafers.

    First try stages split evenly by count (balanced layers, so a pipeline's wafers take similar time), each
    share packed into that wafer's regions; when one share needs more regions than a wafer holds, deal the whole
    model's regions out to the wafers in order instead (as even in regions as possible)."""
    if any(n.total > sram for n in needs) or wafers > len(needs):
        return None
    edges = split(len(needs), wafers)
    per = [pack(needs[a:b], sram, first=a) for a, b in pairwise(edges)]
    if all(len(p) <= regions_per_wafer for p in per):
        return per
    groups = per[0] if wafers == 1 else pack(needs, sram)  # one wafer: its share is the whole model
    if len(groups) > regions_per_wafer * wafers or len(groups) < wafers:
        return None
    edges = split(len(groups), wafers)
    return [groups[a:b] for a, b in pairwise(edges)]


def wafers_needed(needs: list[StageNeed], sram: int, regions_per_wafer: int) -> int | None:
    """The fewest wafers that hold the stages (None: a stage alone overflows a PE's SRAM)."""
    if any(n.total > sram for n in needs):
        return None
    least = ceil_div(len(pack(needs, sram)), regions_per_wafer)  # packing a wafer's share never takes fewer regions
    return next((w for w in range(least, len(needs) + 1) if assign_wafers(needs, sram, regions_per_wafer, w)), None)


def _unnamed(op):
    """``op`` without what names it (its name, block, layer and inputs): ops alike in size plan alike."""
    return replace(op, name="", block="", layer=0, inputs=())


def decisions(candidates: dict, choice: Choice, wafers: int, n_regions: int) -> list[dict]:
    """The report's auto decisions: per matmul shape its candidates (ranked on one layer) and the mapping chosen,
    with why when the whole model's SRAM ruled out the fastest."""
    out = []
    for k, cands in candidates.items():
        entry = {"shape_mkn": list(k[:3]), "chosen": choice.mappings[k],
                 "why": "fewest simulated cycles on one layer among the resident candidates, and the whole model "
                        "fits the wafers with it",
                 "candidates": [c.as_dict() for c in cands]}
        if choice.mappings[k] != choice.fastest[k]:
            held = f"{wafers} wafer{'s' if wafers > 1 else ''} of {n_regions} region{'s' if n_regions > 1 else ''}"
            entry["instead_of"] = choice.fastest[k]
            entry["why"] = (f"{choice.fastest[k]} was fastest on one layer, but with every shape's fastest mapping "
                            f"the whole model did not fit {held}; this is the fastest combination that does"
                            if choice.fits else
                            f"{choice.fastest[k]} was fastest on one layer, but no combination fits {held}; this "
                            f"one needs the fewest wafers ({choice.wafers_needed})")
        out.append(entry)
    return out


class RegionFootprints:
    """SRAM footprints in one region of one pass's ops: ``(kept, working)`` bytes per PE, measured once per
    (mapping, op size). Ops alike in size plan alike (a plan reads an op's sizes, never its name or layer), and a
    layout's plans depend on the pass (precision, batch, sequence, context, the model's widths), the wafer and the
    region only, which is what :meth:`Serving.footprints_of` keys these by. Planned without SRAM checks (they only
    refuse) and with nothing reserved, as :meth:`Serving.bare_needs` sizes stages."""

    def __init__(self, graph: WorkloadGraph, wafer: WaferSpec, region: TileGrid):
        self.graph, self.wafer, self.region = graph, wafer, region
        self.layouts: dict[str, ResidentLayout] = {}
        self.known: dict[tuple, tuple[int, int]] = {}  # (mapping, op without its names) -> (kept, working)

    def layout(self, name: str) -> ResidentLayout:
        """Mapping ``name``'s layout of the pass in the region, its SRAM checks off."""
        if name not in self.layouts:
            self.layouts[name] = get_mapping(name).layout(self.graph, self.wafer, self.region)
            self.layouts[name].enforce_sram = False
        return self.layouts[name]

    def of(self, name: str, op) -> tuple[int, int]:
        """(kept, working) bytes per PE of ``op`` planned by mapping ``name``."""
        key = (name, _unnamed(op))
        if key not in self.known:
            ctx = self.layout(name)
            self.known[key] = ctx.kept_bytes_per_pe(op), ctx.plan_op(op).sram_bytes_per_pe
        return self.known[key]

    def add_candidates(self, candidates: dict) -> None:
        """The footprints the auto-mapper's feasible candidates measured on one layer of this pass in this region
        (a layout plans a layer's ops alike whatever the model's depth, see :class:`Serving`)."""
        for cands in candidates.values():
            for c in cands:
                if c.op is not None and not c.infeasible:
                    self.known.setdefault((c.mapping, _unnamed(c.op)), (c.kept_bytes_per_pe, c.working_bytes_per_pe))


class Serving:
    """Plans a whole model for serving: weights resident, stages packed into regions (see module docstring).

    ``inner``: a resident mapping name, or ``auto`` (``choose(graph, region_grid)`` returns the auto-mapper's
    ``{shape key: [Candidate]}`` ranked on one layer in ``region_grid``, injected by the pipeline since ranking
    simulates; the choice among them is made here with the whole model in view, :meth:`decide`). A candidate's
    kept and working bytes per PE are its shape's footprint in the region for the whole model too: a layout
    reads the graph's precision, tokens, sequence, batch and widths, never its depth, and plans alike with and
    without SRAM checks (they only refuse).
    """

    name = "serving"

    def __init__(self, inner: str = "auto", choose: Callable | None = None, cache_positions: int | None = None):
        check_inner(inner)
        self.searches = mapping_info(inner).searches
        if self.searches and choose is None:
            raise UserError(f"serving with {inner} needs a chooser (built by wse_sim.app.serve)")
        self.inner, self.choose = inner, choose
        self.cache_positions = cache_positions  # SRAM reserved for this many cache positions (None: the graph's)
        self.decided: dict = {}  # decide()'s answers, per pass shape and placement
        self.measured: tuple | None = None  # (key, RegionFootprints) of the last pass footprints_of() measured

    # ---- per-region planning ---------------------------------------------------------------------------------
    def layouts(self, graph: WorkloadGraph, wafer: WaferSpec, region: TileGrid, by_shape: dict | None = None
                ) -> tuple[dict, ResidentLayout]:
        """({op name: layout for that matmul}, layout for everything else). ``by_shape``: the auto-mapper's
        {matmul shape key: mapping} (:meth:`decide`); without it a search plans only the non-matmul layout."""
        cache: dict[str, ResidentLayout] = {}

        def layout(name):
            if name not in cache:
                cache[name] = get_mapping(name).layout(graph, wafer, region)
            return cache[name]

        per_op = {}
        if by_shape or not self.searches:
            for op in graph.ops():
                if op.kind == OpKind.MATMUL:
                    per_op[op.name] = layout(by_shape[shape_key(op)] if by_shape else self.inner)
        return per_op, layout(resident_candidates()[0] if self.searches else self.inner)

    def kv_positions(self, graph: WorkloadGraph) -> int:
        """Cache positions per sequence to reserve SRAM for (0: no cache, a plain prefill)."""
        if self.cache_positions is not None:
            return self.cache_positions
        return graph.cache_positions if graph.phase == "decode" else 0

    def decide(self, graph: WorkloadGraph, wafer: WaferSpec, region: TileGrid, n_regions: int, wafers: int,
               positions: int | None = None, most_room: bool = False) -> tuple[Choice, list]:
        """The auto-mapper's mappings for ``graph`` judged with the whole model in view (:mod:`.serving_choice`):
        all stages' weights, KV cache (``positions`` per sequence, default :meth:`kv_positions`) and working sets
        packed into ``wafers`` wafers of ``n_regions`` regions. ``most_room``: instead, the mappings that leave the
        most SRAM for a KV cache (capacity). Returns the choice and the report's decisions."""
        positions = self.kv_positions(graph) if positions is None else positions
        key = (graph.config, graph.batch, graph.seq, graph.precision, graph.phase, region, n_regions, wafers,
               positions, most_room)
        if key not in self.decided:
            candidates = self.choose(graph, region)
            shapes, opts, base = self.footprints(graph, wafer, region, candidates)
            if most_room:
                choice = smallest(shapes, opts, region.rows * region.cols, wafer.mesh_rows * wafer.mesh_cols * wafers)
            else:
                sram, kv = wafer.sram_bytes_per_pe, base.kv_cache_bytes_per_pe(positions) if positions else 0
                built: dict[tuple, list[StageNeed]] = {}  # choose asks whether they fit, then how many wafers

                def needs(pairs):
                    key = tuple(pairs)
                    if key not in built:
                        built[key] = self.with_cache([StageNeed(kept, 0, work) for kept, work in pairs], kv)
                    return built[key]

                choice = choose(shapes, opts, lambda pairs: assign_wafers(needs(pairs), sram, n_regions, wafers)
                                is not None, lambda pairs: wafers_needed(needs(pairs), sram, n_regions))
            self.decided[key] = choice, decisions(candidates, choice, wafers, n_regions)
        return self.decided[key]

    def footprints_of(self, graph: WorkloadGraph, wafer: WaferSpec, region: TileGrid) -> RegionFootprints:
        """The footprints of ``graph``'s ops in ``region`` measured so far (shared by :meth:`decide` and
        :meth:`bare_needs`), kept for the last pass asked about only (each decode step's context is another
        pass), keyed by all a region-local plan depends on."""
        key = (graph.config, graph.batch, graph.seq, graph.precision, graph.phase, graph.context, wafer, region)
        if self.measured is None or self.measured[0] != key:
            self.measured = key, RegionFootprints(graph, wafer, region)
        return self.measured[1]

    def footprints(self, graph: WorkloadGraph, wafer: WaferSpec, region: TileGrid, candidates: dict):
        """(each stage's shape, each matmul shape's options with their footprints in ``region``, the layout of
        the non-matmul ops and the cache). A matmul shape's footprints are its candidates' (ranked in ``region``
        on one layer); the non-matmul ops' are measured once per distinct op size."""
        sizes = self.footprints_of(graph, wafer, region)
        sizes.add_candidates(candidates)
        base = resident_candidates()[0]
        opts = {k: options(cands) for k, cands in candidates.items()}
        return stage_shapes(graph, lambda op: sizes.of(base, op)), opts, sizes.layout(base)

    def stage_needs(self, graph: WorkloadGraph, wafer: WaferSpec, region: TileGrid, by_shape: dict | None = None):
        """(ops, their region-local plans, per-stage SRAM needs without the cache, the layout that places the
        cache). Plans are made without SRAM checks; the needs are checked after packing. A search needs
        ``by_shape`` (:meth:`decide`)."""
        if graph.config is None:
            raise UserError("serving runs whole models; use `wse-sim gemm` for a single matmul")
        if self.searches and not by_shape:
            raise ValueError("stage_needs of a search needs the mappings chosen by Serving.decide")
        per_op, base = self.layouts(graph, wafer, region, by_shape)
        ops = list(graph.ops())
        for ctx in {id(c): c for c in (*per_op.values(), base)}.values():
            ctx.enforce_sram = False
        plans = [per_op.get(op.name, base).plan_op(op) for op in ops]
        return ops, plans, self._needs(graph, ops, per_op, base, [p.sram_bytes_per_pe for p in plans]), base

    def bare_needs(self, graph: WorkloadGraph, wafer: WaferSpec, region: TileGrid, by_shape: dict | None = None):
        """(per-stage SRAM needs without the cache, the layout that places the cache), as :meth:`stage_needs`
        gives them, from one plan per distinct op size and mapping (:class:`RegionFootprints`, shared with
        :meth:`decide`): enough to tell whether the model fits before planning every op."""
        sizes = self.footprints_of(graph, wafer, region)
        base = resident_candidates()[0] if self.searches else self.inner
        needs = [StageNeed() for _ in range(stage_count(graph))]
        for op in graph.ops():
            name = base
            if op.kind == OpKind.MATMUL and (by_shape or not self.searches):
                name = by_shape[shape_key(op)] if by_shape else self.inner
            kept, working = sizes.of(name, op)
            need = needs[stage_of(op)]
            need.kept_bytes_per_pe += kept
            need.working_bytes_per_pe = max(need.working_bytes_per_pe, working)
        return needs, sizes.layout(base)

    @staticmethod
    def _needs(graph: WorkloadGraph, ops: list, per_op: dict, base: ResidentLayout, working: list[int]):
        """Per-stage needs of ``ops`` whose plans hold ``working`` bytes per PE each."""
        needs = [StageNeed() for _ in range(stage_count(graph))]
        for op, w in zip(ops, working, strict=True):
            need = needs[stage_of(op)]
            need.kept_bytes_per_pe += per_op.get(op.name, base).kept_bytes_per_pe(op)
            need.working_bytes_per_pe = max(need.working_bytes_per_pe, w)
        return needs

    @staticmethod
    def with_cache(needs: list[StageNeed], kv_bytes_per_pe: int) -> list[StageNeed]:
        """Needs with every layer stage holding its KV cache (the last stage, the head, holds none)."""
        last = len(needs) - 1
        return [StageNeed(n.kept_bytes_per_pe, kv_bytes_per_pe if s < last else 0, n.working_bytes_per_pe)
                for s, n in enumerate(needs)]

    @staticmethod
    def fits(needs: list[StageNeed], sram: int, n_regions: int, wafers: int = 1) -> bool:
        return assign_wafers(needs, sram, n_regions, wafers) is not None

    def longest_context(self, needs, base: ResidentLayout, sram: int, n_regions: int, limit: int,
                        wafers: int = 1) -> int | None:
        """Largest number of cached positions (per sequence) that still fits, up to ``limit``; None if none."""
        lo, hi = 0, limit
        if not self.fits(self.with_cache(needs, base.kv_cache_bytes_per_pe(1)), sram, n_regions, wafers):
            return None
        lo = 1
        while lo < hi:  # invariant: lo fits
            mid = (lo + hi + 1) // 2
            if self.fits(self.with_cache(needs, base.kv_cache_bytes_per_pe(mid)), sram, n_regions, wafers):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def plan(self, graph: WorkloadGraph, wafer: WaferSpec, region: TileGrid, n_regions: int,
             wafers: int = 1) -> ModelPlan:
        """``n_regions`` regions per wafer, ``wafers`` wafers in a layer pipeline."""
        choice, decided = self.decide(graph, wafer, region, n_regions, wafers) if self.searches else (None, None)
        by_shape = choice.mappings if choice else None
        bare, base = self.bare_needs(graph, wafer, region, by_shape)  # fits? (before planning every op)
        positions = self.kv_positions(graph)
        needs = self.with_cache(bare, base.kv_cache_bytes_per_pe(positions) if positions else 0)
        sram = wafer.sram_bytes_per_pe
        cfg = graph.config
        n_stages = stage_count(graph)
        if wafers > n_stages:
            raise UserError(f"--wafers {wafers}: {cfg.name} has {n_stages} pipeline stages ({cfg.n_layer} layers + "
                            f"the LM head); a wafer needs at least one")
        per_wafer = assign_wafers(needs, sram, n_regions, wafers)
        if per_wafer is None:
            hint = ""
            if positions:
                longest = self.longest_context(bare, base, sram, n_regions, cfg.n_positions, wafers)
                hint = ("; no KV cache fits at all" if longest is None else
                        f"; the longest context that fits is {longest - 1:,} tokens + the new one "
                        f"({longest:,} cached positions per sequence)")
            worst = max(range(n_stages), key=lambda s: needs[s].total)
            if needs[worst].total > sram:
                n = needs[worst]
                what = "the LM head" if worst == n_stages - 1 else f"layer {worst}"
                raise SramOverflowError(
                    what, n.total, sram,
                    f"serving on {region.rows}x{region.cols}-PE regions: {n.kept_bytes_per_pe:,} B/PE of resident "
                    f"weights + {n.kv_bytes_per_pe:,} B/PE of KV cache ({positions:,} positions) + "
                    f"{n.working_bytes_per_pe:,} B/PE working set; use a larger --grid" + hint)
            need = wafers_needed(needs, sram, n_regions)
            held = f"{wafers} wafers hold {wafers * n_regions}" if wafers > 1 else f"the wafer holds {n_regions}"
            raise DoesNotFit(
                f"{cfg.name} needs {len(pack(needs, sram))} regions of {region.rows}x{region.cols} PEs "
                f"({cfg.n_layer} layers + the LM head, packed by SRAM) but {held}; use --wafers {need} (a "
                f"layer pipeline over {need} wafers), simulate fewer layers with --layer-subset K and scale, or "
                f"use a larger --grid" + hint)
        ops, plans, _, _ = self.stage_needs(graph, wafer, region, by_shape)  # it fits: plan every op
        plan = self.place(graph, wafer, region, ops, plans, needs, per_wafer, n_regions)
        if decided is not None:
            plan.params["decisions"] = decided
        return plan

    # ---- placing region plans on the wafers ------------------------------------------------------------------
    def place(self, graph, wafer, region: TileGrid, ops, plans, needs, per_wafer, n_regions: int) -> ModelPlan:
        """The region plans on one global tile grid: each wafer's stage groups in snake order (wafers side by
        side), crossings between regions and between wafers."""
        per_row = max(1, wafer.mesh_cols // region.cols)
        regs: list[Region] = []  # global region coordinates, in pipeline order
        wafer_of: list[int] = []
        groups: list[list[int]] = []
        width = max(min(per_row, len(g)) for g in per_wafer)  # region columns each wafer takes in the plan grid
        for w, wgroups in enumerate(per_wafer):
            for reg in snake(len(wgroups), min(per_row, len(wgroups))):
                regs.append(Region(len(regs), reg.r, w * width + reg.c))
                wafer_of.append(w)
            groups.extend(wgroups)
        region_of_stage = {s: g for g, members in enumerate(groups) for s in members}
        rows_used = max(r.r for r in regs) + 1
        cols_used = width * len(per_wafer)
        full = TileGrid(
            region.rows * rows_used, region.cols * cols_used,
            tuple(sorted({a * region.rows + e for a in range(rows_used) for e in region.row_edges})),
            tuple(sorted({c * region.cols + e for c in range(cols_used) for e in region.col_edges})),
        )
        TR, TC = region.shape
        b = BYTES_PER_ELEM[graph.precision]
        d = graph.config.d_model
        placed: list[OpPlan] = []
        index = {op.name: k for k, op in enumerate(ops)}
        prev_region = None
        for k, (op, p) in enumerate(zip(ops, plans, strict=True)):
            reg = regs[region_of_stage[stage_of(op)]]
            inbound: list[Task] = []
            if prev_region is not None and reg.index != prev_region.index:
                if wafer_of[reg.index] != wafer_of[prev_region.index]:
                    inbound = self.wafer_crossing(wafer, region, width, prev_region, reg, wafer_of[prev_region.index],
                                                  graph.tokens * d * b)
                else:
                    inbound = self.crossing(full, region, prev_region, reg, graph.tokens, d, b)
            # Dataflow: an op waits for the ops whose outputs it reads (so SwiGLU's gate and up overlap), and for
            # the previous op when it crosses regions (the crossing carries the previous op's output).
            after = {index[src] for src in op.inputs if src in index}
            if k and (inbound or not after):
                after.add(k - 1)
            where = f"wafer {wafer_of[reg.index]}, " if len(per_wafer) > 1 else ""
            notes = f"{where}region {reg.index} ({reg.r},{reg.c}); {p.notes}".rstrip("; ")
            placed.append(replace(shift(p, reg.r * TR, reg.c * TC, inbound), mapping=self.name, notes=notes,
                                  after=tuple(sorted(after))))
            prev_region = reg
        kept = [sum(needs[s].kept_bytes_per_pe + needs[s].kv_bytes_per_pe for s in g) for g in groups]
        regions = [{"index": r.index, "wafer": wafer_of[r.index], "stages": [g[0], g[-1]],
                    "tile_box": [r.r * TR, r.c * TC, (r.r + 1) * TR, (r.c + 1) * TC]}
                   for r, g in zip(regs, groups, strict=True)]
        return ModelPlan(
            mapping=self.name, grid=full, precision=graph.precision, ops=tuple(placed),
            params={"placement": "serving", "inner": self.inner, "region_pes": [region.rows, region.cols],
                    "region_tiles": [TR, TC], "regions_used": len(groups), "regions_on_wafer": n_regions,
                    "wafers": len(per_wafer), "regions": regions,
                    "stages_per_region": [len(g) for g in groups],
                    "kv_cache_bytes_per_pe_per_layer": needs[0].kv_bytes_per_pe,
                    "region_resident_bytes_per_pe": kept},
            resident_bytes_per_pe=max(kept),
        )

    @staticmethod
    def wafer_crossing(wafer: WaferSpec, region: TileGrid, width: int, src: Region, dst: Region, link: int,
                       nbytes: int) -> list[Task]:
        """Activations (``nbytes``) from region ``src`` on wafer ``link`` to region ``dst`` on the next wafer: the
        PE hops to this wafer's east edge and from the next wafer's west edge, and the inter-wafer link."""
        out_hops = wafer.mesh_cols - (src.c % width + 1) * region.cols
        in_hops = (dst.c % width) * region.cols
        return [Task(TaskKind.INTERWAFER, label=f"activations wafer {link} -> {link + 1} (region {src.index} -> "
                     f"{dst.index})", nbytes=nbytes, hops=out_hops + in_hops, wafer_link=link)]

    @staticmethod
    def crossing(full: TileGrid, region: TileGrid, src: Region, dst: Region, tokens: int, d: int, b: int
                 ) -> list[Task]:
        """Activations ``[tokens, d]`` move from every tile of region ``src`` to the same tile of ``dst``."""
        TR, TC = region.shape
        t = Builder(full)
        msgs = []
        m_edges, d_edges = split(tokens, TR), split(d, TC)
        for i in range(TR):
            rows = m_edges[i + 1] - m_edges[i]
            for j in range(TC):
                cols = d_edges[j + 1] - d_edges[j]
                if rows == 0 or cols == 0:
                    continue
                a = (src.r * TR + i, src.c * TC + j)
                z = (dst.r * TR + i, dst.c * TC + j)
                nbytes = rows * cols * b
                lanes = (ceil_div(nbytes, region.height(i)), ceil_div(nbytes, region.width(j)))
                msgs.append(Message(a, z, *lanes, nbytes))
        t.send(msgs, label=f"activations region {src.index} -> {dst.index}")
        return t.tasks

