"""Calibration cases C1 and C3: WaferLLM's GEMV and GEMM kernels on WSE-2 (calibration.md C1, C3), simulated
through ``wse-sim gemm``'s planner and report."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache

from ...arch import WaferSpec
from ...mapping import get_mapping
from ...mapping.gemv import GemvAllreduce, GemvTree
from ...sim import Engine
from ...workloads import lower_gemm
from ..gemm import GemmSpec
from ..gemm import gemm_report as build
from ..scenario import make_grid
from .case import Case, geomean


@lru_cache(maxsize=512)
def gemm_report(wafer: WaferSpec, m: int, k: int, n: int, mapping: str, grid: str, tiles: str,
                precision: str = "fp16", x_replicated: bool = False, y_replicated: bool = False) -> dict:
    """``wse-sim gemm``'s report for one matmul on ``wafer`` (an object, so fits need no files). Cached: the
    same run serves several cases and a fit's repeated residuals."""
    graph = lower_gemm(m, k, n, precision)
    tile_grid = make_grid(wafer, grid, tiles)
    if mapping in ("gemv-tree", "gemv-allreduce"):
        cls = GemvTree if mapping == "gemv-tree" else GemvAllreduce
        plan_maker = cls(x_replicated=x_replicated, y_replicated=y_replicated)
    else:
        plan_maker = get_mapping(mapping)
    plan = plan_maker.plan(graph, wafer, tile_grid)
    t0 = time.perf_counter()
    result = Engine(wafer, plan).run()
    spec = GemmSpec(m=m, k=k, n=n, wafer=wafer.name, grid=grid, tiles=tiles, mapping=mapping, precision=precision)
    return build(spec, wafer, graph, plan, result, time.perf_counter() - t0, None, None, None)


# ---- built-in cases: calibration.md C1 and C3 --------------------------------------------------------------------
# C1 grid. The paper does not state it (calibration.md C1). WaferLLM's MeshGEMV launch script loads x as
# X.reshape(P, M // P) and W as W.reshape(P, Mt, P, Nt) (MeshGEMV/WSE-2/launch_device.py), so P divides 16384 and
# 32768: a power of two, at most 512 on the 750-wide WSE-2. P = 256 would leave 64 x 64 and 128 x 128 blocks per
# PE, 1,024 and 4,096 cycles of fp16 FMACs alone, more than the published 2.03 us (2,233 cycles) for 32K; at
# P = 512 the blocks are 32 x 32 and 64 x 64 (256 and 1,024 cycles), and the published difference between the
# two sizes (913 cycles) is that compute difference (768) plus three longer vectors on the fabric: so 512 x 512.
# Tiles 16 x 16 (32 x 32 PEs) mirror MeshGEMV's phase-1 groups (group_num 16 of 32 PEs, the repo's sqrt(P)
# choice: P = 256 / group_num 16, P = 360 / group_num 20); the tree itself works on PE columns (fan-in 32).
GEMV_GRID, GEMV_TILES = "512x512", "16x16"
GEMV_KERNEL = ("x replicated along the reduction (the host loads it so: np.tile(X.reshape(P, Mt), (1, P))) and "
               "the result allreduced (two_tree_allreduce: reduce, then multicast back), as the measured kernel")


def _gemv_us(k: int, mapping: str = "gemv-tree") -> Callable[[WaferSpec], float]:
    def simulate(wafer: WaferSpec) -> float:
        return gemm_report(wafer, 1, k, k, mapping, GEMV_GRID, GEMV_TILES, "fp16", True, True)["seconds"] * 1e6
    return simulate


def _gemv_chain_over_tree(wafer: WaferSpec) -> float:
    return _gemv_us(16384, "gemv-allreduce")(wafer) / _gemv_us(16384)(wafer)


# C3 GEMM configurations: the paper's claims cover 2K/4K/8K square GEMMs on 360^2 .. 720^2 PEs; we take the
# corners of that range. The tile grid is wse-sim gemm's default (8 x 8): the engine works on tiles, and each tile
# step of SUMMA, Cannon and MeshGEMM carries the latency of the PE-level steps it stands for (their modules and
# wse_sim.arch.costs.pe_step), so the per-step latency behind the published gap shows at 8 x 8 tiles too.
GEMM_SIZES, GEMM_GRIDS, GEMM_TILES = (2048, 4096, 8192), ("360x360", "720x720"), "8x8"


def _gemm_cycles(wafer: WaferSpec, mapping: str, size: int, grid: str) -> int:
    return gemm_report(wafer, size, size, size, mapping, grid, GEMM_TILES)["total_cycles"]


def _speedup_over(other: str) -> Callable[[WaferSpec], float]:
    def simulate(wafer: WaferSpec) -> float:
        return geomean(_gemm_cycles(wafer, other, s, g) / _gemm_cycles(wafer, "meshgemm", s, g)
                       for s in GEMM_SIZES for g in GEMM_GRIDS)
    return simulate


def _efficiency_pct(mapping: str) -> Callable[[WaferSpec], float]:
    def simulate(wafer: WaferSpec) -> float:
        return gemm_report(wafer, 8192, 8192, 8192, mapping, "720x720", GEMM_TILES)["compute_efficiency"] * 100
    return simulate


_WAFERLLM = "WaferLLM (OSDI'25, arXiv 2502.04563) on a CS-2 (WSE-2), fp16"
_GEMM_SETUP = (f"geometric mean over {', '.join(f'{s // 1024}K' for s in GEMM_SIZES)} square fp16 GEMMs on "
               f"{' and '.join(GEMM_GRIDS)} PEs, {GEMM_TILES} tiles; the paper gives 2-3x over this range of sizes "
               "and grids, and the mean is compared with that range (each configuration: docs/validation.md)")
GEMM_SPEEDUP_RANGE = (2.0, 3.0)  # calibration.md C3: "2-3x faster than SUMMA ... and Cannon"
_EFF_SETUP = ("8192^3 fp16 on 720x720 PEs (the paper's largest GEMM, where efficiency is highest), 8x8 tiles; "
              "compute efficiency = achieved FLOP/s over the grid's peak (4 fp16 FMAC/PE/cycle)")

KERNEL_CASES: tuple[Case, ...] = (
    Case("C1-gemv-16k", f"calibration.md C1: {_WAFERLLM}, Table 6, [1,16384] x [16384,16384] MeshGEMV",
         1.2, "us", _gemv_us(16384), "1.2 us (0.0012 ms)",
         f"gemv-tree on {GEMV_GRID} PEs (derived, see kernels.py), {GEMV_TILES} tiles, {GEMV_KERNEL}", fit=True),
    Case("C1-gemv-32k", f"calibration.md C1: {_WAFERLLM}, Table 6, [1,32768] x [32768,32768] MeshGEMV",
         2.03, "us", _gemv_us(32768), "2.03 us (0.00203 ms)",
         f"gemv-tree on {GEMV_GRID} PEs (derived, see kernels.py), {GEMV_TILES} tiles, {GEMV_KERNEL}", fit=True),
    Case("C3-meshgemv-vs-allreduce", f"calibration.md C3: {_WAFERLLM}, Sec. 7.3, MeshGEMV vs the vendor's "
         "pipelined-allreduce GEMV", 4.6, "x", _gemv_chain_over_tree, "about 4.6x faster",
         "gemv-allreduce (a chain through every PE of the row, then a multicast back) over gemv-tree, both as the "
         f"C1 16K kernel on {GEMV_GRID} PEs; the paper does not give the shape or grid of its 4.6x (assumed C1's)",
         fit=True),  # fitted although its setup is assumed: below
    Case("C3-meshgemm-vs-summa", f"calibration.md C3: {_WAFERLLM}, Sec. 7.2, MeshGEMM vs SUMMA (vendor default)",
         2.5, "x", _speedup_over("summa"), "2-3x faster", f"SUMMA cycles over MeshGEMM cycles, {_GEMM_SETUP}",
         bound="within", published_range=GEMM_SPEEDUP_RANGE),
    Case("C3-meshgemm-vs-cannon", f"calibration.md C3: {_WAFERLLM}, Sec. 7.2, MeshGEMM vs Cannon",
         2.5, "x", _speedup_over("cannon"), "2-3x faster", f"Cannon cycles over MeshGEMM cycles, {_GEMM_SETUP}",
         bound="within", published_range=GEMM_SPEEDUP_RANGE),
    Case("C3-meshgemm-efficiency-720", f"calibration.md C3: {_WAFERLLM}, Sec. 7.2, MeshGEMM at 720x720",
         70.0, "%", _efficiency_pct("meshgemm"), "> 70 %", f"meshgemm, {_EFF_SETUP}", bound="at_least"),
    Case("C3-summa-efficiency-720", f"calibration.md C3: {_WAFERLLM}, Sec. 7.2, SUMMA at 720x720",
         50.0, "%", _efficiency_pct("summa"), "< 50 %", f"summa, {_EFF_SETUP}", bound="at_most"),
    Case("C3-cannon-efficiency-720", f"calibration.md C3: {_WAFERLLM}, Sec. 7.2, Cannon at 720x720",
         50.0, "%", _efficiency_pct("cannon"), "< 50 %", f"cannon, {_EFF_SETUP}", bound="at_most"),
)

# Why C3-meshgemv-vs-allreduce is fitted although its shape and grid are assumed: C1 and C2 cannot tell the
# per-stage cost (beta) from the per-phase cost. Their kernels have a few dozen stages per phase, so any beta from
# ~1.5 to ~10 cycles with a matching phase cost fits them about equally (docs/validation.md); the vendor's chain
# allreduce has 511 stages in 2 phases against the tree's 24 in 3, so their ratio pins beta.
