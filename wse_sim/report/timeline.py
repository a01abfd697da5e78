"""Compact activity summaries for report.json: per-link busy fractions and a per-lane timeline.

Both are read from a :class:`SimResult`; the timeline needs the busy intervals (``Engine(record=True)``) and
stores merged segments per op instead of raw intervals, so the report stays small for big runs.
"""

from __future__ import annotations

import numpy as np

from ..mapping import TileGrid
from ..sim import SimResult
from ..sim.intervals import interval_columns

# Direction of a link from tile (i, j) to its neighbour: tile row 0 is the north edge (PE row 0 at the top).
DIRECTIONS = {"N": (-1, 0), "S": (1, 0), "E": (0, 1), "W": (0, -1)}
# Tile grids with at most this many tiles get one timeline lane per tile; larger ones one lane per tile row.
PER_TILE_LANES_MAX_TILES = 16
# The busiest links get a timeline lane each.
TOP_LINK_LANES = 4
# Segments per lane after merging; a plot cannot show more than about its width in pixels anyway.
MAX_SEGMENTS_PER_LANE = 1000


def link_direction(link) -> str:
    """'N', 'S', 'E' or 'W' for a link between adjacent tiles; anything else is a plan bug."""
    (i, j), (i2, j2) = link
    for name, (di, dj) in DIRECTIONS.items():
        if (i2 - i, j2 - j) == (di, dj):
            return name
    raise ValueError(f"link {link} does not join adjacent tiles")


def link_busy_fraction(result: SimResult, grid: TileGrid) -> dict:
    """Per direction a [tile rows][tile cols] grid: busy fraction of the link leaving that tile that way.

    ``None`` where the link would leave the grid; 0.0 for a link that was never used.
    """
    total = result.total_cycles
    out = {}
    for name, (di, dj) in DIRECTIONS.items():
        out[name] = [[0.0 if 0 <= i + di < grid.tile_rows and 0 <= j + dj < grid.tile_cols else None
                      for j in range(grid.tile_cols)] for i in range(grid.tile_rows)]
    for link, cycles in result.link_busy_cycles.items():
        (i, j), _ = link
        out[link_direction(link)][i][j] = float(f"{cycles / total:.6g}") if total else 0.0
    return out


def _runs(s, e, k, tol: int):
    """Indices starting each run of same-op intervals (sorted by op, then start) whose gaps are at most ``tol``,
    and every interval's gap to the reach of the ones before it in its op."""
    new_op = np.ones(s.size, dtype=bool)
    new_op[1:] = k[1:] != k[:-1]
    # Running max of ends within each op: offset ops apart so earlier ops never reach into later ones.
    offset = (k - k.min()) * (int(e.max()) + 1)
    reach = np.maximum.accumulate(e + offset)
    gap = np.zeros(s.size, dtype=np.int64)
    gap[1:] = (s[1:] + offset[1:]) - reach[:-1]
    gap[new_op] = 0
    return np.flatnonzero(new_op | (gap > tol)), gap, int(new_op.sum())


def merge_segments(start, end, op, cap: int = MAX_SEGMENTS_PER_LANE):
    """Merge one lane's busy intervals into segments per op: at most ``cap``, or one per op if there are more
    ops than that. Returns (starts, ends, ops, busy cycles per segment, merge_gap_cycles), sorted by start.

    Same-op intervals that overlap or touch are joined exactly (``busy`` is then the segment's length); if that
    leaves more than ``cap`` segments, same-op segments whose gap is at most ``merge_gap_cycles`` are joined
    too, with the smallest such gap that meets the cap, and ``busy`` keeps the cycles actually busy inside.
    """
    start, end, op = (np.asarray(a, dtype=np.int64) for a in (start, end, op))
    if start.size == 0:
        return start, end, op, start, 0
    order = np.lexsort((start, op))
    s, e, k = start[order], end[order], op[order]
    first, _, _ = _runs(s, e, k, 0)
    s, e, k = s[first], np.maximum.reduceat(e, first), k[first]  # exact union per op, disjoint within an op
    busy = e - s
    tol = 0
    if s.size > cap:
        first, gap, n_ops = _runs(s, e, k, 0)
        desc = np.sort(gap[gap > 0])[::-1]
        room = cap - n_ops
        if desc.size:
            tol = int(desc[0]) if room <= 0 else int(desc[room]) if desc.size > room else 0
        first, _, _ = _runs(s, e, k, tol)
        s, e, k, busy = s[first], np.maximum.reduceat(e, first), k[first], np.add.reduceat(busy, first)
    by_start = np.lexsort((k, s))
    return s[by_start], e[by_start], k[by_start], busy[by_start], tol


def union_cycles(start, end) -> int:
    """Length of the union of half-open intervals [start, end)."""
    s, e, _, _, _ = merge_segments(start, end, np.zeros(len(start), dtype=np.int64), cap=len(start) + 1)
    return int((e - s).sum())


def _lane(name: str, group: str, start, end, op, cap: int) -> dict:
    s, e, k, busy, tol = merge_segments(start, end, op, cap)
    return {"name": name, "group": group, "busy_cycles": union_cycles(start, end), "merge_gap_cycles": tol,
            "start_cycles": s.tolist(), "end_cycles": e.tolist(), "op": k.tolist(), "busy": busy.tolist()}


def timeline_summary(result: SimResult, grid: TileGrid, cap: int = MAX_SEGMENTS_PER_LANE) -> dict | None:
    """Lanes (MemoryX, tiles or tile rows, busiest links) of merged busy segments; None without intervals.

    A segment's ``op`` indexes the run's ops in order (the report's ``layers[].ops[]`` flattened); its ``busy``
    is the cycles some resource of the lane was busy on that op inside the segment.
    """
    if result.intervals is None:
        return None
    per_tile = grid.tile_rows * grid.tile_cols <= PER_TILE_LANES_MAX_TILES
    top_links = sorted(result.link_busy_cycles, key=lambda link: (-result.link_busy_cycles[link], link))
    top_links = [link for link in top_links[:TOP_LINK_LANES] if result.link_busy_cycles[link] > 0]
    lane_of_link = {link: n for n, link in enumerate(top_links)}

    n_tile_lanes = grid.tile_rows * grid.tile_cols if per_tile else grid.tile_rows
    cols = interval_columns(result.intervals)
    # Each resource's bucket: 0 MemoryX in, 1 MemoryX out (gradient stream-outs: the link's other direction),
    # then the tile lanes, the top links, the inter-wafer links (numbered as first seen); -1: no lane.
    first_link, first_wafer = 2 + n_tile_lanes, 2 + n_tile_lanes + len(top_links)
    wafer_bucket: dict = {}
    bucket_of = np.full(len(cols.resources), -1, dtype=np.int64)
    for r, (group, res) in enumerate(cols.resources):
        if group == "tile":
            bucket_of[r] = 2 + (res[0] * grid.tile_cols + res[1] if per_tile else res[0])
        elif group == "link":
            bucket_of[r] = first_link + lane_of_link[res] if res in lane_of_link else -1
        elif group == "interwafer":
            bucket_of[r] = wafer_bucket.setdefault(res, first_wafer + len(wafer_bucket))
        else:
            bucket_of[r] = 1 if res == "memoryx_out" else 0
    bucket = bucket_of[cols.resource]
    order = np.argsort(bucket, kind="stable")
    ends = np.cumsum(np.bincount(bucket[bucket >= 0], minlength=first_wafer + len(wafer_bucket)))
    skip = int((bucket < 0).sum())  # sorted first

    def lane(name, group, b):
        rows = order[skip + (ends[b - 1] if b else 0): skip + ends[b]]
        return _lane(name, group, cols.start_cycles[rows], cols.end_cycles[rows], cols.op[rows], cap)

    lanes = [lane("MemoryX", "memoryx", 0)]
    if ends[1] > ends[0]:
        lanes.append(lane("wafer -> MemoryX", "memoryx", 1))
    lanes += [lane(f"inter-wafer link {w}->{w + 1}", "interwafer", b) for w, b in sorted(wafer_bucket.items())]
    for n in range(n_tile_lanes):
        name = f"tile ({n // grid.tile_cols},{n % grid.tile_cols})" if per_tile else f"tile row {n}"
        lanes.append(lane(name, "tile", 2 + n))
    for n, link in enumerate(top_links):
        (i, j), (i2, j2) = link
        lanes.append(lane(f"link ({i},{j})->({i2},{j2}) {link_direction(link)}", "link", first_link + n))
    return {"lane_per": "tile" if per_tile else "tile row", "max_segments_per_lane": cap, "lanes": lanes}


__all__ = ["link_busy_fraction", "link_direction", "merge_segments", "timeline_summary", "union_cycles"]
