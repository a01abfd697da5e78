"""A fast analytical lower bound on an op plan's cycles, used by the auto-mapper to prune before simulating.

Two classic bounds, both from the same cost formulas the engine uses (:mod:`wse_sim.arch.costs`):

- the critical path: the longest dependency chain, every task taking its uncontended time;
- the resource load: the busiest tile, link or the MemoryX port, whose work cannot overlap with itself.

The engine can only add waiting to either, so ``max(path, load)`` never exceeds the simulated cycles of the op
run on its own; a candidate whose bound is above the best simulated time so far cannot win.
"""

from __future__ import annotations

from ..arch import WaferSpec
from ..arch.costs import compute_cycles, stream_cycles, transfer_cycles
from .plan import OpPlan, TaskKind


def bound_cycles(wafer: WaferSpec, precision: str, plan: OpPlan) -> int:
    finish: list[int] = []
    load: dict = {}
    transfers: dict[tuple, tuple[int, int]] = {}  # (serialization, latency) by size and route: most repeat
    for t in plan.tasks:  # tasks only depend on earlier tasks of the op
        kind = t.kind
        if kind == TaskKind.COMPUTE:
            dur = compute_cycles(wafer, precision, t.macs_per_pe, t.elem_ops_per_pe)
            load[t.tile] = load.get(t.tile, 0) + dur
        elif kind == TaskKind.TRANSFER:
            key = (t.bytes_per_lane, t.hops, t.stages, t.turns, t.phases)
            cost = transfers.get(key)
            if cost is None:
                cost = transfers[key] = transfer_cycles(wafer, *key)
            ser, lat = cost
            dur = ser + lat
            for link in set(t.links):
                load[link] = load.get(link, 0) + ser
        elif kind == TaskKind.STREAM:
            dur = stream_cycles(wafer, t.nbytes)
            load["memoryx"] = load.get("memoryx", 0) + dur
        else:
            dur = 0
        deps = t.deps
        finish.append((max(map(finish.__getitem__, deps)) if deps else 0) + dur)
    return max(max(finish, default=0), max(load.values(), default=0))
