"""One task-cost function prices every task kind for both the engine and the auto-mapper's analytical bound."""

import pytest
from wse_sim.workloads import OpKind, OpSpec

from wse_sim.arch import get_wafer
from wse_sim.arch.costs import TaskCost, task_cost
from wse_sim.mapping import ModelPlan, OpPlan, Task, TaskKind, TileGrid, estimate
from wse_sim.sim import Engine, engine

WAFER = get_wafer("tiny")
GRID = TileGrid.make(8, 8, 2, 2)
OP = OpSpec(name="op", kind=OpKind.MATMUL, block="b", layer=0, groups=1, m=1, k=1, n=1, flops=0, weight_bytes=0,
            act_in_bytes=0, act_out_bytes=0)
ONE_OF_EACH = {
    TaskKind.COMPUTE: Task(TaskKind.COMPUTE, tile=(0, 1), macs_per_pe=300, elem_ops_per_pe=77),
    TaskKind.TRANSFER: Task(TaskKind.TRANSFER, links=(((0, 0), (0, 1)), ((0, 1), (1, 1))), bytes_per_lane=1000,
                            hops=7, stages=2, turns=1, phases=3),
    TaskKind.STREAM: Task(TaskKind.STREAM, nbytes=123_456),
    TaskKind.INTERWAFER: Task(TaskKind.INTERWAFER, nbytes=50_000, hops=40, wafer_link=0),
    TaskKind.BARRIER: Task(TaskKind.BARRIER),
}


def op_plan(tasks) -> OpPlan:
    return OpPlan(OP, "test", (*tasks, Task(TaskKind.BARRIER, deps=tuple(range(len(tasks))))), 0)


def simulated(tasks, precision="fp16") -> int:
    return Engine(WAFER, ModelPlan("test", GRID, precision, (op_plan(tasks),))).run().total_cycles


def test_engine_and_bound_call_the_one_task_cost():
    assert engine.task_cost is task_cost and estimate.task_cost is task_cost


@pytest.mark.parametrize("kind", list(TaskKind))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_one_task_of_each_kind_costs_the_same_in_engine_and_bound(kind, precision):
    t = ONE_OF_EACH[kind]
    cost = task_cost(WAFER, precision, t)
    assert isinstance(cost, TaskCost)
    assert (cost.cycles > 0) == (kind != TaskKind.BARRIER)
    assert simulated([t], precision) == cost.cycles
    assert estimate.bound_cycles(WAFER, precision, op_plan([t])) == cost.cycles


def test_interwafer_tasks_on_one_link_load_the_bound_like_the_engine():
    """Two transfers to the next wafer share its link: each holds it for its bytes, the latency overlaps."""
    t = ONE_OF_EACH[TaskKind.INTERWAFER]
    cost = task_cost(WAFER, "fp16", t)
    assert cost.latency_cycles > 0 and cost.hold_cycles > 0
    both = [t, t]
    assert simulated(both) == 2 * cost.hold_cycles + cost.latency_cycles
    assert estimate.bound_cycles(WAFER, "fp16", op_plan(both)) == max(cost.cycles, 2 * cost.hold_cycles)
