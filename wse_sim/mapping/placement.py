"""Layer placement shared by pipelined execution and serving: which stage an op belongs to, and moving an op
planned on a small grid (a band, a region) to its place on the whole grid."""

from __future__ import annotations

from dataclasses import replace

from ..workloads import OpSpec, WorkloadGraph
from .plan import OpPlan, Task, TaskKind


def stage_of(op: OpSpec) -> int:
    """Stage index: the embedding rides with layer 0, the head (final norm, LM head) is the last stage."""
    return max(op.layer, 0)


def stage_count(graph: WorkloadGraph) -> int:
    """Stages of a whole model: one per layer, plus the head."""
    return graph.config.n_layer + 1


def shift(op_plan: OpPlan, dr: int, dc: int, inbound: list[Task]) -> OpPlan:
    """The op's tasks moved by (dr, dc) tiles, after ``inbound`` transfers (already in global coordinates) that
    bring its input: tasks that waited on nothing now wait for them (streams excepted)."""
    n = len(inbound)

    def tile(t):
        return (t[0] + dr, t[1] + dc)

    tasks = list(inbound)
    first = tuple(range(n))
    for task in op_plan.tasks:
        moved = replace(task, deps=tuple(x + n for x in task.deps) or (first if task.kind != TaskKind.STREAM else ()),
                        tile=tile(task.tile) if task.tile is not None else None,
                        links=tuple((tile(a), tile(z)) for a, z in task.links),
                        frees_buffer_of=task.frees_buffer_of + n if task.frees_buffer_of is not None else None)
        tasks.append(moved)
    return replace(op_plan, tasks=tuple(tasks))
