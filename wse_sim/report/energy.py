"""Energy accounting: count the actions a simulated pass performed and price them (the report's ``energy``).

Everything is derived after the run from the plan's tasks and the :class:`~wse_sim.sim.SimResult`; the engine is
not involved. Counts per task (docs/energy.md states each rule):

- compute: FMACs (``macs_per_pe`` x the tile's PEs) and elementwise ops by precision; each reads two operands and
  writes one result in SRAM (two 64-bit reads and one 64-bit write per cycle on WSE-2, HW section 1b); the tile's
  PEs are busy for the task's cycles (``task_cost``).
- transfer: wavelet-hops, per link of the task's path, ``wavelets(bytes_per_lane)`` on each lane of the tile
  boundary times the PE hops across the tile entered (a task without tile links: its wavelets times its hops);
  turns: wavelets x turns; the payload (``nbytes``) is read from SRAM at the source and written at the
  destinations.
- stream: MemoryX bytes, written into SRAM; inter-wafer: bytes, read and written in SRAM.
- idle PE-cycles: every powered PE of every wafer (``powered_pes``: rows lost to defects included) times the
  pass's cycles, minus the busy PE-cycles; static power and the system's overhead over the pass's time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..arch import WaferSpec
from ..arch.costs import TaskCosts, TaskKind, wavelets
from ..arch.energy import ActionEnergies
from ..mapping.plan import ModelPlan, Task, TileGrid

PJ = 1e-12
COUNT_KEYS = ("fmac_fp16", "fmac_fp32", "sram_read_bytes", "sram_write_bytes", "wavelet_hops", "turn_wavelets",
              "memoryx_bytes", "interwafer_bytes", "busy_pe_cycles")
CATEGORIES = ("fmac", "sram", "fabric", "turns", "pe_active", "pe_idle", "static", "memoryx", "interwafer",
              "system_overhead")


@dataclass
class Counts:
    """Action counts (``COUNT_KEYS``)."""

    values: dict = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0.0))

    def add(self, other: Counts, scale: float = 1.0) -> None:
        for k, v in other.values.items():
            self.values[k] += v * scale


def link_wavelet_hops(wafer: WaferSpec, grid: TileGrid, task: Task) -> float:
    """Wavelet-hops of a transfer: per tile link, the wavelets on each lane of the boundary times the PE hops
    across the tile entered; without tile links, its wavelets (of ``nbytes``) times its hops."""
    if not task.links:
        return float(wavelets(wafer, task.nbytes) * max(task.hops, 1)) if task.nbytes else 0.0
    lanes_hops = sum(grid.height(i) * grid.width(j2) if i == i2 else grid.width(j) * grid.height(i2)
                     for (i, j), (i2, j2) in task.links)
    return float(lanes_hops * wavelets(wafer, task.bytes_per_lane))


def task_counts(wafer: WaferSpec, plan: ModelPlan, task: Task) -> Counts:
    """The actions of one task (see the module docstring)."""
    c = Counts()
    add_task_counts(c.values, wafer, plan, task, TaskCosts(wafer, plan.precision))
    return c


def add_task_counts(v: dict, wafer: WaferSpec, plan: ModelPlan, task: Task, costs: TaskCosts) -> None:
    """Add the actions of one task to the counts ``v`` (``costs`` prices it on ``wafer``)."""
    kind = task.kind
    elem_bytes = 4 if plan.precision == "fp32" else 2
    if kind == TaskKind.COMPUTE:
        pes = plan.grid.pes(task.tile)
        ops = (task.macs_per_pe + task.elem_ops_per_pe) * pes
        v["fmac_fp32" if plan.precision == "fp32" else "fmac_fp16"] += float(ops)
        v["sram_read_bytes"] += 2.0 * ops * elem_bytes
        v["sram_write_bytes"] += 1.0 * ops * elem_bytes
        v["busy_pe_cycles"] += float(costs(task).hold_cycles * pes)
    elif kind == TaskKind.TRANSFER:
        v["wavelet_hops"] += link_wavelet_hops(wafer, plan.grid, task)
        v["turn_wavelets"] += float(wavelets(wafer, task.nbytes) * task.turns) if task.nbytes else 0.0
        v["sram_read_bytes"] += float(task.nbytes)
        v["sram_write_bytes"] += float(task.nbytes)
    elif kind == TaskKind.STREAM:
        v["memoryx_bytes"] += float(task.nbytes)
        v["sram_write_bytes"] += float(task.nbytes)
    elif kind == TaskKind.STREAM_OUT:  # gradients to MemoryX: read from SRAM, priced per byte as the stream-in
        v["memoryx_bytes"] += float(task.nbytes)
        v["sram_read_bytes"] += float(task.nbytes)
    elif kind == TaskKind.INTERWAFER:
        v["interwafer_bytes"] += float(task.nbytes)
        v["sram_read_bytes"] += float(task.nbytes)
        v["sram_write_bytes"] += float(task.nbytes)


def op_counts(wafer: WaferSpec, plan: ModelPlan) -> list[Counts]:
    """Counts per op of the plan, in plan order: each op's tasks' counts added in task order, as summing each
    task's :func:`task_counts` would (adding a task's zero counts changes no sum)."""
    out = []
    detours = plan.params.get("defect_extra_wavelet_hops")  # a defective wafer (wse_sim.arch.defects)
    costs = TaskCosts(wafer, plan.precision)
    known: dict[int, dict] = {}  # by id of an op's tasks: ops sharing one plan's tasks count alike
    for k, op in enumerate(plan.ops):
        done = known.get(id(op.tasks))
        total = Counts(dict(done)) if done is not None else Counts()
        v = total.values
        if done is None:
            for t in op.tasks:
                if t.kind != TaskKind.BARRIER:
                    add_task_counts(v, wafer, plan, t, costs)
            known[id(op.tasks)] = dict(v)
        if detours:
            v["wavelet_hops"] += detours[k]
        out.append(total)
    return out


def dynamic_joules(e: ActionEnergies, v: dict) -> dict[str, float]:
    """Joules by category of the counted actions (no static, idle or system power)."""
    return {
        "fmac": (v["fmac_fp16"] * e.fmac_fp16_pj + v["fmac_fp32"] * e.fmac_fp32_pj) * PJ,
        "sram": (v["sram_read_bytes"] * e.sram_read_pj_per_byte + v["sram_write_bytes"] * e.sram_write_pj_per_byte)
        * PJ,
        "fabric": v["wavelet_hops"] * e.wavelet_hop_pj * PJ,
        "turns": v["turn_wavelets"] * e.turn_pj_per_wavelet * PJ,
        "pe_active": v["busy_pe_cycles"] * e.pe_active_cycle_pj * PJ,
        "memoryx": v["memoryx_bytes"] * e.memoryx_pj_per_byte * PJ,
        "interwafer": v["interwafer_bytes"] * e.interwafer_pj_per_byte * PJ,
    }


@dataclass(frozen=True)
class PassEnergy:
    """One simulated pass: its ops' names, blocks, kinds, cycles and counts, and its total cycles."""

    names: list
    blocks: list
    kinds: list
    op_cycles: list
    counts: list
    cycles: int
    wafers: int
    op_starts: list = field(default_factory=list)


def pass_energy(wafer: WaferSpec, plan: ModelPlan, result, cycles: int | None = None,
                counts: list | None = None) -> PassEnergy:
    """The counts of a simulated pass (``cycles``: its time, scaled to the model's depth when a layer subset ran;
    ``counts``: its ``op_counts``, when known, e.g. from a pass with the same tasks)."""
    return PassEnergy([op.name for op in result.ops], [op.block for op in result.ops], [op.kind for op in result.ops],
                      [op.cycles for op in result.ops], op_counts(wafer, plan) if counts is None else counts,
                      result.total_cycles if cycles is None else cycles, int(plan.params.get("wafers", 1) or 1),
                      [op.start_cycles for op in result.ops])


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def power_over_time(e: ActionEnergies, wafer: WaferSpec, p: PassEnergy) -> dict:
    """Power of one pass over time (the last of the energy's passes, unscaled: what its ``layers`` show): a base
    (static, system, every PE idle) and, per op over its span, its dynamic power beyond the idle clock of the PEs
    it keeps busy. Ops that overlap add up."""
    dyn = []
    for c, cyc in zip(p.counts, p.op_cycles, strict=True):
        joules = sum(dynamic_joules(e, c.values).values()) - c.values["busy_pe_cycles"] * e.pe_idle_cycle_pj * PJ
        dyn.append(_sig(joules / (cyc / wafer.clock_hz)) if cyc > 0 else 0.0)
    base = (e.static_w_per_pe * wafer.powered_pes + e.system_overhead_w) * p.wafers \
        + e.pe_idle_cycle_pj * PJ * wafer.powered_pes * p.wafers * wafer.clock_hz
    return {"base_w": _sig(base), "start_cycles": list(p.op_starts),
            "end_cycles": [s + c for s, c in zip(p.op_starts, p.op_cycles, strict=True)], "dynamic_w": dyn}


def energy_section(wafer: WaferSpec, passes: list[PassEnergy], tokens: int, layer_scale: float = 1.0,
                   scope: str = "pass") -> dict:
    """The report's ``energy``: joules by category and by op, counts, average and peak watts, joules per token.

    ``layer_scale`` multiplies the actions of the ``layer*`` blocks (a layer subset scaled to the model's depth);
    the passes' ``cycles`` are already scaled. Peak watts: the highest op-average power of any pass (an op's
    dynamic energy over its span and the idle power of the PEs it leaves idle), plus static and system power."""
    e = ActionEnergies.of(wafer)
    total = Counts()
    by_op: dict[str, float] = defaultdict(float)
    by_kind: dict[str, float] = defaultdict(float)
    cycles = 0
    peak_dynamic_w = 0.0
    wafers = max(p.wafers for p in passes) if passes else 1
    for p in passes:
        cycles += p.cycles
        for name, block, kind, op_cyc, c in zip(p.names, p.blocks, p.kinds, p.op_cycles, p.counts, strict=True):
            scale = layer_scale if block.startswith("layer") else 1.0
            total.add(c, scale)
            joules = sum(dynamic_joules(e, c.values).values())
            key = name.split(".", 1)[1] if block.startswith("layer") and "." in name else name
            by_op[key] += joules * scale
            by_kind[kind] += joules * scale
            if op_cyc > 0:  # the op's dynamic power, and the idle power of the PEs it leaves idle
                idle_pes = max(wafer.powered_pes * p.wafers - c.values["busy_pe_cycles"] / op_cyc, 0.0)
                op_w = (joules / op_cyc + idle_pes * e.pe_idle_cycle_pj * PJ) * wafer.clock_hz
                peak_dynamic_w = max(peak_dynamic_w, op_w)
    v = total.values
    seconds = cycles / wafer.clock_hz
    pe_cycles = float(wafer.powered_pes) * wafers * cycles
    idle = max(pe_cycles - v["busy_pe_cycles"], 0.0)
    cat = dynamic_joules(e, v)
    cat["pe_idle"] = idle * e.pe_idle_cycle_pj * PJ
    static_w = e.static_w_per_pe * wafer.powered_pes * wafers
    cat["static"] = static_w * seconds
    cat["system_overhead"] = e.system_overhead_w * wafers * seconds
    cat = {k: cat[k] for k in CATEGORIES}
    joules = sum(cat.values())
    wafer_j = joules - cat["system_overhead"] - cat["memoryx"] - cat["interwafer"]
    return {
        "scope": scope,
        "joules": joules,
        "wafer_joules": wafer_j,
        "by_category_joules": cat,
        "by_op_joules": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "by_op_kind_joules": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "counts": {**v, "idle_pe_cycles": idle},
        "seconds": seconds,
        "tokens": tokens,
        "joules_per_token": joules / tokens if tokens else None,
        "wafer_joules_per_token": wafer_j / tokens if tokens else None,
        "average_w": joules / seconds if seconds else 0.0,
        "wafer_average_w": wafer_j / seconds if seconds else 0.0,
        "peak_w": peak_dynamic_w + static_w + e.system_overhead_w * wafers,
        "wafers": wafers,
        "power_over_time": power_over_time(e, wafer, passes[-1]) if passes else None,
        "parameters": wafer.energy_dict(),
    }


def plan_energy(wafer: WaferSpec, plan: ModelPlan, result, tokens: int) -> dict:
    """The ``energy`` of one simulated pass run as it is (no layer scaling)."""
    return energy_section(wafer, [pass_energy(wafer, plan, result)], tokens)
