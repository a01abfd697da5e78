"""The discrete-event engine: runs a mapping plan's task DAG on SimPy, time in cycles.

Resources that transfers and computes contend for: each tile's PEs (one compute at a time), each directed
link between adjacent tiles (a transfer holds every link of its path for its serialization time, then the
head-to-tail hop latency elapses: cut-through), the MemoryX ingress port, and ``stream_buffers`` weight
buffers on the wafer (a stream takes one before it starts; the barrier that marks its weights consumed gives
it back). Ops run in program order: an op's first tasks wait for the previous op's end, while weight streams
only wait for the previous stream and a free buffer, so the next layer's weights arrive during this one (and
may be broadcast into on-wafer buffers); every compute waits for the previous op to end. An op with an explicit
``after`` list (layer-pipelined plans) waits only for those ops and its tasks' ``ext_deps``, so ops on different
regions overlap; its start is the latest end among ``after``.

Each op's cycles are split along its critical path (walking back from its end through the dependency that
finished last, or through the task that last held a resource this one waited for): time on compute tasks is
``compute``, on transfers ``fabric``, on streams ``stream`` (exposed weight streaming). Fabric time is further
split into ``fabric_latency`` (a transfer's hop, stage and turn latency after its tail left) and
``fabric_serialization`` (holding links, including waits for busy links). Multi-wafer plans add one resource per
inter-wafer link (wafer w to w + 1): an ``interwafer`` task holds it for its bytes at the link's bandwidth, then
the link's latency elapses; its critical-path time is ``interwafer``.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import simpy

from ..arch import WaferSpec
from ..arch.costs import compute_cycles, interwafer_cycles, stream_cycles, transfer_cycles
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
    memoryx_busy_cycles: int
    stream_bytes: int
    fabric_bytes: int
    tasks: int
    # With ``record=True``: one (group, resource, start, end, op index, label, bytes, MACs) per busy interval,
    # group in {"tile", "link", "memoryx", "interwafer"}; a transfer has one interval per link it holds.
    intervals: list | None = None
    interwafer_busy_cycles: dict = field(default_factory=dict)  # {link index (wafer w -> w + 1): cycles}
    interwafer_bytes: int = 0


_CATEGORY = {TaskKind.COMPUTE: "compute", TaskKind.TRANSFER: "fabric", TaskKind.STREAM: "stream",
             TaskKind.INTERWAFER: "interwafer"}


class _Resource:
    """A resource one task holds at a time (a tile's PEs, a link, the MemoryX port), granted first come, first served.

    It triggers exactly the events ``simpy.Resource(env, capacity=1)`` triggers, at the same points and in the same
    order, so every simulated time is the same: a request is granted at once when the resource is free and nobody
    waits (else it queues); a release frees the resource at once and triggers a release event whose processing
    grants the oldest waiter, unless a request made before that already did (SimPy serves the oldest waiter then
    too). What it leaves out is SimPy's generic put/get queue machinery and its no-op callbacks, which took more
    than half of the engine's time on large plans. ``tests/test_engine_fastpaths.py`` checks the grant order against
    ``simpy.Resource``.
    """

    __slots__ = ("_busy", "_env", "_waiting")

    def __init__(self, env: simpy.Environment):
        self._env = env
        self._busy = False
        self._waiting: deque[simpy.Event] = deque()

    def request(self) -> simpy.Event:
        """An event that triggers when the caller holds the resource."""
        req = simpy.Event(self._env)
        self._waiting.append(req)
        self._grant()
        return req

    def release(self) -> None:
        self._busy = False
        done = simpy.Event(self._env)
        done.callbacks.append(self._grant)
        done.succeed()

    def _grant(self, _event: simpy.Event | None = None) -> None:
        if not self._busy and self._waiting:
            self._busy = True
            self._waiting.popleft().succeed()


class Engine:
    """Simulates a :class:`ModelPlan` on a wafer; optionally runs numeric actions as tasks complete."""

    def __init__(self, wafer: WaferSpec, plan: ModelPlan, numerics: ActionRunner | None = None,
                 progress: bool = False, record: bool = False):
        self.wafer, self.plan, self.numerics = wafer, plan, numerics
        self.progress, self.record = progress, record

    @gc_paused()  # millions of short-lived events, no cycles: see wse_sim.gc_pause
    def run(self) -> SimResult:
        plan, wafer = self.plan, self.wafer
        env = simpy.Environment()
        precision = plan.precision

        # Flatten tasks with global indices and add the inter-op dependencies.
        tasks: list[Task] = []
        op_of: list[int] = []
        deps: list[list[int]] = []
        op_end: list[int] = []
        op_base: list[int] = []
        last_stream = -1
        for k, op_plan in enumerate(plan.ops):
            base = len(tasks)
            op_base.append(base)
            if op_plan.after is None:
                prev_ends = [op_end[-1]] if op_end else []
            else:
                prev_ends = [op_end[a] for a in op_plan.after]
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

        n = len(tasks)
        succ: list[list[int]] = [[] for _ in range(n)]
        remaining = [0] * n
        for i, d in enumerate(deps):
            remaining[i] = len(d)
            for p in d:
                succ[p].append(i)

        # Per-task times in integer cycles (plain lists: much faster to index one by one than numpy arrays).
        ready_t = [0] * n
        start_t = [0] * n
        end_t = [0] * n
        crit = [-1] * n
        latency = [0] * n  # transfers: cycles after the tail left its links (hops, stages, turns)

        tile_res = {t: _Resource(env) for t in plan.grid.tiles()}
        link_res: dict = {}  # fabric links by (tile, tile), inter-wafer links by ("interwafer", w): created on use
        memx = _Resource(env)
        wafer_link_busy: dict[int, int] = {}
        # Per-tile float sums, added in the same order as into the float64 arrays of the result: the same bits.
        tile_busy: dict = {}
        tile_macs: dict = {}
        link_busy: dict = {}
        memx_busy = [0]
        free_slots = [plan.stream_buffers]
        slot_waiters: deque = deque()
        last_holder: dict = {}  # resource key -> (release time, task) of the last task that held it
        op_stream_bytes = [0] * len(plan.ops)
        op_fabric_bytes = [0] * len(plan.ops)
        op_interwafer_bytes = [0] * len(plan.ops)
        intervals: list | None = [] if self.record else None

        # The last op of each block (embed, layerN, head; per micro-batch when they interleave) ends a layer.
        layer_ends = {op_end[k] for k, op_plan in enumerate(plan.ops)
                      if k + 1 == len(plan.ops) or plan.ops[k + 1].op.block != op_plan.op.block}
        bar = None
        if self.progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=len(layer_ends), desc="simulating layers", unit="layer", file=sys.stderr, leave=False)

        def link(key):
            r = link_res.get(key)
            if r is None:
                r = link_res[key] = _Resource(env)
            return r

        def finish(i: int) -> None:
            end_t[i] = env.now
            t = tasks[i]
            if self.numerics is not None and t.actions:
                self.numerics.run(t.actions)
            if t.kind == TaskKind.BARRIER and t.frees_buffer_of is not None:
                if slot_waiters:
                    ev, waiter = slot_waiters.popleft()
                    crit[waiter] = i  # the stream was held up by this consumer: its wait is not streaming
                    ready_t[waiter] = env.now
                    ev.succeed()
                else:
                    free_slots[0] += 1
            if bar is not None and i in layer_ends:
                bar.update(1)
            for s in succ[i]:
                remaining[s] -= 1
                if remaining[s] == 0:
                    launch(s)

        def launch(i: int) -> None:
            ready_t[i] = env.now
            best, best_end = -1, -1.0
            for p in deps[i]:
                if end_t[p] >= best_end:
                    best, best_end = p, end_t[p]
            crit[i] = best
            t = tasks[i]
            if t.kind == TaskKind.BARRIER:
                start_t[i] = env.now
                finish(i)
            else:
                env.process(run_task(i, t))

        def acquired(i: int, keys) -> None:
            """A task that waited for busy resources is on the path of whoever released them last."""
            start_t[i] = env.now
            if env.now > ready_t[i]:
                held = [last_holder[key] for key in keys if key in last_holder]
                if held:
                    crit[i] = max(held)[1]
                    ready_t[i] = env.now

        def released(i: int, keys) -> None:
            for key in keys:
                last_holder[key] = (env.now, i)

        def run_task(i: int, t: Task):
            k = op_of[i]
            if t.kind == TaskKind.COMPUTE:
                res = tile_res[t.tile]
                yield res.request()
                acquired(i, (t.tile,))
                cyc = compute_cycles(wafer, precision, t.macs_per_pe, t.elem_ops_per_pe)
                yield env.timeout(cyc)
                released(i, (t.tile,))
                res.release()
                macs = t.macs_per_pe * plan.grid.pes(t.tile)
                tile_busy[t.tile] = tile_busy.get(t.tile, 0.0) + cyc
                tile_macs[t.tile] = tile_macs.get(t.tile, 0.0) + macs
                if intervals is not None and cyc:
                    intervals.append(("tile", t.tile, int(env.now - cyc), int(env.now), k, t.label, 0, macs))
            elif t.kind == TaskKind.TRANSFER:
                ser, lat = transfer_cycles(wafer, t.bytes_per_lane, t.hops, t.stages, t.turns, t.phases)
                latency[i] = lat
                links = sorted(set(t.links))
                reqs = [link(key).request() for key in links]
                yield from reqs  # each in turn (a request event's value is None, which yield from passes on)
                acquired(i, links)
                yield env.timeout(ser)
                released(i, links)
                for key in links:
                    link(key).release()
                    link_busy[key] = link_busy.get(key, 0) + ser
                    if intervals is not None and ser:
                        intervals.append(("link", key, int(env.now - ser), int(env.now), k, t.label, t.nbytes, 0))
                yield env.timeout(lat)
                op_fabric_bytes[k] += t.nbytes
            elif t.kind == TaskKind.STREAM:
                if free_slots[0] > 0:
                    free_slots[0] -= 1
                else:
                    ev = env.event()
                    slot_waiters.append((ev, i))
                    yield ev
                yield memx.request()
                acquired(i, ("memoryx",))
                cyc = stream_cycles(wafer, t.nbytes)
                yield env.timeout(cyc)
                released(i, ("memoryx",))
                memx.release()
                memx_busy[0] += cyc
                if intervals is not None and cyc:
                    intervals.append(("memoryx", "memoryx", int(env.now - cyc), int(env.now), k, t.label, t.nbytes,
                                      0))
                op_stream_bytes[k] += t.nbytes
            elif t.kind == TaskKind.INTERWAFER:
                ser, lat = interwafer_cycles(wafer, t.nbytes, t.hops)
                latency[i] = lat
                key = ("interwafer", t.wafer_link)
                res = link(key)
                yield res.request()
                acquired(i, (key,))
                yield env.timeout(ser)
                released(i, (key,))
                res.release()
                wafer_link_busy[t.wafer_link] = wafer_link_busy.get(t.wafer_link, 0) + ser
                if intervals is not None and ser:
                    intervals.append(("interwafer", t.wafer_link, int(env.now - ser), int(env.now), k, t.label,
                                      t.nbytes, 0))
                yield env.timeout(lat)
                op_interwafer_bytes[k] += t.nbytes
            finish(i)

        for i in range(n):
            if remaining[i] == 0:
                launch(i)
        env.run()
        if bar is not None:
            bar.close()
        unfinished = [i for i in range(n) if remaining[i] > 0]
        if unfinished:  # a plan bug, never user input
            raise RuntimeError(f"{len(unfinished)} tasks never became ready (first: {tasks[unfinished[0]].label})")
        # The nested functions refer to each other, so their closures outlive this call until the cyclic collector
        # finds them: drop the per-task dependency lists (a list per task, twice) now instead.
        deps.clear()
        succ.clear()

        ops: list[OpTiming] = []
        prev = 0
        for k, op_plan in enumerate(plan.ops):
            if op_plan.after is not None:
                prev = max((int(end_t[op_end[a]]) for a in op_plan.after), default=0)
            end = int(end_t[op_end[k]])
            split = self._critical_split(tasks, op_end[k], prev, ready_t, end_t, crit, latency)
            op = op_plan.op
            ops.append(OpTiming(
                name=op.name, kind=str(op.kind), layer=op.layer, block=op.block, start_cycles=prev,
                end_cycles=end, compute_cycles=split["compute"], fabric_cycles=split["fabric"],
                stream_cycles=split["stream"], fabric_latency_cycles=split["fabric_latency"], flops=op.flops,
                stream_bytes=op_stream_bytes[k],
                fabric_bytes=op_fabric_bytes[k], sram_bytes_per_pe=op_plan.sram_bytes_per_pe, notes=op_plan.notes,
                interwafer_cycles=split["interwafer"], interwafer_bytes=op_interwafer_bytes[k],
            ))
            prev = end
        tiles_shape = plan.grid.shape
        busy_arr, macs_arr = np.zeros(tiles_shape), np.zeros(tiles_shape)
        for tile, cyc in tile_busy.items():
            busy_arr[tile] = cyc
        for tile, macs in tile_macs.items():
            macs_arr[tile] = macs
        return SimResult(
            total_cycles=int(env.now) if n else 0,
            ops=ops,
            tile_busy_cycles=busy_arr,
            tile_macs=macs_arr,
            link_busy_cycles=link_busy,
            memoryx_busy_cycles=memx_busy[0],
            stream_bytes=sum(op_stream_bytes),
            fabric_bytes=sum(op_fabric_bytes),
            tasks=n,
            intervals=intervals,
            interwafer_busy_cycles=dict(sorted(wafer_link_busy.items())),
            interwafer_bytes=sum(op_interwafer_bytes),
        )

    @staticmethod
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
