"""The compiled event loop (``Engine(compiled=True)``, wse_sim/sim/loop.py) against the Python one on the plans
the SimPy reference of ``test_engine_simpy.py`` does not cover: training steps with gradient stream-outs, weight
streaming through a single buffer, runs stopped at every block's end for the progress bar, and the Python loop
the engine falls back on. The whole SimResult must be the same: times, critical-path splits, float tallies
bit for bit, dict orders, recorded intervals."""

from __future__ import annotations

import json

import pytest
from test_engine_simpy import GPT, SMALL, TINY, assert_same, plans_of, random_plan, simulate
from wse_sim.workloads import lower_model

from wse_sim.app import RunSpec
from wse_sim.mapping import TaskKind, TileGrid, get_mapping
from wse_sim.mapping.weight_streaming import WeightStreaming
from wse_sim.sim import Engine, loop
from wse_sim.sim import engine as engine_mod


def both(wafer, plan, record=True):
    compiled = simulate(wafer, plan, record, True)
    assert_same(compiled, simulate(wafer, plan, record, False))
    return compiled


def test_training_plans_with_stream_outs(tmp_path, monkeypatch):
    """Every plan of a timing-only training run (forward, backward with wgrad stream-outs, optimizer)."""
    from wse_sim.app.train import TrainSpec, run_train

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(SMALL))
    seen, real = [], Engine.run

    def spy(self):
        seen.append((self.wafer, self.plan))
        return real(self)

    monkeypatch.setattr(Engine, "run", spy)
    run_train(TrainSpec(model=str(cfg), wafer="wse2", grid="48x48", tiles="4x4", systems=(1,), batch=4,
                        micro_batch=2, seq=12, precision="bf16", numerics=False, train_tokens=1e5))
    monkeypatch.setattr(Engine, "run", real)
    kinds = {t.kind for _, plan in seen for op in plan.ops for t in op.tasks}
    assert TaskKind.STREAM_OUT in kinds and TaskKind.STREAM in kinds
    for wafer, plan in seen:
        r = both(wafer, plan)
        assert r.memoryx_out_busy_cycles > 0 or not any(t.kind == TaskKind.STREAM_OUT for op in plan.ops
                                                         for t in op.tasks)


@pytest.mark.parametrize("buffers", [1, 2])
def test_weight_streaming_with_few_buffers(buffers):
    graph = lower_model(GPT, 2, 11, "fp16")
    plan = WeightStreaming(buffers).plan(graph, TINY, TileGrid.make(TINY.mesh_rows, TINY.mesh_cols, 3, 3))
    assert plan.stream_buffers == buffers
    both(TINY, plan)
    both(TINY, plan, record=False)


def test_two_wafer_and_pipelined_runs(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(SMALL))
    for spec in (RunSpec(model=str(cfg), wafer="wse2", grid="100x100", precision="fp16", phase="decode",
                         context=20, numerics=False, wafers=2),
                 RunSpec(model=str(cfg), mapping="pipelined", wafer="wse2", grid="40x48", tiles="1x4", batch=2,
                         seq=12, precision="fp16", numerics=False)):
        for wafer, plan, record in plans_of(spec):
            both(wafer, plan, record)


class Ticks:
    """A progress bar that counts its ticks."""

    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k

    def close(self):
        pass


@pytest.mark.parametrize("seed", range(0, 60, 7))
def test_chunked_runs_tick_every_block_and_change_nothing(seed, monkeypatch):
    """With a progress bar the compiled loop stops after each block's last task and resumes: one tick per
    block, and the result of an uninterrupted run."""
    plan = random_plan(seed)
    bars = []
    real = engine_mod._Run.__init__

    def with_bar(self, *args):
        real(self, *args)
        self.bar = Ticks()
        bars.append(self.bar)

    monkeypatch.setattr(engine_mod._Run, "__init__", with_bar)
    chunked = Engine(TINY, plan, record=True, compiled=True).run()
    monkeypatch.undo()
    assert bars[0].n == len({k for k, op in enumerate(plan.ops)
                             if k + 1 == len(plan.ops) or plan.ops[k + 1].op.block != op.op.block})
    assert_same(chunked, Engine(TINY, plan, record=True, compiled=False).run())


def test_a_plan_too_large_for_the_event_keys_runs_in_python(monkeypatch):
    graph = lower_model(GPT, 2, 11, "fp16")
    plan = get_mapping("weight-streaming").plan(graph, TINY, TileGrid.make(TINY.mesh_rows, TINY.mesh_cols, 3, 3))
    ran = []
    real = loop.run_loop

    monkeypatch.setattr(loop, "fits", lambda n, nres: (False, 0))
    monkeypatch.setattr(loop, "run_loop", lambda *a: ran.append(1) or real(*a))
    assert_same(Engine(TINY, plan, record=True, compiled=True).run(), Engine(TINY, plan, record=True,
                                                                             compiled=False).run())
    assert not ran


def test_numerics_need_the_python_loop():
    graph = lower_model(GPT, 2, 11, "fp16")
    plan = get_mapping("weight-streaming").plan(graph, TINY, TileGrid.make(TINY.mesh_rows, TINY.mesh_cols, 3, 3))
    with pytest.raises(ValueError, match="numerics"):
        Engine(TINY, plan, numerics=object(), compiled=True)
    assert not Engine(TINY, plan, numerics=object()).compiled and Engine(TINY, plan).compiled


def test_recorded_intervals_behave_as_the_list():
    """The compiled run's intervals read, index, compare and pickle as the Python loop's list of tuples."""
    import pickle

    graph = lower_model(GPT, 2, 11, "fp16")
    plan = get_mapping("weight-streaming").plan(graph, TINY, TileGrid.make(TINY.mesh_rows, TINY.mesh_cols, 3, 3))
    compiled = simulate(TINY, plan, True, True).intervals
    listed = simulate(TINY, plan, True, False).intervals
    assert isinstance(listed, list) and not isinstance(compiled, list)
    assert compiled == listed and listed == compiled and bool(compiled)
    assert [compiled[k] for k in range(len(compiled))] == listed and compiled[-3:] == listed[-3:]
    assert pickle.loads(pickle.dumps(compiled)) == listed
    assert compiled != listed[:-1] and compiled != [*listed[:-1], ("tile", (0, 0), 0, 0, 0, "", 0, 0)]
