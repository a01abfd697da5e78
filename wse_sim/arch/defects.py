"""Defective wafers: a map of failed PEs and the hardware's remapping around them (docs/defects.md).

The hardware exposes only healthy cores as a rectangular mesh (WaferLLM section 8, HW section 7 [P]); WSE-1's
redundant fabric links let "a row shift by one position around a dead core to the nearest spare" (Hot Chips 31, HW
section 7 [S]). The model: the physical array has ``spare_cols`` spare PEs at the end of every row and
``spare_rows`` spare rows at the bottom (wafer TOML parameters). In each physical row the logical columns take the
healthy PEs in order (the row shifts by one past every dead PE); a row with more dead PEs than ``spare_cols`` is
retired and the logical rows take the next usable physical row (a spare row moves in). When fewer usable rows
remain than the mesh has, the usable rectangle loses the missing rows (``Remap.lost_rows``).

Logical neighbours stay neighbours for the mappings, but some are physically further apart: a horizontal
neighbour one column past a dead PE is two hops away, and vertical neighbours in rows shifted by different amounts
(or across a retired row) are ``|d row| + |d col|`` hops apart; the extra hops are charged on every route that
crosses them (:func:`apply_defects`) and the physical links that carry more than one logical link's traffic are
counted (``shared_links``). Actions are untouched, so numerics are bit-identical to the healthy wafer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import UserError

PE = tuple[int, int]


@dataclass(frozen=True)
class DefectMap:
    """Failed PEs of a physical array of ``rows x cols`` PEs (the usable mesh plus its spares)."""

    rows: int
    cols: int
    dead: frozenset[PE]

    @classmethod
    def draw(cls, rows: int, cols: int, rate: float, seed: int) -> DefectMap:
        """Each PE fails independently with probability ``rate`` (seeded)."""
        if not 0 <= rate < 1:
            raise UserError(f"defect rate must be in [0, 1), got {rate}")
        mask = np.random.default_rng(seed).random((rows, cols)) < rate
        return cls(rows, cols, frozenset((int(r), int(c)) for r, c in zip(*np.nonzero(mask), strict=True)))

    @classmethod
    def from_file(cls, path: str | Path, rows: int, cols: int) -> DefectMap:
        """A text file with one failed PE per line, ``ROW COL`` (physical coordinates; ``#`` starts a comment)."""
        dead = set()
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UserError(f"defect map {path}: {exc.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].replace(",", " ").strip()
            if not line:
                continue
            try:
                r, c = (int(x) for x in line.split())
            except ValueError:
                raise UserError(f"defect map {path}, line {n}: expected 'ROW COL', got {line!r}") from None
            if not (0 <= r < rows and 0 <= c < cols):
                raise UserError(f"defect map {path}, line {n}: PE ({r}, {c}) is outside the {rows} x {cols} array")
            dead.add((r, c))
        return cls(rows, cols, frozenset(dead))


@dataclass(frozen=True)
class Remap:
    """Where each logical PE of the usable rectangle sits physically (``phys[r, c] = (row, col)``)."""

    mesh_rows: int  # the healthy wafer's usable rectangle
    mesh_cols: int
    phys: np.ndarray  # [usable rows, mesh_cols, 2]
    retired_rows: tuple[int, ...]  # physical rows with more dead PEs than spare columns
    dead: int

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
    def extra_h(self) -> np.ndarray:
        """[rows, cols - 1]: extra hops between logical (r, c) and (r, c + 1)."""
        p = self.phys
        return (np.abs(np.diff(p[:, :, 0], axis=1)) + np.abs(np.diff(p[:, :, 1], axis=1)) - 1).astype(np.int64)

    @cached_property
    def extra_v(self) -> np.ndarray:
        """[rows - 1, cols]: extra hops between logical (r, c) and (r + 1, c)."""
        p = self.phys
        return (np.abs(np.diff(p[:, :, 0], axis=0)) + np.abs(np.diff(p[:, :, 1], axis=0)) - 1).astype(np.int64)

    @cached_property
    def shared_links(self) -> int:
        """Physical links that carry the traffic of more than one logical link (routes: along the row first, then
        along the column)."""
        use: dict = {}

        def route(a, b):
            (r0, c0), (r1, c1) = a, b
            out, c, r = [], c0, r0
            while c != c1:
                step = 1 if c1 > c else -1
                out.append(((r, c), (r, c + step)))
                c += step
            while r != r1:
                step = 1 if r1 > r else -1
                out.append(((r, c), (r + step, c)))
                r += step
            return out

        p = self.phys
        for r, c in zip(*np.nonzero(self.extra_h), strict=True):
            for link in route(tuple(p[r, c]), tuple(p[r, c + 1])):
                use[link] = use.get(link, 0) + 1
        for r, c in zip(*np.nonzero(self.extra_v), strict=True):
            for link in route(tuple(p[r, c]), tuple(p[r + 1, c])):
                use[link] = use.get(link, 0) + 1
        # a detour's physical links also carry the healthy logical links that map onto them
        for r in range(self.rows):
            for c in range(self.cols - 1):
                if not self.extra_h[r, c]:
                    link = (tuple(p[r, c]), tuple(p[r, c + 1]))
                    if link in use:
                        use[link] += 1
        for r in range(self.rows - 1):
            for c in range(self.cols):
                if not self.extra_v[r, c]:
                    link = (tuple(p[r, c]), tuple(p[r + 1, c]))
                    if link in use:
                        use[link] += 1
        return sum(1 for n in use.values() if n > 1)

    def summary(self) -> dict:
        """The report's ``defects``: counts, the usable rectangle and how much it shrank, the detours."""
        return {
            "dead_pes": self.dead, "retired_rows": len(self.retired_rows),
            "usable_pes": [self.rows, self.cols], "healthy_usable_pes": [self.mesh_rows, self.mesh_cols],
            "lost_rows": self.lost_rows, "lost_pe_fraction": self.lost_rows / self.mesh_rows,
            "detour_links": int(np.count_nonzero(self.extra_h) + np.count_nonzero(self.extra_v)),
            "extra_hops_total": int(self.extra_h.sum() + self.extra_v.sum()),
        }


def remap(defects: DefectMap, mesh_rows: int, mesh_cols: int) -> Remap:
    """The logical ``mesh_rows x mesh_cols`` rectangle on the physical array (spares: the array's extra rows and
    columns; see the module docstring)."""
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
    return Remap(mesh_rows, mesh_cols, phys, tuple(retired), len(defects.dead))


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
        self.memo: dict = {}

    def link(self, link) -> tuple[int, int]:
        """(extra hops of the worst lane, extra hops summed over the lanes) crossing a tile link and the tile it
        enters."""
        if link in self.memo:
            return self.memo[link]
        g = self.grid
        (i, j), (i2, j2) = link
        if i == i2:  # along a row: lanes are the PE rows of tile row i
            e = g.col_edges
            lo, hi = (e[j2] - 1, e[j2 + 1] - 1) if j2 > j else (e[j2], e[j2 + 1])
            lanes = self.h[g.row_edges[i]:g.row_edges[i + 1]]
            per_lane = lanes[:, hi] - lanes[:, max(lo, 0)]
        else:
            e = g.row_edges
            lo, hi = (e[i2] - 1, e[i2 + 1] - 1) if i2 > i else (e[i2], e[i2 + 1])
            lanes = self.v[:, g.col_edges[j]:g.col_edges[j + 1]]
            per_lane = lanes[hi] - lanes[max(lo, 0)]
        val = (int(per_lane.max()), int(per_lane.sum()))
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

    def lane_hops(self, links) -> int:
        """Extra hops summed over every lane of every link (times the wavelets per lane: the detours' extra
        wavelet-hops, for the energy)."""
        return sum(self.link(link)[1] for link in links)


def apply_defects(plan, rm: Remap, wavelet_bytes: int = 4):
    """``plan`` with every transfer's hops raised by its detours on the remapped mesh (actions unchanged). Its
    ``params`` record the hops charged (``defect_extra_hops``) and, per op, the detours' extra wavelet-hops
    (``defect_extra_wavelet_hops``, counted by wse_sim.report.energy)."""
    from ..arch.costs import TaskKind

    cost = DetourCost(rm, plan.grid)
    ops, charged, wavelet_hops = [], 0, []
    for op in plan.ops:
        tasks, op_hops = [], 0
        for t in op.tasks:
            extra = 0
            if t.kind == TaskKind.TRANSFER and t.links:
                extra = cost.task(t.links)
                op_hops += cost.lane_hops(t.links) * math.ceil(t.bytes_per_lane / wavelet_bytes)
            charged += extra
            tasks.append(replace(t, hops=t.hops + extra) if extra else t)
        ops.append(replace(op, tasks=tuple(tasks)))
        wavelet_hops.append(op_hops)
    return replace(plan, ops=tuple(ops), params={**plan.params, "defect_extra_hops": charged,
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
        dm = DefectMap.draw(rows, cols, rate, 0 if seed is None else seed)
    rm = remap(dm, wafer.mesh_rows, wafer.mesh_cols)
    if rm.rows == 0:
        raise UserError(f"the defects leave no usable row of {wafer.mesh_cols} PEs on wafer {wafer.name}")
    return rm


def usable_wafer(wafer, rm: Remap | None):
    """``wafer`` with its usable rectangle shrunk to what the remapping left (the same wafer when nothing is lost)."""
    if rm is None or rm.lost_rows == 0:
        return wafer
    return replace(wafer, mesh_rows=rm.rows, retired_mesh_rows=wafer.retired_mesh_rows + rm.lost_rows)


def defects_report(rm: Remap, plan, rate: float | None) -> dict:
    """The report's ``defects``: the remap summary and the detour hops charged on the plan's transfers."""
    return rm.summary() | {"rate_per_pe": rate, "extra_hops_charged": plan.params.get("defect_extra_hops", 0)}
