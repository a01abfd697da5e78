"""Turn a simulation result into the report dict written as report.json (schema below, versioned)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..arch import WaferSpec
from ..arch.costs import stream_cycles
from ..mapping import ModelPlan, TileGrid
from ..sim import SimResult
from ..workloads import ModelConfig, WorkloadGraph
from .energy import plan_energy
from .provenance import tool_info
from .timeline import link_busy_fraction, timeline_summary

SCHEMA_VERSION = 1


def roofline_cycles(wafer: WaferSpec, graph: WorkloadGraph, pes: int, streamed_bytes: int | None = None) -> dict:
    """Lower bounds: all FLOPs at the grid's peak rate, and the plan's streamed bytes at MemoryX bandwidth
    (``streamed_bytes``; every weight when not given, as in weight streaming; resident-weight plans stream only
    embedding rows)."""
    compute = math.ceil(graph.total_flops / wafer.peak_flops_per_cycle(graph.precision, pes))
    stream = stream_cycles(wafer, graph.streamed_weight_bytes if streamed_bytes is None else streamed_bytes)
    return {"compute_bound_cycles": compute, "stream_bound_cycles": stream, "bound_cycles": max(compute, stream)}


def _round(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class RunInputs:
    """How the run was asked for, as the report states it; the use case fills it from its own input record, so
    nothing below the app knows the CLI's fields. ``fields``: every input as given (the report's ``inputs``)."""

    batch: int
    seed: int
    from_checkpoint: bool
    fields: dict


def build_report(inputs: RunInputs, config: ModelConfig, wafer: WaferSpec, graph: WorkloadGraph, plan: ModelPlan,
                 result: SimResult, numerics: dict, serving: dict | None = None, energy: dict | None = None) -> dict:
    """The report dict; ``serving`` (phase, ttft_s, tpot_s, tokens_per_s_per_request, kv_cache_bytes, ...) goes
    in at the top level. ``energy``: the report's energy section (default: this pass's, wse_sim.report.energy)."""
    grid = plan.grid
    pes = grid.rows * grid.cols
    seconds = result.total_cycles / wafer.clock_hz
    flops = graph.total_flops
    peak = wafer.peak_flops_per_s(graph.precision, pes)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": _model_section(config, inputs),
        "wafer": wafer.to_dict(),
        "mapping": _mapping_section(plan),
        "run": {"seq": graph.seq, "batch": inputs.batch, "tokens": graph.tokens, "precision": graph.precision,
                "seed": inputs.seed, "phase": graph.phase, "context": graph.context},
        **(serving or {}),
        "total_cycles": result.total_cycles,
        "seconds": seconds,
        "tokens_per_s": graph.tokens / seconds if seconds else None,
        "layers": _layers(result),
        "bandwidth": _bandwidth(wafer, result, seconds),
        "flops": flops,
        "flops_per_s": flops / seconds if seconds else 0.0,
        "peak_flops_per_s": peak,
        "mfu": (flops / seconds) / peak if seconds else 0.0,
        "roofline": roofline_cycles(wafer, graph, pes, plan.streamed_bytes),
        "sram_peak_bytes_per_pe": plan.sram_peak_bytes_per_pe,
        "sram_bytes_per_pe_available": wafer.sram_bytes_per_pe,
        "utilization": _utilization(wafer, graph.precision, grid, result),
        "timeline": timeline_summary(result, grid),
        "simulation": {"engine": "simpy", "tasks": result.tasks},
        "numerics": numerics,
        "energy": energy if energy is not None else plan_energy(wafer, plan, result, graph.tokens),
        "tool": tool_info(),
        "inputs": inputs.fields,
    }


def _model_section(config: ModelConfig, inputs: RunInputs) -> dict:
    return {
        "name": config.name, "parameters": config.param_count(), "d_model": config.d_model,
        "n_layer": config.n_layer, "n_head": config.n_head, "d_ff": config.d_ff,
        "vocab_size": config.vocab_size, "n_positions": config.n_positions, "activation": config.activation,
        "weights": "checkpoint" if inputs.from_checkpoint else f"seeded random (seed {inputs.seed})",
    }


def _mapping_section(plan: ModelPlan) -> dict:
    grid = plan.grid
    return {
        "name": plan.mapping, "params": plan.params, "grid_pes": [grid.rows, grid.cols],
        "tile_grid": [grid.tile_rows, grid.tile_cols], "tile_row_edges": list(grid.row_edges),
        "tile_col_edges": list(grid.col_edges),
    }


_LAYER_SUMS = ("cycles", "compute_cycles", "fabric_cycles", "fabric_latency_cycles", "fabric_serialization_cycles",
               "stream_cycles", "interwafer_cycles", "flops")


def _layers(result: SimResult) -> list[dict]:
    """One entry per block (embed, layerN, head) with its ops and their summed cycles; a block's ops gather in
    one entry even when micro-batches interleave them."""
    layers: list[dict] = []
    by_block: dict[str, dict] = {}
    for op in result.ops:
        if op.block not in by_block:
            by_block[op.block] = {"name": op.block, **dict.fromkeys(_LAYER_SUMS, 0), "ops": []}
            layers.append(by_block[op.block])
        layer = by_block[op.block]
        entry = {
            "name": op.name, "kind": op.kind, "cycles": op.cycles, "compute_cycles": op.compute_cycles,
            "fabric_cycles": op.fabric_cycles, "fabric_latency_cycles": op.fabric_latency_cycles,
            "fabric_serialization_cycles": op.fabric_serialization_cycles, "stream_cycles": op.stream_cycles,
            "interwafer_cycles": op.interwafer_cycles, "flops": op.flops,
            "stream_bytes": op.stream_bytes, "fabric_bytes": op.fabric_bytes,
            "sram_bytes_per_pe": op.sram_bytes_per_pe, "notes": op.notes,
        }
        layer["ops"].append(entry)
        for key in _LAYER_SUMS:
            layer[key] += entry[key]
    return layers


def _bandwidth(wafer: WaferSpec, result: SimResult, seconds: float) -> dict:
    total = result.total_cycles
    return {
        "memoryx_bytes": result.stream_bytes,
        "memoryx_bytes_per_s": result.stream_bytes / seconds if seconds else 0.0,
        "memoryx_peak_bytes_per_s": wafer.memoryx_bytes_per_s,
        "memoryx_busy_fraction": result.memoryx_busy_cycles / total if total else 0.0,
        "fabric_bytes": result.fabric_bytes,
        "fabric_bytes_per_s": result.fabric_bytes / seconds if seconds else 0.0,
    }


def _utilization(wafer: WaferSpec, precision: str, grid: TileGrid, result: SimResult) -> dict:
    """Per-tile busy fractions and MAC efficiency (FMACs done over the tile's FMAC lanes for the whole run)."""
    total = result.total_cycles
    busy = result.tile_busy_cycles / total if total else result.tile_busy_cycles
    tile_pes = np.array([[grid.pes((i, j)) for j in range(grid.tile_cols)] for i in range(grid.tile_rows)])
    mac_capacity = tile_pes * wafer.fmac_per_pe_per_cycle(precision) * max(total, 1)
    mac_eff = result.tile_macs / mac_capacity
    return {
        "tile_busy_fraction": [[_round(x) for x in row] for row in busy.tolist()],
        "tile_mac_efficiency": [[_round(x) for x in row] for row in mac_eff.tolist()],
        "mean_busy_fraction": _round(float(busy.mean())),
        "mean_mac_efficiency": _round(float(result.tile_macs.sum() / mac_capacity.sum())),
        "link_busy_fraction": link_busy_fraction(result, grid),
    }


LAST_PASS_FIELDS = ("run", "layers", "bandwidth", "flops", "flops_per_s", "mfu", "roofline", "utilization", "timeline",
                    "simulation", "wafers", "sram_peak_bytes_per_pe")


def with_request(report: dict, request: dict) -> dict:
    """A generate run's report: ``total_cycles``, ``seconds`` and ``tokens_per_s`` become the whole request's
    (``request``: TTFT, TPOT per step, end-to-end latency, cycles per phase); the last pass's figures move to
    ``last_pass``, which names the fields that still describe that pass alone."""
    last = {k: report[k] for k in ("total_cycles", "seconds", "tokens_per_s")}
    phase = "decode step" if request["decode_steps"] else "prefill"
    label = {"pass": f"the last {phase}", "fields": list(LAST_PASS_FIELDS)}
    return report | {"request": request, "last_pass": label | last, "total_cycles": request["cycles"]["total"],
                     "seconds": request["e2e_latency_s"], "tokens_per_s": request["tokens_per_s"]}


def last_pass_view(report: dict) -> dict:
    """The report as its last simulated pass saw it (what the plots draw): a generate run's ``total_cycles``,
    ``seconds`` and ``tokens_per_s`` back to the last pass's, so lanes and titles match ``layers`` and
    ``timeline``. Other reports are returned as they are."""
    last = report.get("last_pass")
    if not last:
        return report
    return report | {k: last[k] for k in ("total_cycles", "seconds", "tokens_per_s")}


def _logit_check_rows(n: dict) -> list[tuple[str, str]]:
    """What the simulated logits were checked against (``checked_against``, over how many tokens) and the
    largest error and top-1 agreement against each; transformers' rows say why it did not run when it did not."""
    def pct(v):
        return "n/a" if v is None else f"{v * 100:.2f} %"

    def err(v):
        return "n/a" if v is None else f"{v:.3g}"

    checked = n.get("checked_against") or []
    rows = [("checked against", f"{'; '.join(checked)}, {n.get('compared_tokens')} tokens"),
            ("max |err| vs float64 ref", err(n.get("max_abs_err_vs_reference"))),
            ("top-1 vs float64 ref", pct(n.get("top1_agreement_vs_reference")))]
    if n.get("max_abs_err_vs_transformers") is None:
        return [*rows, ("transformers", n.get("transformers", "n/a"))]
    return [*rows, ("max |err| vs transformers", err(n["max_abs_err_vs_transformers"])),
            ("top-1 vs transformers", pct(n.get("top1_agreement")))]


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """Headline figures as (label, value) pairs for the printed table."""
    n = report["numerics"]
    bw = report["bandwidth"]

    rows = [
        ("model", f"{report['model']['name']} ({report['model']['parameters']:,} params)"),
        ("wafer / mapping", f"{report['wafer']['name']} / {report['mapping']['name']}, grid "
                            f"{report['mapping']['grid_pes'][0]}x{report['mapping']['grid_pes'][1]} PEs, tiles "
                            f"{report['mapping']['tile_grid'][0]}x{report['mapping']['tile_grid'][1]}"),
        *_auto_rows(report),
        _run_row(report),
        *_serving_rows(report),
        *_pass_rows(report),
        ("roofline bound", f"{report['roofline']['bound_cycles']:,} cycles "
                           f"(compute {report['roofline']['compute_bound_cycles']:,}, "
                           f"stream {report['roofline']['stream_bound_cycles']:,})"),
        ("MFU", f"{report['mfu'] * 100:.2f} %"),
        ("MemoryX", f"{bw['memoryx_bytes'] / 1e6:,.1f} MB at {bw['memoryx_bytes_per_s'] / 1e9:,.1f} GB/s "
                    f"(busy {bw['memoryx_busy_fraction'] * 100:.1f} %)"),
        ("fabric", f"{bw['fabric_bytes'] / 1e6:,.1f} MB at {bw['fabric_bytes_per_s'] / 1e12:,.2f} TB/s"),
        ("SRAM peak / PE", f"{report['sram_peak_bytes_per_pe']:,} of {report['sram_bytes_per_pe_available']:,} B"),
        ("tile busy (mean)", f"{report['utilization']['mean_busy_fraction'] * 100:.2f} %"),
        *energy_rows(report.get("energy")),
    ]
    if n.get("enabled") and "tokens_match_transformers" in n:
        match = n["tokens_match_transformers"]
        rows.append(("tokens vs transformers", "n/a" if match is None else
                     f"{'identical' if match else 'differ'} ({n['generated_tokens_compared']} greedy tokens, "
                     f"agreement {n['token_agreement'] * 100:.1f} %)"))
    elif n.get("enabled"):
        rows += _logit_check_rows(n)
    else:
        rows.append(("numerics", f"off: {n.get('reason')}"))
    kinds = ("compute_cycles", "fabric_cycles", "stream_cycles", "interwafer_cycles")
    totals = {k: sum(layer.get(k, 0) for layer in report["layers"]) for k in kinds}
    if not totals["interwafer_cycles"]:
        del totals["interwafer_cycles"]
    tot = max(sum(totals.values()), 1)  # ops may overlap (serving dataflow), so shares are of summed op time
    rows.append(("cycles split", ", ".join(f"{k.split('_')[0]} {v / tot * 100:.1f} %" for k, v in totals.items())))
    return rows


def energy_rows(energy: dict | None) -> list[tuple[str, str]]:
    """Joules per token, energy and power (docs/energy.md); nothing for a report without ``energy``."""
    if not energy:
        return []
    per = energy.get("joules_per_token")
    per_s = "n/a" if per is None else f"{per:.4g} J/token"
    return [("energy", f"{per_s}  ({energy['joules']:.4g} J over the {energy['scope']}; average "
                       f"{energy['average_w'] / 1e3:,.2f} kW, wafer {energy['wafer_average_w'] / 1e3:,.2f} kW, "
                       f"peak {energy['peak_w'] / 1e3:,.2f} kW)")]


def _run_row(report: dict) -> tuple[str, str]:
    """Batch and sequence of the run; a generate run's prompt and output tokens (its last pass has seq 1)."""
    run, req = report["run"], report.get("request")
    if req:
        return ("run", f"batch {run['batch']}, prompt {req['prompt_tokens']} + {req['output_tokens'] // run['batch']} "
                       f"generated tokens, {run['precision']}")
    return ("run", f"batch {run['batch']} x seq {run['seq']}, {run['precision']}")


def _request_rows(report: dict) -> list[tuple[str, str]]:
    """A generate request end to end, and which figures below are its last pass's."""
    req, last = report["request"], report["last_pass"]
    share = req["cycle_share"]
    return [
        ("request total", f"{report['total_cycles']:,} cycles  ({report['seconds'] * 1e3:.4g} ms end to end: "
                          f"prefill {share['prefill'] * 100:.1f} %, {req['decode_steps']} decode steps "
                          f"{share['decode'] * 100:.1f} %)"),
        ("tokens/s", f"{report['tokens_per_s']:,.1f}  ({req['output_tokens']} output tokens over the request)"),
        ("request", f"TTFT {req['ttft_s'] * 1e3:.4g} ms, TPOT "
                    f"{'n/a' if req['tpot_s'] is None else format(req['tpot_s'] * 1e6, '.4g') + ' us'}, "
                    f"{req['e2e_tokens_per_s_per_request']:,.1f} tokens/s per request end to end"),
        ("last pass", f"{last['total_cycles']:,} cycles ({last['pass']}; the figures below are this pass's)"),
    ]


def _pass_rows(report: dict) -> list[tuple[str, str]]:
    """Cycles and tokens/s of the simulated pass; for a scaled layer subset, say the cycles are the subset's
    (the TPOT / TTFT rows hold the scaled figures). A generate run shows its whole request first."""
    if report.get("request"):
        return _request_rows(report)
    cycles = f"{report['total_cycles']:,}  ({report['seconds'] * 1e3:.4g} ms)"
    subset = report.get("layer_subset") or {}
    if subset.get("scaled"):
        return [("simulated pass", f"{cycles}, {subset['simulated_layers']} of {subset['model_layers']} layers")]
    return [("total cycles", cycles), ("tokens/s", f"{report['tokens_per_s']:,.0f}")]


def _serving_rows(report: dict) -> list[tuple[str, str]]:
    """Phase, latencies and KV cache of decode and generate runs (prefill runs show their TTFT only)."""
    phase = report.get("phase")
    if phase is None:
        return []
    rows = [("phase", phase)]
    if report.get("ttft_s"):
        rows.append(("TTFT", f"{report['ttft_s'] * 1e3:.4g} ms"))
    if report.get("tpot_s"):
        rows.append(("TPOT", f"{report['tpot_s'] * 1e6:.4g} us  ({report['tokens_per_s_per_request']:,.1f} "
                             f"tokens/s per request)"))
    rows += _placement_rows(report)
    if phase != "prefill":
        rows.append(("KV cache", f"{report['kv_cache_bytes'] / 1e6:,.2f} MB "
                                 f"({report['kv_cache_positions_per_sequence']:,} positions per sequence)"))
        rows.append(("layers", report["layer_subset"]["note"]))
    p = report["mapping"]["params"]
    if phase != "prefill" and p.get("placement") == "serving":
        w = report.get("wafers") or {"count": 1}
        held = f"{p['regions_on_wafer']} regions" if w["count"] == 1 else \
            f"{w['count']} x {p['regions_on_wafer']} regions ({w['count']} wafers)"
        rows.append(("regions", f"{p['regions_used']} of {held} of {p['region_pes'][0]}x{p['region_pes'][1]} PEs, "
                                f"stages per region {p['stages_per_region']}"))
        if w["count"] > 1:
            rows.append(("wafers", ", ".join(f"#{x['wafer']} stages {x['stages'][0]}-{x['stages'][1]} busy "
                                             f"{x['busy_fraction'] * 100:.2f} %" for x in w["per_wafer"])))
            rows.append(("inter-wafer link", f"{w['interwafer_share_of_time'] * 100:.2f} % of the time on the "
                                             f"critical path, {w['interwafer_bytes']:,} B"))
    return rows


def _placement_rows(report: dict) -> list[tuple[str, str]]:
    """Where each pass kind's weights are (resident in regions, or streamed) and why; a split request's KV move."""
    placement = report.get("placement") or {}
    rows = [(f"{kind} placement", f"{p['how']} ({p['why']})") for kind, p in placement.items()
            if kind in ("prefill", "decode")]
    move = placement.get("kv_cache_move")
    if move:
        rows.append(("KV cache move", f"{move['bytes'] / 1e6:,.2f} MB from {move['from_grid_pes'][0]}x"
                                      f"{move['from_grid_pes'][1]} to {move['to_grid_pes'][0]}x"
                                      f"{move['to_grid_pes'][1]} PEs, not charged (see report.json)"))
    return rows


def _auto_rows(report: dict) -> list[tuple[str, str]]:
    """What the auto-mapper chose, per matmul shape (k x n)."""
    decisions = report["mapping"]["params"].get("decisions")
    if not decisions:
        return []
    chosen = {d["chosen"] for d in decisions}
    if len(chosen) == 1:
        return [("auto chose", f"{chosen.pop()} for all {len(decisions)} matmul shapes")]
    return [("auto chose", ", ".join(f"{d['chosen']} ({d['shape_mkn'][1]}x{d['shape_mkn'][2]})" for d in decisions))]


def format_summary(report: dict, extra: list[tuple[str, str]] = ()) -> str:
    rows = summary_rows(report) + list(extra)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


__all__ = ["SCHEMA_VERSION", "RunInputs", "build_report", "energy_rows", "format_summary", "last_pass_view",
           "roofline_cycles", "summary_rows", "with_request"]
