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

Two event loops give the same result: :meth:`_Run.run` in Python, and for runs without numerics (the default
there, ``Engine(compiled=None)``) the same loop compiled with numba over int64 arrays (:mod:`wse_sim.sim.loop`):
every time, tie, critical-path parent, float tally and recorded interval is the Python loop's
(``tests/test_engine_simpy.py`` and ``tests/test_engine_loops.py`` run both). With numerics, tasks run Python
actions as they end, so the Python loop runs them.
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from collections.abc import Sequence
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
    # group in {"tile", "link", "memoryx", "interwafer"}; a transfer has one interval per link it holds. A list,
    # or from the compiled loop a RecordedIntervals (wse_sim.sim.intervals: the same tuples, made as they are read).
    intervals: Sequence | None = None
    interwafer_busy_cycles: dict = field(default_factory=dict)  # {link index (wafer w -> w + 1): cycles}
    interwafer_bytes: int = 0
    memoryx_out_busy_cycles: int = 0  # the egress port (wafer -> MemoryX: gradient stream-outs)
    stream_out_bytes: int = 0


_CATEGORY = {TaskKind.COMPUTE: "compute", TaskKind.TRANSFER: "fabric", TaskKind.STREAM: "stream",
             TaskKind.STREAM_OUT: "stream", TaskKind.INTERWAFER: "interwafer"}


def _layer_ends(plan: ModelPlan, op_end: list[int]) -> set[int]:
    """Tasks that end a block (embed, layerN, head; per micro-batch when they interleave): progress ticks."""
    ops = plan.ops
    return {op_end[k] for k, op_plan in enumerate(ops) if k + 1 == len(ops) or ops[k + 1].op.block != op_plan.op.block}


class Engine:
    """Simulates a :class:`ModelPlan` on a wafer; optionally runs numeric actions as tasks complete."""

    def __init__(self, wafer: WaferSpec, plan: ModelPlan, numerics: ActionRunner | None = None,
                 progress: bool = False, record: bool = False, compiled: bool | None = None):
        """``compiled``: run the event loop compiled (:mod:`wse_sim.sim.loop`, the same events and result tens of
        times faster) or in Python (False); None (the default) compiles it whenever there are no numerics, the
        only case it handles (with numerics, tasks run Python actions as they end)."""
        self.wafer, self.plan, self.numerics = wafer, plan, numerics
        self.progress, self.record = progress, record
        if compiled and numerics is not None:
            raise ValueError("the compiled event loop runs no numerics: pass compiled=None or False with numerics")
        self.compiled = numerics is None if compiled is None else compiled

    @gc_paused()  # millions of short-lived events, no cycles: see wse_sim.gc_pause
    def run(self) -> SimResult:
        expect = getattr(self.numerics, "expect", None)  # a runner may learn the plan first (Numerics.expect)
        if expect is not None:
            expect(self.plan)
        run = _Run(self.wafer, self.plan, self.numerics, self.record, self.compiled)
        if self.progress and sys.stderr.isatty():
            from tqdm import tqdm

            run.bar = tqdm(total=len(run.layer_ends), desc="simulating layers", unit="layer", file=sys.stderr,
                           leave=False)
        try:
            run.run()
            return run.result()
        finally:
            if run.bar is not None:
                run.bar.close()
            run.close()


# Events, one int each: what to do (code) with what (a task or a resource index); in the heap of later events also
# their time, then creation order, in the high bits (ints compare faster than tuples). ``_ORDER_BITS`` bounds the
# heap events of one run (2^40).
_GRANT, _HELD, _RELEASE, _ARRIVED, _REQUEST = range(5)
_CODE_BITS = 3
_ORDER_BITS = 40


class _Run:
    """One simulation of a plan: each task holds its resources for its cost, driven by an event queue.

    A task starts when its last dependency finishes (:meth:`finish` launches it): it requests its resources, holds
    them for its cost, tallies their busy time (its kind's ``_done``) and finishes, which launches the successors it
    was the last wait of. Per-task times feed the critical-path split of each op's cycles (see the module docstring).

    The event loop is SimPy's (``simpy.Environment`` with one process per task holding ``simpy.Resource`` s,
    which this engine was first written with) reduced to the events whose processing does something: events are
    processed in SimPy's order, by (time, creation order), so every simulated time and every tie is the same.
    What it leaves out (``tests/test_engine_simpy.py`` checks the engine against SimPy processes):

    - a process's start (SimPy's urgent ``Initialize`` event, processed right after the step that created it,
      before any other event at that time): tasks launched during one step start, in order, once it ends;
    - one event per resource granted at once: the task resumes when the last of its grants is processed, and the
      grants made at once during its request take consecutive places in the order, so one event at the place of
      the last stands for them all;
    - a release event when nobody waits (granting nobody: whoever asks before it is processed is granted at
      once, and cannot release before it); the events that end a process (nobody waits for a task's process).

    Everything a task needs in the loop is read from the plan once (:meth:`_load`) into per-task lists indexed by
    the task's global index: its kind as a small int, its cost, its resources as ints, its successors. With
    ``compiled`` (no numerics) they are int64 arrays instead (``arrays``, :class:`wse_sim.sim.loop.Arrays`: the
    dependencies assembled in numba from each distinct op task tuple), and :func:`wse_sim.sim.loop.run_compiled`
    runs the loop and leaves the same times, tallies and intervals here for :meth:`result`.
    """

    bar = None  # a progress bar ticked at the end of each block

    def __init__(self, wafer: WaferSpec, plan: ModelPlan, numerics: ActionRunner | None, record: bool,
                 compiled: bool = False):
        self.wafer, self.plan, self.numerics, self.precision = wafer, plan, numerics, plan.precision
        self.compiled = compiled and numerics is None  # the compiled loop builds the successors itself
        self.costs = TaskCosts(wafer, plan.precision)  # each distinct task priced once
        self.now = 0
        self.queue: list[int] = []  # events at later times (see _GRANT ...), a heap
        self.now_queue: deque[int] = deque()  # events made for the current time, in order (see run)
        self.order = count()
        self.starts: list[int] = []  # tasks launched during the current step, started when it ends
        self.intervals: list | None = [] if record else None
        self._done = {TaskKind.COMPUTE: self._compute_done, TaskKind.TRANSFER: self._transfer_done,
                      TaskKind.STREAM: self._stream_done, TaskKind.STREAM_OUT: self._stream_out_done,
                      TaskKind.INTERWAFER: self._interwafer_done}
        self._load(plan)
        n, nres = len(self.tasks), len(self.res_key)
        self.layer_ends = _layer_ends(plan, self.op_end)
        # Per-task times in integer cycles (plain lists: much faster to index one by one than numpy arrays).
        self.ready_t, self.end_t = [0] * n, [0] * n
        self.crit = [-2] * n  # the task this one waited for last; -2: the dependency that ended last (_crit_of)
        self.pending = [0] * n  # grant events a requesting task still waits for
        # Per resource: held or not, the tasks waiting for it (oldest first), (release time, task) of its last holder.
        self.busy, self.waiting = [False] * nres, [deque() for _ in range(nres)]
        self.holder: list = [None] * nres
        self.free_slots, self.slot_waiters = plan.stream_buffers, deque()
        # Busy tallies per resource. Tiles: float sums, added in the same order as into the float64 arrays of
        # the result. Links: cycles, and the order links first ended a transfer (the order of link_busy_cycles).
        self.tile_busy, self.tile_macs = [0.0] * nres, [0.0] * nres
        self.link_busy: list = [None] * nres
        self.link_order: list[int] = []
        self.memoryx_busy = 0
        self.memoryx_out_busy = 0
        self.wafer_link_busy: dict[int, int] = {}
        self.arg_bits = max(n, nres).bit_length() + _CODE_BITS
        self.time_shift = self.arg_bits + _ORDER_BITS

    def _load(self, plan: ModelPlan) -> None:
        """The plan's tasks in program order (global indices), each with its dependencies: the op's own, the
        waits on earlier ops the engine adds (see the module docstring) and the chain of weight streams; and each
        task's kind code, cost, resources (:meth:`_describe`) and successors. Compiled, the same as arrays
        (:class:`wse_sim.sim.loop.Assembler`: the per-task Python work is done once per distinct task tuple); a
        plan whose figures do not fit int64 is loaded again for the Python loop."""
        kinds = list(self._done)
        self.code_of = {kind: c for c, kind in enumerate(kinds)}
        self.done = list(self._done.values())  # by kind code
        self.barrier, self.stream = len(kinds), self.code_of[TaskKind.STREAM]  # a barrier: after the others
        n = sum(len(op_plan.tasks) for op_plan in plan.ops)
        self.tasks: list[Task] = []
        self.op_of: list[int] = []
        self.deps: list[list[int]] = []
        self.op_end: list[int] = []
        self.codes, self.hold, self.latency, self.keys, self.special = [], [], [], [], []
        self.macs: list[int] = []  # FMACs of a compute task over its tile's PEs
        self.succ: list[list[int]] = [] if self.compiled else [[] for _ in range(n)]
        self.arrays = None  # the compiled loop's (loop.Arrays)
        self.res_key: list = []  # resource index -> key (see Task.resources)
        self.pes: list = []  # resource index -> PEs of the tile, for a tile
        self.rid_of: dict = {}
        self.by_tile: dict = {}  # a compute's resources depend on its tile only, a transfer's on its links only
        self.by_links: dict = {}  # id(links) -> resources (the plan keeps every links tuple alive meanwhile)
        self.op_bytes = {kind: [0] * len(plan.ops) for kind in (TaskKind.TRANSFER, TaskKind.STREAM,
                                                                TaskKind.STREAM_OUT, TaskKind.INTERWAFER)}
        described: dict = {}  # id(an op's tasks) -> _describe's answer: timing-only plans share tasks among ops
        deps, succ, op_end, op_base, stream, compute = self.deps, self.succ, self.op_end, [], self.stream, self.code_of[
            TaskKind.COMPUTE]
        last_stream, compiled = -1, self.compiled
        if compiled:
            from .loop import Assembler  # numba: imported only when used

            assembler = Assembler()
        for k, op_plan in enumerate(plan.ops):
            ts = op_plan.tasks
            desc = described.get(id(ts))
            if desc is None:
                desc = described[id(ts)] = self._describe(ts)
            codes, hold, latency, keys, special, macs, nbytes = desc
            self.tasks += ts
            self.op_of += [k] * len(ts)
            self.codes += codes
            self.macs += macs
            for kind, b in nbytes:  # every task finishes (else run() raises): its bytes count for its op
                self.op_bytes[kind][k] += b
            if compiled:  # the dependencies, resources and costs as arrays, made by the compiled loop's module
                assembler.add(ts, desc, op_plan.after)
                op_end.append(len(self.tasks) - 1)
                continue
            self.hold += hold
            self.latency += latency
            self.keys += keys
            self.special += special
            base = i = len(deps)
            op_base.append(base)
            after = op_plan.after
            prev_ends = ([op_end[-1]] if op_end else []) if after is None else [op_end[a] for a in after]
            for t, code in zip(ts, codes, strict=True):
                own = t.deps
                d = ([base + own[0]] if len(own) == 1 else [base + x for x in own]) if own else []
                if t.ext_deps:
                    d += [op_base[a] + x for a, x in t.ext_deps]
                if code == stream:
                    if last_stream >= 0:
                        d.append(last_stream)
                    last_stream = i
                elif prev_ends and (not own or code == compute):
                    # Computes read the previous op's output; weight broadcasts may run ahead into buffers.
                    d.extend(prev_ends)
                for p in d:
                    succ[p].append(i)
                deps.append(d)
                i += 1
            op_end.append(i - 1)
        if compiled:
            self.arrays = assembler.finish(len(self.tasks), len(self.res_key), stream, compute)
            if self.arrays is None:  # beyond the compiled loop's int64 arrays: the Python loop's lists
                self.compiled = False
                self._load(plan)
                return
            self.latency = self.arrays.latency
            self.remaining = self.arrays.remaining
            return
        self.remaining = [len(d) for d in deps]

    def _describe(self, ts: tuple[Task, ...]) -> tuple:
        """Per task of ``ts``: kind code (its place in ``_done``), hold and latency cycles, resource indices,
        whether :meth:`finish` has more to do than launch successors and a compute's FMACs over its tile; and the
        bytes per counted kind."""
        barrier, numerics, code_of = self.barrier, self.numerics is not None, self.code_of
        codes = [code_of.get(t.kind, barrier) for t in ts]
        priced = self.costs.of_all(ts)
        keys = []
        nbytes = dict.fromkeys(self.op_bytes, 0)
        by_tile, compute = self.by_tile, TaskKind.COMPUTE
        for t in ts:
            kind = t.kind
            if kind == compute:
                ks = by_tile.get(t.tile)
                if ks is None:
                    ks = by_tile[t.tile] = self._intern(t)
            else:
                if kind == TaskKind.TRANSFER:
                    ks = self.by_links.get(id(t.links))
                    if ks is None:
                        ks = self.by_links[id(t.links)] = self._intern(t)
                else:
                    ks = self._intern(t)
                if kind in nbytes:
                    nbytes[kind] += t.nbytes
            keys.append(ks)
        special = [bool(numerics and t.actions) or (t.frees_buffer_of is not None and c == barrier)
                   for t, c in zip(ts, codes, strict=True)]
        pes = self.pes
        macs = [t.macs_per_pe * pes[ks[0]] if t.kind == compute else 0 for t, ks in zip(ts, keys, strict=True)]
        return (codes, [c.hold_cycles for c in priced], [c.latency_cycles for c in priced], keys, special, macs,
                [(kind, b) for kind, b in nbytes.items() if b])

    def _intern(self, t: Task) -> tuple[int, ...]:
        """The indices of ``t``'s resources (:meth:`Task.resources`), each key numbered on first sight."""
        ids = []
        for key in t.resources():
            r = self.rid_of.get(key)
            if r is None:
                r = self.rid_of[key] = len(self.res_key)
                self.res_key.append(key)
                self.pes.append(self.plan.grid.pes(key) if t.kind == TaskKind.COMPUTE else None)
            ids.append(r)
        return tuple(ids)

    def run(self) -> None:
        """Launch the tasks that wait for nothing; each finishing task launches the ones it was the last wait of.

        Events at a later time wait in a heap by (time, creation order). Events made for the current time (grants,
        releases, zero-cycle ends) come after every event already queued for it, which were all made earlier, so
        they wait in a FIFO, ``now_queue``, that the loop empties once the heap has no event left at this time."""
        if self.compiled:
            from .loop import run_compiled  # numba: imported only when used

            run_compiled(self)
            self._check_finished()
            return
        for i in [i for i, left in enumerate(self.remaining) if left == 0]:  # a barrier among them launches
            self.launch(i)  # its successors itself: the list is taken first so that none starts twice
        queue, now_queue, starts = self.queue, self.now_queue, self.starts
        pop, push, popleft, now_append = heapq.heappop, heapq.heappush, now_queue.popleft, now_queue.append
        nxt = self.order.__next__
        busy, waiting, holder, keys, pending = self.busy, self.waiting, self.holder, self.keys, self.pending
        ready_t, crit, hold, done = self.ready_t, self.crit, self.hold, self.done
        codes, stream = self.codes, self.stream
        shift, arg_bits = self.time_shift, self.arg_bits
        arg_mask = (1 << arg_bits) - 1
        now, limit = 0, 1 << shift  # heap events below limit are at time now
        while True:
            if starts:  # the tasks launched by the last step start (each requests its resources), in order
                for s in starts:  # a start never launches a task, so the list does not grow meanwhile
                    if codes[s] == stream:
                        self._stream_start(s)
                        continue
                    ks = keys[s]
                    if len(ks) == 1 and not busy[ks[0]] and not waiting[ks[0]]:  # _request's at-once grant
                        busy[ks[0]] = True
                        now_append((s << _CODE_BITS) | _GRANT)
                        pending[s] = 1
                    else:
                        self._request(s)
                starts.clear()
            if queue and queue[0] < limit:
                event = pop(queue) & arg_mask
            elif now_queue:
                event = popleft()
            elif queue:
                event = pop(queue)
                self.now = now = event >> shift
                limit = (now + 1) << shift
                event &= arg_mask
            else:
                break
            code = event & 7
            i = event >> _CODE_BITS
            if code == _GRANT:  # one grant of task i processed; after the last, it holds its resources
                left = pending[i] - 1
                pending[i] = left
                if not left:
                    if now > ready_t[i]:  # it waited: on the critical path of whoever released last
                        last = [h for h in (holder[r] for r in keys[i]) if h is not None]
                        if last:
                            crit[i] = max(last)[1]
                            ready_t[i] = now
                    if hold[i]:
                        push(queue, ((now + hold[i]) << shift) | (nxt() << arg_bits) | (i << _CODE_BITS) | _HELD)
                    else:
                        now_append((i << _CODE_BITS) | _HELD)
            elif code == _HELD:  # task i held its resources for its cost: release them, then its kind's end
                released = (now, i)
                ks = keys[i]
                for r in ks:
                    holder[r] = released
                for r in ks:
                    busy[r] = False
                    if waiting[r]:  # the release event grants the oldest waiter, unless a request did before
                        now_append((r << _CODE_BITS) | _RELEASE)
                done[codes[i]](i)
            elif code == _RELEASE:  # i is a resource
                if not busy[i] and waiting[i]:
                    busy[i] = True
                    now_append((waiting[i].popleft() << _CODE_BITS) | _GRANT)
            elif code == _ARRIVED:
                self.finish(i)
            else:
                self._request(i)
        self._check_finished()

    def _check_finished(self) -> None:
        unfinished = np.flatnonzero(np.asarray(self.remaining) > 0)
        if len(unfinished):  # a plan bug, never user input
            first = self.tasks[int(unfinished[0])].label
            raise RuntimeError(f"{len(unfinished)} tasks never became ready (first: {first})")

    def _event(self, cycles: int, code: int, arg: int) -> None:
        """Queue event ``code`` on ``arg`` (a task or a resource index), ``cycles`` from now."""
        if cycles:
            heapq.heappush(self.queue, ((self.now + cycles) << self.time_shift) | (next(self.order) << self.arg_bits)
                           | (arg << _CODE_BITS) | code)
        else:
            self.now_queue.append((arg << _CODE_BITS) | code)

    def launch(self, i: int) -> None:
        """Task ``i``'s last dependency ended: it is ready (on the path of the dependency that ended last, see
        :meth:`_crit_of`). A barrier ends at once; other tasks start when the current step ends."""
        self.ready_t[i] = self.now
        if self.codes[i] == self.barrier:
            self.finish(i)
        else:
            self.starts.append(i)

    def finish(self, i: int) -> None:
        """Task ``i`` ended: run its numerics, free the weight buffer it marks consumed, launch its successors."""
        now = self.now
        self.end_t[i] = now
        if self.special[i]:
            t = self.tasks[i]
            if self.numerics is not None and t.actions:
                self.numerics.run(t.actions)
            if t.frees_buffer_of is not None and self.codes[i] == self.barrier:
                self._free_buffer(i)
        if self.bar is not None and i in self.layer_ends:
            self.bar.update(1)
        remaining, ready_t, codes, barrier, starts = self.remaining, self.ready_t, self.codes, self.barrier, self.starts
        for s in self.succ[i]:  # launch(s) for each successor it was the last wait of, inline
            left = remaining[s] - 1
            remaining[s] = left
            if not left:
                ready_t[s] = now
                if codes[s] == barrier:
                    self.finish(s)
                else:
                    starts.append(s)

    def close(self) -> None:
        """Drop the per-kind handlers: bound methods, a reference cycle through ``self`` that kept the whole run
        (millions of lists and tuples on a large plan) for the cyclic collector to find and traverse after the
        collector pause (about 1 us per task of a 13B plan); without it reference counting frees the run at once."""
        self._done.clear()
        self.done.clear()

    def _crit_of(self, i: int) -> int:
        """The task on whose account task ``i`` started last: the one it waited for (a busy resource's last holder,
        a weight buffer's consumer) if any, else the dependency that ended last (-1: none)."""
        c = self.crit[i]
        if c == -2:
            best, best_end = -1, -1.0
            end_t = self.end_t
            for p in self.deps[i]:
                if end_t[p] >= best_end:
                    best, best_end = p, end_t[p]
            c = self.crit[i] = best
        return c

    # ---- holding resources ---------------------------------------------------------------------------------------
    def _request(self, i: int) -> None:
        """Request every resource task ``i`` holds, each granted first come, first served; it resumes when its
        last grant event is processed (``_GRANT`` in :meth:`run`)."""
        busy, waiting = self.busy, self.waiting
        grants = []  # the grant events this request makes, in order
        at = -1  # the place of task i's own grant event: that of the last grant made at once
        waits = 0
        for r in self.keys[i]:
            if not busy[r] and not waiting[r]:
                busy[r] = True
                at = len(grants)
                continue
            waiting[r].append(i)
            waits += 1
            if not busy[r]:  # freed, its release event not yet processed: the oldest waiter gets it
                busy[r] = True
                grants.append((waiting[r].popleft() << _CODE_BITS) | _GRANT)
        if at >= 0:
            waits += 1
            grants.insert(at, (i << _CODE_BITS) | _GRANT)
        self.now_queue.extend(grants)
        self.pending[i] = waits
        if not waits:  # holds nothing (a transfer without links): on at once, as a process yielding nothing
            self._event(self.hold[i], _HELD, i)

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
            self._event(0, _REQUEST, waiter)
        else:
            self.free_slots += 1

    # ---- the end of each task kind -----------------------------------------------------------------------------
    def _compute_done(self, i: int) -> None:
        r, cyc, macs = self.keys[i][0], self.hold[i], self.macs[i]
        self.tile_busy[r] += cyc
        self.tile_macs[r] += macs
        if self.intervals is not None and cyc:  # _record, inline
            now = self.now
            self.intervals.append(("tile", self.res_key[r], now - cyc, now, self.op_of[i], self.tasks[i].label, 0,
                                   macs))
        self.finish(i)

    def _transfer_done(self, i: int) -> None:
        ser, link_busy, keys = self.hold[i], self.link_busy, self.keys[i]
        for r in keys:
            cyc = link_busy[r]
            if cyc is None:
                self.link_order.append(r)
                link_busy[r] = ser
            else:
                link_busy[r] = cyc + ser
        if self.intervals is not None and ser:  # _record per link, inline
            now, t, res_key = self.now, self.tasks[i], self.res_key
            op, label, nbytes = self.op_of[i], t.label, t.nbytes
            self.intervals += [("link", res_key[r], now - ser, now, op, label, nbytes, 0) for r in keys]
        self._event(self.latency[i], _ARRIVED, i)  # the tail arrives; then finish(i)

    def _stream_start(self, i: int) -> None:
        if self.free_slots > 0:
            self.free_slots -= 1
            self._request(i)
        else:
            self.slot_waiters.append(i)

    def _stream_done(self, i: int) -> None:
        hold = self.hold[i]
        self.memoryx_busy += hold
        self._record("memoryx", "memoryx", i, hold, self.tasks[i].nbytes, 0)
        self.finish(i)

    def _stream_out_done(self, i: int) -> None:
        """A gradient stream-out held the MemoryX egress port for its bytes (full-duplex: not the ingress)."""
        hold = self.hold[i]
        self.memoryx_out_busy += hold
        self._record("memoryx", "memoryx_out", i, hold, self.tasks[i].nbytes, 0)
        self.finish(i)

    def _interwafer_done(self, i: int) -> None:
        t, ser = self.tasks[i], self.hold[i]
        self.wafer_link_busy[t.wafer_link] = self.wafer_link_busy.get(t.wafer_link, 0) + ser
        self._record("interwafer", t.wafer_link, i, ser, t.nbytes, 0)
        self._event(self.latency[i], _ARRIVED, i)

    # ---- the result --------------------------------------------------------------------------------------------
    def result(self) -> SimResult:
        n, grid = len(self.tasks), self.plan.grid
        busy_arr, macs_arr = np.zeros(grid.shape), np.zeros(grid.shape)
        for r, pes in enumerate(self.pes):
            if pes is not None:  # a tile
                busy_arr[self.res_key[r]] = self.tile_busy[r]
                macs_arr[self.res_key[r]] = self.tile_macs[r]
        op_bytes = self.op_bytes
        return SimResult(
            total_cycles=int(self.now) if n else 0, ops=self.op_timings(), tile_busy_cycles=busy_arr,
            tile_macs=macs_arr, link_busy_cycles={self.res_key[r]: self.link_busy[r] for r in self.link_order},
            memoryx_busy_cycles=self.memoryx_busy, stream_bytes=sum(op_bytes[TaskKind.STREAM]),
            fabric_bytes=sum(op_bytes[TaskKind.TRANSFER]), tasks=n, intervals=self.intervals,
            interwafer_busy_cycles=dict(sorted(self.wafer_link_busy.items())),
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
            split = _critical_split(self.tasks, op_end[k], prev, self.ready_t, end_t, self._crit_of, self.latency)
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
    fabric part to latency: the tail's hops, stages and turns; the rest of a transfer's time is serialization).
    ``crit(i)`` is the task on whose account task ``i`` started last (see :meth:`_Run._crit_of`)."""
    out = {"compute": 0, "fabric": 0, "stream": 0, "interwafer": 0, "fabric_latency": 0}
    cur = end_idx
    last_cat = "compute"
    while cur >= 0 and end_t[cur] > op_start:
        t = tasks[cur]
        lo = max(ready_t[cur], op_start)
        cat = _CATEGORY.get(t.kind)
        if cat is None:  # barrier: zero width, but a slot wait ends at its consumer
            cur = crit(cur)
            continue
        out[cat] += int(end_t[cur] - lo)
        if cat == "fabric":
            out["fabric_latency"] += int(min(latency[cur], end_t[cur] - lo))
        last_cat = cat
        cur = crit(cur)
    total = int(end_t[end_idx] - op_start)
    gap = total - out["compute"] - out["fabric"] - out["stream"] - out["interwafer"]
    if gap:  # only possible when the walk ended before op_start (e.g. first op): give it to the last category
        out[last_cat] += gap
    return out
