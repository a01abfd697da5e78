"""One matmul on a grid: ``wse-sim gemm``. Same mappings, same engine, same numerics as whole-model runs.

This is how users reproduce published kernel results (GEMM and GEMV efficiency on a PE grid) and how each
mapping is checked in isolation: with numerics on, seeded random matrices are multiplied through the mapping and
compared with float64 numpy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..arch import WaferSpec, load_wafer
from ..arch.defects import apply_defects, defect_rate, defects_report, usable_wafer, wafer_remap
from ..errors import UserError
from ..mapping import ModelPlan, TileGrid, mapping_info
from ..report.build import energy_rows
from ..report.energy import plan_energy
from ..sim import Engine
from ..workloads import lower_gemm
from .scenario import make_grid, make_mapping

NUMERICS_MAX_MACS = 2**31  # above this, float64 numpy reference and the tile GEMMs take minutes


@dataclass(frozen=True)
class GemmSpec:
    m: int
    k: int
    n: int
    wafer: str = "wse2"
    grid: str | None = None
    tiles: str | None = None
    tile: str | None = None
    mapping: str = "auto"
    precision: str = "fp16"
    numerics: bool = False
    seed: int = 0
    fan_in: int | None = None  # gemv-tree reduction fan-in; None: the wafer's reduce_fan_in (an option only if set)
    defects: str | None = None  # a defective wafer (wse_sim.arch.defects; docs/defects.md)
    defect_seed: int | None = None
    defect_map: str | None = None


def _grid(spec: GemmSpec, wafer) -> TileGrid:

    tiles = None if spec.tile else spec.tiles  # none: make_grid takes DEFAULT_TILES
    return make_grid(wafer, spec.grid, tiles, spec.tile)


def plan_gemm(spec: GemmSpec, wafer: WaferSpec | None = None, **options):
    """(wafer, graph, plan) of ``spec``'s matmul; ``wafer`` overrides ``spec.wafer`` (fits pass objects) and
    ``options`` go to the mapping with ``spec.fan_in`` when set."""
    wafer = wafer or load_wafer(spec.wafer)
    graph = lower_gemm(spec.m, spec.k, spec.n, spec.precision)
    if spec.fan_in is not None:
        options["fan_in"] = spec.fan_in
    mapping = make_mapping(spec.mapping, fixed_tiles=bool(spec.tiles or spec.tile), **options)
    return wafer, graph, mapping.plan(graph, wafer, _grid(spec, wafer))


def run_gemm(spec: GemmSpec) -> dict:
    """Simulate one matmul; returns the report dict written as ``report.json``."""
    if spec.numerics and spec.m * spec.k * spec.n > NUMERICS_MAX_MACS:
        raise UserError(f"--numerics is for small shapes (m*k*n <= {NUMERICS_MAX_MACS:,}); "
                        f"got {spec.m * spec.k * spec.n:,}")
    healthy = load_wafer(spec.wafer)
    remap = wafer_remap(healthy, spec.defects, spec.defect_seed, spec.defect_map)
    wafer, graph, plan = plan_gemm(spec, usable_wafer(healthy, remap))
    if remap is not None:
        plan = apply_defects(plan, remap, wafer.wavelet_bytes)
    executor = None
    a = b = None
    if spec.numerics:
        from ..sim.numerics import Numerics  # the kernels (numba): imported only when numerics run

        rng = np.random.default_rng(spec.seed)
        a = rng.standard_normal((spec.m, spec.k)).astype(np.float32)
        b = rng.standard_normal((spec.k, spec.n)).astype(np.float32)
        executor = Numerics.for_tensors(graph, {"A": a, "gemm.B": b})
    t0 = time.perf_counter()
    result = Engine(wafer, plan, numerics=executor).run()
    wall = time.perf_counter() - t0
    report = gemm_report(spec, wafer, graph, plan, result, wall, executor, a, b)
    if remap is not None:
        rate = defect_rate(healthy, spec.defects) if spec.defects is not None else None
        report["defects"] = defects_report(remap, plan, rate)
    return report


def gemm_report(spec, wafer, graph, plan: ModelPlan, result, wall_s, executor, a, b) -> dict:
    op = result.ops[0]
    grid = plan.grid
    pes = grid.rows * grid.cols
    total = result.total_cycles
    seconds = total / wafer.clock_hz
    flops = 2 * spec.m * spec.k * spec.n
    peak = wafer.peak_flops_per_s(spec.precision, pes)
    searched = mapping_info(plan.mapping).searches
    report = {
        "shape": {"m": spec.m, "k": spec.k, "n": spec.n, "gemv": spec.m == 1},
        "wafer": wafer.name,
        "mapping": plan.ops[0].mapping if searched else plan.mapping,
        "mapping_requested": spec.mapping,
        "grid_pes": [grid.rows, grid.cols],
        "tile_grid": list(grid.shape),
        "precision": spec.precision,
        "total_cycles": total,
        "seconds": seconds,
        "compute_cycles": op.compute_cycles,
        "fabric_cycles": op.fabric_cycles,
        "stream_cycles": op.stream_cycles,
        "fabric_bytes": result.fabric_bytes,
        "stream_bytes": result.stream_bytes,
        "sram_peak_bytes_per_pe": plan.sram_peak_bytes_per_pe,
        "resident_weight_bytes_per_pe": plan.resident_bytes_per_pe,
        "flops": flops,
        "compute_efficiency": (flops / seconds) / peak if seconds else 0.0,
        "notes": plan.ops[0].notes,
        "simulation": {"tasks": result.tasks, "wall_s": round(wall_s, 3)},
    }
    report["energy"] = plan_energy(wafer, plan, result, spec.m)  # "tokens": the m rows of A
    if searched:
        report["auto"] = plan.params
    if executor is not None:
        ref = a.astype(np.float64) @ b.astype(np.float64)
        y = executor.output("gemm")
        report["numerics"] = {"max_abs_err_vs_float64": float(np.max(np.abs(y - ref))),
                              "ref_abs_max": float(np.max(np.abs(ref))), "seed": spec.seed}
    return report


def format_gemm(report: dict) -> str:
    s = report["shape"]
    rows = [
        ("gemm", f"[{s['m']}, {s['k']}] x [{s['k']}, {s['n']}] {report['precision']}"
                 + (" (GEMV)" if s["gemv"] else "")),
        ("wafer / mapping", f"{report['wafer']} / {report['mapping']}, grid {report['grid_pes'][0]}x"
                            f"{report['grid_pes'][1]} PEs, tiles {report['tile_grid'][0]}x{report['tile_grid'][1]}"),
        ("total cycles", f"{report['total_cycles']:,}  ({report['seconds'] * 1e6:.4g} us)"),
        ("split", f"compute {report['compute_cycles']:,}, fabric {report['fabric_cycles']:,}, "
                  f"stream {report['stream_cycles']:,} cycles"),
        ("compute efficiency", f"{report['compute_efficiency'] * 100:.2f} % of the grid's peak"),
        ("fabric bytes", f"{report['fabric_bytes']:,}"),
        *energy_rows(report.get("energy")),
        ("SRAM peak / PE", f"{report['sram_peak_bytes_per_pe']:,} B"),
    ]
    if "numerics" in report:
        rows.append(("max |err| vs float64", f"{report['numerics']['max_abs_err_vs_float64']:.3g}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
