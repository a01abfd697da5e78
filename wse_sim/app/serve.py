"""Serving runs: ``decode`` (one token after a KV cache) and ``generate`` (prefill, then decode steps).

Both place the model with :class:`wse_sim.mapping.serving.Serving` (weights resident, layers filling ``--grid``
regions). ``--layer-subset K`` lowers only K layers and scales the layer part of every pass to the model's
depth, as published wafer results do; the report says so. With numerics on, the KV cache is filled by a
prefill that runs through the same simulated path, and ``generate`` produces real greedy tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..arch import WaferSpec
from ..arch.defects import apply_defects
from ..errors import UserError
from ..gc_pause import gc_paused
from ..mapping import ModelPlan, TileGrid, get_mapping, mapping_info
from ..mapping.auto import resident_candidates, streaming_mapping
from ..mapping.plan import OpPlan, SramOverflowError
from ..mapping.serving import (
    DoesNotFit,
    Serving,
    check_inner,
    regions_on,
    stage_of,
)
from ..mapping.weight_streaming import check_memoryx
from ..report.build import build_report, with_request
from ..report.energy import energy_section, pass_energy
from ..sim import Engine, SimResult
from ..workloads import ModelConfig, WorkloadGraph, at_context, lower_model
from ..workloads.graph import BYTES_PER_ELEM, OpKind, OpSpec
from .scenario import (
    RunOutput,
    RunSpec,
    Scenario,
    input_tokens,
    make_grid,
    model_weights,
    numerics_enabled,
    report_inputs,
    simulated_cycles,
)
from .verify import compare_logits, compare_tokens


@dataclass(frozen=True)
class Pass:
    """One simulated pass (a prefill or a decode step), with its cycles scaled to the model's full depth."""

    graph: WorkloadGraph
    plan: ModelPlan
    result: SimResult
    scaled_cycles: int
    reused: Pass | None = None  # the pass whose plan's tasks and simulated result this one shares (ServingRun.run)


def block_spans(result: SimResult) -> dict[str, int]:
    """Cycles of each block (embed, layerN, head) in a pass whose blocks follow each other: from the previous
    block's last end to its own (ops inside a block may overlap)."""
    ends: dict[str, int] = {}
    for op in result.ops:
        ends[op.block] = max(ends.get(op.block, 0), op.end_cycles)
    spans, prev = {}, 0
    for block, end in ends.items():
        spans[block] = end - prev
        prev = end
    return spans


def scale_cycles(result: SimResult, full_layers: int, simulated_layers: int) -> int:
    """Total cycles with the layer blocks' time scaled from ``simulated_layers`` to ``full_layers``.

    Time crossing between wafers is not scaled: a pipeline over N wafers has N - 1 crossings however many
    layers each wafer holds."""
    if full_layers == simulated_layers:
        return result.total_cycles
    layer_cycles = sum(c for block, c in block_spans(result).items() if block.startswith("layer"))
    layer_cycles -= sum(op.interwafer_cycles for op in result.ops if op.block.startswith("layer"))
    return round(result.total_cycles + layer_cycles * (full_layers / simulated_layers - 1))


class Chooser:
    """``chooser(graph, region) -> {matmul shape key: [Candidate]}``: the auto-mapper's candidates ranked by
    simulated cycles on one layer, memoized per pass shape; :meth:`Serving.decide` chooses among them with the
    whole model's SRAM in view."""

    def __init__(self, wafer: WaferSpec, simulate):
        self.wafer = wafer
        self.auto = get_mapping("auto", simulate=simulate, candidates=resident_candidates())
        self.memo: dict = {}

    def __call__(self, graph: WorkloadGraph, region: TileGrid) -> dict:
        key = (graph.batch, graph.seq, graph.phase, region)
        if key not in self.memo:
            one = replace(graph.config, n_layer=1)  # every layer has the same shapes; one layer + the head suffice
            g = lower_model(one, graph.batch, graph.seq, graph.precision, graph.phase, graph.context)
            try:
                self.memo[key] = self.auto.search(g, self.wafer, region).memo
            except UserError as exc:  # no resident mapping fits a matmul: the weights do not fit resident
                raise DoesNotFit(str(exc)) from None
        return self.memo[key]


def residency(mapping: str, requested: str | None) -> tuple[str, str]:
    """(``resident``, ``streamed`` or ``undecided``, why) for ``--mapping`` and ``--weights`` (None: auto). An
    undecided residency (``--weights auto`` with ``--mapping auto``) is decided by the first pass planned: resident
    when it fits the wafers, else streamed (:meth:`ServingRun.place`)."""
    requested = requested or "auto"
    if mapping == streaming_mapping():
        if requested == "resident":
            raise UserError(f"--mapping {mapping} streams every weight from MemoryX; it cannot keep them resident "
                            "(--weights resident): use a resident mapping or auto")
        return "streamed", f"--mapping {mapping} streams every weight from MemoryX"
    if requested == "streamed":
        if not mapping_info(mapping).searches:
            raise UserError(f"--weights streamed: --mapping {mapping} keeps weights resident; use --mapping "
                            f"{streaming_mapping()} or auto")
        return "streamed", "--weights streamed"
    check_inner(mapping, "resident weights (a layer's region, layers filling the wafers)")
    if requested == "resident":
        return "resident", "--weights resident"
    if not mapping_info(mapping).searches:
        return "resident", f"--mapping {mapping} keeps weights resident"
    return "undecided", ""



def regions(n: int) -> str:
    """``n`` regions, in words (one region, 3 regions)."""
    return "one region" if n == 1 else f"{n} regions"

class ServingRun:
    """Plans and simulates the passes of one run on ``wafer``: every phase (prefill, decode, generate) places its
    passes here, so a prefill times alike whichever phase asked for it.

    Weights are resident (:class:`~wse_sim.mapping.serving.Serving`: ``region`` is one layer's region, layers fill
    the wafers' regions) or streamed (the weight-streaming mapping on ``region``, one wafer, the KV cache of
    ``cache_positions`` positions held beside it); ``weights`` as :func:`residency` decides it."""

    def __init__(self, config: ModelConfig, wafer: WaferSpec, region: TileGrid, mapping: str, precision: str,
                 batch: int, layer_subset: int | None, cache_positions: int, simulate, progress: bool = False,
                 wafers: int = 1, weights: str | None = "resident"):
        self.weights, self.why = residency(mapping, weights)
        if self.weights == "streamed" and wafers != 1:
            raise UserError(f"streamed weights ({self.why}) run on one wafer; --wafers {wafers} needs resident "
                            "weights (a layer pipeline)")
        self.cache_positions = cache_positions
        self.full_config = config
        if layer_subset is not None:
            if not 1 <= layer_subset <= config.n_layer:
                raise UserError(f"--layer-subset must be between 1 and {config.n_layer} for {config.name}, "
                                f"got {layer_subset}")
            config = replace(config, n_layer=layer_subset)
        self.config, self.wafer, self.region = config, wafer, region
        self.precision, self.batch, self.progress = precision, batch, progress
        if wafers < 1:
            raise UserError(f"--wafers must be at least 1, got {wafers}")
        r, c = regions_on(wafer, region.rows, region.cols)
        self.n_regions, self.wafers = r * c, wafers
        resident = self.weights != "streamed"
        self.chooser = Chooser(wafer, simulate) if resident and mapping_info(mapping).searches else None
        self.serving = Serving(mapping, choose=self.chooser, cache_positions=cache_positions) if resident else None
        self.reference: tuple | None = None  # (graph, pass, its ops) of the last decode step simulated afresh
        self.lowered: WorkloadGraph | None = None  # the first decode graph lowered: later steps derive from it
        self.ref_local: dict = {}  # reference op shape -> (timing, kept bytes, notes) of its region-local plan
        self.same_local: dict = {}  # (reference op, new op) shapes -> (their notes) if their plans time alike

    remap = None  # each defective wafer's remapped mesh (wse_sim.arch.defects)

    @property
    def scaled(self) -> bool:
        return self.config.n_layer != self.full_config.n_layer

    def kv_cache_bytes(self, positions: int) -> int:
        """KV cache of the full model for ``positions`` positions per sequence."""
        return self.batch * positions * self.full_config.kv_cache_bytes_per_token(BYTES_PER_ELEM[self.precision])

    def graph(self, seq: int, phase: str, context: int) -> WorkloadGraph:
        """The pass's lowered model. The model is lowered once per run for its decode steps: a step's graph is
        the first decode graph's with the context changed (:func:`~wse_sim.workloads.graph.at_context`: only
        the attention ops are re-derived), equal to lowering it afresh."""
        if phase == "decode" and self.lowered is not None and self.lowered.seq == seq:
            return at_context(self.lowered, context)
        out = lower_model(self.config, self.batch, seq, self.precision, phase, context)
        if phase == "decode":
            self.lowered = out
        return out

    def run(self, graph: WorkloadGraph, numerics=None, record: bool = False) -> Pass:
        """Plan and simulate ``graph``; a timing-only decode step whose plan would time like the last decode step
        simulated afresh reuses that step's plan and result instead (see :meth:`reuse`). ``record``: the result
        keeps its busy intervals (a reused step shares its reference's, so only a recorded reference serves)."""
        timing_only = numerics is None and graph.phase == "decode"
        if timing_only and (out := self.reuse(graph, record)) is not None:
            return out
        with gc_paused():  # many tasks, no cycles: see wse_sim.gc_pause
            plan = self.place(graph, timing_only=numerics is None)
        if self.remap is not None:  # detours around dead PEs (wse_sim.arch.defects); actions unchanged
            plan = apply_defects(plan, self.remap, self.wafer.wavelet_bytes)
        result = Engine(self.wafer, plan, numerics=numerics, progress=self.progress, record=record).run()
        out = Pass(graph, plan, result, scale_cycles(result, self.full_config.n_layer, self.config.n_layer))
        if timing_only:
            self.reference = (graph, out, list(graph.ops()))
            self.ref_local.clear()
            self.same_local.clear()
        return out

    def place(self, graph: WorkloadGraph, timing_only: bool = False) -> ModelPlan:
        """``graph``'s plan under the run's weights residency; ``auto`` becomes resident when this first pass fits
        the wafers' regions, else streamed (on one wafer), and :attr:`why` says which and why. ``timing_only``:
        the plan will be simulated without numerics (see :meth:`streamed_plan`)."""
        if self.weights != "streamed":
            try:
                plan = self.serving.plan(graph, self.wafer, self.region, self.n_regions, self.wafers)
            except (SramOverflowError, DoesNotFit) as exc:
                if self.weights == "resident" or self.wafers != 1:
                    raise
                self.weights, self.serving, self.chooser = "streamed", None, None
                self.why = f"auto: resident weights do not fit ({exc}); streamed from MemoryX instead"
            else:
                if self.weights == "undecided":
                    self.weights = "resident"
                    self.why = (f"auto: the weights, the KV cache ({self.cache_positions:,} positions per sequence) "
                                f"and the working sets fit {regions(plan.params['regions_used'])}")
                return plan
        return self.streamed_plan(graph, timing_only)

    def streamed_plan(self, graph: WorkloadGraph, timing_only: bool = False) -> ModelPlan:
        """The weight-streaming mapping's plan of ``graph`` on the region, with the whole model's KV cache
        (``cache_positions`` positions, every layer) held in SRAM beside the streaming buffers.

        ``timing_only``: the tasks carry no numerics actions, the only part of a streamed op's plan its names
        change, so ops alike in size (every layer's) share the tasks of one plan (:func:`shared_plans`)."""
        mapping = get_mapping(streaming_mapping())
        check_memoryx(self.full_config, graph.precision, self.wafer)
        ctx = self.streamed_layout(graph)
        ops = shared_plans(ctx, graph.ops()) if timing_only else tuple(ctx.plan_op(op) for op in graph.ops())
        return ModelPlan(mapping=mapping.name, grid=self.region, precision=graph.precision, ops=ops,
                         stream_buffers=mapping.stream_buffers, params={"stream_buffers": mapping.stream_buffers})

    def streamed_layout(self, graph: WorkloadGraph):
        """The weight-streaming layout of ``graph`` on the region, SRAM held for every layer's KV cache."""
        ctx = get_mapping(streaming_mapping()).layout(graph, self.wafer, self.region)
        positions = self.cache_positions if self.cache_positions is not None else graph.cache_positions
        ctx.reserved_bytes_per_pe = self.config.n_layer * ctx.kv_cache_bytes_per_pe(positions)
        return ctx

    def placement(self, plan: ModelPlan) -> dict:
        """How the weights of ``plan``'s pass are placed, and why (the report's ``placement`` entries)."""
        grid = [self.region.rows, self.region.cols]
        out = {"weights": self.weights, "why": self.why, "grid_pes": grid,
               "simulated_layers": self.config.n_layer, "model_layers": self.full_config.n_layer}
        if self.weights == "streamed":
            return out | {"how": f"every weight streams from MemoryX onto one {grid[0]}x{grid[1]}-PE grid per "
                                 f"pass; activations and the KV cache ({self.cache_positions:,} positions per "
                                 "sequence, every layer) stay on it",
                          "wafers": 1, "kv_cache_positions_reserved": self.cache_positions}
        p = plan.params
        held = (f"{p['regions_on_wafer']} per wafer on {self.wafers} wafers" if self.wafers > 1
                else f"{p['regions_on_wafer']} on the wafer")
        return out | {"how": f"resident in {p['regions_used']} {grid[0]}x{grid[1]}-PE region(s) ({held}), layers "
                             f"packed in order while their weights, KV cache and working sets fit each PE's SRAM; "
                             f"stages per region {p['stages_per_region']}",
                      "wafers": p["wafers"], "region_pes": grid, "regions_on_wafer": p["regions_on_wafer"],
                      "regions_used": p["regions_used"], "stages_per_region": p["stages_per_region"],
                      "kv_cache_positions_reserved": self.cache_positions}

    def base_layout(self, graph: WorkloadGraph):
        """The layout that plans ``graph``'s non-matmul ops, as :meth:`Serving.stage_needs` makes it."""
        base = self.serving.layouts(graph, self.wafer, self.region)[1]
        base.enforce_sram = False
        return base

    def reuse(self, graph: WorkloadGraph, record: bool = False) -> Pass | None:
        """Decode step ``graph`` from the reference step (the last one simulated afresh), or None.

        Between decode steps only the context length changes, and with it only the attention ops' sizes. The
        step's plan would then equal the reference's but for those ops; when each changed op's region-local plan
        times exactly like the reference op's (same tasks but for their numerics actions, same SRAM footprint and
        kept bytes; the notes, which may name the context, are carried over), packing, placement and simulation
        give the same timings, so the reference's plan (with the new ops' specs and notes) and result (with their
        flops and notes) are this step's. One region-local plan per distinct change of shape is compared (every
        layer's attention op has the same shape). The reused plan's tasks keep the reference's numerics actions:
        it is only ever used timing-only (no numerics). A recorded step (``record``) shares the reference's busy
        intervals (each a task's op index, label, bytes and MACs at its simulated time, all as a fresh simulation
        of this step gives them), so it needs a reference that was recorded."""
        if self.reference is None:
            return None
        ref_graph, ref, old_ops = self.reference
        if record and ref.result.intervals is None:
            return None
        if (graph.config, graph.batch, graph.seq, graph.precision, graph.phase) != (
                ref_graph.config, ref_graph.batch, ref_graph.seq, ref_graph.precision, ref_graph.phase):
            return None
        if self.weights == "resident" and self.serving.kv_positions(graph) != self.serving.kv_positions(ref_graph):
            return None  # the SRAM kept for the cache differs
        new_ops = list(graph.ops())
        if len(old_ops) != len(new_ops):
            return None
        changed: dict[int, object] = {}
        for k, (a, b) in enumerate(zip(old_ops, new_ops, strict=True)):
            if a != b:
                if a.name != b.name or a.kind != b.kind or a.kind == OpKind.MATMUL:
                    return None
                changed[k] = b
        if self.weights == "streamed":
            return self.reuse_streamed(graph, ref, old_ops, changed)
        base = None
        ops = list(ref.plan.ops)
        for k, b in changed.items():
            a = old_ops[k]
            key = (_shape(a), _shape(b))
            if key[0] not in self.ref_local:
                ref_base = self.base_layout(ref_graph)
                pa = ref_base.plan_op(a)
                self.ref_local[key[0]] = _timing(pa), ref_base.kept_bytes_per_pe(a), pa.notes
            if key not in self.same_local:
                if base is None:
                    base = self.base_layout(graph)
                pb = base.plan_op(b)
                timing, kept, notes = self.ref_local[key[0]]
                alike = timing == _timing(pb) and kept == base.kept_bytes_per_pe(b)
                self.same_local[key] = (notes, pb.notes) if alike else None
            if self.same_local[key] is None:
                return None
            old_notes, new_notes = self.same_local[key]
            notes = ops[k].notes  # the placed op's: where it is placed, then the region-local plan's notes
            if old_notes != new_notes:
                if not old_notes or not notes.endswith(old_notes):
                    return None
                notes = notes[:len(notes) - len(old_notes)] + new_notes
            ops[k] = replace(ops[k], op=b, notes=notes)
        plan = replace(ref.plan, ops=tuple(ops))
        result = replace(ref.result, ops=[replace(t, flops=ops[k].op.flops, notes=ops[k].notes) if k in changed
                                          else t for k, t in enumerate(ref.result.ops)])
        return Pass(graph, plan, result, ref.scaled_cycles, ref.reused or ref)


    def reuse_streamed(self, graph: WorkloadGraph, ref: Pass, old_ops: list, changed: dict) -> Pass | None:
        """:meth:`reuse` for streamed weights: the plan is the streaming layout's op plans as they are, so each
        changed op's new plan is compared with the reference plan's op itself (same tasks but for their numerics
        actions, same SRAM footprint); its notes are the new plan's."""
        ctx = None
        ops = list(ref.plan.ops)
        for k, b in changed.items():
            key = ("streamed", _shape(old_ops[k]), _shape(b))
            if key not in self.same_local:
                if ctx is None:
                    ctx = self.streamed_layout(graph)
                pb = ctx.plan_op(b)
                self.same_local[key] = pb.notes if _timing(pb) == _timing(ops[k]) else None
            if self.same_local[key] is None:
                return None
            ops[k] = replace(ops[k], op=b, notes=self.same_local[key])
        plan = replace(ref.plan, ops=tuple(ops))
        result = replace(ref.result, ops=[replace(t, flops=ops[k].op.flops, notes=ops[k].notes) if k in changed
                                          else t for k, t in enumerate(ref.result.ops)])
        return Pass(graph, plan, result, ref.scaled_cycles, ref.reused or ref)


def shared_plans(ctx, ops) -> tuple[OpPlan, ...]:
    """``ctx``'s plans of ``ops`` without numerics actions, planned once per op size: an op alike in size to an
    earlier one (:func:`_shape`) gets that plan's tasks, SRAM and notes with its own op spec."""
    first: dict[OpSpec, OpPlan] = {}
    out = []
    for op in ops:
        key = _shape(op)
        seen = first.get(key)
        if seen is None:
            p = ctx.plan_op(op)
            seen = first[key] = replace(p, tasks=tuple(t.without_actions() for t in p.tasks))
        out.append(seen if seen.op == op else replace(seen, op=op))
    return tuple(out)


def _shape(op: OpSpec) -> OpSpec:
    """``op`` without what names it (its name, block, layer and inputs)."""
    return replace(op, name="", block="", layer=0, inputs=())


def _timing(p) -> tuple:
    """What of a region-local op plan the simulation reads (all but the op, its notes and numerics actions)."""
    return tuple(t.without_actions() for t in p.tasks), p.sram_bytes_per_pe, p.mapping, p.after


def serving_summary(run: ServingRun, phase: str, prefill: Pass | None, steps: list[Pass], clock_hz: float,
                    prompt_tokens: int, positions: int) -> dict:
    """The report's serving fields (issue 6): phase, ttft_s, tpot_s, tokens_per_s_per_request, kv_cache_bytes."""
    ttft = prefill.scaled_cycles / clock_hz if prefill else None
    tpot = float(np.mean([s.scaled_cycles for s in steps])) / clock_hz if steps else None
    if tpot:
        tps = 1.0 / tpot
    else:
        tps = prompt_tokens / ttft if ttft else None
    out = {
        "phase": phase,
        "ttft_s": ttft,
        "tpot_s": tpot,
        "tokens_per_s_per_request": tps,
        "kv_cache_bytes": run.kv_cache_bytes(positions),
        "kv_cache_positions_per_sequence": positions,
        "layer_subset": {"simulated_layers": run.config.n_layer, "model_layers": run.full_config.n_layer,
                         "scaled": run.scaled,
                         "note": (f"simulated {run.config.n_layer} of {run.full_config.n_layer} layers; layer "
                                  f"cycles scaled by {run.full_config.n_layer / run.config.n_layer:g}")
                         if run.scaled else "all layers simulated"},
    }
    last = steps[-1] if steps else prefill
    resident = last.plan.params.get("placement") == "serving"  # streamed weights: one grid, one wafer
    out["regions"] = {"region_pes": [run.region.rows, run.region.cols],
                      "regions_on_wafer": run.n_regions} if resident else None
    out["wafers"] = wafer_summary(last.plan, last.result, run.wafer, last.scaled_cycles) if resident else None
    if prefill:
        out["prefill_cycles_simulated"] = prefill.result.total_cycles
        out["prefill_cycles_scaled"] = prefill.scaled_cycles
    if steps:
        out["decode_step_cycles_simulated"] = [s.result.total_cycles for s in steps]
        out["decode_step_cycles_scaled"] = [s.scaled_cycles for s in steps]
    return out


def request_summary(prefill: Pass | None, steps: list[Pass], clock_hz: float, batch: int, prompt_tokens: int) -> dict:
    """A generate request end to end: TTFT, TPOT per decode step and mean, end-to-end latency (TTFT + every decode
    step), output tokens per second over it, and the cycles of each phase (scaled to the model's depth)."""
    prefill_cycles = prefill.scaled_cycles if prefill else 0
    step_cycles = [s.scaled_cycles for s in steps]
    total = prefill_cycles + sum(step_cycles)
    output = batch * (len(steps) + (1 if prefill else 0))  # the prefill yields the first token
    return {
        "prompt_tokens": prompt_tokens, "output_tokens": output, "decode_steps": len(steps),
        "ttft_s": prefill_cycles / clock_hz,
        "tpot_s": float(np.mean(step_cycles)) / clock_hz if steps else None,
        "tpot_s_per_step": [c / clock_hz for c in step_cycles],
        "e2e_latency_s": total / clock_hz,
        "tokens_per_s": output * clock_hz / total if total else None,
        "e2e_tokens_per_s_per_request": output / batch * clock_hz / total if total else None,
        "cycles": {"prefill": prefill_cycles, "decode": sum(step_cycles), "total": total},
        "cycle_share": {"prefill": prefill_cycles / total if total else 0.0,
                        "decode": sum(step_cycles) / total if total else 0.0},
    }


def wafer_summary(plan: ModelPlan, result: SimResult, wafer: WaferSpec, scaled_cycles: int | None = None) -> dict:
    """Per-wafer utilization and time, and the inter-wafer links' share, of one pass (the report's ``wafers``).

    Per wafer: ``busy_fraction``, the PE-weighted busy time of its regions over the pass
    (``busy_fraction_of_wafer``: over all its PEs, used or not), and ``cycles``, the time of the ops placed on it
    (a token's stay, including its arrival). Per link: ``busy_fraction``, its serialization time over the pass.
    ``interwafer_critical_cycles``: crossing time on the critical path (latency included), and its share of the
    pass's time scaled to the model's depth (``scaled_cycles``; the crossings themselves are not scaled).
    """
    grid, total = plan.grid, max(result.total_cycles, 1)
    n = plan.params["wafers"]
    on = [[r for r in plan.params["regions"] if r["wafer"] == w] for w in range(n)]
    wafer_of_stage = {s: r["wafer"] for r in plan.params["regions"]
                      for s in range(r["stages"][0], r["stages"][1] + 1)}
    cycles = [0] * n
    for op in result.ops:
        cycles[wafer_of_stage[stage_of(op)]] += op.cycles
    per = []
    for w, regions in enumerate(on):
        tiles = [(i, j) for r in regions for i in range(r["tile_box"][0], r["tile_box"][2])
                 for j in range(r["tile_box"][1], r["tile_box"][3])]
        busy = sum(float(result.tile_busy_cycles[t]) * grid.pes(t) for t in tiles)
        per.append({"wafer": w, "regions": len(regions), "stages": [regions[0]["stages"][0], regions[-1]["stages"][1]],
                    "busy_fraction": busy / (sum(grid.pes(t) for t in tiles) * total),
                    "busy_fraction_of_wafer": busy / (wafer.mesh_rows * wafer.mesh_cols * total),
                    "cycles": cycles[w]})
    crit = sum(op.interwafer_cycles for op in result.ops)
    links = [{"link": [w, w + 1], "busy_cycles": result.interwafer_busy_cycles.get(w, 0),
              "busy_fraction": result.interwafer_busy_cycles.get(w, 0) / total} for w in range(n - 1)]
    return {"count": n, "per_wafer": per, "links": links, "interwafer_bytes": result.interwafer_bytes,
            "interwafer_critical_cycles": crit, "interwafer_share_of_time": crit / max(scaled_cycles or total, 1),
            "link_bytes_per_s": wafer.interwafer_bytes_per_s, "link_latency_s": wafer.interwafer_latency_s}


def serving_energy(run: ServingRun, wafer: WaferSpec, phase: str, prefill: Pass | None, steps: list[Pass],
                   batch: int) -> dict:
    """The report's ``energy``: a prefill's (its prompt tokens), a decode step's (``batch`` tokens), or a generate
    request's, prefill and every decode step (its output tokens); layer actions scaled to the model's depth like
    the cycles."""
    if phase == "generate":
        passes = ([prefill] if prefill else []) + steps
        tokens = batch * (len(steps) + (1 if prefill else 0))
    elif phase == "prefill":
        passes, tokens = [prefill], batch * prefill.graph.seq
    else:
        passes, tokens = steps[-1:], batch
    scope = {"generate": "request (prefill and decode steps; per output token)", "prefill": "pass"}.get(
        phase, "decode step")
    counts: dict[int, list] = {}  # a reused pass shares its reference's tasks, so their action counts
    energies = []
    for p in passes:
        key = id(p.reused or p)
        energies.append(pass_energy(wafer, p.plan, p.result, p.scaled_cycles, counts.get(key)))
        counts[key] = energies[-1].counts
    return energy_section(wafer, energies, tokens,
                          run.full_config.n_layer / run.config.n_layer, scope)


def request_shape(spec: RunSpec, config: ModelConfig) -> tuple[int, int, int, int]:
    """(prompt tokens, new tokens, decode steps, KV-cache positions per sequence placed for) of ``spec``'s run.

    A prefill is the first pass of a request of ``--gen-tokens`` tokens (default 1), placed as ``generate`` places
    it: SRAM is held for the request's whole KV cache, so both phases time the same prefill."""
    if spec.phase == "decode":
        if spec.context is None:
            raise UserError("--phase decode needs --context C (tokens already in the KV cache)")
        return spec.context, 1, 1, spec.context + 1
    if spec.phase == "prefill":
        prompt, new = spec.seq, spec.gen_tokens or 1
    else:
        prompt = spec.prompt_len if spec.prompt_len is not None else spec.seq
        new = spec.gen_tokens if spec.gen_tokens is not None else 8
    if prompt < 1 or new < 1:
        raise UserError("--prompt-len and --gen-tokens must be at least 1")
    positions = prompt + new - 1  # cached at the last decode step; the last new token is never fed back
    if spec.phase == "prefill" and positions > config.n_positions:
        more = f" + --gen-tokens {new} - 1 = {positions}" if new > 1 else ""
        raise UserError(f"--seq {prompt}{more} positions exceeds the context of {config.name} "
                        f"({config.n_positions} positions)")
    need = max(positions, prompt + 1)
    if spec.phase == "generate" and need > config.n_positions:
        raise UserError(f"{prompt} + {new} tokens need {need} positions, which exceed the context of {config.name} "
                        f"({config.n_positions} positions)")
    return prompt, new, (0 if spec.phase == "prefill" else new - 1), positions


def pass_grids(scn: Scenario) -> tuple[TileGrid, TileGrid]:
    """(prefill grid, decode grid): ``--prefill-grid`` / ``--decode-grid`` of a generate run, else ``--grid``."""
    spec = scn.spec

    def grid(text):
        return scn.grid if text is None else make_grid(scn.wafer, text, spec.tiles, spec.tile)
    return grid(spec.prefill_grid), grid(spec.decode_grid)


def serving_runs(scn: Scenario, positions: int, progress: bool) -> tuple[ServingRun, ServingRun]:
    """(the run placing the prefill, the run placing the decode steps): one object unless the grids differ."""
    spec = scn.spec
    grids = pass_grids(scn)

    def make(region):
        sr = ServingRun(scn.config, scn.wafer, region, spec.mapping, spec.precision, spec.batch, spec.layer_subset,
                        max(positions, 1), simulated_cycles, progress, spec.wafers, spec.weights)
        sr.remap = scn.remap
        return sr
    pre = make(grids[0])
    return pre, (pre if grids[1] == grids[0] else make(grids[1]))


def kv_cache_move(pre: ServingRun, dec: ServingRun, prompt: int) -> dict:
    """The prompt's KV cache leaving the prefill's placement for the decode steps' one (split grids): its bytes,
    and that the move is not charged, with why."""
    return {"bytes": pre.kv_cache_bytes(prompt), "from_grid_pes": [pre.region.rows, pre.region.cols],
            "to_grid_pes": [dec.region.rows, dec.region.cols], "charged": False,
            "why": "not simulated: WaferLLM (Table 2) runs a request's prefill and decode as two phases on different "
                   "grids and reports their sum; how the cache is relaid between the two placements (on one wafer "
                   "or two) is not described, so no transfer is charged between TTFT and the first decode step"}


def run_serving(scn: Scenario, progress: bool, log, record: bool, defer_checks: bool = False) -> RunOutput:
    """Every phase but a pipelined prefill (see the module docstring): ``prefill`` is a request's first pass alone,
    ``decode`` one step after a cache, ``generate`` the prefill then the decode steps. ``defer_checks``: the
    reference checks are left to the caller (``RunOutput.pending_checks``)."""
    spec, wafer, config, weights = scn.spec, scn.wafer, scn.config, scn.weights
    prompt, new, n_steps, positions = request_shape(spec, config)
    pre_run, dec_run = serving_runs(scn, positions, progress)
    numerics_on, reason = numerics_enabled(spec, config)
    executor = tokens = None
    if numerics_on:
        weights = model_weights(spec, pre_run.config, weights, log)
        tokens = input_tokens(spec, config, prompt + (1 if spec.phase == "decode" else 0))
    t0 = time.perf_counter()
    prefill = None
    if spec.phase != "decode" or numerics_on:  # with numerics, a decode's cache is filled by a real prefill
        g = pre_run.graph(prompt, "prefill", 0)
        if numerics_on:
            from ..sim.numerics import Numerics  # the kernels (numba): imported only when numerics run

            executor = Numerics(g, weights, tokens[:, :prompt], cache_capacity=prompt + new,
                                adopt_weights=scn.weights is None)  # seeded random ones, made for this run
        prefill = pre_run.run(g, executor, record=record and spec.phase != "decode" and n_steps == 0)
    generated: list[np.ndarray] = []
    steps: list[Pass] = []
    if executor is not None and spec.phase == "generate":
        generated.append(np.argmax(executor.output("head.lm_head").reshape(spec.batch, prompt, -1)[:, -1], axis=-1))
    for s in range(n_steps):
        g = dec_run.graph(1, "decode", prompt + s)
        if executor is not None:
            if s == 0 and prefill is not None:
                executor.fill_cache(prefill.graph)
            step_ids = tokens[:, prompt:prompt + 1] if spec.phase == "decode" else generated[-1][:, None]
            executor.next_pass(g, step_ids)
        # only the last step's intervals are read (its timeline). Timing-only, every step asks for them: only a
        # step simulated afresh pays for recording, and the reference step it becomes can then serve the last
        steps.append(dec_run.run(g, executor, record=record and (executor is None or s == n_steps - 1)))
        if executor is not None and spec.phase == "generate":
            generated.append(np.argmax(executor.output("head.lm_head").reshape(spec.batch, -1), axis=-1))
        if progress and spec.phase == "generate":
            log(f"decode step {s + 1}/{n_steps}: {steps[-1].result.total_cycles:,} cycles")
    sim_wall = time.perf_counter() - t0

    main = steps[-1] if steps else prefill
    numerics_report: dict = {"enabled": bool(numerics_on), "reason": reason}
    logits = check = None
    if executor is not None:
        hf = bool(spec.check_transformers)
        if spec.phase == "generate":
            gen = np.stack(generated, axis=1)

            def check() -> None:
                log("checking the generated tokens against transformers' generate() ...")
                numerics_report.update(compare_tokens(gen, weights, tokens[:, :prompt], spec.precision))
        else:
            decode = spec.phase == "decode"
            logits = executor.output("head.lm_head").reshape(spec.batch, 1 if decode else prompt, config.vocab_size)

            def check() -> None:
                log(f"checking against the float64 reference{' and transformers' * hf} ...")
                numerics_report.update(compare_logits(logits, executor, weights, tokens, spec.precision,
                                                      last_only=decode, check_transformers=hf))
        if not defer_checks:
            check()
            check = None
    main_run = dec_run if steps else pre_run
    serving = serving_summary(main_run, spec.phase, prefill if spec.phase != "decode" else None, steps,
                              wafer.clock_hz, prompt, positions)
    serving["placement"] = placement_section(spec.phase, pre_run, dec_run, prefill, steps, prompt)
    if spec.phase == "generate" and executor is not None:
        serving["generated_tokens"] = np.stack(generated, axis=1).tolist()
    report = build_report(report_inputs(spec), main_run.full_config, wafer, main.graph, main.plan, main.result,
                          numerics_report, serving,
                          serving_energy(main_run, wafer, spec.phase, prefill, steps, spec.batch))
    if spec.phase == "generate":
        report = with_request(report, request_summary(prefill, steps, wafer.clock_hz, spec.batch, prompt)
                              | {"prefill_grid_pes": [pre_run.region.rows, pre_run.region.cols],
                                 "decode_grid_pes": [dec_run.region.rows, dec_run.region.cols]})
    if scn.remap is not None:
        report["defects"] = scn.defects_report(main.plan)
    return RunOutput(report, logits, sim_wall, main.result, main.plan, wafer, pending_checks=check)


def placement_section(phase: str, pre: ServingRun, dec: ServingRun, prefill: Pass | None, steps: list[Pass],
                      prompt: int) -> dict:
    """The report's ``placement``: per pass kind the run simulated (``prefill``, ``decode``), how its weights are
    placed and why; a generate run on two grids adds the KV cache's move between them."""
    out = {}
    if prefill is not None and phase != "decode":
        out["prefill"] = pre.placement(prefill.plan)
    if steps:
        out["decode"] = dec.placement(steps[-1].plan)
    if phase == "generate" and dec is not pre:
        out["kv_cache_move"] = kv_cache_move(pre, dec, prompt)
    return out


