"""Chrome trace-event JSON (opens in Perfetto and chrome://tracing) from a recorded simulation.

One process per resource group (tiles, links, MemoryX, inter-wafer links), one thread per resource, one complete
("X") slice per busy interval. Timestamps are simulated microseconds (cycles / clock); each slice's args keep the
exact cycles.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from ..mapping import TileGrid
from ..sim import SimResult
from .timeline import link_direction

GROUPS = {"tile": (1, "tiles"), "link": (2, "links"), "memoryx": (3, "MemoryX"), "interwafer": (4, "inter-wafer links")}


def _thread_name(group: str, res) -> str:
    if group == "tile":
        return f"tile ({res[0]},{res[1]})"
    if group == "link":
        (i, j), (i2, j2) = res
        return f"({i},{j})->({i2},{j2}) {link_direction(res)}"
    if group == "interwafer":
        return f"wafer {res} -> {res + 1}"
    return "egress port" if res == "memoryx_out" else "ingress port"


def trace_events(result: SimResult, grid: TileGrid, clock_hz: float, limit: int | None = None):
    """(metadata events, iterator of slice events, stats); ``limit`` keeps the first N slices (by start) per
    resource. Slices are generated lazily, so a big run's trace is never all in memory."""
    if result.intervals is None:
        raise ValueError("the simulation was run without record=True: no intervals to trace")
    us_per_cycle = 1e6 / clock_hz
    names = [op.name for op in result.ops]
    by_res: dict = {}
    for iv in result.intervals:
        by_res.setdefault((iv[0], iv[1]), []).append(iv)
    links = sorted(res for group, res in by_res if group == "link")
    tid_of = {("link", res): n for n, res in enumerate(links)}
    tid_of.update({("tile", (i, j)): i * grid.tile_cols + j for i, j in grid.tiles()})
    tid_of[("memoryx", "memoryx")] = 0
    tid_of[("memoryx", "memoryx_out")] = 1  # the egress direction (gradient stream-outs)
    tid_of.update({key: key[1] for key in by_res if key[0] == "interwafer"})
    keys = sorted(by_res, key=lambda key: (GROUPS[key[0]][0], tid_of[key]))

    meta = []
    for pid, pname in GROUPS.values():
        meta.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": pname}})
        meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
    for key in keys:
        pid, tid = GROUPS[key[0]][0], tid_of[key]
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                     "args": {"name": _thread_name(*key)}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})

    kept = {key: len(by_res[key]) if limit is None else min(limit, len(by_res[key])) for key in keys}
    written = sum(kept.values())
    stats = {"events_total": len(result.intervals), "events_written": written,
             "events_dropped": len(result.intervals) - written,
             "resources_truncated": sum(kept[key] < len(by_res[key]) for key in keys),
             "trace_limit_per_resource": limit}

    def slices():
        for key in keys:
            group = key[0]
            pid, tid = GROUPS[group][0], tid_of[key]
            for _, _, start, end, k, label, nbytes, macs in sorted(by_res[key], key=lambda iv: iv[2])[:kept[key]]:
                yield {"name": names[k], "cat": group, "ph": "X", "pid": pid, "tid": tid,
                       "ts": start * us_per_cycle, "dur": (end - start) * us_per_cycle,
                       "args": {"task": label, "start_cycles": start, "cycles": end - start, "bytes": nbytes,
                                "flops": 2 * macs}}

    return meta, slices(), stats


def write_trace(path: str | Path, result: SimResult, grid: TileGrid, clock_hz: float, limit: int | None = None,
                info: dict | None = None) -> dict:
    """Write the trace to ``path`` (one event per line); returns the stats also stored under ``otherData``."""
    meta, slices, stats = trace_events(result, grid, clock_hz, limit)
    other = {**(info or {}), "clock_hz": clock_hz, "total_cycles": result.total_cycles,
             "time_unit": "simulated microseconds (cycles / clock_hz); args.cycles is exact",
             "flops": "2 x MACs of a compute slice (elementwise work is not counted)",
             "bytes": "bytes the slice's task moves (a transfer's payload x destinations; on each link it holds)",
             **stats}
    if limit is not None:
        other["note"] = (f"truncated: at most the first {limit} slices per resource are kept; "
                         f"{stats['events_dropped']} slices on {stats['resources_truncated']} resources dropped")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dump = json.JSONEncoder(separators=(",", ":")).encode
    with path.open("w") as f:
        f.write('{"displayTimeUnit":"ns","otherData":' + dump(other) + ',"traceEvents":[\n')
        for n, ev in enumerate(itertools.chain(meta, slices)):
            f.write((",\n" if n else "") + dump(ev))
        f.write("\n]}\n")
    return stats


__all__ = ["trace_events", "write_trace"]
