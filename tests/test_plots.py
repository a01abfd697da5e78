"""Plots and the report data behind them, checked against the SimResult of the same run (no golden images)."""

import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import TINY
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh
from matplotlib.patches import StepPatch
from matplotlib.quiver import Quiver

from wse_sim.app import RunSpec, run
from wse_sim.app import calibrate as calibration
from wse_sim.app.compare import write_chart
from wse_sim.report import plots
from wse_sim.report.timeline import DIRECTIONS, TOP_LINK_LANES, merge_segments

GPT2_CONFIG = {"model_type": "gpt2", "n_embd": TINY["d_model"], "n_layer": TINY["n_layer"], "n_head": TINY["n_head"],
               "vocab_size": TINY["vocab_size"], "n_positions": TINY["n_positions"], "activation_function": "gelu_new"}

GOLDEN = Path(__file__).parent / "golden"
# utilization.svg of a full-wafer run was 36 MB with the heatmap as vector cells; rasterised it is far smaller.
MAX_UTILIZATION_SVG_BYTES = 2_000_000


def golden(name: str) -> dict:
    """A committed golden report (tests/golden): real runs' report data, read without running anything."""
    return json.loads((GOLDEN / f"{name}.json").read_text())


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


def test_tile_heatmap_is_the_busy_fraction_of_each_tile(uneven):
    report, result = uneven.report, uneven.result
    values, row_edges, col_edges, block = plots.tile_busy_grid(report)
    assert block == 1 and values.shape == result.tile_busy_cycles.shape
    assert list(row_edges) == report["mapping"]["tile_row_edges"]
    assert list(col_edges) == report["mapping"]["tile_col_edges"]
    assert values == pytest.approx(result.tile_busy_cycles / result.total_cycles, rel=1e-5)


def test_block_averaged_heatmap_is_the_pe_weighted_mean_over_each_block(uneven):
    per_tile, re, ce, _ = plots.tile_busy_grid(uneven.report)
    values, row_edges, col_edges, block = plots.tile_busy_grid(uneven.report, max_cells=2)
    assert block == 2 and values.shape == (2, 2)  # 4x3 tiles in blocks of 2x2 tiles
    assert list(row_edges) == [re[0], re[2], re[4]] and list(col_edges) == [ce[0], ce[2], ce[3]]
    pes = np.outer(np.diff(re), np.diff(ce))
    for a, b in np.ndindex(values.shape):
        rows, cols = slice(2 * a, 2 * a + 2), slice(2 * b, 2 * b + 2)
        assert values[a, b] == pytest.approx((per_tile[rows, cols] * pes[rows, cols]).sum() / pes[rows, cols].sum())


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
    cap = n_ops + max((len(s0) - n_ops) // 2, 1)  # between one segment per op and the exact segments
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


def test_utilization_figure_draws_one_cell_per_tile_on_a_fitted_scale(uneven):
    report = uneven.report
    fig = plots.utilization_figure(report)
    ax_pe, ax_link, cbar_pe = fig.axes[:3]  # colorbars are added after both panels
    (mesh,) = [c for c in ax_pe.collections if isinstance(c, QuadMesh)]
    tiles = np.array(report["utilization"]["tile_busy_fraction"])
    assert np.asarray(mesh.get_array()).reshape(tiles.shape) == pytest.approx(tiles)
    assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx((tiles.min(), tiles.max()))
    heading = ax_pe.get_title()
    tr, tc = report["mapping"]["tile_grid"]
    assert f"one cell per tile, {tr}x{tc} tiles" in heading
    assert f"fitted to the data: {tiles.min() * 100:.4g}-{tiles.max() * 100:.4g} %" in heading
    assert f"mean over tiles {report['utilization']['mean_busy_fraction'] * 100:.2f} %" in heading
    (quiver,) = [c for c in ax_link.collections if isinstance(c, Quiver)]
    assert sorted(np.asarray(quiver.get_array())) == pytest.approx(sorted(plots.link_arrows(report)[4]))
    for name in (report["model"]["name"], report["wafer"]["name"], report["mapping"]["name"]):
        assert name in fig._suptitle.get_text()
    assert ax_pe.get_xlabel() == "PE column" and "busy share" in cbar_pe.get_ylabel()
    plt.close(fig)


def test_utilization_svg_rasterises_the_heatmap_and_keeps_text(tmp_path):
    """A full-wafer report (994x750 PEs): the SVG embeds the heatmap and arrows as images, text stays vector."""
    report = golden("prefill-111m-auto")
    (path,) = [p for p in plots.write_plots(report, tmp_path, "svg") if p.name == "utilization.svg"]
    svg = path.read_text()
    assert path.stat().st_size < MAX_UTILIZATION_SVG_BYTES
    assert svg.count("<image") >= 2
    assert f"<!-- {plots.title(report)} -->" in svg  # matplotlib writes each text's string beside its glyphs


def lane_heights(ax) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per timeline lane: the pixel column edges and the drawn height of each column, as a share of the lane, read
    from the drawn bands (outlines along the top left to right, two vertices a step, back along the bottom)."""
    x0, x1 = ax.get_xlim()
    edges = np.linspace(x0, x1, int(ax.get_window_extent().width) + 1)  # one column per pixel
    centres = (edges[:-1] + edges[1:]) / 2
    out: dict[int, tuple] = {}
    bands = [path.vertices for c in ax.collections if isinstance(c, PolyCollection) for path in c.get_paths()]
    for v in bands:
        n = len(v) // 4  # steps
        top, bottom = v[0:2 * n:2, 1], v[2 * n:4 * n][::-1][0::2, 1]
        steps = np.append(v[0:2 * n:2, 0], v[2 * n - 1, 0])
        assert steps[0] == pytest.approx(x0) and steps[-1] == pytest.approx(x1)
        k = np.searchsorted(steps, centres, side="right") - 1  # the step each column centre falls in
        lane = round(float(np.mean(bottom)))
        height = out[lane][1] if lane in out else np.zeros(centres.size)
        out[lane] = (edges, height + (bottom - top)[k] / plots.LANE_HEIGHT)
    return out


def test_spread_cycles_keeps_every_busy_cycle_in_its_columns():
    edges = np.linspace(0, 100, 8)
    start, end = np.array([0.0, 13.0, 40.0, 99.5]), np.array([5.0, 41.0, 40.0, 100.0])
    busy = np.array([5.0, 14.0, 0.0, 0.5])  # the second is a merged segment, busy half its span
    cols = plots.spread_cycles(start, end, busy, edges)
    assert cols.sum() == pytest.approx(busy.sum())
    assert np.all(cols <= np.diff(edges) + 1e-9) and cols[-1] == pytest.approx(0.5)
    assert cols[0] == pytest.approx(5.0 + 14.0 / 28 * (edges[1] - 13.0))


@pytest.mark.parametrize("source", ["uneven", "pe_level", "decode-llama3-8b-2wafers", "generate-13b-subset"])
def test_timeline_draws_each_lanes_busy_time_at_any_width(source, request):
    """Binning per pixel column: the drawn area of a lane is its busy time, however short its segments."""
    report = golden(source) if "-" in source else request.getfixturevalue(source).report
    fig = plots.timeline_figure(report)
    ax = fig.axes[0]
    x0, x1 = ax.get_xlim()
    heights = lane_heights(ax)
    for y, lane in enumerate(report["timeline"]["lanes"]):
        edges, height = heights.get(y, (np.array([x0, x1]), np.zeros(1)))
        area = float((height * np.diff(edges)).sum()) / (x1 - x0)
        assert area == pytest.approx(sum(lane["busy"]) / report["total_cycles"], rel=1e-6, abs=1e-12)
        if lane["group"] == "tile" and source == "uneven":
            assert area == pytest.approx(lane["busy_cycles"] / report["total_cycles"], rel=1e-6)
    plt.close(fig)


@pytest.mark.parametrize("source", ["decode-llama3-8b-2wafers", "generate-13b-subset"])
def test_timeline_marks_every_busy_column_and_shows_inter_wafer_lanes(source):
    """A column busy too little to draw tall gets a tick, so no busy lane (inter-wafer links included) is blank."""
    report = golden(source)
    fig = plots.timeline_figure(report)
    ax = fig.axes[0]
    lanes = report["timeline"]["lanes"]
    assert [lane["name"] for lane in lanes if lane["group"] == "interwafer"] == [
        f"inter-wafer link {w}->{w + 1}" for w in range(report["wafers"]["count"] - 1)]
    ticks = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    heights = lane_heights(ax)
    for y, lane in enumerate(lanes):
        if not lane["busy_cycles"]:
            continue
        edges, height = heights[y]
        faint = ((edges[:-1] + edges[1:]) / 2)[(height > 0) & (height < plots.MIN_VISIBLE_COLUMN_SHARE)]
        marked = ticks[np.isclose(ticks[:, 1], y + plots.LANE_HEIGHT / 2), 0]
        np.testing.assert_allclose(np.sort(marked), faint)
        assert (height >= plots.MIN_VISIBLE_COLUMN_SHARE).any() or marked.size
    plt.close(fig)


@pytest.mark.parametrize("source", ["decode-llama", "prefill-summa", "decode-llama3-8b-2wafers"])
def test_timeline_has_the_power_lane_of_the_same_pass(source):
    """Below the lanes, on the shared time axis: one step patch whose steps are the report's op-averaged power
    (base plus every op running), recomputed here from ``power_over_time`` independently of ``power_steps``."""
    report = golden(source)
    pot = report["energy"]["power_over_time"]
    fig = plots.timeline_figure(report)
    ax, ax_pow = fig.axes[0], fig.axes[1]
    assert ax_pow.get_shared_x_axes().joined(ax, ax_pow) and ax.get_xlim() == ax_pow.get_xlim()
    (patch,) = [p for p in ax_pow.get_children() if isinstance(p, StepPatch)]
    kw, edges, _ = patch.get_data()
    to_unit = 1.0 / report["wafer"]["clock_hz"] / (1e-6 if report["seconds"] < 1e-3 else 1e-3)
    for left, right, value in zip(edges[:-1], edges[1:], kw, strict=True):
        mid = (left + right) / 2 / to_unit
        running = sum(w for s, e, w in zip(pot["start_cycles"], pot["end_cycles"], pot["dynamic_w"], strict=True)
                      if s <= mid < e)
        assert value * 1e3 == pytest.approx(pot["base_w"] + running, rel=1e-9)
    assert edges[-1] == pytest.approx(max(pot["end_cycles"]) * to_unit)
    plt.close(fig)
    without = plots.timeline_figure({**report, "energy": None})
    assert len(without.axes) == 1
    plt.close(without)


@pytest.mark.parametrize("source", ["uneven", "decode-llama3-8b-2wafers", "generate-13b-subset"])
def test_timeline_labels_state_each_lanes_share_of_the_run(source, request):
    """Labels keep two significant digits below 10 %, so a busy lane never reads '0 %', and the title says how a
    lane's share differs from the summary's mean over tiles."""
    report = golden(source) if "-" in source else request.getfixturevalue(source).report
    fig = plots.timeline_figure(report)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    for label, lane in zip(labels, report["timeline"]["lanes"], strict=True):
        name, share = label.rsplit("  ", 1)
        assert name == lane["name"] and share.endswith(" %")
        expected = lane["busy_cycles"] / report["total_cycles"] * 100
        assert float(share[:-2]) == pytest.approx(expected, rel=0.05, abs=1e-12)
    heading = ax.get_title()
    mean = report["utilization"]["mean_busy_fraction"] * 100
    assert f"'tile busy (mean)' {mean:.2f} % is the mean over tiles" in heading and "any of its tiles" in heading
    plt.close(fig)


@pytest.fixture
def closed_figures(monkeypatch):
    """Figures that code under test saves and closes, kept open so their artists can be read."""
    close = plt.close
    figures: list = []
    monkeypatch.setattr(plt, "close", figures.append)
    yield figures
    for fig in figures:
        close(fig)


BYTE_UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def test_compare_chart_labels_bytes_in_a_unit_that_fits(closed_figures, tmp_path):
    saved = golden("compare-gpt")
    write_chart(saved["rows"], SimpleNamespace(**saved["spec"]), tmp_path / "compare.png")
    (fig,) = closed_figures
    labels = [t.get_text().split() for t in fig.axes[0].texts]
    shown = [(float(number), unit) for number, unit, *_ in (w for w in labels if len(w) == 2) if unit in BYTE_UNITS]
    expected = sorted(r[key] for r in saved["rows"] if r["feasible"] for key in ("fabric_bytes", "streamed_bytes"))
    assert sorted(number * BYTE_UNITS[unit] for number, unit in shown) == pytest.approx(expected, rel=5e-3)
    assert all(1 <= number < 1000 for number, unit in shown if number)


def test_validation_plot_draws_the_pass_criterion(closed_figures, tmp_path):
    """The shaded band is the tolerance a case passes within, so a point just inside its edge passes."""
    cases = [c for c in calibration.BUILTIN_CASES if c.bound == "equal"][:2]
    results = [calibration.CaseResult(c, c.published * (1 + calibration.TOLERANCE * 0.999), 0.0) for c in cases]
    calibration.write_validation_plot(results, SimpleNamespace(name="test"), tmp_path / "validation.png")
    (fig,) = closed_figures
    ax = fig.axes[0]
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    x, y = band.get_paths()[0].vertices.T
    tol = calibration.TOLERANCE
    assert sorted({round(v, 9) for v in y / x}) == pytest.approx([1 - tol, 1 + tol])
    assert all(r.ok for r in results)
    assert f"±{tol:.0%}" in ax.get_legend_handles_labels()[1][0]


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
    assert [p.name for p in paths] == [f"utilization.{fmt}", f"timeline.{fmt}", f"layers.{fmt}", f"energy.{fmt}"]
    for p in paths:
        head = p.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if fmt == "png" else b"<svg" in p.read_bytes()[:2000]
    without = {**uneven.report, "timeline": None, "energy": None}  # an unrecorded run's report, no energy
    assert [p.name for p in plots.write_plots(without, tmp_path / "b", fmt)] == [f"utilization.{fmt}",
                                                                                 f"layers.{fmt}"]


def bar_extents(ax) -> list[np.ndarray]:
    """Per bar collection of ``ax``: each bar's (position, start, end) along (x, y), read from its outline."""
    out = []
    for c in (c for c in ax.collections if isinstance(c, PolyCollection)):
        quads = np.array([p.vertices[:4] for p in c.get_paths()])
        out.append(np.stack([quads[..., 0].mean(1), quads[..., 1].min(1), quads[..., 1].max(1)], axis=1))
    return out


@pytest.mark.parametrize("source", ["prefill-weight-streaming", "decode-llama3-8b-2wafers"])
def test_layer_bars_stack_each_category_and_the_legend_names_them(source):
    """The per-layer bars (one collection per critical-path category, stacked in CATEGORY_COLORS' order) reach each
    layer's category times, and the legend has an entry per drawn category in that colour."""
    report = golden(source)
    fig = plots.layers_figure(report)
    ax_bar = fig.axes[0]
    unit_s = 1e-6 if report["seconds"] < 1e-3 else 1e-3
    clock = report["wafer"]["clock_hz"]
    cats = [c for c in plots.CATEGORY_COLORS if c != "interwafer"
            or any(layer.get("interwafer_cycles", 0) for layer in report["layers"])]
    bottom = np.zeros(len(report["layers"]))
    for cat, drawn in zip(cats, bar_extents(ax_bar), strict=True):
        vals = np.array([layer.get(f"{cat}_cycles", 0) / clock / unit_s for layer in report["layers"]])
        np.testing.assert_allclose(drawn[:, 0], np.arange(len(vals)))
        np.testing.assert_allclose(drawn[:, 1], bottom, atol=1e-12)
        np.testing.assert_allclose(drawn[:, 2], bottom + vals, rtol=1e-9, atol=1e-12)
        bottom += vals
    legend = ax_bar.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "exposed weight stream" if c == "stream" else c for c in cats]
    assert [h.get_facecolor() for h in legend.legend_handles] == [
        pytest.approx(matplotlib.colors.to_rgba(plots.CATEGORY_COLORS[c])) for c in cats]
    assert [t.get_text() for t in ax_bar.get_xticklabels()] == [layer["name"] for layer in report["layers"]]
    assert ax_bar.get_xlim()[0] < -0.4 and ax_bar.get_xlim()[1] > len(bottom) - 0.6  # every bar inside
    plt.close(fig)


def test_energy_bars_are_the_joules_of_each_category_and_op_from_zero():
    report = golden("decode-llama")
    e = report["energy"]
    fig = plots.energy_figure(report)
    ax_cat, ax_op = fig.axes[:2]
    for ax, joules in ((ax_cat, e["by_category_joules"]),
                       (ax_op, dict(list(e["by_op_joules"].items())[:plots.MAX_ENERGY_OPS]))):
        (bars,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
        quads = np.array([p.vertices[:4] for p in bars.get_paths()])
        y, x0, x1 = quads[..., 1].mean(1), quads[..., 0].min(1), quads[..., 0].max(1)
        np.testing.assert_allclose(y, np.arange(len(joules)))
        np.testing.assert_allclose(x0, 0.0)
        np.testing.assert_allclose(x1, list(joules.values()), rtol=1e-12)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(joules)
        assert ax.get_xlim()[0] == 0.0 and ax.get_xlim()[1] > max(joules.values())  # held at zero, as barh does
        assert ax.yaxis_inverted()  # the first (largest) on top
    plt.close(fig)


@pytest.mark.parametrize("name", list(plots.FIGURES))
def test_every_axes_title_sits_just_above_its_axes(name):
    """Titles are placed explicitly (see plots.axes_title): each is drawn above its axes, clear of every tick label
    and of the figure title."""
    report = golden("decode-llama")
    fig = plots.FIGURES[name](report)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert titled
    for ax in titled:
        title_box = ax.title.get_window_extent(renderer)
        axes_box = ax.get_window_extent(renderer)
        assert axes_box.y1 < title_box.y0 < axes_box.y1 + 20  # its pad (6 pt) above the axes
        for other in fig.axes:
            for label in other.get_xticklabels() + other.get_yticklabels():
                if label.get_text() and label.get_visible():
                    assert not title_box.overlaps(label.get_window_extent(renderer))
        if fig._suptitle is not None:
            assert not title_box.overlaps(fig._suptitle.get_window_extent(renderer))
    plt.close(fig)
