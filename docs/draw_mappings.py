"""Draw docs/img/mapping_<name>.png: a 4x4 tile grid, which tile holds which block, and where data moves in one step.

Placements and moves are read from the mapping code, not hard-coded: block owners from the layouts
(``SummaLayout.owner_row``, ``CannonLayout.kblock`` and ``ring``, ``meshgemm.interleaved_ring``) and arrows from
the links of the transfer tasks of a real plan (an 8x8x8 GEMM on the 8x8-PE ``tiny`` wafer cut into 4x4 tiles of
2x2 PEs). Cannon-style shifts are drawn as messages (source tile -> ring predecessor), since a wrap-around message
crosses several links.

    .venv/bin/python docs/draw_mappings.py [OUT_DIR]      # default: docs/img
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle
from wse_sim.workloads import lower_gemm

from wse_sim.arch import load_wafer
from wse_sim.mapping import TaskKind, TileGrid, get_mapping
from wse_sim.mapping.cannon import CannonLayout
from wse_sim.mapping.meshgemm import MeshGemmLayout, interleaved_ring
from wse_sim.mapping.summa import SummaLayout

Q = 4  # tiles per side
WAFER = load_wafer("tiny")
GRID = TileGrid.make(8, 8, Q, Q)
GRAPH = lower_gemm(8, 8, 8, "fp32", bias=True)

RED, BLUE, GREEN = "#c0392b", "#2471a3", "#1e8449"
SRC_FILL, ROOT_FILL = "#fdebd0", "#d6eaf8"


# ---- drawing primitives ---------------------------------------------------------------------------------------
HALF = 0.37  # half a tile's side; the rest of the unit pitch is the gap the arrows run in


def tile_grid(ax, labels, fill=None, title=""):
    """Tile (i, j) is a square centred at (j, -i): row 0 on top, like the wafer pictures."""
    fill = fill or {}
    for i in range(Q):
        for j in range(Q):
            ax.add_patch(Rectangle((j - HALF, -i - HALF), 2 * HALF, 2 * HALF, facecolor=fill.get((i, j), "white"),
                                   edgecolor="#34495e", linewidth=1.0))
            ax.text(j, -i, labels.get((i, j), ""), ha="center", va="center", fontsize=5.2, family="monospace",
                    linespacing=1.3)
    ax.set_xlim(-0.65, Q - 0.35)
    ax.set_ylim(-Q + 0.35, 0.8)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)


def message(ax, src, dst, color, label=None, lw=1.2):
    """An arrow from tile ``src`` to tile ``dst`` along a row or a column.

    Neighbours: a straight arrow across the gap; westward above eastward, northward right of southward. Longer
    moves: an arc from edge to edge that bulges into the gap (westward above the row, eastward below it, northward
    right of the column, southward left of it).
    """
    (i0, j0), (i1, j1) = src, dst
    lane = 0.17
    if i0 == i1:
        d = 1 if j1 > j0 else -1
        if abs(j1 - j0) == 1:
            y = -i0 - lane * d
            a, b, rad = (j0 + d * HALF, y), (j1 - d * HALF, y), 0.0
        else:
            y = -i0 - d * HALF
            a, b, rad = (j0, y), (j1, y), 0.3 / abs(j1 - j0)
    else:
        d = 1 if i1 > i0 else -1  # +1: southward (down the page)
        if abs(i1 - i0) == 1:
            x = j0 - lane * d
            a, b, rad = (x, -i0 - d * HALF), (x, -i1 + d * HALF), 0.0
        else:
            x = j0 - d * HALF
            a, b, rad = (x, -i0), (x, -i1), 0.3 / abs(i1 - i0)
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=7, color=color, lw=lw,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=1, shrinkB=1))
    if label:
        mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
        if rad:  # beside the arc's apex
            bulge = rad * max(abs(b[0] - a[0]), abs(b[1] - a[1])) / 2 + 0.08
            if i0 == i1:
                my += bulge * (1 if j1 < j0 else -1)
            else:
                mx += bulge * (1 if i1 < i0 else -1)
        elif i0 == i1:  # above a straight arrow
            my += 0.13
        else:
            mx += 0.13
        ax.text(mx, my, label, fontsize=5.5, color=color, ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})


def link_arrows(ax, links, color):
    """One arrow per directed link of a transfer task (adjacent tiles)."""
    for src, dst in sorted(set(links)):
        message(ax, src, dst, color)


def tasks_labelled(plan, pattern):
    rx = re.compile(pattern)
    return [t for t in plan.ops[0].tasks if t.kind == TaskKind.TRANSFER and rx.fullmatch(t.label)]


def footnote(fig, ax, text: str):
    """A line of text just under the tile grids (below the axes as drawn with their equal aspect)."""
    ax.apply_aspect()
    fig.text(0.5, ax.get_position().y0 - 0.04, text, ha="center", va="top", fontsize=7.5)


def save(fig, out: Path, name: str):
    path = out / f"mapping_{name}.png"
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def figure(panels: int):
    fig, axes = plt.subplots(1, panels, figsize=(3.3 * panels, 3.3))
    return fig, ([axes] if panels == 1 else list(axes))


# ---- one figure per mapping -------------------------------------------------------------------------------------
def weight_streaming(out: Path):
    plan = get_mapping("weight-streaming").plan(GRAPH, WAFER, GRID)
    tasks = plan.ops[0].tasks
    # The second chunk (owner column c = 1): its broadcasts and row reductions follow its stream task.
    streams = [k for k, t in enumerate(tasks) if t.kind == TaskKind.STREAM]
    first, last = streams[1], (streams[2] if len(streams) > 2 else len(tasks))
    chunk = tasks[first + 1:last]
    n0, n1 = (int(x) for x in re.findall(r"\d+", tasks[first].label))
    reduce_links = [link for t in chunk if t.label.startswith("reduce row") for link in t.links]
    (root,) = {dst[1] for _, dst in reduce_links} - {src[1] for src, _ in reduce_links}  # every arm ends there
    fig, (ax,) = figure(1)
    labels = {(i, j): f"X[m{i},k{j}]\nW[k{j},c]" + (f"\n→ Y[m{i},c]" if j == root else "")
              for i in range(Q) for j in range(Q)}
    tile_grid(ax, labels, {(i, root): ROOT_FILL for i in range(Q)},
              f"weight-streaming: chunk c = W[:, {n0}:{n1}] (owner column {root})\n"
              "blue: streamed W down every column; red: fp32 partials to column c")
    lane_x = -0.17  # the lane ``message`` uses for southward moves
    for j in range(Q):
        ax.add_patch(FancyArrowPatch((j + lane_x, 0.75), (j + lane_x, HALF), arrowstyle="-|>", mutation_scale=7,
                                     color=BLUE, lw=1.2, shrinkA=1, shrinkB=1))
    ax.text(-0.6, 0.62, "MemoryX", fontsize=6, color=BLUE, va="center", ha="left")
    for t in chunk:
        if t.label.startswith("bcast col"):
            link_arrows(ax, t.links, BLUE)
        elif t.label.startswith("reduce row"):
            link_arrows(ax, t.links, RED)
    save(fig, out, "weight-streaming")


def summa(out: Path):
    layout = SummaLayout(GRAPH, WAFER, GRID)
    plan = get_mapping("summa").plan(GRAPH, WAFER, GRID)
    s = 1
    r = layout.owner_row(s)
    fig, (ax,) = figure(1)
    labels = {}
    for i in range(Q):
        for j in range(Q):
            owned = ",".join(f"k{p}" for p in range(Q) if layout.owner_row(p) == i)
            labels[i, j] = f"A[m{i},k{j}]\nB[{owned},n{j}]"
    fill = {(i, s): SRC_FILL for i in range(Q)} | {(r, j): ROOT_FILL for j in range(Q)}
    tile_grid(ax, labels, fill, f"summa: step s = {s}\nred: A panel k{s} along rows; blue: B panel k{s} down columns")
    for t in tasks_labelled(plan, rf"A panel {s} along row \d+"):
        link_arrows(ax, t.links, RED)
    for t in tasks_labelled(plan, rf"B panel {s} down col \d+"):
        link_arrows(ax, t.links, BLUE)
    save(fig, out, "summa")


def cannon_like(out: Path, name: str, layout_cls, ring_note: str):
    layout = layout_cls(GRAPH, WAFER, GRID)
    ring = layout.ring(Q)
    pred = {p: ring[(ring.index(p) - 1) % Q] for p in range(Q)}
    fig, (ax_a, ax_b) = figure(2)
    kb = {(i, j): layout.kblock(i, j, 0) for i in range(Q) for j in range(Q)}
    tile_grid(ax_a, {t: f"A k{k}" for t, k in kb.items()}, None,
              f"{name}: A after the skew (step 0)\nshift to the ring predecessor in the row")
    tile_grid(ax_b, {t: f"B k{k}" for t, k in kb.items()}, None,
              "B stored pre-skewed\nshift to the ring predecessor in the column")
    for i in range(Q):
        for p in range(Q):
            message(ax_a, (i, p), (i, pred[p]), RED)
            message(ax_b, (p, i), (pred[p], i), BLUE)
    footnote(fig, ax_a, f"{ring_note} Ring order {list(ring)}.")
    save(fig, out, name)


def systolic(out: Path):
    plan = get_mapping("systolic").plan(GRAPH, WAFER, GRID)
    fig, (ax,) = figure(1)
    labels = {(i, j): f"A[m{i},k{j}]\nB[:,n{j}]" for i in range(Q) for j in range(Q)}
    tile_grid(ax, labels, None, "systolic: first hop of every A panel,\n"
                                "east and west, store-and-forward; B never moves")
    for t in plan.ops[0].tasks:  # a panel's first hop has no dependency: it leaves its home tile
        if t.kind == TaskKind.TRANSFER and not t.deps and t.label.endswith(tuple(f"col {c}" for c in range(Q))):
            link_arrows(ax, t.links, RED)
    save(fig, out, "systolic")


def gemv(out: Path, name: str):
    plan = get_mapping(name).plan(GRAPH, WAFER, GRID)
    labels = {(i, j): f"W[k{j},n{i}]\nx[k{j}]" for i in range(Q) for j in range(Q)}
    fig, (ax_g, ax_r) = figure(2)
    tile_grid(ax_g, labels, None, f"{name}: 1. x slices all-gathered\ndown each tile column")
    for t in tasks_labelled(plan, r"all-gather x col \d+"):
        link_arrows(ax_g, t.links, GREEN)
    if name == "gemv-tree":
        levels = tasks_labelled(plan, r"tree level \d+ row \d+")
        roots = set()  # where a level's arms end: tiles its links enter but never leave
        for t in levels:
            roots |= {dst for _, dst in t.links} - {src for src, _ in t.links}
        tile_grid(ax_r, {(i, j): f"y[n{i}]" if (i, j) in roots else "" for i in range(Q) for j in range(Q)},
                  {tile: ROOT_FILL for tile in roots},
                  f"2. tree over each row (MeshGEMV): groups of <= {WAFER.reduce_fan_in} PEs reduce\n"
                  f"into their middle by a chain from each end ({GRID.cols} PEs: one group)")
        for t in levels:
            level = int(re.search(r"level (\d+)", t.label).group(1))
            link_arrows(ax_r, t.links, RED if level == 0 else BLUE)
    else:
        tile_grid(ax_r, {(i, j): f"y[n{i}]" for i in range(Q) for j in range(Q)},
                  {(i, 0): ROOT_FILL for i in range(Q)},
                  "2. chain reduce east to west (red),\nthen multicast the sum back (blue)")
        for t in tasks_labelled(plan, r"chain reduce row \d+"):
            link_arrows(ax_r, t.links, RED)
        for t in tasks_labelled(plan, r"multicast sum row \d+"):
            link_arrows(ax_r, t.links, BLUE)
    footnote(fig, ax_g, "3. y moves to the block layout: tile (r, j) gets y[m_r, n_j].")
    save(fig, out, name)


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "img"
    out.mkdir(parents=True, exist_ok=True)
    weight_streaming(out)
    summa(out)
    cannon_like(out, "cannon", CannonLayout, "Natural ring: the wrap-around message crosses the whole row.")
    assert MeshGemmLayout(GRAPH, WAFER, GRID).ring(Q) == interleaved_ring(Q)
    cannon_like(out, "meshgemm", MeshGemmLayout, "Interleaved ring: ring neighbours are at most 2 tiles apart.")
    systolic(out)
    gemv(out, "gemv-allreduce")
    gemv(out, "gemv-tree")


if __name__ == "__main__":
    main(sys.argv[1:])
