"""One task-cost function prices every task kind for both the engine and the auto-mapper's analytical bound."""

from dataclasses import replace

import pytest
from wse_sim.workloads import OpKind, OpSpec

from wse_sim.arch import get_wafer
from wse_sim.arch.costs import PricedTask, TaskCost, TaskCosts, priced_key, task_cost
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
    TaskKind.STREAM_OUT: Task(TaskKind.STREAM_OUT, nbytes=65_432),
    TaskKind.INTERWAFER: Task(TaskKind.INTERWAFER, nbytes=50_000, hops=40, wafer_link=0),
    TaskKind.BARRIER: Task(TaskKind.BARRIER),
}


def op_plan(tasks) -> OpPlan:
    return OpPlan(OP, "test", (*tasks, Task(TaskKind.BARRIER, deps=tuple(range(len(tasks))))), 0)


def simulated(tasks, precision="fp16") -> int:
    return Engine(WAFER, ModelPlan("test", GRID, precision, (op_plan(tasks),))).run().total_cycles


def test_engine_and_bound_call_the_one_task_cost():
    assert engine.TaskCosts is TaskCosts and estimate.TaskCosts is TaskCosts  # both price through TaskCosts
    for precision in ("fp32", "fp16"):
        costs = TaskCosts(WAFER, precision)
        for t in ONE_OF_EACH.values():
            assert costs(t) == task_cost(WAFER, precision, t) == costs(t)


@pytest.mark.parametrize("kind", list(TaskKind))
@pytest.mark.parametrize("field", list(PricedTask.__annotations__))
def test_the_memo_key_holds_every_field_the_cost_reads(kind, field):
    """Changing any priced field of a task either leaves its cost alone or changes its memo key."""
    t = ONE_OF_EACH[kind]
    if field == "kind":
        return
    other = replace(t, **{field: getattr(t, field) * 2 + 1})
    if task_cost(WAFER, "fp16", other) != task_cost(WAFER, "fp16", t):
        assert priced_key(other) != priced_key(t)


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


# ---- the PE's instruction costs (issue 16): DSD issue overhead and per-step GEMM software ----------------------

def test_dsd_ops_cost_their_issue_overhead_plus_simd_work_per_instruction():
    """A GEMM block of Mt x Kt x Nt on a PE is Kt*Nt instructions of Mt elements: each costs c0 + ceil(Mt / 4),
    and each of the task's PE-level steps adds the step software, as closed forms on hand-built tasks."""
    from dataclasses import replace

    w = replace(WAFER, dsd_op_overhead_cycles=6.5, gemm_step_sw_cycles=100.0)
    mt, kt, nt, steps = 6, 6, 20, 3
    t = Task(TaskKind.COMPUTE, tile=(0, 0), macs_per_pe=steps * mt * kt * nt, dsd_ops_per_pe=steps * kt * nt,
             dsd_len=mt, sw_steps=steps)
    expect = steps * (kt * nt * (6.5 + 2) + 100)  # ceil(6 / 4) = 2 cycles of SIMD work per instruction
    assert task_cost(w, "fp16", t).cycles == expect
    # fp32 runs one lane: 6 cycles per instruction of 6 elements
    assert task_cost(w, "fp32", t).cycles == steps * (kt * nt * (6.5 + 6) + 100)
    # elementwise ops on the same task still run at the lane rate
    t2 = replace(t, elem_ops_per_pe=40)
    assert task_cost(w, "fp16", t2).cycles == expect + 10
    # the engine and the bound charge the same
    engine_wafer = Engine(w, ModelPlan("test", GRID, "fp16", (op_plan([t]),))).run().total_cycles
    assert engine_wafer == expect == estimate.bound_cycles(w, "fp16", op_plan([t]))


def test_without_the_new_costs_a_gemm_block_runs_at_the_lane_rate():
    """Zero overheads give the plain lane-rate formula when the instruction length fills whole SIMD chunks, and
    a compute task that carries no DSD ops is priced as before whatever the overheads."""
    from dataclasses import replace

    w0 = replace(WAFER, dsd_op_overhead_cycles=0.0, gemm_step_sw_cycles=0.0)
    t = Task(TaskKind.COMPUTE, tile=(0, 0), macs_per_pe=8 * 50, dsd_ops_per_pe=50, dsd_len=8, sw_steps=5)
    assert task_cost(w0, "fp16", t).cycles == 8 * 50 // 4
    plain = Task(TaskKind.COMPUTE, tile=(0, 0), macs_per_pe=300, elem_ops_per_pe=77)
    w = replace(WAFER, dsd_op_overhead_cycles=9.0, gemm_step_sw_cycles=300.0)
    assert task_cost(w, "fp16", plain).cycles == task_cost(w0, "fp16", plain).cycles == -(-(300 + 77) // 4)


def test_meshgemm_step_prices_one_instruction_per_k_and_n():
    """A MeshGEMM plan's PE-level step on a PE holding Mt x Kt x Nt blocks: max(multiply, shift) with the multiply
    Kt*Nt*(c0 + ceil(Mt/4)) plus the step software."""
    from wse_sim.app.gemm import GemmSpec, plan_gemm

    w = get_wafer("wse2")
    spec = GemmSpec(m=960, k=960, n=960, wafer="wse2", grid="160x160", tiles="8x8", mapping="meshgemm")
    _, _, plan = plan_gemm(spec, w)
    steps = [t for t in plan.ops[0].tasks if t.kind == TaskKind.COMPUTE]
    t = steps[0]
    assert (t.dsd_len, t.dsd_ops_per_pe, t.sw_steps) == (6, 120 * 6, 20)  # Mt = 960/160, Kt*Nt per PE x 20 steps
    per_step = 6 * 6 * (w.dsd_op_overhead_cycles + 2) + w.gemm_step_sw_cycles
    assert task_cost(w, "fp16", t).cycles == pytest.approx(20 * per_step, abs=1)
