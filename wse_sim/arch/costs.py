"""Cost formulas: pure functions from work quantities to cycles on a wafer.

Mappings describe *what* moves and computes (MACs per PE, bytes per lane, hops); these formulas turn that into
cycles. :func:`task_cost` prices one task of any kind: the engine and the analytical bound both call it, so there
is one source of truth.
"""

from __future__ import annotations

import math
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple, Protocol

from .wafer import WaferSpec


def compute_cycles(wafer: WaferSpec, precision: str, macs_per_pe: float, elem_ops_per_pe: float = 0.0,
                   dsd_ops_per_pe: int = 0, dsd_len: int = 0, sw_steps: int = 0) -> int:
    """Cycles for one PE to do ``macs_per_pe`` FMACs and ``elem_ops_per_pe`` elementwise ops.

    Elementwise ops (add, exp, normalise, ...) use the same SIMD lanes as FMACs: one op per lane per cycle.

    When the FMACs are issued as ``dsd_ops_per_pe`` vector (DSD) instructions of ``dsd_len`` elements each (a
    GEMM block's ``@fmach`` per (k, n) pair over its Mt rows, WaferLLM's and the vendor's kernels), each
    instruction costs its issue overhead ``wafer.dsd_op_overhead_cycles`` plus ``ceil(dsd_len / lanes)`` cycles
    of SIMD work, instead of the FMACs at the full lane rate. ``sw_steps`` PE-level GEMM steps each add
    ``wafer.gemm_step_sw_cycles`` of serial software on the PE (task switches and DSR reloads between steps).
    With no DSD ops and no steps this is the plain lane-rate formula.
    """
    lanes = wafer.fmac_per_pe_per_cycle(precision)
    if dsd_ops_per_pe:
        work = dsd_ops_per_pe * (wafer.dsd_op_overhead_cycles + math.ceil(dsd_len / lanes)) + elem_ops_per_pe / lanes
    else:
        work = (macs_per_pe + elem_ops_per_pe) / lanes
    return math.ceil(work + sw_steps * wafer.gemm_step_sw_cycles)


def wavelets(wafer: WaferSpec, nbytes: float) -> int:
    """Wavelets (fabric messages of ``wafer.wavelet_bytes``) that carry ``nbytes``; a partial one is a whole one."""
    return math.ceil(nbytes / wafer.wavelet_bytes)


def serialization_cycles(wafer: WaferSpec, bytes_per_lane: float, share: int = 1) -> int:
    """Cycles to push ``bytes_per_lane`` through one PE-to-PE link (each lane of a tile edge is one link): one
    wavelet every ``cycles_per_wavelet``. ``share`` lanes whose routes cross one physical link (detours on a
    defective wafer, wse_sim.arch.defects) push their wavelets through it one after another."""
    return math.ceil(wavelets(wafer, bytes_per_lane) * share * wafer.cycles_per_wavelet)


def hop_cycles(wafer: WaferSpec, hops: int) -> int:
    """Latency of the head of a message travelling ``hops`` PE-to-PE hops (cut-through)."""
    return math.ceil(hops * wafer.hop_latency_cycles)


def stage_cycles(wafer: WaferSpec, stages: int) -> int:
    """Software cost of ``stages`` receive-combine-send steps on a path (a chain or tree reduction's adds)."""
    return math.ceil(stages * wafer.stage_overhead_cycles)


def phase_cycles(wafer: WaferSpec, phases: int) -> int:
    """Software cost of starting ``phases`` fabric operations (a collective phase each), whatever their length."""
    return math.ceil(phases * wafer.phase_overhead_cycles)


def transfer_cycles(wafer: WaferSpec, bytes_per_lane: float, hops: int, stages: int = 0,
                    turns: int = 0, phases: int = 0, share: int = 1) -> tuple[int, int]:
    """(serialization, latency) of a pipelined transfer: links are held for the first, the tail adds the second.

    The latency is the head's hop latency, plus the overhead of each stage that combines and re-sends it, plus
    the extra cycles of each turn of its route, plus the start of each fabric operation (phase) it stands for.
    """
    latency = (hop_cycles(wafer, hops) + stage_cycles(wafer, stages) + math.ceil(turns * wafer.turn_cycles)
               + phase_cycles(wafer, phases))
    return serialization_cycles(wafer, bytes_per_lane, share), latency


def stream_cycles(wafer: WaferSpec, nbytes: float) -> int:
    """Cycles for ``nbytes`` to cross the MemoryX link in one direction: weights in, or gradients out.

    The link is full-duplex, each direction at ``wafer.memoryx_bytes_per_s``: 12 x 100 GbE ports, "1.2 Tbps I/O
    to and from the chip", CS-3 raising "the ingress/egress bandwidth by 30%" (shared/facts/hardware.md, host I/O
    and per-system I/O rows); Ethernet carries both directions at line rate at once."""
    return math.ceil(nbytes / wafer.memoryx_bytes_per_cycle)


def interwafer_cycles(wafer: WaferSpec, nbytes: float, hops: int = 0) -> tuple[int, int]:
    """(serialization, latency) in ``wafer``'s cycles of ``nbytes`` of activations crossing to the next wafer of
    a pipeline: the bytes at the inter-wafer link's bandwidth hold the link; the link's latency and ``hops`` PE
    hops on the two wafers (to the edge and from it) follow."""
    ser = math.ceil(nbytes / wafer.interwafer_bytes_per_s * wafer.clock_hz)
    return ser, math.ceil(wafer.interwafer_latency_s * wafer.clock_hz) + hop_cycles(wafer, hops)


# ---- one task ----------------------------------------------------------------------------------------------------


class TaskKind(StrEnum):
    """What a task occupies on the hardware, and so which formula prices it (see :func:`task_cost`)."""

    STREAM = "stream"  # MemoryX -> wafer ingress of weights
    STREAM_OUT = "stream_out"  # wafer -> MemoryX egress (weight gradients): its own port, no weight buffer
    TRANSFER = "transfer"  # fabric: holds its links for the serialization time, then adds hop latency
    COMPUTE = "compute"  # one tile's PEs busy
    BARRIER = "barrier"  # no cost: joins dependencies; may free a weight buffer
    INTERWAFER = "interwafer"  # activations to the next wafer: holds inter-wafer link ``wafer_link``, then latency


class PricedTask(Protocol):
    """The fields of a task (``wse_sim.mapping.plan.Task``) that its cost depends on."""

    kind: TaskKind
    macs_per_pe: int
    elem_ops_per_pe: int
    dsd_ops_per_pe: int
    dsd_len: int
    sw_steps: int
    bytes_per_lane: float
    hops: int
    stages: int
    turns: int
    phases: int
    nbytes: int
    link_share: int


class TaskCost(NamedTuple):
    """A task's uncontended time: it holds its resources (a tile's PEs, its links, the MemoryX port or an
    inter-wafer link) for ``hold_cycles``, then its result arrives ``latency_cycles`` later."""

    hold_cycles: int
    latency_cycles: int = 0

    @property
    def cycles(self) -> int:
        return self.hold_cycles + self.latency_cycles


def task_cost(wafer: WaferSpec, precision: str, task: PricedTask) -> TaskCost:
    """What ``task`` costs on ``wafer`` at storage ``precision``, whatever its kind (a barrier costs nothing)."""
    kind = task.kind
    if kind == TaskKind.COMPUTE:
        return TaskCost(compute_cycles(wafer, precision, task.macs_per_pe, task.elem_ops_per_pe, task.dsd_ops_per_pe,
                                       task.dsd_len, task.sw_steps))
    if kind == TaskKind.TRANSFER:
        return TaskCost(*transfer_cycles(wafer, task.bytes_per_lane, task.hops, task.stages, task.turns,
                                         task.phases, task.link_share))
    if kind in (TaskKind.STREAM, TaskKind.STREAM_OUT):
        return TaskCost(stream_cycles(wafer, task.nbytes))
    if kind == TaskKind.INTERWAFER:
        return TaskCost(*interwafer_cycles(wafer, task.nbytes, task.hops))
    return TaskCost(0)


_PRICED_FIELDS = {  # per kind, the fields task_cost reads (after the kind itself)
    TaskKind.COMPUTE: ("macs_per_pe", "elem_ops_per_pe", "dsd_ops_per_pe", "dsd_len", "sw_steps"),
    TaskKind.TRANSFER: ("bytes_per_lane", "hops", "stages", "turns", "phases", "link_share"),
    TaskKind.STREAM: ("nbytes",),
    TaskKind.STREAM_OUT: ("nbytes",),
    TaskKind.INTERWAFER: ("nbytes", "hops"),
}
# One C-level getter per kind: a plan prices hundreds of thousands of tasks.
_KEY_OF = {kind: attrgetter("kind", *fields) for kind, fields in _PRICED_FIELDS.items()}


def _kind_only(task: PricedTask) -> tuple:
    return (task.kind,)


def priced_key(task: PricedTask) -> tuple:
    """The fields :func:`task_cost` reads for ``task``'s kind: tasks with equal keys cost the same."""
    return _KEY_OF.get(task.kind, _kind_only)(task)


class TaskCosts:
    """:func:`task_cost` on one wafer at one precision, computed once per distinct :func:`priced_key`: a plan
    has hundreds of thousands of tasks but few distinct ones."""

    def __init__(self, wafer: WaferSpec, precision: str):
        self.wafer, self.precision = wafer, precision
        self.known: dict[tuple, TaskCost] = {}

    def __call__(self, task: PricedTask) -> TaskCost:
        key = priced_key(task)
        cost = self.known.get(key)
        if cost is None:
            cost = self.known[key] = task_cost(self.wafer, self.precision, task)
        return cost

    def of_all(self, tasks) -> list[TaskCost]:
        """``[self(t) for t in tasks]``, without a Python call per task."""
        known, key_of = self.known, _KEY_OF
        out = []
        for t in tasks:
            key = key_of.get(t.kind, _kind_only)(t)
            cost = known.get(key)
            if cost is None:
                cost = known[key] = task_cost(self.wafer, self.precision, t)
            out.append(cost)
        return out


# ---- PE-level steps of a GEMM k-loop ------------------------------------------------------------------------------
# A block GEMM on a P x P PE mesh (SUMMA, Cannon, MeshGEMM) runs in P steps: each step a PE receives one block of A
# and one of B (broadcast from the step's owner, or shifted from a ring neighbour) and multiplies them. The receive
# is a fabric DSD operation whose completion the PE's software handles (it activates a task: x_done/y_done in the
# vendor's SUMMA, x_finish/y_finish in WaferLLM's MeshGEMM) before the step may use the block: one routing stage
# (the PLMR model's beta, ``stage_overhead_cycles``) per PE-level step. Each step is also one fabric operation
# started anew (its broadcast or shift): one phase (``phase_overhead_cycles``).
STEP_STAGES = 1
STEP_PHASES = 1


class PeStep(NamedTuple):
    """Cycles of one PE-level step: receive a block, multiply it (see :func:`pe_step`)."""

    compute: int  # the step's FMACs on one PE
    serialization: int  # the block's wavelets over the busiest link
    latency: int  # hops, receive stages and turns of the block's longest route
    cycles: int  # steady-state time per step

    @property
    def transfer(self) -> int:
        return self.serialization + self.latency

    @property
    def bound(self) -> str:
        """``compute`` when the multiply sets the pace, ``link`` when the block's wavelets do, else ``latency``."""
        if self.cycles <= self.compute:
            return "compute"
        return "link" if self.cycles <= self.serialization else "latency"


def pe_step(wafer: WaferSpec, precision: str, macs_per_pe: float, bytes_per_lane: float, hops: int,
            stages: int = STEP_STAGES, turns: int = 0, buffers: int = 2, forwards: bool = False,
            phases: int = STEP_PHASES, dsd_ops_per_pe: float = 0, dsd_len: int = 0, sw_steps: int = 0) -> PeStep:
    """Steady-state cycles per PE-level step of a k-loop that receives a block into one of ``buffers`` receive
    buffers and multiplies it.

    A buffer is busy from the moment its block starts arriving until the multiply that reads it ends, so
    ``buffers`` blocks are in flight or in use at once. With ``x`` = the transfer's serialization plus latency and
    ``c`` = the multiply:

    - one buffer: the next block can only start arriving once this step's multiply is done: ``x + c``;
    - ``forwards`` (Cannon-style shifts): the block sent at step ``s + 1`` is the one received at step ``s``, so
      transfers chain and overlap the multiply: ``max(c, x)``;
    - otherwise (broadcasts of resident blocks, SUMMA with prefetch): each buffer cycles through a transfer and a
      multiply, ``buffers`` steps per cycle, and neither the multiplies nor a link's wavelets overlap themselves:
      ``max(c, ser, ceil((x + c) / buffers))``.

    ``c`` is the multiply issued as ``dsd_ops_per_pe`` vector instructions of ``dsd_len`` elements plus the step's
    ``sw_steps`` software (:func:`compute_cycles`), as a tile's compute task charges it.

    A tile of ``n`` PE-level steps of equal cost takes ``n`` times this (the engine reproduces it when a tile's
    transfer carries the ``n`` blocks' bytes and ``n`` times one step's hops, stages and phases); see
    ``docs/validation.md`` (C3, GEMM).
    """
    if buffers < 1:
        raise ValueError(f"buffers must be at least 1, got {buffers}")
    c = compute_cycles(wafer, precision, macs_per_pe, 0.0, dsd_ops_per_pe, dsd_len, sw_steps)
    ser, lat = transfer_cycles(wafer, bytes_per_lane, hops, stages, turns, phases)
    x = ser + lat
    if buffers == 1:
        cycles = x + c
    elif forwards:
        cycles = max(c, x)
    else:
        cycles = max(c, ser, math.ceil((x + c) / buffers))
    return PeStep(c, ser, lat, cycles)
