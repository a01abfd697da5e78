"""Plots and the report data behind them, checked against the SimResult of the same run (no golden images)."""

import bisect
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import TINY
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.quiver import Quiver

from wse_sim.app import RunSpec, run
from wse_sim.report import plots
from wse_sim.report.timeline import DIRECTIONS, TOP_LINK_LANES, merge_segments

GPT2_CONFIG = {"model_type": "gpt2", "n_embd": TINY["d_model"], "n_layer": TINY["n_layer"], "n_head": TINY["n_head"],
               "vocab_size": TINY["vocab_size"], "n_positions": TINY["n_positions"], "activation_function": "gelu_new"}


def tiny_run(tmp_path_factory, record=True, **spec):
    """The tiny GPT-2 on the tiny wafer, timing only, with busy intervals recorded."""
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(GPT2_CONFIG))
    kwargs = {"wafer": "tiny", "mapping": "weight-streaming", "seq": 16, "numerics": False} | spec
    return run(RunSpec(model=str(path), **kwargs), log=lambda _m: None, record=record)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """An 8x7 grid cut into 4x3 uneven tiles (12 tiles: one timeline lane per tile)."""
    return tiny_run(tmp_path_factory, grid="8x7", tiles="4x3")


@pytest.fixture(scope="module")
def pe_level(tmp_path_factory):
    """1x1 tiles on the 8x8 tiny wafer (64 tiles: one timeline lane per tile row)."""
    return tiny_run(tmp_path_factory, tile="1x1")


def tile_of(edges, pe):
    return bisect.bisect_right(edges, pe) - 1


def test_pe_heatmap_is_the_busy_fraction_of_each_pes_tile(uneven):
    report, result = uneven.report, uneven.result
    values, y_edges, x_edges, block = plots.pe_busy_grid(report)
    rows, cols = report["mapping"]["grid_pes"]
    assert block == 1 and values.shape == (rows, cols)
    assert list(y_edges) == list(range(rows + 1)) and list(x_edges) == list(range(cols + 1))
    re, ce = report["mapping"]["tile_row_edges"], report["mapping"]["tile_col_edges"]
    for r in range(rows):
        for c in range(cols):
            i, j = tile_of(re, r), tile_of(ce, c)
            assert values[r, c] == pytest.approx(result.tile_busy_cycles[i, j] / result.total_cycles, rel=1e-5)


def test_block_averaged_heatmap_is_the_mean_over_each_block(uneven):
    per_pe, *_ = plots.pe_busy_grid(uneven.report)
    values, y_edges, x_edges, block = plots.pe_busy_grid(uneven.report, max_cells=3)
    assert block == 3  # ceil(8 / 3)
    assert values.shape == (len(y_edges) - 1, len(x_edges) - 1) == (3, 3)
    assert y_edges[-1] == 8 and x_edges[-1] == 7
    for a in range(3):
        for b in range(3):
            cells = [per_pe[r, c] for r in range(y_edges[a], y_edges[a + 1]) for c in range(x_edges[b], x_edges[b + 1])]
            assert values[a, b] == pytest.approx(sum(cells) / len(cells))


def test_link_busy_fraction_matches_the_simulation(uneven):
    report, result = uneven.report, uneven.result
    grids = report["utilization"]["link_busy_fraction"]
    tr, tc = report["mapping"]["tile_grid"]
    assert result.link_busy_cycles
    for (i, j), (i2, j2) in result.link_busy_cycles:
        d = next(n for n, step in DIRECTIONS.items() if step == (i2 - i, j2 - j))
        expected = result.link_busy_cycles[((i, j), (i2, j2))] / result.total_cycles
        assert grids[d][i][j] == pytest.approx(expected, rel=1e-5)
    for d, (di, dj) in DIRECTIONS.items():
        for i in range(tr):
            for j in range(tc):
                exists = 0 <= i + di < tr and 0 <= j + dj < tc
                assert (grids[d][i][j] is not None) == exists
                if exists and ((i, j), (i + di, j + dj)) not in result.link_busy_cycles:
                    assert grids[d][i][j] == 0.0


def test_link_arrows_point_along_their_links(uneven):
    report = uneven.report
    _, _, dx, dy, frac, direction = plots.link_arrows(report)
    grids = report["utilization"]["link_busy_fraction"]
    expected = sorted(v for g in grids.values() for row in g for v in row if v is not None)
    assert sorted(frac) == pytest.approx(expected)
    for d, (di, dj) in DIRECTIONS.items():
        sel = direction == d
        assert np.all(np.sign(dx[sel]) == dj) and np.all(np.sign(dy[sel]) == di)


def test_timeline_tile_lanes_add_up_to_tile_busy_cycles(uneven):
    result, tl = uneven.result, uneven.report["timeline"]
    assert tl["lane_per"] == "tile"
    tiles = [lane for lane in tl["lanes"] if lane["group"] == "tile"]
    assert len(tiles) == result.tile_busy_cycles.size
    for lane in tiles:
        i, j = (int(v) for v in lane["name"].split("(")[1].rstrip(")").split(","))
        assert lane["busy_cycles"] == result.tile_busy_cycles[i, j]
        assert sum(lane["busy"]) == result.tile_busy_cycles[i, j]
        assert lane["merge_gap_cycles"] == 0
        spans = zip(lane["start_cycles"], lane["end_cycles"], strict=True)
        assert all(0 <= s < e <= result.total_cycles for s, e in spans)
    (memx,) = [lane for lane in tl["lanes"] if lane["group"] == "memoryx"]
    assert memx["busy_cycles"] == result.memoryx_busy_cycles
    links = [lane for lane in tl["lanes"] if lane["group"] == "link"]
    busiest = sorted(result.link_busy_cycles.values(), reverse=True)[:TOP_LINK_LANES]
    assert [lane["busy_cycles"] for lane in links] == busiest


def test_timeline_row_lanes_are_the_union_over_the_row(pe_level):
    result, tl = pe_level.result, pe_level.report["timeline"]
    assert tl["lane_per"] == "tile row"
    for lane in (lane for lane in tl["lanes"] if lane["group"] == "tile"):
        row = int(lane["name"].rsplit(" ", 1)[1])
        ivs = sorted((s, e) for g, res, s, e, *_ in result.intervals if g == "tile" and res[0] == row)
        union, reach = 0, -1
        for s, e in ivs:  # sweep line
            union += max(0, e - max(s, reach))
            reach = max(reach, e)
        assert lane["busy_cycles"] == union > 0
        # Every interval lies inside a segment of its own op.
        segs = list(zip(lane["start_cycles"], lane["end_cycles"], lane["op"], strict=True))
        for g, res, s, e, k, *_ in result.intervals:
            if g == "tile" and res[0] == row:
                assert any(a <= s and e <= b and op == k for a, b, op in segs)


def test_merge_cap_keeps_busy_cycles_and_uses_the_smallest_gap(pe_level):
    result = pe_level.result
    ivs = np.array([(s, e, k) for g, res, s, e, k, *_ in result.intervals if g == "tile" and res[0] == 0])
    s0, e0, k0, busy0, gap0 = merge_segments(ivs[:, 0], ivs[:, 1], ivs[:, 2], cap=10**9)
    n_ops = len(set(k0.tolist()))
    cap = n_ops + 5
    assert gap0 == 0 and len(s0) > cap
    s, e, k, busy, gap = merge_segments(ivs[:, 0], ivs[:, 1], ivs[:, 2], cap=cap)
    assert len(s) <= cap and gap > 0
    assert busy.sum() == busy0.sum()
    assert np.all(busy <= e - s)
    for a, b, op in zip(s0, e0, k0, strict=True):
        assert np.any((s <= a) & (b <= e) & (k == op))
    # One cycle less of merging would leave more than the cap: gaps between consecutive same-op exact segments.
    order = np.lexsort((s0, k0))
    same = k0[order][1:] == k0[order][:-1]
    gaps = (s0[order][1:] - e0[order][:-1])[same]
    assert n_ops + int((gaps > gap - 1).sum()) > cap


def test_utilization_figure_draws_the_report_data(uneven):
    report = uneven.report
    fig = plots.utilization_figure(report)
    ax_pe, ax_link, cbar_pe = fig.axes[:3]  # colorbars are added after both panels
    (mesh,) = [c for c in ax_pe.collections if isinstance(c, QuadMesh)]
    values, *_ = plots.pe_busy_grid(report)
    assert np.asarray(mesh.get_array()).reshape(values.shape) == pytest.approx(values)
    (quiver,) = [c for c in ax_link.collections if isinstance(c, Quiver)]
    assert sorted(np.asarray(quiver.get_array())) == pytest.approx(sorted(plots.link_arrows(report)[4]))
    for name in (report["model"]["name"], report["wafer"]["name"], report["mapping"]["name"]):
        assert name in fig._suptitle.get_text()
    assert ax_pe.get_xlabel() == "PE column" and "busy fraction" in cbar_pe.get_ylabel()
    plt.close(fig)


def test_timeline_figure_draws_every_segment(uneven):
    report = uneven.report
    fig = plots.timeline_figure(report)
    ax = fig.axes[0]
    bars = sum(len(c.get_paths()) for c in ax.collections if isinstance(c, PolyCollection))
    assert bars == sum(len(lane["op"]) for lane in report["timeline"]["lanes"])
    assert [t.get_text().split("  ")[0] for t in ax.get_yticklabels()] == [
        lane["name"] for lane in report["timeline"]["lanes"]]
    assert "µs" in ax.get_xlabel()
    plt.close(fig)


def test_roofline_places_each_op_by_intensity_and_rate(uneven):
    report = uneven.report
    clock = report["wafer"]["clock_hz"]
    points = plots.roofline_points(report)
    ops = [op for layer in report["layers"] for op in layer["ops"] if op["flops"] and op["cycles"]]
    assert len(points) == len(ops)
    for p, op in zip(points, ops, strict=True):
        assert p["flops_per_s"] == pytest.approx(op["flops"] * clock / op["cycles"])
        assert p["intensity"] == (op["flops"] / op["stream_bytes"] if op["stream_bytes"] else None)
    fig = plots.layers_figure(report)
    ax_roof = fig.axes[1]
    drawn = np.concatenate([c.get_offsets() for c in ax_roof.collections])
    assert sorted(drawn[:, 1]) == pytest.approx(sorted(p["flops_per_s"] for p in points))
    streamed = sorted(p["intensity"] for p in points if p["intensity"] is not None)
    assert sorted(drawn[:, 0])[:len(streamed)] == pytest.approx(streamed)
    plt.close(fig)


def test_fabric_roofline_uses_tile_boundary_links(uneven):
    report = uneven.report
    rows, cols = report["mapping"]["grid_pes"]
    tr, tc = report["mapping"]["tile_grid"]
    edges_r, edges_c = report["mapping"]["tile_row_edges"], report["mapping"]["tile_col_edges"]
    # Count the boundary-crossing PE links directly from the tile edges.
    crossing = 2 * sum((edges_r[i + 1] - edges_r[i]) * (tc - 1) for i in range(tr)) \
        + 2 * sum((edges_c[j + 1] - edges_c[j]) * (tr - 1) for j in range(tc))
    assert plots.fabric_lanes(report) == crossing and edges_r[-1] == rows and edges_c[-1] == cols
    points = plots.fabric_roofline_points(report)
    ops = [op for layer in report["layers"] for op in layer["ops"]
           if op["flops"] and op["cycles"] and op["fabric_bytes"]]
    assert len(points) == len(ops) > 0
    for p, op in zip(points, ops, strict=True):
        assert p["intensity"] == op["flops"] / op["fabric_bytes"]
    fig = plots.layers_figure(report)
    drawn = np.concatenate([c.get_offsets() for c in fig.axes[2].collections])
    assert sorted(drawn[:, 0]) == pytest.approx(sorted(p["intensity"] for p in points))
    plt.close(fig)


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_write_plots_writes_each_figure(uneven, tmp_path, fmt):
    paths = plots.write_plots(uneven.report, tmp_path, fmt)
    assert [p.name for p in paths] == [f"utilization.{fmt}", f"timeline.{fmt}", f"layers.{fmt}"]
    for p in paths:
        head = p.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if fmt == "png" else b"<svg" in p.read_bytes()[:2000]
    without = {**uneven.report, "timeline": None}  # an unrecorded run's report
    assert [p.name for p in plots.write_plots(without, tmp_path / "b", fmt)] == [f"utilization.{fmt}",
                                                                                 f"layers.{fmt}"]
