"""Sets of point-to-point messages on the tile grid, turned into one transfer task's links, load and latency.

A collective step (a Cannon shift, a skew, a relayout) is many messages sent at once. Each message follows
dimension-order (XY) routing: along its tile row first, then along the destination column. A link shared by
several messages carries all of them, so the step holds its links for the busiest link's load; the latency is
that of the longest route. One transfer task per step keeps the event count small while contention inside the
step is still counted exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .plan import Link, Tile, TileGrid


@dataclass(frozen=True)
class Message:
    """A tile-to-tile message. A block moving along a row crosses each link on the tile's PE-row lanes, so
    ``row_lane_bytes`` is what one PE row carries; ``col_lane_bytes`` likewise for vertical moves."""

    src: Tile
    dst: Tile
    row_lane_bytes: float
    col_lane_bytes: float
    nbytes: int


@dataclass(frozen=True)
class Routed:
    links: tuple[Link, ...]
    bytes_per_lane: float  # load on the busiest link
    hops: int  # PE hops of the longest route
    nbytes: int  # payload bytes delivered
    turns: int = 0  # 1 when some message turns from its row into a column (XY routing turns at most once)

    @property
    def empty(self) -> bool:
        return not self.links and self.nbytes == 0


def pe_hops(grid: TileGrid, src: Tile, dst: Tile) -> int:
    """PE hops between the same PE position of two tiles (a whole block moving by whole tiles)."""
    return abs(grid.row_edges[dst[0]] - grid.row_edges[src[0]]) + abs(grid.col_edges[dst[1]] - grid.col_edges[src[1]])


@lru_cache(maxsize=65536)
def xy_route(grid: TileGrid, src: Tile, dst: Tile) -> tuple[tuple[Link, ...], tuple[Link, ...], int, int]:
    """A message's dimension-order route: (links along the source row, links down the destination column, PE hops,
    1 if it turns from the row into the column else 0). Cached: collective steps send between the same tiles over
    and over (every step of a Cannon ring, every layer of a model)."""
    (i0, j0), (i1, j1) = src, dst
    return grid.row_path(i0, j0, j1), grid.col_path(j1, i0, i1), pe_hops(grid, src, dst), int(i0 != i1 and j0 != j1)


def route(grid: TileGrid, messages: list[Message]) -> Routed:
    load: dict[Link, float] = {}
    hops = 0
    nbytes = 0
    turns = 0
    for m in messages:
        if m.src == m.dst:
            continue
        row_links, col_links, m_hops, m_turns = xy_route(grid, m.src, m.dst)
        turns = max(turns, m_turns)
        for link in row_links:
            load[link] = load.get(link, 0.0) + m.row_lane_bytes
        for link in col_links:
            load[link] = load.get(link, 0.0) + m.col_lane_bytes
        hops = max(hops, m_hops)
        nbytes += m.nbytes
    return Routed(tuple(sorted(load)), max(load.values(), default=0.0), hops, nbytes, turns)
