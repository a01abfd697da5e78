"""The engine's own event queue against SimPy itself: every plan simulated with one SimPy process per task, each
holding ``simpy.Resource`` s (the engine's first form, the order its docstring promises), gives the same
SimResult: times, critical-path splits, busy tallies (and their order), bytes and recorded intervals.

Plans: random small DAGs with every task kind, shared links and tiles and equal costs (ties at every step), one
or two weight buffers; every registered mapping on a tiny model; and the plans real runs simulate (serving decode
with resident and streamed weights, layer pipelining, two wafers). Each plan runs both event loops,
``Engine(compiled=True)`` (numba) and ``compiled=False`` (Python); ``tests/test_engine_loops.py`` holds them to
each other on plans the SimPy reference does not model (gradient stream-outs), and on chunked runs."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import simpy
from wse_sim.workloads import ModelConfig, OpKind, OpSpec, lower_model

from wse_sim.app import RunSpec, run
from wse_sim.arch import get_wafer
from wse_sim.arch.costs import task_cost
from wse_sim.mapping import ModelPlan, OpPlan, Task, TaskKind, TileGrid, get_mapping
from wse_sim.mapping.registry import mapping_names
from wse_sim.sim import Engine, loop
from wse_sim.sim.engine import OpTiming, SimResult, _critical_split

TINY = get_wafer("tiny")  # 8 x 8 PEs
GRID = TileGrid.make(8, 8, 2, 2)


class SimPyRun:
    """The reference: SimPy processes, one per task, holding ``simpy.Resource(capacity=1)`` s (see the engine's
    module docstring for the dependencies, weight buffers and critical path it must reproduce)."""

    def __init__(self, wafer, plan: ModelPlan, record: bool):
        self.wafer, self.plan, self.env = wafer, plan, simpy.Environment()
        self.tasks, self.op_of, self.deps, self.op_end, op_base, last_stream = [], [], [], [], [], -1
        for k, op_plan in enumerate(plan.ops):
            base = len(self.tasks)
            op_base.append(base)
            prev = ([self.op_end[-1]] if self.op_end else []) if op_plan.after is None else [
                self.op_end[a] for a in op_plan.after]
            for t in op_plan.tasks:
                d = [base + x for x in t.deps] + [op_base[a] + x for a, x in t.ext_deps]
                if t.kind == TaskKind.STREAM:
                    d += [last_stream] if last_stream >= 0 else []
                    last_stream = len(self.tasks)
                elif prev and (not t.deps or t.kind == TaskKind.COMPUTE):
                    d += prev
                self.tasks.append(t)
                self.op_of.append(k)
                self.deps.append(d)
            self.op_end.append(len(self.tasks) - 1)
        n = len(self.tasks)
        self.succ = [[] for _ in range(n)]
        for i, d in enumerate(self.deps):
            for p in d:
                self.succ[p].append(i)
        self.remaining = [len(d) for d in self.deps]
        self.ready_t, self.end_t, self.crit, self.latency = [0] * n, [0] * n, [-1] * n, [0] * n
        self.resources, self.last_holder = {}, {}
        self.free_slots, self.slot_waiters = plan.stream_buffers, deque()
        self.tile_busy, self.tile_macs, self.link_busy, self.wafer_link_busy = {}, {}, {}, {}
        self.memoryx_busy, self.bytes = 0, {}
        self.intervals = [] if record else None

    def simulate(self) -> SimResult:
        for i in [i for i, left in enumerate(self.remaining) if left == 0]:
            self.launch(i)
        self.env.run()
        assert not any(self.remaining)
        grid, now = self.plan.grid, int(self.env.now)
        busy, macs = np.zeros(grid.shape), np.zeros(grid.shape)
        for tile, cyc in self.tile_busy.items():
            busy[tile] = cyc
        for tile, m in self.tile_macs.items():
            macs[tile] = m
        ops, prev = [], 0
        for k, op_plan in enumerate(self.plan.ops):
            if op_plan.after is not None:
                prev = max((self.end_t[self.op_end[a]] for a in op_plan.after), default=0)
            end = self.end_t[self.op_end[k]]
            s = _critical_split(self.tasks, self.op_end[k], prev, self.ready_t, self.end_t, self.crit.__getitem__,
                                self.latency)
            op, b = op_plan.op, self.bytes.get
            ops.append(OpTiming(op.name, str(op.kind), op.layer, op.block, prev, end, s["compute"], s["fabric"],
                                s["stream"], s["fabric_latency"], op.flops, b((TaskKind.STREAM, k), 0),
                                b((TaskKind.TRANSFER, k), 0), op_plan.sram_bytes_per_pe, op_plan.notes,
                                s["interwafer"], b((TaskKind.INTERWAFER, k), 0)))
            prev = end
        total = lambda kind: sum(v for (kd, _), v in self.bytes.items() if kd == kind)  # noqa: E731
        return SimResult(now if self.tasks else 0, ops, busy, macs, self.link_busy, self.memoryx_busy,
                         total(TaskKind.STREAM), total(TaskKind.TRANSFER), len(self.tasks), self.intervals,
                         dict(sorted(self.wafer_link_busy.items())), total(TaskKind.INTERWAFER))

    def launch(self, i):
        self.ready_t[i] = self.env.now
        best, best_end = -1, -1
        for p in self.deps[i]:
            if self.end_t[p] >= best_end:
                best, best_end = p, self.end_t[p]
        self.crit[i] = best
        t = self.tasks[i]
        if t.kind == TaskKind.BARRIER:
            self.finish(i)
        else:
            self.env.process(self.task(i, t, task_cost(self.wafer, self.plan.precision, t)))

    def finish(self, i):
        self.end_t[i] = self.env.now
        t = self.tasks[i]
        if t.kind == TaskKind.BARRIER and t.frees_buffer_of is not None:
            if self.slot_waiters:
                ev, waiter = self.slot_waiters.popleft()
                self.crit[waiter], self.ready_t[waiter] = i, self.env.now
                ev.succeed()
            else:
                self.free_slots += 1
        for s in self.succ[i]:
            self.remaining[s] -= 1
            if self.remaining[s] == 0:
                self.launch(s)

    def record(self, group, resource, i, cycles, nbytes, macs):
        if self.intervals is not None and cycles:
            now = int(self.env.now)
            self.intervals.append((group, resource, now - cycles, now, self.op_of[i], self.tasks[i].label, nbytes,
                                   macs))

    def task(self, i, t, cost):
        env, hold = self.env, cost.hold_cycles
        self.latency[i] = cost.latency_cycles
        if t.kind == TaskKind.STREAM:
            if self.free_slots > 0:
                self.free_slots -= 1
            else:
                ev = env.event()
                self.slot_waiters.append((ev, i))
                yield ev
        keys = t.resources()
        held = [self.resources.setdefault(key, simpy.Resource(env, capacity=1)) for key in keys]
        requests = [r.request() for r in held]
        for req in requests:
            yield req
        if env.now > self.ready_t[i]:
            last = [self.last_holder[key] for key in keys if key in self.last_holder]
            if last:
                self.crit[i], self.ready_t[i] = max(last)[1], env.now
        yield env.timeout(hold)
        for key in keys:
            self.last_holder[key] = (env.now, i)
        for r, req in zip(held, requests, strict=True):
            r.release(req)
        if t.kind == TaskKind.COMPUTE:
            m = t.macs_per_pe * self.plan.grid.pes(t.tile)
            self.tile_busy[t.tile] = self.tile_busy.get(t.tile, 0.0) + hold
            self.tile_macs[t.tile] = self.tile_macs.get(t.tile, 0.0) + m
            self.record("tile", t.tile, i, hold, 0, m)
        elif t.kind == TaskKind.TRANSFER:
            for key in keys:
                self.link_busy[key] = self.link_busy.get(key, 0) + hold
                self.record("link", key, i, hold, t.nbytes, 0)
        elif t.kind == TaskKind.STREAM:
            self.memoryx_busy += hold
            self.record("memoryx", "memoryx", i, hold, t.nbytes, 0)
        else:
            self.wafer_link_busy[t.wafer_link] = self.wafer_link_busy.get(t.wafer_link, 0) + hold
            self.record("interwafer", t.wafer_link, i, hold, t.nbytes, 0)
        if t.kind in (TaskKind.TRANSFER, TaskKind.INTERWAFER):
            yield env.timeout(cost.latency_cycles)
        if t.kind != TaskKind.COMPUTE:
            key = (t.kind, self.op_of[i])
            self.bytes[key] = self.bytes.get(key, 0) + t.nbytes
        self.finish(i)


def assert_same(a: SimResult, b: SimResult) -> None:
    assert a.total_cycles == b.total_cycles
    assert a.ops == b.ops
    assert a.tile_busy_cycles.tobytes() == b.tile_busy_cycles.tobytes()
    assert a.tile_macs.tobytes() == b.tile_macs.tobytes()
    assert list(a.link_busy_cycles.items()) == list(b.link_busy_cycles.items())  # the same order too
    assert (a.memoryx_busy_cycles, a.stream_bytes, a.fabric_bytes, a.tasks, a.interwafer_bytes) == (
        b.memoryx_busy_cycles, b.stream_bytes, b.fabric_bytes, b.tasks, b.interwafer_bytes)
    assert (a.memoryx_out_busy_cycles, a.stream_out_bytes) == (b.memoryx_out_busy_cycles, b.stream_out_bytes)
    assert (a.intervals is None) == (b.intervals is None)
    if a.intervals is not None:
        assert len(a.intervals) == len(b.intervals)
        assert list(a.intervals) == list(b.intervals)
    assert list(a.interwafer_busy_cycles.items()) == list(b.interwafer_busy_cycles.items())


def simulate(wafer, plan, record: bool, compiled: bool) -> SimResult:
    """``Engine.run`` with the compiled event loop or the Python one, checking which one ran."""
    calls, real = [], loop.run_loop
    loop.run_loop = lambda *args: calls.append(1) or real(*args)
    try:
        result = Engine(wafer, plan, record=record, compiled=compiled).run()
    finally:
        loop.run_loop = real
    assert bool(calls) == compiled
    return result


def check(wafer, plan, record=True):
    """Both event loops, the compiled one and Python's, against SimPy."""
    ref = SimPyRun(wafer, plan, record).simulate()
    for compiled in (True, False):
        assert_same(simulate(wafer, plan, record, compiled), ref)


# ---- random plans: every kind, shared resources, equal costs -----------------------------------------------------
LINKS = [((0, 0), (0, 1)), ((0, 1), (0, 0)), ((0, 0), (1, 0)), ((1, 0), (1, 1)), ((0, 1), (1, 1))]
TILES = [(0, 0), (0, 1), (1, 0), (1, 1)]


def random_op(rng, k: int, n_ops_before: int, sizes: list[int], after: bool) -> OpPlan:
    tasks = []
    for j in range(int(rng.integers(1, 25))):
        near = rng.integers(max(0, j - 4), j, size=int(rng.integers(0, 3))) if j else ()  # recent tasks: contention
        deps = tuple(sorted({int(x) for x in near}))
        ext = ()
        if after and n_ops_before and rng.random() < 0.3:
            a = int(rng.integers(0, n_ops_before))
            ext = ((a, int(rng.integers(0, sizes[a]))),)
        kind = rng.choice(["compute", "compute", "transfer", "transfer", "stream", "interwafer", "barrier"])
        if kind == "compute":
            t = Task(TaskKind.COMPUTE, deps, tile=TILES[rng.integers(0, 4)], macs_per_pe=int(rng.choice([8, 16, 0])),
                     ext_deps=ext)
        elif kind == "transfer":
            links = tuple(LINKS[x] for x in rng.choice(5, size=int(rng.integers(0, 3)), replace=False))
            t = Task(TaskKind.TRANSFER, deps, links=links, bytes_per_lane=float(rng.choice([4, 8])),
                     hops=int(rng.integers(0, 2)), phases=int(rng.integers(0, 2)), nbytes=int(rng.integers(1, 99)),
                     ext_deps=ext)
        elif kind == "stream":
            t = Task(TaskKind.STREAM, deps, nbytes=int(rng.choice([0, 64, 128])), ext_deps=ext)
        elif kind == "interwafer":
            t = Task(TaskKind.INTERWAFER, deps, nbytes=int(rng.choice([64, 128])), wafer_link=int(rng.integers(0, 2)),
                     ext_deps=ext)
        else:
            streams = [x for x, s in enumerate(tasks) if s.kind == TaskKind.STREAM]
            frees = streams[-1] if streams and rng.random() < 0.7 else None
            t = Task(TaskKind.BARRIER, deps + ((frees,) if frees is not None and frees not in deps else ()),
                     frees_buffer_of=frees, ext_deps=ext)
        tasks.append(Task(**{**t.__dict__, "label": f"t{k}.{j}"}))
    # Every stream's buffer is freed by a barrier after it (as the mappings do), and the op ends in a barrier.
    tail = [Task(TaskKind.BARRIER, (x,), frees_buffer_of=x) for x, s in enumerate(tasks) if s.kind == TaskKind.STREAM
            and not any(b.frees_buffer_of == x for b in tasks)]
    tasks += tail
    tasks.append(Task(TaskKind.BARRIER, tuple(range(len(tasks)))))
    op = OpSpec(name=f"op{k}", kind=OpKind.MATMUL, block=f"b{k // 2}", layer=k, groups=1, m=1, k=1, n=1, flops=k,
                weight_bytes=0, act_in_bytes=0, act_out_bytes=0)
    deps_on = tuple(sorted({int(x) for x in rng.integers(0, n_ops_before, size=2)})) if after and n_ops_before else ()
    return OpPlan(op, "test", tuple(tasks), 0, after=deps_on if after else None)


def random_plan(seed: int) -> ModelPlan:
    rng = np.random.default_rng(seed)
    after = seed % 3 == 0  # explicit op ordering (layer-pipelined plans) on a third of them
    ops, sizes = [], []
    for k in range(int(rng.integers(1, 8))):
        ops.append(random_op(rng, k, k, sizes, after))
        sizes.append(len(ops[-1].tasks))
    return ModelPlan("test", GRID, "fp16", tuple(ops), stream_buffers=int(rng.integers(1, 3)))


@pytest.mark.parametrize("seed", range(60))
def test_random_plans_match_simpy(seed):
    check(TINY, random_plan(seed))


# ---- model plans ------------------------------------------------------------------------------------------------
GPT = ModelConfig(name="tiny-gpt", vocab_size=97, n_positions=64, d_model=72, n_layer=2, n_head=6, d_ff=130)


@pytest.mark.parametrize("mapping", [m for m in mapping_names() if m not in ("auto", "pipelined")])
def test_every_mapping_matches_simpy(mapping):
    graph = lower_model(GPT, 2, 11, "fp16")
    plan = get_mapping(mapping).plan(graph, TINY, TileGrid.make(TINY.mesh_rows, TINY.mesh_cols, 3, 3))
    check(TINY, plan)


def plans_of(spec: RunSpec) -> list:
    """Every (wafer, plan, record) the run ``spec`` simulates."""
    seen, real = [], Engine.run

    def spy(self):
        seen.append((self.wafer, self.plan, self.record))
        return real(self)

    Engine.run = spy
    try:
        run(spec, log=lambda m: None)
    finally:
        Engine.run = real
    return seen


SMALL = {"model_type": "gpt2", "n_embd": 68, "n_layer": 3, "n_head": 17, "vocab_size": 97, "n_positions": 32,
         "activation_function": "gelu_new"}


@pytest.mark.parametrize("kind", ["pipelined", "decode-resident", "decode-streamed", "two-wafers"])
def test_run_plans_match_simpy(kind, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(SMALL))
    spec = {
        "pipelined": RunSpec(model=str(cfg), mapping="pipelined", wafer="wse2", grid="40x48", tiles="1x4", batch=2,
                             seq=12, precision="fp16", numerics=False),
        "decode-resident": RunSpec(model=str(cfg), wafer="tiny", tiles="2x2", precision="fp16", phase="decode",
                                   context=9, numerics=False, weights="resident"),
        "decode-streamed": RunSpec(model=str(cfg), wafer="tiny", tiles="2x2", precision="fp16", phase="decode",
                                   context=9, numerics=False, weights="streamed"),
        "two-wafers": RunSpec(model=str(cfg), wafer="wse2", grid="100x100", precision="fp16", phase="decode",
                              context=20, numerics=False, wafers=2),
    }[kind]
    plans = plans_of(spec)
    assert plans
    for wafer, plan, _ in plans:
        check(wafer, plan)


def test_a_finished_run_is_freed_without_the_cyclic_collector(monkeypatch):
    """No reference cycle keeps a run (its per-task lists) alive once Engine.run returns: the collector paused
    around the run would otherwise traverse all of it afterwards."""
    import gc
    import weakref

    from wse_sim.sim import engine

    runs = []
    real = engine._Run.__init__

    def spy(self, *args):
        real(self, *args)
        runs.append(weakref.ref(self))

    monkeypatch.setattr(engine._Run, "__init__", spy)
    graph = lower_model(GPT, 2, 11, "fp16")
    plan = get_mapping("weight-streaming").plan(graph, TINY, TileGrid.make(TINY.mesh_rows, TINY.mesh_cols, 3, 3))
    was = gc.isenabled()
    gc.disable()
    try:
        Engine(TINY, plan, record=True).run()
        assert len(runs) == 1 and runs[0]() is None
    finally:
        if was:
            gc.enable()
