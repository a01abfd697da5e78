"""Defective wafers: a map of failed PEs and links, and the hardware's remapping around them (docs/defects.md).

The hardware exposes only healthy cores as a rectangular mesh (WaferLLM section 8, HW section 7 [P]); WSE-1's
redundant fabric links let "a row shift by one position around a dead core to the nearest spare" (Hot Chips 31, HW
section 7 [S]). The model: the physical array has ``spare_cols`` spare PEs at the end of every row and
``spare_rows`` spare rows at the bottom (wafer TOML parameters). In each physical row the logical columns take the
healthy PEs in order (the row shifts by one past every dead PE); a row with more dead PEs than ``spare_cols`` is
retired and the logical rows take the next usable physical row (a spare row moves in). When fewer usable rows
remain than the mesh has, the usable rectangle loses the missing rows (``Remap.lost_rows``).

Logical neighbours stay neighbours for the mappings, but some are physically further apart: a horizontal
neighbour one column past a dead PE is two hops away, and vertical neighbours in rows shifted by different amounts
(or across a retired row) are ``|d row| + |d col|`` hops apart, and a failed link moves no PE but is routed around
(:func:`route_links`). The extra hops are charged on every route that crosses them (:func:`apply_defects`); lanes of
one orientation whose routes share a physical link serialise on it (``Task.link_share``); the physical links that
carry more than one logical link's traffic are counted (``shared_links``). A pipeline of wafers has one map per
wafer (:func:`wafer_remaps`). Actions are untouched, so numerics are bit-identical to the healthy wafer.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..errors import UserError

PE = tuple[int, int]


@dataclass(frozen=True)
class DefectMap:
    """Failed PEs and failed links (each a pair of adjacent PEs, lower first) of a physical array of ``rows x cols``
    PEs (the usable mesh plus its spares)."""

    rows: int
    cols: int
    dead: frozenset[PE]
    dead_links: frozenset[tuple[PE, PE]] = frozenset()

    @classmethod
    def draw(cls, rows: int, cols: int, rate: float, seed: int, link_rate: float = 0.0) -> DefectMap:
        """Each PE fails independently with probability ``rate``, each link between adjacent PEs with
        ``link_rate`` (seeded; the PEs are drawn first, so a map without links is the same as before)."""
        if not 0 <= rate < 1 or not 0 <= link_rate < 1:
            raise UserError(f"defect rates must be in [0, 1), got {rate} per PE and {link_rate} per link")
        rng = np.random.default_rng(seed)
        mask = rng.random((rows, cols)) < rate
        dead = frozenset((int(r), int(c)) for r, c in zip(*np.nonzero(mask), strict=True))
        if not link_rate:
            return cls(rows, cols, dead)
        h = rng.random((rows, cols - 1)) < link_rate  # (r, c) - (r, c + 1)
        v = rng.random((rows - 1, cols)) < link_rate  # (r, c) - (r + 1, c)
        links = {((int(r), int(c)), (int(r), int(c) + 1)) for r, c in zip(*np.nonzero(h), strict=True)}
        links |= {((int(r), int(c)), (int(r) + 1, int(c))) for r, c in zip(*np.nonzero(v), strict=True)}
        return cls(rows, cols, dead, frozenset(links))

    @classmethod
    def from_file(cls, path: str | Path, rows: int, cols: int) -> DefectMap:
        """A text file with one failure per line in physical coordinates (``#`` starts a comment): ``ROW COL`` a
        failed PE, ``ROW COL ROW2 COL2`` a failed link between two adjacent PEs."""
        dead, links = set(), set()
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UserError(f"defect map {path}: {exc.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].replace(",", " ").strip()
            if not line:
                continue
            where = f"defect map {path}, line {n}"
            try:
                xs = [int(x) for x in line.split()]
            except ValueError:
                xs = []
            if len(xs) not in (2, 4):
                raise UserError(f"{where}: expected 'ROW COL' (a PE) or 'ROW COL ROW2 COL2' (a link), got {line!r}")
            pes = [(xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
            for r, c in pes:
                if not (0 <= r < rows and 0 <= c < cols):
                    raise UserError(f"{where}: PE ({r}, {c}) is outside the {rows} x {cols} array")
            if len(pes) == 1:
                dead.add(pes[0])
                continue
            a, b = sorted(pes)
            if abs(a[0] - b[0]) + abs(a[1] - b[1]) != 1:
                raise UserError(f"{where}: a link joins two adjacent PEs, got {a} and {b}")
            links.add((a, b))
        return cls(rows, cols, frozenset(dead), frozenset(links))


@dataclass(frozen=True)
class Remap:
    """Where each logical PE of the usable rectangle sits physically (``phys[r, c] = (row, col)``), and the routes
    of the logical links on the physical array (:class:`Routes`)."""

    mesh_rows: int  # the healthy wafer's usable rectangle
    mesh_cols: int
    phys: np.ndarray  # [usable rows, mesh_cols, 2]
    retired_rows: tuple[int, ...]  # physical rows with more dead PEs than spare columns
    dead: int
    array_shape: tuple[int, int] = (0, 0)  # the physical array (rows, cols); (0, 0): just big enough for ``phys``
    dead_links: frozenset = frozenset()  # failed links, pairs of adjacent physical PEs (lower first)

    @property
    def rows(self) -> int:
        return self.phys.shape[0]

    @property
    def cols(self) -> int:
        return self.phys.shape[1]

    @property
    def lost_rows(self) -> int:
        return self.mesh_rows - self.rows

    @cached_property
    def routes(self) -> Routes:
        return route_links(self)

    @property
    def extra_h(self) -> np.ndarray:
        """[rows, cols - 1]: extra hops between logical (r, c) and (r, c + 1)."""
        return self.routes.extra_h

    @property
    def extra_v(self) -> np.ndarray:
        """[rows - 1, cols]: extra hops between logical (r, c) and (r + 1, c)."""
        return self.routes.extra_v

    @property
    def shared_links(self) -> int:
        """Physical links that carry the routes of more than one logical link (of either orientation)."""
        return self.routes.shared_links

    def summary(self) -> dict:
        """The report's ``defects``: counts, the usable rectangle and how much it shrank, the detours."""
        rt = self.routes
        return {
            "dead_pes": self.dead, "dead_links": len(self.dead_links), "retired_rows": len(self.retired_rows),
            "usable_pes": [self.rows, self.cols], "healthy_usable_pes": [self.mesh_rows, self.mesh_cols],
            "lost_rows": self.lost_rows, "lost_pe_fraction": self.lost_rows / self.mesh_rows,
            "detour_links": int(np.count_nonzero(rt.extra_h) + np.count_nonzero(rt.extra_v)),
            "extra_hops_total": int(rt.extra_h.sum() + rt.extra_v.sum()),
            "shared_physical_links": rt.shared_links,
            "contended_logical_links": int(np.count_nonzero(rt.share_h > 1) + np.count_nonzero(rt.share_v > 1)),
        }


def remap(defects: DefectMap, mesh_rows: int, mesh_cols: int) -> Remap:
    """The logical ``mesh_rows x mesh_cols`` rectangle on the physical array (spares: the array's extra rows and
    columns; see the module docstring). Failed links do not move any PE: the hardware routes around them."""
    if defects.rows < mesh_rows or defects.cols < mesh_cols:
        raise ValueError("the physical array is smaller than the mesh")
    dead_by_row: dict[int, set[int]] = {}
    for r, c in defects.dead:
        dead_by_row.setdefault(r, set()).add(c)
    rows, retired = [], []
    for pr in range(defects.rows):
        healthy = [c for c in range(defects.cols) if c not in dead_by_row.get(pr, ())]
        if len(healthy) < mesh_cols:
            retired.append(pr)
            continue
        if len(rows) < mesh_rows:
            rows.append([(pr, c) for c in healthy[:mesh_cols]])
    phys = np.array(rows, dtype=np.int64).reshape(len(rows), mesh_cols, 2)
    return Remap(mesh_rows, mesh_cols, phys, tuple(retired), len(defects.dead), (defects.rows, defects.cols),
                 defects.dead_links)


# ---- routes of the logical links on the physical array -------------------------------------------------------------


@dataclass(frozen=True)
class Routes:
    """Per logical link: extra hops over one, and ``share``: the most logical links of its orientation whose routes
    cross one physical link of its route (1: it has its physical links to itself)."""

    extra_h: np.ndarray  # [rows, cols - 1]
    extra_v: np.ndarray  # [rows - 1, cols]
    share_h: np.ndarray  # [rows, cols - 1]
    share_v: np.ndarray  # [rows - 1, cols]
    shared_links: int  # physical links crossed by the routes of more than one logical link (either orientation)


def _prefix(a: np.ndarray, axis: int) -> np.ndarray:
    """Prefix sums with a leading zero along ``axis``: ``p[..., b] - p[..., a]`` sums ``a[..., a:b]``."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (1, 0)
    return np.pad(np.cumsum(a, axis=axis), pad)


class _Usage:
    """Physical links crossed by routes: horizontal ``h[r, x]`` joins (r, x) and (r, x + 1), vertical ``v[r, x]``
    joins (r, x) and (r + 1, x). Segments are added at once through difference arrays."""

    def __init__(self, shape: tuple[int, int]):
        rows, cols = shape
        self.dh = np.zeros((rows, cols), dtype=np.int64)
        self.dv = np.zeros((rows, cols), dtype=np.int64)
        self.extra: list = []  # (kind, r, x) of routes added one link at a time

    def add_h(self, row, lo, hi) -> None:
        """Horizontal links lo..hi-1 of ``row`` (arrays)."""
        np.add.at(self.dh, (row, lo), 1)
        np.add.at(self.dh, (row, hi), -1)

    def add_v(self, col, lo, hi) -> None:
        """Vertical links lo..hi-1 of column ``col`` (arrays)."""
        np.add.at(self.dv, (lo, col), 1)
        np.add.at(self.dv, (hi, col), -1)

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        h, v = np.cumsum(self.dh, axis=1)[:, :-1], np.cumsum(self.dv, axis=0)[:-1]
        for kind, r, x in self.extra:
            (h if kind == "h" else v)[r, x] += 1
        return h, v


def _seg_max(u: np.ndarray, fixed, lo, hi, along_rows: bool) -> np.ndarray:
    """Per segment, the largest count of ``u`` over its links lo..hi-1 (0 for an empty segment)."""
    out = np.zeros(np.shape(lo), dtype=np.int64)
    span = int((hi - lo).max(initial=0))
    for k in range(span):
        on = lo + k < hi
        idx = np.where(on, lo + k, 0)
        vals = u[idx, fixed] if along_rows else u[fixed, idx]
        out = np.where(on, np.maximum(out, vals), out)
    return out


def _bfs(start: PE, goal: PE, shape: tuple[int, int], dead_links: frozenset) -> list:
    """A shortest route from ``start`` to ``goal`` avoiding the failed links, as a list of PEs (neighbours tried
    south, north, east, west: a blocked row link detours through the row below when it can)."""
    rows, cols = shape
    prev = {start: None}
    frontier = deque([start])
    while frontier:
        node = frontier.popleft()
        if node == goal:
            path = []
            while node is not None:
                path.append(node)
                node = prev[node]
            return path[::-1]
        r, c = node
        for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nxt[0] < rows and 0 <= nxt[1] < cols and nxt not in prev \
                    and (min(node, nxt), max(node, nxt)) not in dead_links:
                prev[nxt] = node
                frontier.append(nxt)
    raise UserError(f"the failed links cut PE {start} off from PE {goal}: no route around them")


def _path_links(path: list) -> list:
    """The physical links of a route: ("h", r, x) joins (r, x) and (r, x + 1), ("v", r, x) (r, x) and (r + 1, x)."""
    out = []
    for a, b in pairwise(path):
        (ra, xa), (rb, _) = min(a, b), max(a, b)
        out.append(("h" if ra == rb else "v", ra, xa))
    return out


def _route_usage(rm: Remap, pa: np.ndarray, pb: np.ndarray, dead_h, dead_v, usage: _Usage):
    """Routes of logical links from physical ``pa`` to ``pb`` (arrays [..., 2]): along the row first, else along
    the column first, else (both cross a failed link) a shortest route around the failed links. Adds them to
    ``usage``; returns (hops, the links' segments for the share lookup, the detoured links' paths)."""
    r0, x0, r1, x1 = pa[..., 0], pa[..., 1], pb[..., 0], pb[..., 1]
    lo, hi = np.minimum(x0, x1), np.maximum(x0, x1)
    rlo, rhi = np.minimum(r0, r1), np.maximum(r0, r1)
    ph, pv = _prefix(dead_h, 1), _prefix(dead_v, 0)
    row_first_ok = (ph[r0, hi] - ph[r0, lo] == 0) & (pv[rhi, x1] - pv[rlo, x1] == 0)
    col_first_ok = (pv[rhi, x0] - pv[rlo, x0] == 0) & (ph[r1, hi] - ph[r1, lo] == 0)
    row_first = row_first_ok
    col_first = ~row_first_ok & col_first_ok
    hops = (hi - lo) + (rhi - rlo)
    # along the row first: row r0 from lo to hi, then column x1; along the column first: column x0, then row r1
    h_row = np.where(col_first, r1, r0)
    v_col = np.where(col_first, x0, x1)
    mono = row_first | col_first
    usage.add_h(h_row[mono], lo[mono], hi[mono])
    usage.add_v(v_col[mono], rlo[mono], rhi[mono])
    detours = {}
    for idx in zip(*np.nonzero(~mono), strict=True):
        path = _bfs(tuple(int(v) for v in pa[idx]), tuple(int(v) for v in pb[idx]), rm.array_shape, rm.dead_links)
        hops[idx] = len(path) - 1
        detours[idx] = path
        usage.extra += _path_links(path)
    return hops, (h_row, lo, hi, v_col, rlo, rhi, mono), detours


def _route_share(segs, detours, uh, uv) -> np.ndarray:
    """Per logical link, the largest count of ``uh``/``uv`` over the physical links of its route."""
    h_row, lo, hi, v_col, rlo, rhi, mono = segs
    share = np.maximum(_seg_max(uh, h_row, lo, hi, along_rows=False), _seg_max(uv, v_col, rlo, rhi, along_rows=True))
    share = np.where(mono, share, 0)
    for idx, path in detours.items():
        for kind, r, x in _path_links(path):
            share[idx] = max(share[idx], uh[r, x] if kind == "h" else uv[r, x])
    return share


def route_links(rm: Remap) -> Routes:
    """Route every logical link (horizontal and vertical neighbours) on the physical array; count how many routes
    of each orientation cross each physical link (failed PEs' routers pass traffic: a row shifted past a dead PE
    is two hops from its neighbour; a failed link is never crossed)."""
    p = rm.phys
    shape = rm.array_shape if rm.array_shape != (0, 0) else (int(p[..., 0].max(initial=0)) + 1,
                                                            int(p[..., 1].max(initial=0)) + 1)
    rm_shape = replace(rm, array_shape=shape)
    dead_h = np.zeros((shape[0], max(shape[1] - 1, 0)), dtype=np.int64)
    dead_v = np.zeros((max(shape[0] - 1, 0), shape[1]), dtype=np.int64)
    for (ra, xa), (rb, _) in rm.dead_links:
        (dead_h if ra == rb else dead_v)[ra, xa] = 1
    uses_h, uses_v = _Usage(shape), _Usage(shape)
    hops_h, segs_h, det_h = _route_usage(rm_shape, p[:, :-1], p[:, 1:], dead_h, dead_v, uses_h)
    hops_v, segs_v, det_v = _route_usage(rm_shape, p[:-1], p[1:], dead_h, dead_v, uses_v)
    hh, hv = uses_h.counts()
    vh, vv = uses_v.counts()
    shared = int(np.count_nonzero(hh + vh > 1) + np.count_nonzero(hv + vv > 1))
    return Routes(hops_h - 1, hops_v - 1, _route_share(segs_h, det_h, hh, hv), _route_share(segs_v, det_v, vh, vv),
                  shared)


# ---- charging the detours on a plan -------------------------------------------------------------------------------


class DetourCost:
    """Extra hops of tile-level routes on a remapped mesh (the plan's grid at the mesh's origin)."""

    def __init__(self, rm: Remap, grid):
        if grid.rows > rm.rows or grid.cols > rm.cols:
            raise UserError(f"grid {grid.rows}x{grid.cols} does not fit the {rm.rows}x{rm.cols} PEs left usable by "
                            f"the defects ({rm.lost_rows} rows lost)")
        self.grid = grid
        zero_col = np.zeros((rm.rows, 1), dtype=np.int64)
        zero_row = np.zeros((1, rm.cols), dtype=np.int64)
        self.h = np.hstack([zero_col, np.cumsum(rm.extra_h, axis=1)])  # h[r, c]: extra hops from column 0 to c
        self.v = np.vstack([zero_row, np.cumsum(rm.extra_v, axis=0)])
        self.share_h, self.share_v = rm.routes.share_h, rm.routes.share_v
        self.memo: dict = {}

    def link(self, link) -> tuple[int, int, int]:
        """(extra hops of the worst lane, extra hops summed over the lanes, the most lanes sharing one physical
        link) crossing a tile link and the tile it enters."""
        if link in self.memo:
            return self.memo[link]
        g = self.grid
        (i, j), (i2, j2) = link
        if i == i2:  # along a row: lanes are the PE rows of tile row i
            e = g.col_edges
            lo, hi = (e[j2] - 1, e[j2 + 1] - 1) if j2 > j else (e[j2], e[j2 + 1])
            lanes = self.h[g.row_edges[i]:g.row_edges[i + 1]]
            per_lane = lanes[:, hi] - lanes[:, max(lo, 0)]
            shares = self.share_h[g.row_edges[i]:g.row_edges[i + 1], max(lo, 0):hi]
        else:
            e = g.row_edges
            lo, hi = (e[i2] - 1, e[i2 + 1] - 1) if i2 > i else (e[i2], e[i2 + 1])
            lanes = self.v[:, g.col_edges[j]:g.col_edges[j + 1]]
            per_lane = lanes[hi] - lanes[max(lo, 0)]
            shares = self.share_v[max(lo, 0):hi, g.col_edges[j]:g.col_edges[j + 1]]
        val = (int(per_lane.max()), int(per_lane.sum()), int(shares.max(initial=1)))
        self.memo[link] = val
        return val

    def task(self, links) -> int:
        """Extra hops of a transfer's longest route: the worst tile row's row links plus the worst tile column's
        column links."""
        rows: dict = {}
        cols: dict = {}
        for link in links:
            (i, j), (i2, _) = link
            if i == i2:
                rows[i] = rows.get(i, 0) + self.link(link)[0]
            else:
                cols[j] = cols.get(j, 0) + self.link(link)[0]
        return max(rows.values(), default=0) + max(cols.values(), default=0)

    def share(self, links) -> int:
        """The most lanes of the transfer's logical links that share one physical link on its routes: its wavelets
        cross that link one after another (:func:`wse_sim.arch.costs.serialization_cycles`)."""
        return max((self.link(link)[2] for link in links), default=1)

    def lane_hops(self, links) -> int:
        """Extra hops summed over every lane of every link (times the wavelets per lane: the detours' extra
        wavelet-hops, for the energy)."""
        return sum(self.link(link)[1] for link in links)


class WaferCosts:
    """The detour costs of each wafer of a plan: one wafer, or ``len(remaps)`` wafers side by side in the plan's
    tile grid (equal tile columns each, as the serving placement lays a layer pipeline out), each on its own
    remapped mesh. A transfer stays on one wafer (crossings are inter-wafer tasks, without tile links)."""

    def __init__(self, grid, remaps: tuple[Remap, ...]):
        n = len(remaps)
        if grid.tile_cols % n:
            raise ValueError(f"{grid.tile_cols} tile columns do not split over {n} wafers")
        self.width = grid.tile_cols // n
        self.costs = []
        for w, rm in enumerate(remaps):
            edges = grid.col_edges[w * self.width:(w + 1) * self.width + 1]
            local = replace(grid, cols=edges[-1] - edges[0], col_edges=tuple(e - edges[0] for e in edges))
            self.costs.append(DetourCost(rm, local))

    def of(self, links) -> tuple[DetourCost, tuple]:
        """The cost model of the wafer that ``links`` lie on, and the links in that wafer's tile coordinates."""
        w = links[0][0][1] // self.width
        off = w * self.width
        return self.costs[w], tuple(((i, j - off), (i2, j2 - off)) for (i, j), (i2, j2) in links)


def apply_defects(plan, rm: Remap | tuple[Remap, ...], wavelet_bytes: int = 4):
    """``plan`` with every transfer's hops raised by its detours on the remapped mesh and its ``link_share`` set to
    the most of its lanes sharing one physical link (actions unchanged). Its ``params`` record the hops charged
    (``defect_extra_hops``), the transfers slowed by shared links (``defect_contended_transfers``) and, per op,
    the detours' extra wavelet-hops (``defect_extra_wavelet_hops``, counted by wse_sim.report.energy)."""
    from ..arch.costs import TaskKind

    wafers = WaferCosts(plan.grid, rm if isinstance(rm, tuple) else (rm,))
    ops, charged, contended, wavelet_hops = [], 0, 0, []
    for op in plan.ops:
        tasks, op_hops = [], 0
        for t in op.tasks:
            extra, share = 0, 1
            if t.kind == TaskKind.TRANSFER and t.links:
                cost, links = wafers.of(t.links)
                extra, share = cost.task(links), cost.share(links)
                op_hops += cost.lane_hops(links) * math.ceil(t.bytes_per_lane / wavelet_bytes)
            charged += extra
            contended += share > 1
            tasks.append(replace(t, hops=t.hops + extra, link_share=share) if extra or share > 1 else t)
        ops.append(replace(op, tasks=tuple(tasks)))
        wavelet_hops.append(op_hops)
    return replace(plan, ops=tuple(ops), params={**plan.params, "defect_extra_hops": charged,
                                                  "defect_contended_transfers": contended,
                                                  "defect_extra_wavelet_hops": wavelet_hops})


# ---- a wafer's defects from the command line ------------------------------------------------------------------------


def defect_rate(wafer, text: str) -> float:
    """``--defects RATE``: a per-PE failure probability, ``published`` (the wafer's defect density times its PE
    area) or ``published*K`` / ``Kx`` multiples of it (``10x``: ten times the published density)."""
    t = text.strip().lower()
    try:
        if t == "published":
            return wafer.defect_rate_per_pe
        if t.startswith("published*"):
            return wafer.defect_rate_per_pe * float(t.split("*", 1)[1])
        if t.endswith("x"):
            return wafer.defect_rate_per_pe * float(t[:-1])
        rate = float(t)
    except ValueError:
        raise UserError(f"--defects {text!r}: give a per-PE rate (e.g. 1e-4), 'published' or a multiple of it "
                        f"(e.g. 10x)") from None
    return rate


def wafer_remap(wafer, defects: str | None, seed: int | None, defect_map: str | None) -> Remap | None:
    """The remapped mesh of ``wafer`` for the run's defect options; None for a healthy wafer."""
    if defects is None and defect_map is None:
        if seed is not None:
            raise UserError("--defect-seed needs --defects RATE")
        return None
    if defects is not None and defect_map is not None:
        raise UserError("give --defects RATE or --defect-map FILE, not both")
    rows, cols = wafer.mesh_rows + wafer.spare_rows, wafer.mesh_cols + wafer.spare_cols
    if defect_map is not None:
        dm = DefectMap.from_file(defect_map, rows, cols)
    else:
        rate = defect_rate(wafer, defects)
        dm = DefectMap.draw(rows, cols, rate, 0 if seed is None else seed, rate * wafer.link_defect_ratio)
    rm = remap(dm, wafer.mesh_rows, wafer.mesh_cols)
    if rm.rows == 0:
        raise UserError(f"the defects leave no usable row of {wafer.mesh_cols} PEs on wafer {wafer.name}")
    return rm


def wafer_remaps(wafer, defects: str | None, seed: int | None, defect_map: str | None,
                 wafers: int = 1) -> tuple[Remap, ...] | None:
    """The remapped meshes of the ``wafers`` wafers of a pipeline: wafer ``w`` draws its own defects from seed
    ``seed + w`` (wafer 0's are those of a one-wafer run); None for healthy wafers. A defect map file describes one
    wafer, so it is refused for several."""
    if wafers > 1 and defect_map is not None:
        raise UserError(f"--defect-map lists the defects of one wafer; for --wafers {wafers} use --defects RATE "
                        "(wafer w draws its own from --defect-seed + w)")
    first = wafer_remap(wafer, defects, seed, defect_map)
    if first is None:
        return None
    base = 0 if seed is None else seed
    return (first, *(wafer_remap(wafer, defects, base + w, None) for w in range(1, wafers)))


def usable_wafer(wafer, rm: Remap | tuple[Remap, ...] | None):
    """``wafer`` with its usable rectangle shrunk to what the remapping left (the same wafer when nothing is lost);
    over several wafers, to the smallest rectangle any of them left (the pipeline's regions are alike)."""
    if rm is None:
        return wafer
    rows = min(r.rows for r in (rm if isinstance(rm, tuple) else (rm,)))
    if rows == wafer.mesh_rows:
        return wafer
    return replace(wafer, mesh_rows=rows, retired_mesh_rows=wafer.retired_mesh_rows + wafer.mesh_rows - rows)


SUMMED_OVER_WAFERS = ("dead_pes", "dead_links", "retired_rows", "detour_links", "extra_hops_total",
                      "shared_physical_links", "contended_logical_links")


def defects_report(rm: Remap | tuple[Remap, ...], plan, rate: float | None) -> dict:
    """The report's ``defects``: the remap summary, the detour hops charged on the plan's transfers and how many
    transfers share a physical link among their lanes. Over several wafers: counts summed, the usable rectangle
    the smallest, and ``per_wafer`` each wafer's own summary."""
    charged = {"rate_per_pe": rate, "extra_hops_charged": plan.params.get("defect_extra_hops", 0),
               "contended_transfers": plan.params.get("defect_contended_transfers", 0)}
    if not isinstance(rm, tuple) or len(rm) == 1:
        return (rm[0] if isinstance(rm, tuple) else rm).summary() | charged
    each = [r.summary() for r in rm]
    worst = min(each, key=lambda s: s["usable_pes"][0])
    out = dict(worst) | {k: sum(s[k] for s in each) for k in SUMMED_OVER_WAFERS}
    return out | charged | {"per_wafer": each}
