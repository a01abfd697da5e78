"""PE-level steps inside tile-level SUMMA, Cannon and MeshGEMM (``wse_sim.arch.costs.pe_step``).

- closed forms of the per-step cost (one buffer, chained shifts, prefetched broadcasts) on wse2's parameters;
- the plans' transfers carry the PE-level routes: at one PE per tile exactly the PE-level hops, at 4x4 tiles
  ``n`` times them;
- a tile-level run agrees with a PE-level run (``TileGrid`` with one PE per tile) of the same GEMM;
- at 8192^3 on 720x720 PEs (calibration case C3) MeshGEMM's step is bound by its multiply, SUMMA's and Cannon's by
  latency, and the simulated totals are the PE-level steps' sum.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from wse_sim.workloads import lower_gemm

from wse_sim.arch import get_wafer
from wse_sim.arch.costs import STEP_PHASES, STEP_STAGES, pe_step
from wse_sim.mapping import TileGrid, get_mapping
from wse_sim.mapping.plan import TaskKind
from wse_sim.sim import Engine

WSE2 = get_wafer("wse2")
GEMMS = ("summa", "cannon", "meshgemm")
# one receive stage and one phase (a fabric operation started) per PE-level step
STEP = math.ceil(WSE2.stage_overhead_cycles) + math.ceil(WSE2.phase_overhead_cycles)


# ---- the cost function ------------------------------------------------------------------------------------------
def test_pe_step_closed_forms():
    """400 fp16 FMACs (100 cycles at 4 per cycle), 288 bytes (72 wavelets), 10 hops, one stage and one phase."""
    c, ser, lat = 100, 72, 10 + STEP
    one = pe_step(WSE2, "fp16", 400, 288, 10, buffers=1)
    assert (one.compute, one.serialization, one.latency) == (c, ser, lat)
    assert one.cycles == c + ser + lat and one.transfer == ser + lat and one.bound == "latency"
    # Shifts forward what they received: they chain, and overlap the multiply.
    assert pe_step(WSE2, "fp16", 400, 288, 10, forwards=True).cycles == max(c, ser + lat)
    assert pe_step(WSE2, "fp16", 4 * (ser + lat + 1), 288, 10, forwards=True).bound == "compute"
    # Independent broadcasts into two buffers: a buffer cycles through a transfer and a multiply.
    assert pe_step(WSE2, "fp16", 400, 288, 10, buffers=2).cycles == max(c, ser, math.ceil((ser + lat + c) / 2))
    assert pe_step(WSE2, "fp16", 400, 288, 500, buffers=3).cycles == math.ceil((ser + 500 + STEP + c) / 3)
    # A link-bound step: huge block, tiny multiply, deep prefetch.
    fat = pe_step(WSE2, "fp16", 4, 40_000, 1, buffers=8)
    assert fat.cycles == fat.serialization == 10_000 and fat.bound == "link"
    # fp32 runs at one FMAC per cycle; stages, turns and phases add their wafer costs.
    s = pe_step(WSE2, "fp32", 400, 0, 0, stages=2, turns=1, buffers=1, phases=0)
    assert s == (400, 0, math.ceil(2 * WSE2.stage_overhead_cycles) + math.ceil(WSE2.turn_cycles), s.cycles)
    three = pe_step(WSE2, "fp32", 400, 0, 0, stages=0, buffers=1, phases=3)
    assert three.latency == math.ceil(3 * WSE2.phase_overhead_cycles) > 0
    with pytest.raises(ValueError, match="buffers"):
        pe_step(WSE2, "fp16", 1, 1, 1, buffers=0)


def test_pe_step_scales_with_the_steps_a_tile_stands_for():
    """A tile step of n equal PE steps: n times the bytes, hops, stages and phases, and n times the time (up to
    rounding)."""
    for kw in ({"buffers": 1}, {"forwards": True}, {"buffers": 2}):
        one = pe_step(WSE2, "fp16", 144, 72, 7, **kw)
        n = 9
        tile = pe_step(WSE2, "fp16", 144 * n, 72 * n, 7 * n, stages=n * STEP_STAGES, phases=n * STEP_PHASES, **kw)
        assert abs(tile.cycles - n * one.cycles) <= 2 * n  # stage and phase costs each round up once per step


# ---- what the plans carry ---------------------------------------------------------------------------------------
def _transfers(mapping, m, k, n, grid, label):
    graph = lower_gemm(m, k, n, "fp16", bias=False)
    plan = get_mapping(mapping).plan(graph, WSE2, TileGrid.make(*grid))
    return [t for t in plan.ops[0].tasks if t.kind == TaskKind.TRANSFER and t.label.startswith(label)]


def test_pe_level_plans_carry_pe_routes():
    """One PE per tile (12x12): SUMMA's step-s broadcast reaches max(s, 11 - s) PEs away, Cannon's wrap-around
    crosses the row (11 hops), MeshGEMM's ring moves at most two PEs; one receive stage and one phase per step."""
    for t in _transfers("summa", 12, 12, 12, (12, 12, 12, 12), "A panel"):
        s = int(t.label.split()[2])
        assert (t.hops, t.stages, t.phases) == (max(s, 11 - s), 1, 1)
    for name, hops in (("cannon", 11), ("meshgemm", 2)):
        shifts = _transfers(name, 12, 12, 12, (12, 12, 12, 12), "shift")
        assert shifts and all((t.hops, t.stages, t.phases) == (hops, 1, 1) for t in shifts)
        assert not any("last step" in t.label for t in shifts)  # one PE per tile: nothing inside a tile step


def test_tile_level_plans_carry_n_pe_routes():
    """48x48 PEs in 4x4 tiles (12x12 PEs each), 48^3: a tile step stands for 12 PE steps."""
    for t in _transfers("summa", 48, 48, 48, (48, 48, 4, 4), "A panel"):
        s = int(t.label.split()[2])
        assert t.hops == sum(max(p, 47 - p) for p in range(12 * s, 12 * s + 12)) and t.stages == t.phases == 12
    for name, hops in (("cannon", 47), ("meshgemm", 2)):
        shifts = _transfers(name, 48, 48, 48, (48, 48, 4, 4), "shift")
        tile_shifts = [t for t in shifts if "last step" not in t.label]
        last = [t for t in shifts if "last step" in t.label]
        assert all((t.hops, t.stages, t.phases) == (12 * hops, 12, 12) for t in tile_shifts)
        assert len(last) == 8 and all((t.hops, t.stages, t.phases, t.nbytes) == (11 * hops, 11, 11, 0) for t in last)
        # 3 tile shifts of 12 PE shifts and 11 in the last step: the 47 shifts of the PE-level algorithm.
        assert sum(t.stages for t in shifts if t.label.startswith("shift A row 0")) == 47


# ---- tile level against PE level ----------------------------------------------------------------------------
# Tile-level total cycles within 10 % of the PE-level run (here at most 9.5 %, the uneven fp32 MeshGEMM). The
# steps agree; what differs is the start: at PE level every PE row is skewed by its own ring position and a late
# row's skew delays the chained shifts of every step after it, while a tile step absorbs that delay in its longer
# multiply. Over a wider sweep (16-24 PEs a side, 2-6 tiles) the largest gap was 14 %, tile level faster.
AGREE = 0.10


@pytest.mark.parametrize("mapping", GEMMS)
@pytest.mark.parametrize(("m", "k", "n", "precision"), [
    (48, 48, 48, "fp16"),  # 3x3 blocks per PE: every step latency-bound
    (160, 160, 160, "fp16"),  # 10x10 blocks: MeshGEMM compute-bound, SUMMA's broadcasts still cost
    (50, 70, 30, "fp32"),  # uneven splits
])
def test_tile_level_agrees_with_pe_level(mapping, m, k, n, precision):
    """16x16 PEs: one PE per tile (the PE-level algorithm) against 4x4 tiles of 4x4 PEs."""
    graph = lower_gemm(m, k, n, precision, bias=False)
    pe = Engine(WSE2, get_mapping(mapping).plan(graph, WSE2, TileGrid.make(16, 16, 16, 16))).run()
    tile = Engine(WSE2, get_mapping(mapping).plan(graph, WSE2, TileGrid.make(16, 16, 4, 4))).run()
    assert tile.total_cycles == pytest.approx(pe.total_cycles, rel=AGREE)
    assert tile.fabric_bytes < pe.fabric_bytes  # the tile level counts only bytes crossing tile edges


# ---- calibration case C3 at 8x8 tiles -------------------------------------------------------------------------
# The fabric side of the steps, with the PE's instruction costs (issue 16) switched off: what separates the three
# algorithms. With them on (the fitted wse2), see test_instruction_costs_dominate_every_step_at_720.
FABRIC_ONLY = replace(WSE2, dsd_op_overhead_cycles=0.0, gemm_step_sw_cycles=0.0)


def _c3_8k(wafer):
    graph = lower_gemm(8192, 8192, 8192, "fp16", bias=False)
    grid = TileGrid.make(720, 720, 8, 8)
    op = next(iter(graph.ops()))
    out = {}
    for name in GEMMS:
        layout = get_mapping(name).layout(graph, wafer, grid)
        steps = [layout.pe_step(op, s) for s in range(8)]
        out[name] = steps, Engine(wafer, get_mapping(name).plan(graph, wafer, grid)).run()
    return out


@pytest.fixture(scope="module")
def c3_8k():
    return _c3_8k(FABRIC_ONLY)


def test_instruction_costs_dominate_every_step_at_720():
    """With the fitted per-instruction and per-step costs, a MeshGEMM step on 12 x 12 blocks is 136.5 (k, n)
    instructions of 12 elements (1024 x 12 over 90 PE steps per tile step) at c0 + 3 cycles plus the step
    software, and every algorithm runs at a small fraction of peak: C3's "> 70 %" is a known miss
    (docs/validation.md)."""
    out = _c3_8k(WSE2)
    mesh = out["meshgemm"][0]
    expect = math.ceil(1024 * 12 / 90 * (WSE2.dsd_op_overhead_cycles + 3) + WSE2.gemm_step_sw_cycles)
    assert all(s.bound == "compute" and s.cycles == s.compute == expect for s in mesh)
    peak = 2 * 8192**3 / (2 * WSE2.fp16_fmac_per_pe_per_cycle * 720 * 720)
    eff = {name: peak / res.total_cycles for name, (_, res) in out.items()}
    assert all(e < 0.30 for e in eff.values()) and eff["meshgemm"] == pytest.approx(eff["cannon"], rel=0.01)


def test_meshgemm_compute_bound_summa_and_cannon_latency_bound_at_720(c3_8k):
    """8192^3 fp16 on 720x720 PEs: 12x12 blocks per PE, 410 cycles of FMACs per step. MeshGEMM's 2-hop shift
    (72 wavelets, 2 hops, one stage, one phase) hides behind the multiply; SUMMA's broadcast crosses ~3/4 of a
    row and its single buffer adds it to the multiply; Cannon's wrap-around crosses all 719 PEs every step."""
    mesh, summa, cannon = (c3_8k[n][0] for n in ("meshgemm", "summa", "cannon"))
    assert all(s.bound == "compute" and s.cycles == s.compute == 410 for s in mesh)
    assert all(s.bound == "latency" and s.cycles == s.compute + s.transfer for s in summa)
    assert all(s.bound == "latency" and s.latency == 719 + STEP for s in cannon)
    assert min(s.cycles for s in summa) > 2 * 410 and min(s.cycles for s in cannon) > 1.9 * 410


def test_c3_totals_are_the_pe_steps(c3_8k):
    """The simulated total is 720 PE steps of the mapping's step cost, plus Cannon's skew and the output write
    (at most 9 %); MeshGEMM reaches > 70 % of peak, SUMMA and Cannon < 50 % (the published claim)."""
    for name, (steps, res) in c3_8k.items():
        est = sum(90 * s.cycles for s in steps)
        assert est <= res.total_cycles * 1.01 and res.total_cycles <= est * 1.09, name
    peak = 2 * 8192**3 / (2 * FABRIC_ONLY.fp16_fmac_per_pe_per_cycle * 720 * 720)
    eff = {name: peak / res.total_cycles for name, (_, res) in c3_8k.items()}
    assert eff["meshgemm"] > 0.70 and eff["summa"] < 0.50 and eff["cannon"] < 0.50
