"""Defective wafers (wse_sim.arch.defects): the remapping on small meshes against hand-drawn maps, detour hops,
numerics bit-identical to the healthy wafer, and a healthy wafer's cycles unchanged."""

import json
from dataclasses import replace

import numpy as np
import pytest
from wse_sim.workloads import OpKind, OpSpec

from wse_sim.app import RunSpec, run
from wse_sim.arch import get_wafer
from wse_sim.arch.costs import hop_cycles, phase_cycles, wavelets
from wse_sim.arch.defects import DefectMap, apply_defects, remap, wafer_remap
from wse_sim.errors import UserError
from wse_sim.mapping import ModelPlan, OpPlan, Task, TaskKind, TileGrid
from wse_sim.sim import Engine


def drawn(picture: str):
    """A hand-drawn physical array: ``X`` a dead PE, ``.`` an unused spare, ``rc`` the logical PE (row letter,
    column digit) placed there. Returns (dead set, {logical (r, c): physical (pr, pc)}, rows, cols)."""
    lines = [line.split() for line in picture.strip().splitlines()]
    dead, where = set(), {}
    for pr, cells in enumerate(lines):
        for pc, cell in enumerate(cells):
            if cell == "X":
                dead.add((pr, pc))
            elif cell != ".":
                where[(ord(cell[0]) - ord("a"), int(cell[1]))] = (pr, pc)
    return frozenset(dead), where, len(lines), len(lines[0])


def check(picture: str, mesh=(4, 4), dead_links=frozenset()):
    dead, where, rows, cols = drawn(picture)
    rm = remap(DefectMap(rows, cols, dead, frozenset(dead_links)), *mesh)
    got = {(r, c): tuple(int(x) for x in rm.phys[r, c]) for r in range(rm.rows) for c in range(rm.cols)}
    assert got == where
    return rm


def test_dead_pe_shifts_its_row_by_one():
    rm = check("""
        a0 a1 a2 a3 .
        b0 b1 X  b2 b3
        c0 c1 c2 c3 .
        d0 d1 d2 d3 .
        .  .  .  .  .
    """)
    assert rm.lost_rows == 0 and rm.retired_rows == ()
    # b1 -> b2 crosses the dead PE: two physical hops; b2, b3 sit one column right of a2, c2 (and a3, c3)
    assert rm.extra_h.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert rm.extra_v.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert rm.shared_links > 0


def test_dead_links_leave_the_placement_and_are_routed_around():
    """Three failed links on the map above (drawn as pairs of physical PEs). The placement does not move; a
    logical link whose routes all cross a failed link takes a shortest route around it (two hops more), one whose
    row-first route is cut but whose column-first route is whole keeps its length."""
    picture = """
        a0 a1 a2 a3 .
        b0 b1 X  b2 b3
        c0 c1 c2 c3 .
        d0 d1 d2 d3 .
        .  .  .  .  .
    """
    cut = {((0, 2), (0, 3)),  # a2 - a3
           ((2, 0), (2, 1)),  # c0 - c1
           ((0, 1), (1, 1))}  # a1 - b1
    rm = check(picture, dead_links=cut)
    # a2 -> a3: (0,2) (1,2) (1,3) (0,3), 3 hops; c0 -> c1: through row d, 3 hops; b1 -> b2 across the dead PE: 2
    assert rm.extra_h.tolist() == [[0, 0, 2], [0, 1, 0], [2, 0, 0], [0, 0, 0]]
    # a1 -> b1: (0,1) (0,2) (1,2) (1,1), 3 hops; a2 -> b2: row first is cut, column first (down, then right) is
    # whole: 2 hops as without the cut
    assert rm.extra_v.tolist() == [[0, 2, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]
    # shared within an orientation: a2 -> a3's detour runs on b1 -> b2's link (1,2)-(1,3), c0 -> c1's on d0 -> d1's
    # (3,0)-(3,1); a1 -> b1's detour and a2 -> b2 both go down (0,2)-(1,2), and a2 -> b2 and b2 -> c2 both use
    # (1,2)-(1,3)
    assert rm.routes.share_h.tolist() == [[1, 1, 2], [1, 2, 1], [2, 1, 1], [2, 1, 1]]
    assert rm.routes.share_v.tolist() == [[1, 2, 2, 1], [1, 1, 2, 1], [1, 1, 1, 1]]
    assert rm.summary()["dead_links"] == 3 and rm.summary()["contended_logical_links"] == 4 + 3


def test_dead_links_from_the_map_file_and_drawn_from_the_toml_area(tmp_path):
    f = tmp_path / "map.txt"
    f.write_text("# a dead PE and a dead link\n1 2\n3 4 3 5\n")
    rm = wafer_remap(get_wafer("tiny"), None, None, str(f))
    assert rm.dead == 1 and rm.dead_links == {((3, 4), (3, 5))} and rm.extra_h[3].tolist() == [0, 0, 0, 0, 2, 0, 0]
    for bad in ("3 4 4 5\n", "3 4 3\n", "3 4 3 9\n"):  # not adjacent, three numbers, outside the array
        f.write_text(bad)
        with pytest.raises(UserError, match="line 1"):
            wafer_remap(get_wafer("tiny"), None, None, str(f))
    w = get_wafer("wse2")
    assert w.link_area_mm2 == 0 and not wafer_remap(w, "10x", 1, None).dead_links  # not published: none drawn
    with_links = wafer_remap(replace(w, link_area_mm2=w.pe_area_mm2), "10x", 1, None)
    no_links = wafer_remap(w, "10x", 1, None)
    links = (w.mesh_rows + w.spare_rows) * (w.mesh_cols + w.spare_cols) * 2
    assert with_links.dead == no_links.dead  # the PEs are drawn first, from the same seed
    assert abs(len(with_links.dead_links) - links * 10 * w.defect_rate_per_pe) < 4 * np.sqrt(links * 3.8e-4)


def test_each_wafer_of_a_pipeline_charges_its_own_detours():
    """Two wafers side by side in one plan grid (as the serving placement lays a pipeline out): a transfer is
    charged on the map of the wafer it runs on."""
    dead, _, rows, cols = drawn("""
        .  .  .  .  .
        .  .  X  .  .
        .  .  .  .  .
        .  .  .  .  .
        .  .  .  .  .
    """)
    sick, well = remap(DefectMap(rows, cols, dead), 4, 4), remap(DefectMap(rows, cols, frozenset()), 4, 4)
    grid = TileGrid.make(4, 8, 2, 4)  # 2 x 2 tiles; tile columns 0-1 on wafer 0, 2-3 on wafer 1
    on_0 = Task(TaskKind.TRANSFER, links=(((0, 0), (0, 1)),), bytes_per_lane=8, hops=3)
    on_1 = Task(TaskKind.TRANSFER, links=(((0, 2), (0, 3)),), bytes_per_lane=8, hops=3)
    plan = ModelPlan("t", grid, "fp16", (OpPlan(None, "t", (on_0, on_1), 0),))
    # lane b crosses b1 -> b2 past the dead PE on the sick wafer only (test_detours_charge_routes_...)
    assert [t.hops for t in apply_defects(plan, (sick, well)).ops[0].tasks] == [4, 3]
    assert [t.hops for t in apply_defects(plan, (well, sick)).ops[0].tasks] == [3, 4]


OP = OpSpec(name="op", kind=OpKind.MATMUL, block="b", layer=0, groups=1, m=1, k=1, n=1, flops=0, weight_bytes=0,
            act_in_bytes=0, act_out_bytes=0)


def one_transfer_cycles(wafer, grid, task, rm=None) -> tuple[int, Task]:
    plan = ModelPlan("t", grid, "fp16", (OpPlan(OP, "t", (task,), 0),))
    if rm is not None:
        plan = apply_defects(plan, rm, wafer.wavelet_bytes)
    return Engine(wafer, plan).run().total_cycles, plan.ops[0].tasks[0]


def test_lanes_sharing_a_physical_link_serialise():
    """Row b shifted two columns by two dead PEs: every a_c -> b_c route runs along row a past a_(c+1)'s start,
    so neighbouring lanes of one column transfer share a physical link and push their wavelets through it one
    after the other: serialization x 2, on top of 2 extra hops (closed form of wse_sim.arch.costs)."""
    rm = check("""
        a0 a1 a2 a3 .  .
        X  X  b0 b1 b2 b3
        .  .  .  .  .  .
    """, mesh=(2, 4))
    assert rm.extra_v.tolist() == [[2, 2, 2, 2]] and rm.routes.share_v.tolist() == [[2, 2, 2, 2]]
    assert rm.routes.share_h.tolist() == [[1, 1, 1], [1, 1, 1]]  # b's links: the healthy row links of a
    wafer = get_wafer("tiny")
    grid = TileGrid.make(2, 4, 2, 1)  # tile rows of one PE row, one tile column of 4 PEs
    nbytes = 40 * wafer.wavelet_bytes
    col = Task(TaskKind.TRANSFER, links=(((0, 0), (1, 0)),), bytes_per_lane=nbytes, hops=1)
    healthy, _ = one_transfer_cycles(wafer, grid, col)
    sick, task = one_transfer_cycles(wafer, grid, col, rm)
    assert (task.hops, task.link_share) == (3, 2)
    w = wavelets(wafer, nbytes)
    latency = phase_cycles(wafer, 1)
    assert healthy == int(np.ceil(w * wafer.cycles_per_wavelet)) + hop_cycles(wafer, 1) + latency
    assert sick == int(np.ceil(2 * w * wafer.cycles_per_wavelet)) + hop_cycles(wafer, 3) + latency
    row = Task(TaskKind.TRANSFER, links=(((0, 0), (0, 1)),), bytes_per_lane=nbytes, hops=1)
    grid_cols = TileGrid.make(2, 4, 1, 2)  # a row link: lanes a and b, their own physical links
    assert one_transfer_cycles(wafer, grid_cols, row)[0] == one_transfer_cycles(wafer, grid_cols, row, rm)[0]


def test_row_with_more_dead_than_spares_is_retired_and_a_spare_row_moves_in():
    check("""
        a0 a1 a2 a3 .
        b0 b1 b2 b3 .
        X  .  .  .  X
        c0 c1 c2 c3 .
        d0 d1 d2 d3 .
    """)


def test_defects_beyond_the_spares_shrink_the_rectangle():
    rm = check("""
        a0 a1 a2 a3 .
        X  X  .  .  .
        b0 b1 b2 b3 .
        .  X  X  .  .
        c0 X  c1 c2 c3
    """)
    assert (rm.rows, rm.cols, rm.lost_rows) == (3, 4, 1)
    assert rm.summary()["lost_pe_fraction"] == 0.25


def test_detours_charge_routes_and_leave_actions_alone():
    dead, _, rows, cols = drawn("""
        .  .  .  .  .
        .  .  X  .  .
        .  .  .  .  .
        .  .  .  .  .
        .  .  .  .  .
    """)
    rm = remap(DefectMap(rows, cols, dead), 4, 4)
    grid = TileGrid.make(4, 4, 2, 2)  # tiles of 2 x 2 PEs
    row = Task(TaskKind.TRANSFER, links=(((0, 0), (0, 1)),), bytes_per_lane=8, hops=3)  # enters columns 2-3
    col = Task(TaskKind.TRANSFER, links=(((0, 1), (1, 1)),), bytes_per_lane=8, hops=3)  # rows 1-2, columns 2-3
    other = Task(TaskKind.TRANSFER, links=(((1, 0), (0, 0)),), bytes_per_lane=8, hops=3)  # healthy columns 0-1
    plan = ModelPlan("t", grid, "fp16", (OpPlan(None, "t", (row, col, other), 0),))
    out = apply_defects(plan, rm)
    # row link: lane b crosses b1 -> b2 (the dead PE between): +1; column link: a2 -> b2 is diagonal: +1
    assert [t.hops for t in out.ops[0].tasks] == [4, 4, 3]
    assert [t.actions for t in out.ops[0].tasks] == [t.actions for t in plan.ops[0].tasks]
    assert out.params["defect_extra_hops"] == 2
    # energy: lane b of the row link (b1 -> b2), and lanes 2 and 3 of the column link (b2 -> c2, b3 -> c3 into the
    # entered tile; a -> b lies inside the tile it leaves), 2 wavelets each
    assert out.params["defect_extra_wavelet_hops"] == [(1 + 2) * 2]


def test_drawn_defects_are_seeded_and_published_rate_comes_from_the_toml():
    w = get_wafer("wse2")
    a = wafer_remap(w, "published", 3, None)
    b = wafer_remap(w, "published", 3, None)
    assert np.array_equal(a.phys, b.phys) and a.dead == b.dead
    assert wafer_remap(w, None, None, None) is None
    assert 0 < a.dead < 200  # 3.8e-5 x ~756k physical PEs ~ 29 expected
    with pytest.raises(UserError):
        wafer_remap(w, "lots", 0, None)


def test_defect_map_file(tmp_path):
    f = tmp_path / "map.txt"
    f.write_text("# row col\n1 2\n")
    rm = wafer_remap(get_wafer("tiny"), None, None, str(f))
    assert rm.dead == 1 and rm.extra_h[1].tolist() == [0, 1, 0, 0, 0, 0, 0]
    f.write_text("99 0\n")
    with pytest.raises(UserError):
        wafer_remap(get_wafer("tiny"), None, None, str(f))


GPT = {"model_type": "gpt2", "n_embd": 72, "n_layer": 2, "n_head": 6, "vocab_size": 97, "n_positions": 64,
       "n_inner": 130, "activation_function": "gelu_new"}


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt")
    (folder / "config.json").write_text(json.dumps(GPT))
    return str(folder)


@pytest.mark.parametrize("mapping", ["summa", "gemv-tree"])
def test_numerics_bit_identical_and_detours_cost_cycles(gpt, mapping, tmp_path):
    kw = dict(model=gpt, wafer="tiny", mapping=mapping, seq=12, batch=2, tiles="4x4", numerics=True,
              precision="fp32")
    healthy = run(RunSpec(**kw), log=lambda _m: None)
    sick = run(RunSpec(**kw, defects="0.05", defect_seed=2), log=lambda _m: None)
    assert np.array_equal(healthy.logits, sick.logits)  # bit for bit
    links = tmp_path / "links.txt"  # dead links too: routed around, the numerics still bit for bit
    links.write_text("1 2\n0 3 0 4\n4 1 5 1\n6 6 6 7\n")
    cut = run(RunSpec(**kw, defect_map=str(links)), log=lambda _m: None)
    assert np.array_equal(healthy.logits, cut.logits) and cut.report["defects"]["dead_links"] == 3
    assert cut.report["total_cycles"] > healthy.report["total_cycles"]
    assert sick.report["defects"]["dead_pes"] > 0
    assert sick.report["total_cycles"] >= healthy.report["total_cycles"]
    assert sick.report["defects"]["extra_hops_charged"] > 0
    assert sick.report["energy"]["counts"]["wavelet_hops"] > healthy.report["energy"]["counts"]["wavelet_hops"]
    assert "defects" not in healthy.report and "defects" not in healthy.report["inputs"]


def test_no_defects_at_zero_rate_gives_identical_cycles(gpt):
    kw = dict(model=gpt, wafer="tiny", mapping="summa", seq=12, tiles="4x4", numerics=False)
    healthy = run(RunSpec(**kw), log=lambda _m: None).report
    zero = run(RunSpec(**kw, defects="0"), log=lambda _m: None).report
    assert zero["total_cycles"] == healthy["total_cycles"]
    assert zero["layers"] == healthy["layers"]


def test_rows_lost_to_defects_still_draw_static_and_idle_power(gpt, tmp_path):
    """Three rows with two dead PEs each (one spare PE per row, one spare row on the tiny wafer): two usable rows
    lost. The mesh the mappings see shrinks, but the lost rows' PEs are still on the wafer and powered."""
    f = tmp_path / "map.txt"
    f.write_text("0 0\n0 1\n3 0\n3 1\n5 0\n5 1\n")
    kw = dict(model=gpt, wafer="tiny", mapping="summa", seq=12, grid="6x8", tiles="2x2", numerics=False)
    report = run(RunSpec(**kw, defect_map=str(f)), log=lambda _m: None).report
    assert report["defects"]["lost_rows"] == 2 and report["defects"]["usable_pes"] == [6, 8]
    e, p = report["energy"], report["energy"]["parameters"]
    assert e["by_category_joules"]["static"] == pytest.approx(p["static_w_per_pe"] * 8 * 8 * e["seconds"], rel=1e-12)
    idle = 8 * 8 * report["total_cycles"] - e["counts"]["busy_pe_cycles"]
    assert e["counts"]["idle_pe_cycles"] == pytest.approx(idle, rel=1e-12)
