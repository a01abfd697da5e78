"""Plots drawn from report data alone (report.json, or sweep.csv rows).

``utilization``: tile busy-fraction heatmap on a colour scale fitted to the data, and link busy fractions on the
fabric; ``timeline``: lanes for MemoryX, inter-wafer links, tiles (or tile rows) and the busiest links, binned
per pixel column and coloured by op; ``layers``: per-layer time by critical-path category and a roofline of every
op; ``energy``: joules by category and by op; ``sweep``: headline figures across sweep points.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch, StepPatch
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator

from .figures import check_format, figure_names

CATEGORY_COLORS = {"compute": "#2b8cbe", "fabric": "#fdae61", "stream": "#d7191c", "interwafer": "#7b3294"}
# Tile grids larger than this many tiles on a side are drawn block-averaged.
MAX_HEATMAP_CELLS = 500
# Heatmap cells carry their value as text while the tile grid has at most this many tiles on a side.
MAX_ANNOTATED_CELLS = 16
# Tile boundaries are overlaid while the tile grid has at most this many tiles on a side.
MAX_OVERLAID_TILE_EDGES = 200
# Op colour groups: by op name within its layer (qkv, fc, ...) while there are at most this many, else by kind.
MAX_OP_GROUPS = 20
# Timeline lanes: bar height in lane units; columns busy less than this share get a tick so they stay visible.
LANE_HEIGHT = 0.8
MIN_VISIBLE_COLUMN_SHARE = 0.05
TICK_MARKER = "|"
DPI = 110


def title(report: dict) -> str:
    """'model on wafer (mapping), batch x seq, precision': the line every figure starts with."""
    run = report["run"]
    return (f"{report['model']['name']} on {report['wafer']['name']} ({report['mapping']['name']}), "
            f"batch {run['batch']} x seq {run['seq']}, {run['precision']}")


# Margins are set in inches from what sits outside the axes (titles, tick labels, legends), measuring only the
# texts whose length varies: ``tight_layout`` lays out every tick label of every axis first (about 1 CPU s for
# the layers figure of a 40-layer model), and savefig then lays them out again.
LINE_INCHES = 1.2 / 72  # one line of text per point of font size (matplotlib's default line spacing)
TICK_LABEL_PT = 10  # matplotlib's default tick label size ("medium")
TICK_INCHES = 0.25  # a tick, its label's pad and the figure's edge, beside a tick label's text
SUPTITLE_INCHES = 0.45  # a one-line figure title and its space above the axes titles


def text_inches(fig, text: str, size_pt: float) -> float:
    """Width in inches of ``text`` (one line) at ``size_pt`` in the default font: one text layout."""
    width, _, _ = fig.canvas.get_renderer().get_text_width_height_descent(text, FontProperties(size=size_pt),
                                                                          ismath=False)
    return width / fig.dpi


def set_margins(fig, left: float, right: float, top: float, bottom: float, wgap: float = 0.0, hgap: float = 0.0,
                cols: int = 1, rows: int = 1) -> None:
    """Subplot margins and gaps between ``cols`` x ``rows`` equal subplots, all in inches."""
    w, h = fig.get_size_inches()
    inner_w, inner_h = w - left - right, h - top - bottom
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=cols * wgap / (inner_w - (cols - 1) * wgap) if cols > 1 else None,
                        hspace=rows * hgap / (inner_h - (rows - 1) * hgap) if rows > 1 else None)


def title_inches(lines: int, size_pt: float) -> float:
    """Height of an axes title of ``lines`` lines at ``size_pt`` with its pad."""
    return lines * size_pt * LINE_INCHES + 0.1


def axes_title(ax, text: str, fontsize: float) -> None:
    """``ax``'s title at its default place (its pad above the axes' top), given explicitly: matplotlib otherwise
    measures every artist of the axes at each draw to lift the title over anything above the axes (these figures
    have nothing there), a fifth of the four report figures' drawing time."""
    ax.set_title(text, fontsize=fontsize, y=1.0)


SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


class PlainLogFormatter(LogFormatterSciNotation):
    """Matplotlib's log-axis labels (``10^{12}``, ``2\\times10^{3}``, and which ticks get one) as plain text with
    Unicode superscripts: mathtext would parse each label with pyparsing (about 10 ms each, a third of the layers
    figure)."""

    def __call__(self, x, pos=None) -> str:
        label = super().__call__(x, pos)
        if not label.startswith("$"):
            return label
        body = label.removeprefix("$\\mathdefault{").removesuffix("}$").replace("\\times", "×")
        head, _, power = body.partition("^{")
        return head + power.removesuffix("}").translate(SUPERSCRIPTS) if power else head


# Minor ticks (and grid lines) of a log axis at these multiples of each power of ten: 2 and 5 read as well as
# matplotlib's 2 to 9 with a quarter of the tick artists (every tick is a few lines and texts; the 13B layers
# figure's two rooflines drew 240 minor ticks, about a fifth of its time).
LOG_MINOR_SUBS = (2.0, 5.0)


def log_axes(ax) -> None:
    """Log scale on both axes of ``ax``: minor ticks at :data:`LOG_MINOR_SUBS`, labelled by
    :class:`PlainLogFormatter`."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(LogLocator(subs=LOG_MINOR_SUBS))
        axis.set_major_formatter(PlainLogFormatter())
        axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def format_bytes(n_bytes: float) -> str:
    """Decimal bytes with the unit chosen by magnitude (1.6 MB, not 0.00 GB), three significant digits."""
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def flat_ops(report: dict) -> list[dict]:
    """The run's ops in order (what a timeline segment's ``op`` indexes)."""
    return [op for layer in report["layers"] for op in layer["ops"]]


def op_groups(ops: list[dict]) -> tuple[list[str], dict[str, tuple]]:
    """Colour group of every op (its name within the layer, or its kind if there are too many) and a colour each."""
    groups = [op["name"].rsplit(".", 1)[-1] for op in ops]
    if len(set(groups)) > MAX_OP_GROUPS:
        groups = [op["kind"] for op in ops]
    names = list(dict.fromkeys(groups))
    cmap = plt.get_cmap("tab20")
    order = [*range(0, cmap.N, 2), *range(1, cmap.N, 2)]  # the ten dark hues first, then their light pairs
    return groups, {g: cmap(order[n % cmap.N]) for n, g in enumerate(names)}


def bars(ax, pos: np.ndarray, length: np.ndarray, base, color, horizontal: bool = False,
         width: float = 0.8) -> PolyCollection:
    """What ``ax.bar`` (or ``barh``) draws, as one collection: bars ``width`` wide centred on ``pos``, from ``base``
    to ``base + length``, no edges, the value axis held at the lowest base as bar holds it (sticky edge). ``bar``
    makes and draws a patch per bar: about 0.1 s for the 13B layers figure's 126."""
    lo, hi = pos - width / 2, pos + width / 2
    start, end = np.broadcast_to(base, pos.shape), base + length
    quads = np.stack([np.column_stack(c) for c in ((lo, start), (lo, end), (hi, end), (hi, start))], axis=1)
    coll = PolyCollection(quads[..., ::-1] if horizontal else quads, facecolors=color, linewidths=0)
    (coll.sticky_edges.x if horizontal else coll.sticky_edges.y).append(float(np.min(start, initial=0.0)))
    ax.add_collection(coll)
    ax.autoscale_view()
    return coll


# ---- empty figures, made ahead ---------------------------------------------------------------------------------

POWER_LANE_INCHES = 2.2  # height of the timeline's power lane


def _energy_with_power():
    fig = plt.figure(figsize=(15, 9))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.2, 1])
    return fig, (fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :]))


# The empty figure and axes of each report figure layout. The timeline's are resized to its lanes by
# :func:`timeline_figure` (the axes follow at set_margins); every other size is fixed.
LAYOUTS = {
    "utilization": lambda: plt.subplots(1, 2, figsize=(15, 6.5)),
    "timeline": lambda: plt.subplots(figsize=(15, 6), dpi=DPI),
    "timeline+power": lambda: plt.subplots(2, 1, figsize=(15, 6 + POWER_LANE_INCHES), dpi=DPI, sharex=True,
                                           gridspec_kw={"height_ratios": [6, POWER_LANE_INCHES]}),
    "layers": lambda: plt.subplots(1, 3, figsize=(22, 6.5), gridspec_kw={"width_ratios": [1.4, 1, 1]}),
    "energy": lambda: plt.subplots(1, 2, figsize=(15, 5.5)),
    "energy+power": _energy_with_power,
}
# Ticks made ahead on each axis (a tick is five artists, its properties deep-copied from the axis's first: about
# half a millisecond; the 13B weight-streaming report's figures made 311, a sixth of their drawing time): what
# that report's axes draw (most 6 to 10 major ticks; the timeline's lanes, the costliest ops and the layer names
# one each; the rooflines' log axes 14 to 16 minor ticks). An axis that needs more makes them as it draws.
TICKS_AHEAD = 10
TICKS_AHEAD_MORE = {("timeline+power", 0, "y", "major"): 14, ("energy+power", 1, "y", "major"): 15,
                    ("layers", 0, "x", "major"): 42, ("layers", 1, "x", "minor"): 16, ("layers", 1, "y", "minor"): 16,
                    ("layers", 2, "x", "minor"): 14, ("layers", 2, "y", "minor"): 14}
# Figures made ahead by prepare_figures(), by layout: taken by the figure functions instead of making their own.
_made_ahead: dict[str, list] = {}


def new_figure(layout: str):
    """(figure, axes) of ``layout`` (:data:`LAYOUTS`): one made ahead by :func:`prepare_figures` if there is one."""
    ready = _made_ahead.get(layout)
    return ready.pop() if ready else LAYOUTS[layout]()


def prepare_figures(layouts=("utilization", "timeline+power", "layers", "energy+power")) -> None:
    """Make the empty figures of ``layouts`` (those of a recorded run with energy by default), with their axes'
    ticks, ahead of the report: the drawing child runs this while the parent simulates, so what does not depend
    on the report is not on the critical path. The figures drawn from them are the same."""
    for layout in layouts:
        fig, axes = LAYOUTS[layout]()
        for k, ax in enumerate(np.atleast_1d(axes)):
            for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                axis.get_major_ticks(TICKS_AHEAD_MORE.get((layout, k, name, "major"), TICKS_AHEAD))
                axis.get_minor_ticks(TICKS_AHEAD_MORE.get((layout, k, name, "minor"), 1))
        _made_ahead.setdefault(layout, []).append((fig, axes))


# ---- mesh and fabric ------------------------------------------------------------------------------------------


def percent(frac: float) -> str:
    """A share as a percentage: whole numbers from 10 %, two significant digits below (a nonzero share never
    prints as 0 %)."""
    p = frac * 100
    return "0 %" if p == 0 else f"{p:.0f} %" if p >= 10 else f"{p:.2g} %"


def tile_busy_grid(report: dict, max_cells: int = MAX_HEATMAP_CELLS):
    """Busy fraction per tile with the tiles' PE row and column edges. Tile grids larger than ``max_cells`` on a
    side are averaged over blocks of ``block x block`` tiles, weighted by PEs. Returns (values, PE row edges, PE
    column edges, block)."""
    m = report["mapping"]
    busy = np.array(report["utilization"]["tile_busy_fraction"], dtype=float)
    row_edges, col_edges = np.array(m["tile_row_edges"]), np.array(m["tile_col_edges"])
    block = max(1, math.ceil(max(busy.shape) / max_cells))
    if block > 1:
        rows, cols = np.arange(0, busy.shape[0], block), np.arange(0, busy.shape[1], block)
        pes = np.outer(np.diff(row_edges), np.diff(col_edges)).astype(float)

        def block_sum(a):
            return np.add.reduceat(np.add.reduceat(a, rows, axis=0), cols, axis=1)

        busy = block_sum(busy * pes) / block_sum(pes)
        row_edges = row_edges[np.append(rows, len(row_edges) - 1)]
        col_edges = col_edges[np.append(cols, len(col_edges) - 1)]
    return busy, row_edges, col_edges, block


def link_arrows(report: dict):
    """One arrow per existing link, between tile centres in PE coordinates, offset to the side by direction so
    both directions show: (x, y, dx, dy, busy fraction, direction) arrays."""
    m = report["mapping"]
    re, ce = np.array(m["tile_row_edges"], dtype=float), np.array(m["tile_col_edges"], dtype=float)
    cy, cx = (re[:-1] + re[1:]) / 2, (ce[:-1] + ce[1:]) / 2
    out = []
    for d, grid in report["utilization"]["link_busy_fraction"].items():
        di, dj = {"N": (-1, 0), "S": (1, 0), "E": (0, 1), "W": (0, -1)}[d]
        for i, row in enumerate(grid):
            for j, frac in enumerate(row):
                if frac is None:
                    continue
                x0, y0, x1, y1 = cx[j], cy[i], cx[j + dj], cy[i + di]
                # E/S arrows sit on one side of the tile-centre line, W/N on the other.
                side = 1 if d in "ES" else -1
                ox = side * 0.12 * (ce[j + 1] - ce[j]) if dj == 0 else 0.0
                oy = side * 0.12 * (re[i + 1] - re[i]) if di == 0 else 0.0
                out.append((x0 + 0.15 * (x1 - x0) + ox, y0 + 0.15 * (y1 - y0) + oy, 0.7 * (x1 - x0),
                            0.7 * (y1 - y0), frac, d))
    if not out:
        return (np.zeros(0),) * 5 + (np.zeros(0, dtype=str),)
    cols = list(zip(*out, strict=True))
    return (*(np.array(c, dtype=float) for c in cols[:5]), np.array(cols[5]))


def _tile_edges(ax, m: dict) -> None:
    re, ce = m["tile_row_edges"], m["tile_col_edges"]
    if len(re) - 1 <= MAX_OVERLAID_TILE_EDGES and len(ce) - 1 <= MAX_OVERLAID_TILE_EDGES:
        ax.hlines(re, 0, ce[-1], colors="white", linewidth=0.6, alpha=0.8)
        ax.vlines(ce, 0, re[-1], colors="white", linewidth=0.6, alpha=0.8)


def _wafer_outlines(ax, report: dict) -> None:
    """Multi-wafer serving: outline each wafer's regions and label it with its busy fraction."""
    wafers = report.get("wafers") or {}
    if wafers.get("count", 1) < 2:
        return
    m = report["mapping"]
    re, ce = m["tile_row_edges"], m["tile_col_edges"]
    for w in wafers["per_wafer"]:
        boxes = [r["tile_box"] for r in m["params"]["regions"] if r["wafer"] == w["wafer"]]
        r0, c0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        r1, c1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        ax.add_patch(plt.Rectangle((ce[c0], re[r0]), ce[c1] - ce[c0], re[r1] - re[r0], fill=False,
                                   edgecolor="#e7298a", linewidth=2))
        ax.text(ce[c0] + 0.02 * (ce[c1] - ce[c0]), re[r0] + 0.04 * re[-1], f"wafer {w['wafer']}: "
                f"{w['busy_fraction'] * 100:.2g} % busy", color="#e7298a", fontsize=8, va="top",
                bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0})


def color_range(values: np.ndarray) -> tuple[float, float]:
    """(vmin, vmax) of a colour scale fitted to the data, so small differences between tiles show; a flat field
    gets 0 to its value (or to 1 if all zero)."""
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (0.0, hi or 1.0)


def _annotate_cells(ax, values: np.ndarray, row_edges, col_edges, norm) -> None:
    """Each cell's busy share written on it, while the grid is small enough to read."""
    if max(values.shape) > MAX_ANNOTATED_CELLS:
        return
    for i, j in np.ndindex(values.shape):
        light = norm(values[i, j]) > 0.6  # viridis is light at its top end
        ax.text((col_edges[j] + col_edges[j + 1]) / 2, (row_edges[i] + row_edges[i + 1]) / 2,
                f"{values[i, j] * 100:.1f}", ha="center", va="center", fontsize=7,
                color="black" if light else "white")


def _heatmap_title(report: dict, block: int, vmin: float, vmax: float) -> str:
    m = report["mapping"]
    cells = "one cell per tile" if block == 1 else f"one cell per {block}x{block} tiles (PE-weighted mean)"
    multi = (report.get("wafers") or {}).get("count", 1) > 1
    return (f"Tile compute busy fraction: {cells}, {m['tile_grid'][0]}x{m['tile_grid'][1]} tiles (a PE shows "
            f"its tile's)\nmean over tiles {report['utilization']['mean_busy_fraction'] * 100:.2f} % = the summary's "
            f"'tile busy (mean)'\ncolour scale fitted to the data: {vmin * 100:.4g}-{vmax * 100:.4g} %"
            + ("\nmagenta: wafers (no fabric between them)" if multi else ""))


def utilization_figure(report: dict):
    """Tile heatmap of compute busy fraction (left) and link busy fraction on the fabric (right). Mesh and
    arrows are rasterised inside vector formats (a large grid would otherwise be megabytes of SVG paths); text
    stays vector."""
    m = report["mapping"]
    values, row_edges, col_edges, block = tile_busy_grid(report)
    rows, cols = m["grid_pes"]
    fig, (ax_pe, ax_link) = new_figure("utilization")

    vmin, vmax = color_range(values)
    mesh = ax_pe.pcolormesh(col_edges, row_edges, values, cmap="viridis", vmin=vmin, vmax=vmax, rasterized=True)
    _annotate_cells(ax_pe, values, row_edges, col_edges, mesh.norm)
    _tile_edges(ax_pe, m)
    heading = _heatmap_title(report, block, vmin, vmax)
    axes_title(ax_pe, heading, fontsize=9)
    _wafer_outlines(ax_pe, report)
    bar = fig.colorbar(mesh, ax=ax_pe, label="busy share of the run (range fitted to the data)", shrink=0.85)
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v * 100:.4g} %"))

    x, y, dx, dy, frac, _ = link_arrows(report)
    ax_link.set_facecolor("#303030")
    _tile_edges(ax_link, m)
    vmax = max(frac.max(), 1e-9) if frac.size else 1.0
    if frac.size:
        q = ax_link.quiver(x, y, dx, dy, frac, cmap="inferno", clim=(0, vmax), angles="xy", scale_units="xy",
                           scale=1, width=0.004, headwidth=3, headlength=3, headaxislength=2.5, rasterized=True)
        fig.colorbar(q, ax=ax_link, label="link busy fraction of the run", shrink=0.85)
        hot = int(np.argmax(frac))
        hottest = f"busiest link {frac[hot] * 100:.1f} % busy"
    else:
        hottest = "no links"
    axes_title(ax_link, f"Fabric: busy fraction of each directed tile-to-tile link ({hottest})\n"
                      "arrows point along the link; E/S sit right/below of W/N", fontsize=9)
    for ax in (ax_pe, ax_link):
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.set_aspect("equal")
        ax.set_xlabel("PE column")
        ax.set_ylabel("PE row")
    fig.suptitle(title(report), fontsize=12)
    set_margins(fig, left=0.3, right=0.2, top=SUPTITLE_INCHES + title_inches(heading.count("\n") + 1, 9),
                bottom=0.6, wgap=0.55, cols=2)
    return fig


# ---- timeline ---------------------------------------------------------------------------------------------------


def _time_scale(report: dict) -> tuple[float, str]:
    """(seconds per unit, unit name) for time axes: µs below a millisecond of total time, else ms."""
    return (1e-6, "µs") if report["seconds"] < 1e-3 else (1e-3, "ms")


def spread_cycles(start, end, busy, edges) -> np.ndarray:
    """Busy cycles of segments in each column [edges[i], edges[i + 1]), each segment's ``busy`` spread evenly over
    its span (exact for a segment busy throughout; a merged one keeps its total). Sums to ``busy.sum()`` inside
    the edges."""
    span = end - start
    rate = np.divide(busy, span, out=np.zeros_like(span), where=span > 0)
    t = np.concatenate([start, end])
    order = np.argsort(t, kind="stable")
    t, slope = t[order], np.concatenate([rate, -rate])[order]
    cumulative = np.concatenate([[0.0], np.cumsum(np.cumsum(slope)[:-1] * np.diff(t))])  # busy before each t
    return np.diff(np.interp(edges, t, cumulative))


def lane_columns(lane: dict, groups: list[str], edges) -> dict[str, np.ndarray]:
    """Busy cycles of one lane in each time column, per op colour group (groups in first-seen order)."""
    s, e, busy = (np.array(lane[k], dtype=float) for k in ("start_cycles", "end_cycles", "busy"))
    lane_groups = np.array([groups[k] for k in lane["op"]], dtype=object)
    return {g: spread_cycles(s[lane_groups == g], e[lane_groups == g], busy[lane_groups == g], edges)
            for g in dict.fromkeys(lane_groups)}


def step_band(x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Outline of the area between two step functions over the columns between the edges ``x`` (what a StepPatch
    with a baseline array draws), with each run of equal columns as one step: along ``top`` left to right (two
    vertices a step), back along ``bottom``. Runs are most of a band (a share of 0 where its op is not running):
    drawing a vertex pair per pixel column was a third of the timeline's drawing time."""
    starts = np.concatenate([[0], np.flatnonzero((np.diff(top) != 0) | (np.diff(bottom) != 0)) + 1])
    x, top, bottom = np.append(x[starts], x[-1]), top[starts], bottom[starts]
    xs = np.repeat(x, 2)[1:-1]
    return np.concatenate([np.column_stack([xs, np.repeat(top, 2)]),
                           np.column_stack([xs[::-1], np.repeat(bottom, 2)[::-1]])])


def lane_bands(y: int, columns: dict[str, np.ndarray], edges, colors: dict, to_unit: float):
    """Lane ``y``'s stacked busy share per column (height = share of the column's time) as (outline, colour) bands,
    and a tick at the lane's foot where a column is busy but too little to see: (bands, tick x, tick colours)."""
    shares = {g: busy / np.diff(edges) for g, busy in columns.items()}
    total = sum(shares.values())
    cap = np.where(total > 1, 1 / np.maximum(total, 1e-300), 1.0)  # different ops overlapping in one column
    x = edges * to_unit
    bottom = np.full(total.size, y + LANE_HEIGHT / 2)
    bands = []
    for g, share in shares.items():
        top = bottom - LANE_HEIGHT * share * cap
        bands.append((step_band(x, top, bottom), colors[g]))
        bottom = top
    faint = (total > 0) & (total * cap < MIN_VISIBLE_COLUMN_SHARE)
    names = list(shares)
    dominant = np.argmax(np.array([shares[g] for g in names]), axis=0)[faint]
    return bands, (x[:-1] + x[1:])[faint] / 2, [colors[names[d]] for d in dominant]


def _draw_lanes(ax, lanes: list[dict], groups: list[str], colors: dict, edges, to_unit: float) -> None:
    """Every lane's bands as one collection (a patch each was a fifth of the 13B figure's time: 170 patches), added
    without autolim (the limits are set; data limits would walk every vertex), then the ticks of faint columns."""
    bands, tick_x, tick_y, tick_colors = [], [], [], []
    for y, lane in enumerate(lanes):
        if lane["op"]:
            b, tx, tc = lane_bands(y, lane_columns(lane, groups, edges), edges, colors, to_unit)
            bands += b
            tick_x.append(tx)
            tick_y.append(np.full(tx.size, y + LANE_HEIGHT / 2))
            tick_colors += tc
    if bands:
        # snap=False: Agg would snap bands of few vertices to whole pixels (a band per pixel column never was).
        ax.add_collection(PolyCollection([b for b, _ in bands], facecolors=[c for _, c in bands], linewidths=0,
                                         rasterized=True, snap=False), autolim=False)
    if tick_colors:
        ax.scatter(np.concatenate(tick_x), np.concatenate(tick_y), marker=TICK_MARKER, s=40, linewidths=1,
                   color=tick_colors, rasterized=True)


def _timeline_title(report: dict, lanes: list[dict]) -> str:
    gap = max(lane["merge_gap_cycles"] for lane in lanes)
    lines = [title(report),
             "Height in each pixel column: the share of its time the lane was busy, by op; tick at a lane's foot: "
             f"busy under {MIN_VISIBLE_COLUMN_SHARE:.0%} of a column",
             "Label: the lane's busy share of the run (a tile row is busy while any of its tiles is); the summary's "
             f"'tile busy (mean)' {report['utilization']['mean_busy_fraction'] * 100:.2f} % is the mean over tiles"]
    if gap:
        lines.append(f"Same-op segments merged across gaps up to {gap:,} cycles: their busy time is spread over the "
                     "merged span")
    return "\n".join(lines)


def timeline_figure(report: dict):
    """Lanes (MemoryX, inter-wafer links, tiles or tile rows, busiest links) binned per pixel column, so a lane's
    drawn area is its busy time at any zoom and no lane vanishes for being short; below them, when the report has
    ``energy``, the power over time of the same pass (one step patch, :func:`power_steps`)."""
    tl = report.get("timeline")
    if not tl:
        raise ValueError("the report has no timeline (the run was not recorded)")
    lanes = tl["lanes"]
    groups, colors = op_groups(flat_ops(report))
    unit_s, unit = _time_scale(report)
    to_unit = 1.0 / report["wafer"]["clock_hz"] / unit_s
    total = report["total_cycles"]

    pot = (report.get("energy") or {}).get("power_over_time")
    height = 2.4 + 0.42 * len(lanes)
    if pot:  # the power lane below the activity lanes, on the same time axis (docs/energy.md)
        fig, (ax, ax_pow) = new_figure("timeline+power")
        fig.set_size_inches(15, height + POWER_LANE_INCHES)
        ax.get_subplotspec().get_gridspec().set_height_ratios([height, POWER_LANE_INCHES])
        _power_lane(ax_pow, report, pot)
    else:
        fig, ax = new_figure("timeline")
        fig.set_size_inches(15, height)
    labels = [f"{lane['name']}  {percent(lane['busy_cycles'] / max(total, 1))}" for lane in lanes]
    ax.set_yticks(range(len(lanes)), labels, fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlim(0, total * to_unit)  # after the power lane, which shares this axis
    if not pot:
        ax.set_xlabel(f"simulated time ({unit})")
    ax.grid(axis="x", alpha=0.3)
    heading = _timeline_title(report, lanes)
    axes_title(ax, heading, fontsize=9)
    used = list(dict.fromkeys(groups[k] for lane in lanes for k in lane["op"]))
    legend = ax.legend(handles=[Patch(color=colors[g], label=g) for g in used], loc="upper left",
                       bbox_to_anchor=(1.0, 1.0), fontsize=8, title="op")
    set_margins(fig, left=max(text_inches(fig, t, 8) for t in labels) + TICK_INCHES,
                right=legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi + 0.1,
                top=title_inches(heading.count("\n") + 1, 9) + 0.1, bottom=0.6, hgap=0.4, rows=2 if pot else 1)
    # One column per pixel of the laid-out axes: what a column holds is what the picture can show.
    edges = np.linspace(0, total, max(int(ax.get_window_extent().width), 1) + 1)
    _draw_lanes(ax, lanes, groups, colors, edges, to_unit)
    return fig


# ---- layers and roofline ----------------------------------------------------------------------------------------


def roofline_points(report: dict) -> list[dict]:
    """Ops with FLOPs and cycles: intensity (FLOP per MemoryX byte; None if the op streams nothing) and achieved
    FLOP/s over the op's span."""
    clock = report["wafer"]["clock_hz"]
    return [{"name": op["name"], "intensity": op["flops"] / op["stream_bytes"] if op["stream_bytes"] else None,
             "flops_per_s": op["flops"] / (op["cycles"] / clock)}
            for op in flat_ops(report) if op["flops"] > 0 and op["cycles"] > 0]


def _roofline(ax, report: dict) -> None:
    ops = [op for op in flat_ops(report) if op["flops"] > 0 and op["cycles"] > 0]
    groups, colors = op_groups(ops)
    points = roofline_points(report)
    peak = report["peak_flops_per_s"]
    bw = report["bandwidth"]["memoryx_peak_bytes_per_s"]
    ridge = peak / bw
    finite = [p["intensity"] for p in points if p["intensity"] is not None]
    lo = min([*finite, ridge]) / 4
    hi = max([*finite, ridge]) * 4
    no_stream_x = hi * 2  # ops that stream nothing are drawn at the right edge, beyond every finite intensity
    xs = np.geomspace(lo, hi, 200)
    ax.plot(xs, np.minimum(peak, bw * xs), color="black", linewidth=1.5)
    ax.axvline(hi, color="grey", linewidth=0.8, linestyle=":")
    ax.text(lo * 1.2, peak * 1.15, f"compute roof {peak / 1e12:,.1f} TFLOP/s", fontsize=8)
    ax.text(lo * 1.2, bw * lo * 1.2 * 1.5, f"MemoryX {bw / 1e9:,.0f} GB/s", fontsize=8, rotation=0)
    for g in dict.fromkeys(groups):
        sel = [n for n, gg in enumerate(groups) if gg == g]
        x = [points[n]["intensity"] if points[n]["intensity"] is not None else no_stream_x for n in sel]
        y = [points[n]["flops_per_s"] for n in sel]
        ax.scatter(x, y, s=18, color=colors[g], label=g, alpha=0.8, edgecolors="none")
    log_axes(ax)
    ax.set_xlim(lo, no_stream_x * 2)
    ax.set_xlabel("arithmetic intensity (FLOP per MemoryX byte; right of dotted line: streams nothing)")
    ax.set_ylabel("achieved FLOP/s (op FLOPs / op time)")
    axes_title(ax, "Roofline: each op under the wafer's compute and MemoryX roofs", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="lower right", title="op")


def fabric_lanes(report: dict) -> int:
    """Directed PE-to-PE links that cross a tile boundary: every tile row's height on each of its ``TC - 1``
    column boundaries and every tile column's width on each of its ``TR - 1`` row boundaries, both ways."""
    rows, cols = report["mapping"]["grid_pes"]
    tr, tc = report["mapping"]["tile_grid"]
    return 2 * ((tc - 1) * rows + (tr - 1) * cols)


def fabric_roofline_points(report: dict) -> list[dict]:
    """Ops with FLOPs, cycles and fabric traffic: FLOP per fabric byte delivered between tiles, achieved FLOP/s."""
    clock = report["wafer"]["clock_hz"]
    return [{"name": op["name"], "intensity": op["flops"] / op["fabric_bytes"],
             "flops_per_s": op["flops"] / (op["cycles"] / clock)}
            for op in flat_ops(report) if op["flops"] > 0 and op["cycles"] > 0 and op["fabric_bytes"] > 0]


def _fabric_roofline(ax, report: dict) -> None:
    """Each op by FLOP per byte moved between tiles, under the compute roof and the tile-boundary link roof."""
    points = fabric_roofline_points(report)
    ops = [op for op in flat_ops(report) if op["flops"] > 0 and op["cycles"] > 0 and op["fabric_bytes"] > 0]
    groups, colors = op_groups(ops)
    peak = report["peak_flops_per_s"]
    bw = fabric_lanes(report) * report["wafer"]["link_bytes_per_cycle"] * report["wafer"]["clock_hz"]
    xs_pts = [p["intensity"] for p in points]
    if bw > 0:
        ridge = peak / bw
        lo, hi = min([*xs_pts, ridge]) / 4, max([*xs_pts, ridge]) * 4
        xs = np.geomspace(lo, hi, 200)
        ax.plot(xs, np.minimum(peak, bw * xs), color="black", linewidth=1.5)
        ax.text(lo * 1.2, bw * lo * 1.8, f"tile-boundary links {bw / 1e12:,.0f} TB/s", fontsize=8)
        ax.set_xlim(lo, hi)
    ax.axhline(peak, color="black", linewidth=0.8, linestyle=":")
    for g in dict.fromkeys(groups):
        sel = [n for n, gg in enumerate(groups) if gg == g]
        ax.scatter([points[n]["intensity"] for n in sel], [points[n]["flops_per_s"] for n in sel], s=18,
                   color=colors[g], label=g, alpha=0.8, edgecolors="none")
    log_axes(ax)
    ax.set_xlabel("FLOP per fabric byte delivered between tiles")
    ax.set_ylabel("achieved FLOP/s (op FLOPs / op time)")
    axes_title(ax, "Fabric roofline: each op under the compute and tile-boundary link roofs", fontsize=10)
    ax.grid(alpha=0.3, which="both")


def layers_figure(report: dict):
    """Per-layer stacked time by critical-path category (left), the MemoryX roofline of every op (middle) and its
    fabric roofline (right: resident-weight mappings stream almost nothing, so fabric is their roof)."""
    fig, (ax_bar, ax_roof, ax_fab) = new_figure("layers")
    layers = report["layers"]
    x = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    unit_s, unit = _time_scale(report)
    clock = report["wafer"]["clock_hz"]
    handles = []
    for cat, color in CATEGORY_COLORS.items():
        vals = np.array([layer.get(f"{cat}_cycles", 0) for layer in layers], dtype=float) / clock / unit_s
        if cat == "interwafer" and not vals.any():
            continue
        bars(ax_bar, x, vals, bottom, color)
        handles.append(Patch(facecolor=color, label="exposed weight stream" if cat == "stream" else cat))
        bottom += vals
    # Headroom for the legend; set explicitly since zero-height bars on top would pin the limit (sticky edges).
    ax_bar.set_ylim(0, max(bottom.max(), 1e-9) * 1.15)
    names, many = [layer["name"] for layer in layers], len(layers) > 20
    rotation, name_pt = (90, 7) if many else (60, 8)
    ax_bar.set_xticks(x, names, rotation=rotation, ha="center" if many else "right", fontsize=name_pt)
    ax_bar.set_ylabel(f"time ({unit})")
    axes_title(ax_bar, "Per-layer time by critical-path category", fontsize=10)
    ax_bar.legend(handles=handles, loc="upper center", ncol=3)
    ax_bar.grid(axis="y", alpha=0.3)
    _roofline(ax_roof, report)
    _fabric_roofline(ax_fab, report)
    fig.suptitle(f"{title(report)}: {report['seconds'] * 1e3:.4g} ms, {report['tokens_per_s']:,.0f} tokens/s, "
                 f"MFU {report['mfu'] * 100:.2f} %", fontsize=12)
    longest = max(text_inches(fig, n, name_pt) for n in names)
    angle = math.radians(rotation)  # a rotated name's height: its length up, its line height across
    names_inches = longest * math.sin(angle) + name_pt * LINE_INCHES * math.cos(angle) + TICK_INCHES
    set_margins(fig, left=0.7, right=0.15, top=SUPTITLE_INCHES + title_inches(1, 10), bottom=max(0.65, names_inches),
                wgap=0.75, cols=3)
    return fig


ENERGY_COLORS = {"fmac": "#2b8cbe", "sram": "#74a9cf", "fabric": "#fdae61", "turns": "#fee08b",
                 "pe_active": "#1a9850", "pe_idle": "#a6d96a", "static": "#969696", "memoryx": "#d7191c",
                 "interwafer": "#7b3294", "system_overhead": "#d9d9d9"}
MAX_ENERGY_OPS = 15


def energy_figure(report: dict):
    """The energy breakdown (docs/energy.md): joules by category (left) and dynamic joules of the costliest ops
    (right), from the report's ``energy``."""
    e = report["energy"]
    pot = e.get("power_over_time")
    if pot:
        fig, (ax_cat, ax_op, ax_pow) = new_figure("energy+power")
    else:
        fig, (ax_cat, ax_op) = new_figure("energy")
    cats = e["by_category_joules"]
    names = list(cats)
    bars(ax_cat, np.arange(len(names)), np.array([cats[n] for n in names], dtype=float), 0.0,
         [ENERGY_COLORS.get(n, "#888888") for n in names], horizontal=True)
    ax_cat.set_yticks(range(len(names)), names)
    ax_cat.invert_yaxis()
    ax_cat.set_xlabel("joules")
    total = max(e["joules"], 1e-30)
    for y, n in enumerate(names):
        ax_cat.annotate(f" {cats[n] / total * 100:.1f} %", (cats[n], y), va="center", fontsize=8)
    axes_title(ax_cat, f"By category ({e['scope']}): {e['joules']:.4g} J", fontsize=10)
    ops = list(e["by_op_joules"].items())[:MAX_ENERGY_OPS]
    bars(ax_op, np.arange(len(ops)), np.array([v for _, v in ops], dtype=float), 0.0, "#2b8cbe", horizontal=True)
    ax_op.set_yticks(range(len(ops)), [k for k, _ in ops])
    ax_op.invert_yaxis()
    ax_op.set_xlabel("dynamic joules (layer ops summed over layers)")
    axes_title(ax_op, "By op (costliest first)", fontsize=10)
    for ax in (ax_cat, ax_op):
        ax.grid(axis="x", alpha=0.3)
    if pot:
        _power_lane(ax_pow, report, pot)
    per = e.get("joules_per_token")
    fig.suptitle(f"{title(report)}: {'n/a' if per is None else f'{per:.4g}'} J/token, average "
                 f"{e['average_w'] / 1e3:,.2f} kW (wafer {e['wafer_average_w'] / 1e3:,.2f} kW), peak "
                 f"{e['peak_w'] / 1e3:,.2f} kW", fontsize=11)
    # The category shares written past the longest bar reach into the gap before the op names.
    share_inches = text_inches(fig, " 100.0 %", 8)
    set_margins(fig, left=max(text_inches(fig, n, TICK_LABEL_PT) for n in names) + TICK_INCHES, right=0.15,
                top=SUPTITLE_INCHES + title_inches(1, 10), bottom=0.6,
                wgap=max([text_inches(fig, k, TICK_LABEL_PT) for k, _ in ops], default=0) + TICK_INCHES + share_inches,
                hgap=0.8, cols=2, rows=2 if pot else 1)
    return fig


def power_steps(pot: dict) -> tuple[np.ndarray, np.ndarray]:
    """(edges in cycles, watts per interval between consecutive edges): the base plus every op running then."""
    starts, ends = np.array(pot["start_cycles"], float), np.array(pot["end_cycles"], float)
    edges = np.unique(np.concatenate([starts, ends, [0.0]]))
    delta = np.zeros(len(edges))
    np.add.at(delta, np.searchsorted(edges, starts), pot["dynamic_w"])
    np.add.at(delta, np.searchsorted(edges, ends), -np.array(pot["dynamic_w"], float))
    return edges, pot["base_w"] + np.cumsum(delta)[:-1]


def _power_lane(ax, report: dict, pot: dict) -> None:
    """Power over the simulated pass (op-averaged), in kW."""
    edges, watts = power_steps(pot)
    unit_s, unit = _time_scale(report)
    x = edges / report["wafer"]["clock_hz"] / unit_s
    if len(x) > 1:
        # add_artist: the limits are set below (add_patch would walk the steps' path for them, 0.1 s at 13B)
        ax.add_artist(StepPatch(watts / 1e3, x, baseline=0, facecolor="#fdae61", edgecolor="#d7191c", lw=0.6))
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(0, max(watts.max() / 1e3 * 1.1, 1e-9))
    ax.axhline(pot["base_w"] / 1e3, color="#969696", lw=0.8, ls="--", label="static + idle + system")
    ax.set_xlabel(f"simulated time ({unit}; the last simulated pass, unscaled)")
    ax.set_ylabel("power (kW)")
    axes_title(ax, "Power over time (each op's dynamic power averaged over its span)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


# ---- writing ----------------------------------------------------------------------------------------------------


# Text drawn without FreeType hinting: the same strings at the same sizes, slightly softer glyph edges, in about
# half the time (text is half of these figures' drawing: every glyph of every draw is hinted anew). Set around
# building (margins measure text) and saving each figure, not process-wide.
STYLE = {"text.hinting": "no_hinting"}
# zlib level of PNG files: 3 writes the same pixels in about two thirds of the default 6's time (encoding is a
# tenth of a figure's time), in files about 8 % larger.
PNG_COMPRESS_LEVEL = 3


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    png = {"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}} if path.suffix == ".png" else {}
    with plt.rc_context(STYLE):
        fig.savefig(path, dpi=DPI, **png)
    plt.close(fig)
    return path


FIGURES = {"utilization": utilization_figure, "timeline": timeline_figure, "layers": layers_figure,
           "energy": energy_figure}


def write_figures(report: dict, out_dir: str | Path, fmt: str, names: list[str]) -> list[Path]:
    """Write the figures ``names`` (of :func:`~wse_sim.report.figures.figure_names`) into ``out_dir``."""
    check_format(fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        return [save(FIGURES[name](report), out / f"{name}.{fmt}") for name in names]


def write_plots(report: dict, out_dir: str | Path, fmt: str = "png") -> list[Path]:
    """Write utilization, layers and (if the report has them) timeline and energy figures into ``out_dir``."""
    return write_figures(report, out_dir, fmt, figure_names(report))


# ---- sweeps -----------------------------------------------------------------------------------------------------

# Candidate x axes of a sweep plot, with the spec columns that determine each (not used to split series).
SWEEP_X = {"grid_pes": ("wafer", "grid", "tiles", "tile"), "seq": ("seq",), "batch": ("batch",),
           "parameters": ("model",)}
SWEEP_Y = (("tokens_per_s", "tokens/s"), ("mfu", "MFU (fraction of peak FLOP/s)"))


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def sweep_figure(rows: list[dict], spec_columns: list[str], x: str | None = None):
    """Tokens/s and MFU against ``x`` (default: the first of grid PEs, seq, batch, parameters that varies), one
    line per combination of the other spec columns that vary. Failed rows are left out."""
    ok = [r for r in rows if not r.get("error")]
    if not ok:
        raise ValueError("no successful sweep rows to plot")
    varying = [c for c in spec_columns if len({r[c] for r in ok}) > 1]
    if x is None:
        x = next((c for c in SWEEP_X if len({r[c] for r in ok}) > 1), "grid_pes")
    if x not in ok[0] or any(_num(r[x]) is None for r in ok):
        raise ValueError(f"sweep column {x!r} is not numeric in every row")
    series_cols = [c for c in varying if c not in SWEEP_X.get(x, (x,)) and c != x]
    series: dict[tuple, list[dict]] = {}
    for r in ok:
        series.setdefault(tuple(r[c] for c in series_cols), []).append(r)

    fig, axes = plt.subplots(1, len(SWEEP_Y), figsize=(14, 5.5))
    xs_all = [_num(r[x]) for r in ok]
    for ax, (col, label) in zip(axes, SWEEP_Y, strict=True):
        for key, pts in series.items():
            pts = sorted(pts, key=lambda r: _num(r[x]))
            name = ", ".join(f"{c}={v}" for c, v in zip(series_cols, key, strict=True)) or "all points"
            ax.plot([_num(r[x]) for r in pts], [_num(r[col]) for r in pts], marker="o", label=name)
        if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
            ax.set_xscale("log")
        if col == "tokens_per_s":
            ax.set_yscale("log")
        ax.set_xlabel({"grid_pes": "grid size (PEs)", "seq": "sequence length (tokens)", "batch": "batch (sequences)",
                       "parameters": "model parameters"}.get(x, x))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    failed = len(rows) - len(ok)
    fixed = ", ".join(f"{c} {ok[0][c]}" for c in spec_columns if c not in varying)
    fig.suptitle(f"Sweep: {len(ok)} points" + (f" ({failed} failed, not shown)" if failed else "")
                 + f": tokens/s and MFU against {x}" + (f"\n{fixed}" if fixed else ""), fontsize=12)
    fig.tight_layout()
    return fig


__all__ = ["check_format", "color_range", "flat_ops", "format_bytes", "lane_columns", "layers_figure", "link_arrows",
           "percent", "roofline_points", "save", "spread_cycles", "sweep_figure", "tile_busy_grid", "timeline_figure",
           "title", "utilization_figure", "write_figures", "write_plots"]
