"""A fast analytical lower bound on an op plan's cycles, used by the auto-mapper to prune before simulating.

Two classic bounds, both from the task costs the engine uses (:func:`wse_sim.arch.costs.task_cost`):

- the critical path: the longest dependency chain, every task taking its uncontended time;
- the resource load: the busiest tile, link, the MemoryX port or an inter-wafer link, whose work cannot overlap
  with itself.

The engine can only add waiting to either, so ``max(path, load)`` never exceeds the simulated cycles of the op
run on its own; a candidate whose bound is above the best simulated time so far cannot win.
"""

from __future__ import annotations

from ..arch import WaferSpec
from ..arch.costs import TaskCosts
from .plan import OpPlan


def bound_cycles(wafer: WaferSpec, precision: str, plan: OpPlan, costs: TaskCosts | None = None) -> int:
    """``max(critical path, busiest resource)`` of ``plan``'s tasks at their uncontended costs. ``costs``: the
    task prices on ``wafer`` at ``precision`` known so far (a search pricing many plans passes one along)."""
    costs = TaskCosts(wafer, precision) if costs is None else costs
    finish: list[int] = []
    load: dict = {}
    for t, (hold, latency) in zip(plan.tasks, costs.of_all(plan.tasks), strict=True):
        for key in t.resources():  # tasks only depend on earlier tasks of the op
            load[key] = load.get(key, 0) + hold
        deps = t.deps
        finish.append((max(map(finish.__getitem__, deps)) if deps else 0) + hold + latency)
    return max(max(finish, default=0), max(load.values(), default=0))
