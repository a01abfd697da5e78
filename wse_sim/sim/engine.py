"""The discrete-event engine: runs a mapping plan's task DAG, time in cycles, in SimPy's event order (see
:class:`_Run`: it processes the events a SimPy process per task would, minus those that change nothing).

Resources that transfers and computes contend for: each tile's PEs (one compute at a time), each directed
link between adjacent tiles (a transfer holds every link of its path for its serialization time, then the
head-to-tail hop latency elapses: cut-through), the MemoryX ingress port, its egress port (gradient
stream-outs: the link is full-duplex, so they never wait for weight streams, take no weight buffer and are not
chained with the streams; they wait only for their own dependencies), and ``stream_buffers`` weight
buffers on the wafer (a stream takes one before it starts; the barrier that marks its weights consumed gives
it back). Ops run in program order: an op's first tasks wait for the previous op's end, while weight streams
only wait for the previous stream and a free buffer, so the next layer's weights arrive during this one (and
may be broadcast into on-wafer buffers); every compute waits for the previous op to end. An op with an explicit
``after`` list (layer-pipelined plans) waits only for those ops and its tasks' ``ext_deps``, so ops on different
regions overlap; its start is the latest end among ``after``.

Each op's cycles are split along its critical path (walking back from its end through the dependency that
finished last, or through the task that last held a resource this one waited for): time on compute tasks is
``compute``, on transfers ``fabric``, on streams ``stream`` (exposed weight streaming, in or out). Fabric time
is further split into ``fabric_latency`` (a transfer's hop, stage and turn latency after its tail left) and
``fabric_serialization`` (holding links, including waits for busy links). Multi-wafer plans add one resource per
inter-wafer link (wafer w to w + 1): an ``interwafer`` task holds it for its bytes at the link's bandwidth, then
the link's latency elapses; its critical-path time is ``interwafer``.
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from dataclasses import dataclass, field
from itertools import count
from typing import Protocol

import numpy as np

from ..arch import WaferSpec
from ..arch.costs import TaskCosts
from ..gc_pause import gc_paused
from ..mapping.plan import ModelPlan, Task, TaskKind


class ActionRunner(Protocol):
    def run(self, actions: tuple) -> None: ...


@dataclass
class OpTiming:
    name: str
    kind: str
    layer: int
    block: str
    start_cycles: int
    end_cycles: int
    compute_cycles: int
    fabric_cycles: int
    stream_cycles: int
    fabric_latency_cycles: int
    flops: int
    stream_bytes: int
    fabric_bytes: int
    sram_bytes_per_pe: int
    notes: str = ""
    interwafer_cycles: int = 0  # critical-path time crossing to another wafer (multi-wafer serving)
    interwafer_bytes: int = 0
    stream_out_bytes: int = 0  # bytes sent wafer -> MemoryX (weight gradients)

    @property
    def cycles(self) -> int:
        return self.end_cycles - self.start_cycles

    @property
    def fabric_serialization_cycles(self) -> int:
        return self.fabric_cycles - self.fabric_latency_cycles


@dataclass
class SimResult:
    total_cycles: int
    ops: list[OpTiming]
    tile_busy_cycles: np.ndarray  # [tile rows, tile cols]
    tile_macs: np.ndarray  # FMACs done per tile, for MAC efficiency
    link_busy_cycles: dict  # {((i, j), (i2, j2)): cycles}
    memoryx_busy_cycles: int  # the ingress port (MemoryX -> wafer)
    stream_bytes: int
    fabric_bytes: int
    tasks: int
    # With ``record=True``: one (group, resource, start, end, op index, label, bytes, MACs) per busy interval,
    # group in {"tile", "link", "memoryx", "interwafer"}; a transfer has one interval per link it holds.
    intervals: list | None = None
    interwafer_busy_cycles: dict = field(default_factory=dict)  # {link index (wafer w -> w + 1): cycles}
    interwafer_bytes: int = 0
    memoryx_out_busy_cycles: int = 0  # the egress port (wafer -> MemoryX: gradient stream-outs)
    stream_out_bytes: int = 0


_CATEGORY = {TaskKind.COMPUTE: "compute", TaskKind.TRANSFER: "fabric", TaskKind.STREAM: "stream",
             TaskKind.STREAM_OUT: "stream", TaskKind.INTERWAFER: "interwafer"}


@dataclass(frozen=True)
class _Program:
    """A plan's tasks in one list (global indices) with every dependency: the op's own, the waits on earlier ops
    the engine adds (see the module docstring) and the chain of weight streams."""

    tasks: list[Task]
    op_of: list[int]  # op index of each task
    deps: list[list[int]]
    op_end: list[int]  # index of each op's last task


def _flatten(plan: ModelPlan) -> _Program:
    """The plan's tasks in program order, each with its dependencies (see :class:`_Program`)."""
    tasks: list[Task] = []
    op_of: list[int] = []
    deps: list[list[int]] = []
    op_end: list[int] = []
    op_base: list[int] = []
    last_stream = -1
    for k, op_plan in enumerate(plan.ops):
        base = len(tasks)
        op_base.append(base)
        prev_ends = ([op_end[-1]] if op_end else []) if op_plan.after is None else [op_end[a] for a in op_plan.after]
        for t in op_plan.tasks:
            d = [base + x for x in t.deps] + [op_base[a] + x for a, x in t.ext_deps]
            if t.kind == TaskKind.STREAM:
                if last_stream >= 0:
                    d.append(last_stream)
                last_stream = len(tasks)
            elif prev_ends and (not t.deps or t.kind == TaskKind.COMPUTE):
                # Computes read the previous op's output; weight broadcasts may run ahead into buffers.
                d.extend(prev_ends)
            tasks.append(t)
            op_of.append(k)
            deps.append(d)
        op_end.append(len(tasks) - 1)
    return _Program(tasks, op_of, deps, op_end)


def _layer_ends(plan: ModelPlan, op_end: list[int]) -> set[int]:
    """Tasks that end a block (embed, layerN, head; per micro-batch when they interleave): progress ticks."""
    ops = plan.ops
    return {op_end[k] for k, op_plan in enumerate(ops) if k + 1 == len(ops) or ops[k + 1].op.block != op_plan.op.block}


class Engine:
    """Simulates a :class:`ModelPlan` on a wafer; optionally runs numeric actions as tasks complete."""

    def __init__(self, wafer: WaferSpec, plan: ModelPlan, numerics: ActionRunner | None = None,
                 progress: bool = False, record: bool = False):
        self.wafer, self.plan, self.numerics = wafer, plan, numerics
        self.progress, self.record = progress, record

    @gc_paused()  # millions of short-lived events, no cycles: see wse_sim.gc_pause
    def run(self) -> SimResult:
        run = _Run(self.wafer, self.plan, self.numerics, self.record)
        if self.progress and sys.stderr.isatty():
            from tqdm import tqdm

            run.bar = tqdm(total=len(run.layer_ends), desc="simulating layers", unit="layer", file=sys.stderr,
                           leave=False)
        try:
            run.run()
        finally:
            if run.bar is not None:
                run.bar.close()
        return run.result()


class _Slot:
    """The engine's state of one resource: held or not, and the tasks waiting for it, oldest first."""

    __slots__ = ("busy", "waiting")

    def __init__(self):
        self.busy = False
        self.waiting: deque[int] = deque()


class _Run:
    """One simulation of a plan: each task holds its resources for its cost, driven by an event queue.

    A task starts when its last dependency finishes (:meth:`launch`): it requests its resources, holds them for its
    cost, tallies their busy time and calls :meth:`finish`, which starts the successors it was the last wait of.
    Per-task times feed the critical-path split of each op's cycles (see the module docstring).

    The event loop is SimPy's (``simpy.Environment`` with one process per task holding ``simpy.Resource`` s,
    which this engine was first written with) reduced to the events whose processing does something: events are
    processed in SimPy's order, by (time, creation order), so every simulated time and every tie is the same.
    What it leaves out (``tests/test_engine_fastpaths.py`` checks the engine against the SimPy processes):

    - a process's start (SimPy's urgent ``Initialize`` event, processed right after the step that created it,
      before any other event at that time): tasks launched during one step start, in order, once it ends;
    - one event per resource granted at once: the task resumes when the last of its grants is processed, and the
      grants made at once during its request take consecutive places in the order, so one event at the place of
      the last stands for them all;
    - a release event when nobody waits (granting nobody: whoever asks before it is processed is granted at
      once, and cannot release before it); the events that end a process (nobody waits for a task's process).
    """

    bar = None  # a progress bar ticked at the end of each block

    def __init__(self, wafer: WaferSpec, plan: ModelPlan, numerics: ActionRunner | None, record: bool):
        self.wafer, self.plan, self.numerics, self.precision = wafer, plan, numerics, plan.precision
        self.costs = TaskCosts(wafer, plan.precision)  # each distinct task priced once
        self.now = 0
        self.queue: list = []  # (time, order, callback, argument)
        self.order = count()
        self.starts: list[int] = []  # tasks launched during the current step, started when it ends
        prog = _flatten(plan)
        self.tasks, self.op_of, self.deps, self.op_end = prog.tasks, prog.op_of, prog.deps, prog.op_end
        n = len(self.tasks)
        self.succ: list[list[int]] = [[] for _ in range(n)]
        self.remaining = [len(d) for d in self.deps]
        for i, d in enumerate(self.deps):
            for p in d:
                self.succ[p].append(i)
        self.layer_ends = _layer_ends(plan, self.op_end)
        # Per-task times in integer cycles (plain lists: much faster to index one by one than numpy arrays).
        self.ready_t, self.end_t, self.crit = [0] * n, [0] * n, [-1] * n
        self.latency = [0] * n  # cycles after the task released its resources (a transfer's hops, stages, turns)
        self.cost: list = [None] * n  # TaskCost of each launched task
        self.keys: list = [None] * n  # resource keys of each launched task
        self.pending = [0] * n  # grant events a requesting task still waits for
        self.resources: dict = {}  # by key (see Task.resources), created on first use
        self.last_holder: dict = {}  # resource key -> (release time, task) of the last task that held it
        self.free_slots, self.slot_waiters = plan.stream_buffers, deque()
        # Busy tallies. Per-tile float sums, added in the same order as into the float64 arrays of the result.
        self.tile_busy: dict = {}
        self.tile_macs: dict = {}
        self.link_busy: dict = {}
        self.memoryx_busy = 0
        self.memoryx_out_busy = 0
        self.wafer_link_busy: dict[int, int] = {}
        self.op_bytes = {kind: [0] * len(plan.ops) for kind in (TaskKind.TRANSFER, TaskKind.STREAM,
                                                                 TaskKind.STREAM_OUT, TaskKind.INTERWAFER)}
        self.intervals: list | None = [] if record else None
        self._done = {TaskKind.COMPUTE: self._compute_done, TaskKind.TRANSFER: self._transfer_done,
                      TaskKind.STREAM: self._stream_done, TaskKind.STREAM_OUT: self._stream_out_done,
                      TaskKind.INTERWAFER: self._interwafer_done}

    def run(self) -> None:
        """Launch the tasks that wait for nothing; each finishing task launches the ones it was the last wait of."""
        for i, left in enumerate(self.remaining):
            if left == 0:
                self.launch(i)
        queue, starts, pop = self.queue, self.starts, heapq.heappop
        if starts:
            self._start_launched()
        while queue:
            self.now, _, callback, arg = pop(queue)
            callback(arg)
            if starts:
                self._start_launched()
        unfinished = [i for i, left in enumerate(self.remaining) if left > 0]
        if unfinished:  # a plan bug, never user input
            raise RuntimeError(f"{len(unfinished)} tasks never became ready (first: {self.tasks[unfinished[0]].label})")

    def _start_launched(self) -> None:
        starts = self.starts
        for i in starts:  # a start never launches a task, so the list does not grow meanwhile
            if self.tasks[i].kind == TaskKind.STREAM:
                self._stream_start(i)
            else:
                self._request(i)
        starts.clear()

    def launch(self, i: int) -> None:
        """Task ``i``'s last dependency ended: it is ready, on the path of the dependency that ended last."""
        self.ready_t[i] = self.now
        best, best_end = -1, -1.0
        end_t = self.end_t
        for p in self.deps[i]:
            if end_t[p] >= best_end:
                best, best_end = p, end_t[p]
        self.crit[i] = best
        t = self.tasks[i]
        if t.kind == TaskKind.BARRIER:
            self.finish(i)
            return
        cost = self.costs(t)
        self.latency[i] = cost.latency_cycles
        self.cost[i] = cost
        self.starts.append(i)

    def finish(self, i: int) -> None:
        """Task ``i`` ended: run its numerics, free the weight buffer it marks consumed, launch its successors."""
        self.end_t[i] = self.now
        t = self.tasks[i]
        if self.numerics is not None and t.actions:
            self.numerics.run(t.actions)
        if t.frees_buffer_of is not None and t.kind == TaskKind.BARRIER:
            self._free_buffer(i)
        if self.bar is not None and i in self.layer_ends:
            self.bar.update(1)
        remaining = self.remaining
        for s in self.succ[i]:
            remaining[s] -= 1
            if remaining[s] == 0:
                self.launch(s)

    # ---- holding resources ---------------------------------------------------------------------------------------
    def _request(self, i: int) -> None:
        """Request every resource task ``i`` holds, each granted first come, first served; it resumes in
        :meth:`_granted` once all are granted."""
        keys = self.keys[i] = self.tasks[i].resources()
        resources, order, queue = self.resources, self.order, self.queue
        at_once = -1  # order of the last grant made at once
        waits = 0
        for key in keys:
            r = resources.get(key)
            if r is None:
                r = resources[key] = _Slot()
            if not r.busy and not r.waiting:
                r.busy = True
                at_once = next(order)
                continue
            r.waiting.append(i)
            waits += 1
            if not r.busy:  # freed, its release event not yet processed: the oldest waiter gets it
                r.busy = True
                heapq.heappush(queue, (self.now, next(order), self._granted, r.waiting.popleft()))
        if at_once >= 0:
            waits += 1
            heapq.heappush(queue, (self.now, at_once, self._granted, i))
        self.pending[i] = waits
        if not waits:  # holds nothing (a transfer without links): on at once, as a process yielding nothing
            self._hold(i)

    def _granted(self, i: int) -> None:
        """One grant event of task ``i`` processed; after the last, hold the resources for the task's cost.

        A task that waited for busy resources is on the critical path of whoever released them last."""
        self.pending[i] -= 1
        if not self.pending[i]:
            self._hold(i)

    def _hold(self, i: int) -> None:
        now = self.now
        if now > self.ready_t[i]:
            last_holder = self.last_holder
            last = [last_holder[key] for key in self.keys[i] if key in last_holder]
            if last:
                self.crit[i] = max(last)[1]
                self.ready_t[i] = now
        heapq.heappush(self.queue, (now + self.cost[i].hold_cycles, next(self.order), self._held, i))

    def _held(self, i: int) -> None:
        """Task ``i`` held its resources for its cost: release them, then its kind's end."""
        released = (self.now, i)
        last_holder, resources = self.last_holder, self.resources
        for key in self.keys[i]:
            last_holder[key] = released
        for key in self.keys[i]:
            r = resources[key]
            r.busy = False
            if r.waiting:  # the release event grants the oldest waiter, unless a request did before
                heapq.heappush(self.queue, (self.now, next(self.order), self._release_event, r))
        self._done[self.tasks[i].kind](i)

    def _release_event(self, r: _Slot) -> None:
        if not r.busy and r.waiting:
            r.busy = True
            heapq.heappush(self.queue, (self.now, next(self.order), self._granted, r.waiting.popleft()))

    def _after(self, cycles: int, callback, i: int) -> None:
        heapq.heappush(self.queue, (self.now + cycles, next(self.order), callback, i))

    def _record(self, group: str, resource, i: int, cycles: int, nbytes: int, macs: float) -> None:
        """One busy interval (``record=True``), ending now."""
        if self.intervals is not None and cycles:
            now = int(self.now)
            self.intervals.append((group, resource, now - cycles, now, self.op_of[i], self.tasks[i].label, nbytes,
                                   macs))

    def _free_buffer(self, i: int) -> None:
        """Barrier ``i`` marks a stream's weights consumed: its buffer goes to the oldest waiting stream."""
        if self.slot_waiters:
            waiter = self.slot_waiters.popleft()
            self.crit[waiter] = i  # the stream was held up by this consumer: its wait is not streaming
            self.ready_t[waiter] = self.now
            heapq.heappush(self.queue, (self.now, next(self.order), self._request, waiter))
        else:
            self.free_slots += 1

    # ---- the end of each task kind -----------------------------------------------------------------------------
    def _compute_done(self, i: int) -> None:
        t = self.tasks[i]
        cyc = self.cost[i].hold_cycles
        macs = t.macs_per_pe * self.plan.grid.pes(t.tile)
        self.tile_busy[t.tile] = self.tile_busy.get(t.tile, 0.0) + cyc
        self.tile_macs[t.tile] = self.tile_macs.get(t.tile, 0.0) + macs
        self._record("tile", t.tile, i, cyc, 0, macs)
        self.finish(i)

    def _transfer_done(self, i: int) -> None:
        t, cost = self.tasks[i], self.cost[i]
        ser = cost.hold_cycles
        for key in self.keys[i]:
            self.link_busy[key] = self.link_busy.get(key, 0) + ser
            self._record("link", key, i, ser, t.nbytes, 0)
        self._after(cost.latency_cycles, self._arrived, i)

    def _arrived(self, i: int) -> None:
        """A transfer's (or inter-wafer send's) tail arrived, its latency after it released its links."""
        t = self.tasks[i]
        self.op_bytes[t.kind][self.op_of[i]] += t.nbytes
        self.finish(i)

    def _stream_start(self, i: int) -> None:
        if self.free_slots > 0:
            self.free_slots -= 1
            self._request(i)
        else:
            self.slot_waiters.append(i)

    def _stream_done(self, i: int) -> None:
        t, hold = self.tasks[i], self.cost[i].hold_cycles
        self.memoryx_busy += hold
        self._record("memoryx", "memoryx", i, hold, t.nbytes, 0)
        self.op_bytes[t.kind][self.op_of[i]] += t.nbytes
        self.finish(i)

    def _stream_out_done(self, i: int) -> None:
        """A gradient stream-out held the MemoryX egress port for its bytes (full-duplex: not the ingress)."""
        t, hold = self.tasks[i], self.cost[i].hold_cycles
        self.memoryx_out_busy += hold
        self._record("memoryx", "memoryx_out", i, hold, t.nbytes, 0)
        self.op_bytes[t.kind][self.op_of[i]] += t.nbytes
        self.finish(i)

    def _interwafer_done(self, i: int) -> None:
        t, cost = self.tasks[i], self.cost[i]
        ser = cost.hold_cycles
        self.wafer_link_busy[t.wafer_link] = self.wafer_link_busy.get(t.wafer_link, 0) + ser
        self._record("interwafer", t.wafer_link, i, ser, t.nbytes, 0)
        self._after(cost.latency_cycles, self._arrived, i)

    # ---- the result --------------------------------------------------------------------------------------------
    def result(self) -> SimResult:
        n, grid = len(self.tasks), self.plan.grid
        busy_arr, macs_arr = np.zeros(grid.shape), np.zeros(grid.shape)
        for tile, cyc in self.tile_busy.items():
            busy_arr[tile] = cyc
        for tile, macs in self.tile_macs.items():
            macs_arr[tile] = macs
        op_bytes = self.op_bytes
        return SimResult(
            total_cycles=int(self.now) if n else 0, ops=self.op_timings(), tile_busy_cycles=busy_arr,
            tile_macs=macs_arr, link_busy_cycles=self.link_busy, memoryx_busy_cycles=self.memoryx_busy,
            stream_bytes=sum(op_bytes[TaskKind.STREAM]), fabric_bytes=sum(op_bytes[TaskKind.TRANSFER]), tasks=n,
            intervals=self.intervals, interwafer_busy_cycles=dict(sorted(self.wafer_link_busy.items())),
            interwafer_bytes=sum(op_bytes[TaskKind.INTERWAFER]), memoryx_out_busy_cycles=self.memoryx_out_busy,
            stream_out_bytes=sum(op_bytes[TaskKind.STREAM_OUT]),
        )

    def op_timings(self) -> list[OpTiming]:
        """Each op's span (from the end of the op before it, or of its ``after`` ops) and its critical split."""
        ops: list[OpTiming] = []
        end_t, op_end, op_bytes = self.end_t, self.op_end, self.op_bytes
        prev = 0
        for k, op_plan in enumerate(self.plan.ops):
            if op_plan.after is not None:
                prev = max((int(end_t[op_end[a]]) for a in op_plan.after), default=0)
            end = int(end_t[op_end[k]])
            split = _critical_split(self.tasks, op_end[k], prev, self.ready_t, end_t, self.crit, self.latency)
            op = op_plan.op
            ops.append(OpTiming(
                name=op.name, kind=str(op.kind), layer=op.layer, block=op.block, start_cycles=prev,
                end_cycles=end, compute_cycles=split["compute"], fabric_cycles=split["fabric"],
                stream_cycles=split["stream"], fabric_latency_cycles=split["fabric_latency"], flops=op.flops,
                stream_bytes=op_bytes[TaskKind.STREAM][k], fabric_bytes=op_bytes[TaskKind.TRANSFER][k],
                sram_bytes_per_pe=op_plan.sram_bytes_per_pe, notes=op_plan.notes,
                interwafer_cycles=split["interwafer"], interwafer_bytes=op_bytes[TaskKind.INTERWAFER][k],
                stream_out_bytes=op_bytes[TaskKind.STREAM_OUT][k],
            ))
            prev = end
        return ops


def _critical_split(tasks, end_idx, op_start, ready_t, end_t, crit, latency) -> dict[str, int]:
    """Attribute [op_start, op end] to compute / fabric / stream / interwafer along the critical path (and the
    fabric part to latency: the tail's hops, stages and turns; the rest of a transfer's time is serialization)."""
    out = {"compute": 0, "fabric": 0, "stream": 0, "interwafer": 0, "fabric_latency": 0}
    cur = end_idx
    last_cat = "compute"
    while cur >= 0 and end_t[cur] > op_start:
        t = tasks[cur]
        lo = max(ready_t[cur], op_start)
        cat = _CATEGORY.get(t.kind)
        if cat is None:  # barrier: zero width, but a slot wait ends at its consumer
            cur = crit[cur]
            continue
        out[cat] += int(end_t[cur] - lo)
        if cat == "fabric":
            out["fabric_latency"] += int(min(latency[cur], end_t[cur] - lo))
        last_cat = cat
        cur = crit[cur]
    total = int(end_t[end_idx] - op_start)
    gap = total - out["compute"] - out["fabric"] - out["stream"] - out["interwafer"]
    if gap:  # only possible when the walk ended before op_start (e.g. first op): give it to the last category
        out[last_cat] += gap
    return out
