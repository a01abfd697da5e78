"""``wse-sim train``: one optimizer step of data-parallel weight-streaming training, timed and (optionally)
computed.

Timing. One system processes its share of the global batch (``batch / systems`` sequences) in micro-batches;
a micro-batch runs in *passes* of as many sequences as the weight-streaming mapping can keep resident (the
activations of a pass stay in SRAM from its forward to its backward: no recomputation; a pass that does not fit
is split, and every pass streams the weights again). Each pass is two engine runs of the existing
weight-streaming plan: the forward graph (weights stream in layer by layer) and the backward graph of
:mod:`wse_sim.workloads.training_graph` (layers in reverse; every weight streams in again for ``dX = dY W^T``
and its gradient ``dW = X^T dY`` streams out, on the MemoryX link's other direction: the link is full-duplex).
Across systems, SwarmX broadcasts the weight stream down a tree and sums the gradient stream on the way up at
line rate: it adds its per-level latency to every stream and
whatever part of the gradient traffic the backward pass cannot hide. AdamW runs in MemoryX as the gradients
of the last micro-batch arrive, layer by layer; what is exposed is the update of the first layer and the
embeddings (the next step's forward needs them first) or the part of the whole update the last backward pass
cannot hide, whichever is longer.

Numerics (``--numerics``, small models or a ``--checkpoint``): the loss, the gradients (by Hugging Face name)
and the AdamW step of :mod:`wse_sim.workloads.training`, on the same global batch split the same way over
systems and micro-batches, with the weight matmuls, the attention and the row-wise reductions on the plans'
tile blocks (:func:`plan_matmuls`, :class:`~wse_sim.sim.train_numerics.PlanOps`). They run beside the timing
model, not inside the engine's tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..arch import WaferSpec, load_wafer
from ..arch.cluster import ClusterSpec, load_cluster
from ..arch.defects import Remap, apply_defects, defect_rate, usable_wafer, wafer_remap
from ..errors import UserError
from ..gc_pause import gc_paused
from ..mapping.plan import SramOverflowError
from ..mapping.registry import get_mapping
from ..mapping.weight_streaming import ADAMW_STATE_BYTES_PER_PARAM, check_memoryx
from ..report.energy import Counts, PassEnergy, energy_section, pass_energy
from ..sim import Engine
from ..workloads import get_preset, load_checkpoint, load_hf_config, lower_model
from ..workloads.config import ConfigError, ModelConfig
from ..workloads.graph import BYTES_PER_ELEM, OpKind, WorkloadGraph
from ..workloads.tokens import random_tokens
from ..workloads.training_graph import attention_flops, lower_backward
from .scenario import make_grid

# training.md section 1: the published Cerebras-GPT recipes. systems: the config comment's CS-2 count.
RECIPES: dict[str, dict] = {
    "cerebras-gpt-111m": {"batch": 120, "micro_batch": 120, "systems": 1, "steps": 9037, "tokens": 2.22e9},
    "cerebras-gpt-256m": {"batch": 264, "micro_batch": 264, "systems": 1, "steps": 9468, "tokens": 5.12e9},
    "cerebras-gpt-590m": {"batch": 264, "micro_batch": 264, "systems": 1, "steps": 21836, "tokens": 1.18e10},
    "cerebras-gpt-1.3b": {"batch": 528, "micro_batch": 132, "systems": 4, "steps": 24334, "tokens": 2.63e10},
    "cerebras-gpt-2.7b": {"batch": 528, "micro_batch": 132, "systems": 4, "steps": 49041, "tokens": 5.30e10},
    "cerebras-gpt-6.7b": {"batch": 1040, "micro_batch": 65, "systems": 16, "steps": 62522, "tokens": 1.33e11},
    "cerebras-gpt-13b": {"batch": 720, "micro_batch": 90, "systems": 8, "steps": 174335, "tokens": 2.57e11},
}
RECIPE_SEQ = 2048
RECIPE_SOURCE = "../shared/facts/training.md section 1 (Cerebras modelzoo configs, HF model cards)"


@dataclass(frozen=True)
class TrainSpec:
    model: str | None = None
    checkpoint: str | None = None
    wafer: str = "wse2"
    systems: tuple[int, ...] | None = None  # None: the recipe's count, else 1
    batch: int = 8  # global batch, sequences
    micro_batch: int | None = None  # per system; default: the whole per-system batch
    seq: int = 128
    precision: str = "bf16"
    recipe: str | None = None
    grid: str | None = None
    tiles: str | None = None
    max_pass_batch: int | None = None  # cap on sequences per pass (default: the micro-batch)
    numerics: bool | None = None  # None: on with a checkpoint or a model under NUMERICS_MAX_PARAMS
    tokens: np.ndarray | None = None  # [batch, seq] ids
    seed: int = 0
    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    save_grads: str | None = None
    save_updated: str | None = None
    train_tokens: float | None = None  # tokens of the whole run (time to train); default the recipe's
    cluster_overrides: dict | None = None
    defects: str | None = None  # failed PEs drawn at this per-PE rate (as `run`; docs/defects.md)
    defect_seed: int | None = None
    defect_map: str | None = None  # a file of failed PEs, "ROW COL" per line


NUMERICS_MAX_PARAMS = 20_000_000


def apply_recipe(spec: TrainSpec) -> TrainSpec:
    """``spec`` with batch, micro-batch, seq and tokens from its recipe (exact, so they override), and the model
    and system count unless given."""
    from dataclasses import replace

    if spec.recipe is None:
        return replace(spec, systems=spec.systems or (1,))
    key = spec.recipe.lower()
    if key not in RECIPES:
        raise UserError(f"unknown recipe {spec.recipe!r} (known: {', '.join(RECIPES)})")
    r = RECIPES[key]
    return replace(spec, model=spec.model or key, batch=r["batch"], micro_batch=r["micro_batch"], seq=RECIPE_SEQ,
                   systems=spec.systems or (r["systems"],),
                   train_tokens=spec.train_tokens or r["tokens"])


def _resolve_model(spec: TrainSpec):
    if spec.checkpoint:
        weights = load_checkpoint(spec.checkpoint)
        return weights.config, weights
    if spec.model is None:
        raise UserError("give --model, --checkpoint or --recipe")
    try:
        if Path(spec.model).exists():
            return load_hf_config(spec.model), None
        return get_preset(spec.model), None
    except ConfigError as exc:
        raise UserError(str(exc)) from None


@dataclass
class PassTiming:
    """One pass (``sequences`` sequences) through forward and backward on one system."""

    sequences: int
    forward_cycles: int
    backward_cycles: int
    forward_stream_bytes: int  # MemoryX -> wafer (weights, norm parameters, embedding rows)
    backward_stream_bytes: int  # MemoryX -> wafer in the backward (the weights again, for the dgrad ops)
    wgrad_stream_cycles: int  # exposed gradient stream-out in the backward: on the wgrad ops' critical paths, plus
    # the tail after the last op, when only stream-outs are left
    wgrad_stream_bytes: int  # wafer -> MemoryX: the weight gradients (the link's egress direction)
    forward_flops: int
    backward_flops: int
    sram_peak_bytes_per_pe: int
    defect_extra_hops: int = 0  # detour hops charged on the pass's transfers (a defective wafer)
    memoryx_in_busy_cycles: int = 0  # the MemoryX link's ingress busy in the forward and backward runs
    memoryx_out_busy_cycles: int = 0  # its egress busy (gradient stream-outs), in parallel with the ingress
    energy: tuple = ()  # (forward, backward) PassEnergy: the counts the step's energy prices (not in the report)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "energy"}


def _simulate(graph: WorkloadGraph, wafer: WaferSpec, grid, remap: Remap | None = None):
    """(result, SRAM peak per PE, detour hops, PassEnergy) of one engine run of ``graph``'s weight-streaming plan;
    on a defective wafer the plan's transfers pay the detours (its actions are unchanged)."""
    mapping = get_mapping("weight-streaming")
    with gc_paused():
        plan = mapping.plan(graph, wafer, grid)
        if remap is not None:
            plan = apply_defects(plan, remap, wafer.wavelet_bytes)
    result = Engine(wafer, plan).run()
    sram = max(op.sram_bytes_per_pe for op in plan.ops)
    return result, sram, plan.params.get("defect_extra_hops", 0), pass_energy(wafer, plan, result)


def _fits(config: ModelConfig, seqs: int, spec: TrainSpec, wafer: WaferSpec, grid) -> bool:
    try:
        for g in (lower_model(config, seqs, spec.seq, spec.precision),
                  lower_backward(config, seqs, spec.seq, spec.precision)):
            with gc_paused():
                get_mapping("weight-streaming").plan(g, wafer, grid)
    except SramOverflowError:
        return False
    return True


def simulate_pass(config: ModelConfig, seqs: int, spec: TrainSpec, wafer: WaferSpec, grid,
                  remap: Remap | None = None) -> PassTiming:
    fwd_graph = lower_model(config, seqs, spec.seq, spec.precision)
    bwd_graph = lower_backward(config, seqs, spec.seq, spec.precision)
    fwd, sram_f, hops_f, energy_f = _simulate(fwd_graph, wafer, grid, remap)
    bwd, sram_b, hops_b, energy_b = _simulate(bwd_graph, wafer, grid, remap)
    wgrad = [op for op in bwd.ops if op.name.endswith(".wgrad")]
    tail = bwd.total_cycles - bwd.ops[-1].end_cycles  # stream-outs still leaving after the last op ended
    return PassTiming(seqs, fwd.total_cycles, bwd.total_cycles, fwd.stream_bytes, bwd.stream_bytes,
                      sum(op.stream_cycles for op in wgrad) + tail, bwd.stream_out_bytes,
                      fwd_graph.total_flops, bwd_graph.total_flops, max(sram_f, sram_b), hops_f + hops_b,
                      memoryx_in_busy_cycles=fwd.memoryx_busy_cycles + bwd.memoryx_busy_cycles,
                      memoryx_out_busy_cycles=bwd.memoryx_out_busy_cycles, energy=(energy_f, energy_b))


def matmul_flops_closed_form(config: ModelConfig, tokens: int) -> dict:
    """``6 x (weights that multiply) x tokens`` (forward 2, backward 4) plus the attention products (forward 1x,
    backward 2x), against which the simulated graphs' matmul FLOPs are checked exactly."""
    d, f, v = config.d_model, config.d_ff, config.vocab_size
    mult = config.n_layer * (d * 3 * d + d * d + d * f + f * d) + d * v
    return {"weight_matmul_params": mult, "six_n_t": 6 * mult * tokens}


def graph_weight_matmul_flops(graph: WorkloadGraph) -> int:
    """FLOPs of a graph's weight matmuls without the bias adds (the part ``6 N T`` counts)."""
    return sum(2 * op.groups * op.m * op.k * op.n for op in graph.ops() if op.kind == OpKind.MATMUL and op.weight)


@dataclass(frozen=True)
class BatchSplit:
    """How one system's share of the global batch runs: micro-batches, each in passes of what fits in SRAM."""

    per_system: int  # the busiest system's sequences (an uneven split gives some systems one sequence less)
    micro: int
    micro_sizes: list[int]
    pass_seqs: int  # sequences per pass: the largest that fits, halving from the micro-batch
    sizes: list[int]  # every pass of the step, in order


def split_batch(config: ModelConfig, spec: TrainSpec, wafer: WaferSpec, grid, systems: int) -> BatchSplit:
    if systems > spec.batch:
        raise UserError(f"{systems} systems for a global batch of {spec.batch} sequences: some would idle")
    per_system = -(-spec.batch // systems)
    micro = min(spec.micro_batch or per_system, per_system)
    micro_sizes = [micro] * (per_system // micro) + ([per_system % micro] if per_system % micro else [])
    pass_seqs = min(micro, spec.max_pass_batch or micro)
    while pass_seqs > 1 and not _fits(config, pass_seqs, spec, wafer, grid):
        pass_seqs = max(1, pass_seqs // 2)
    if pass_seqs == 1 and not _fits(config, 1, spec, wafer, grid):
        raise UserError(f"one sequence of {spec.seq} tokens does not fit the wafer's SRAM under weight streaming")
    sizes = [p for mb in micro_sizes
             for p in [pass_seqs] * (mb // pass_seqs) + ([mb % pass_seqs] if mb % pass_seqs else [])]
    return BatchSplit(per_system, micro, micro_sizes, pass_seqs, sizes)


@dataclass(frozen=True)
class StepCycles:
    forward: int
    backward: int
    gradient_stream_out: int
    swarmx_reduce: float
    optimizer: float  # exposed
    levels: int  # SwarmX tree levels

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.swarmx_reduce + self.optimizer


def step_cycles(config: ModelConfig, precision: str, wafer: WaferSpec, cluster: ClusterSpec, systems: int,
                passes: dict[int, PassTiming], sizes: list[int]) -> StepCycles:
    """The step's critical path: every pass's forward and backward, the exposed SwarmX and optimizer time."""
    clock = wafer.clock_hz
    params = config.param_count()
    grad_bytes = params * BYTES_PER_ELEM[precision]  # one pass's gradients leave the wafer at storage precision
    levels = cluster.levels(systems)
    last_bwd = passes[sizes[-1]].backward_cycles
    # SwarmX: every stream (one forward, one backward per pass) starts `levels` tree levels away; the gradient
    # stream of each pass crosses the tree at line rate while the backward runs, what it cannot hide is exposed
    swarmx = 0.0
    if systems > 1:
        lat_cycles = levels * cluster.swarmx_level_latency_s * clock
        grad_tree_cycles = grad_bytes / cluster.swarmx_link_bytes_per_s * clock
        swarmx = 2 * len(sizes) * lat_cycles + len(sizes) * max(0.0, grad_tree_cycles - last_bwd)
    # AdamW in MemoryX: layer by layer as the last gradients arrive (reverse order); exposed: the first layer's
    # and the embeddings' update (needed first by the next forward), or what the last backward cannot hide
    rate, d = cluster.memoryx_optimizer_params_per_s, config.d_model
    embed = config.vocab_size * d + config.n_positions * d
    first = embed + (params - embed - 2 * d) / config.n_layer
    opt_exposed = max(first / rate * clock, params / rate * clock - last_bwd)
    return StepCycles(sum(passes[s].forward_cycles for s in sizes), sum(passes[s].backward_cycles for s in sizes),
                      sum(passes[s].wgrad_stream_cycles for s in sizes), swarmx, opt_exposed, levels)


def step_model(config: ModelConfig, spec: TrainSpec, wafer: WaferSpec, cluster: ClusterSpec, systems: int,
               passes: dict[int, PassTiming], grid, log, remap: Remap | None = None) -> dict:
    """Time one optimizer step on ``systems`` systems, simulating (and caching in ``passes``) what it needs."""
    split = split_batch(config, spec, wafer, grid, systems)
    sizes = split.sizes
    for s in sorted(set(sizes), reverse=True):
        if s not in passes:
            log(f"simulating a pass of {s} sequence(s) x {spec.seq} tokens: forward and backward ...")
            passes[s] = simulate_pass(config, s, spec, wafer, grid, remap)
    c = step_cycles(config, spec.precision, wafer, cluster, systems, passes, sizes)
    seconds = c.total / wafer.clock_hz
    tokens = spec.batch * spec.seq
    flops = _step_flops(config, spec, wafer, systems, passes, sizes)
    traffic = _traffic(config, spec.precision, wafer, cluster, systems, passes, sizes, c)
    return {
        "systems": systems,
        "per_system_batch": split.per_system,
        "micro_batch": split.micro,
        "accumulation_steps": len(split.micro_sizes),
        "activation_memory": _activation_memory(split, passes),
        "pass_order": sizes,  # sequences of each forward + backward pass, in the order the step runs them
        "step_cycles": c.total,
        "step_seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "samples_per_s": spec.batch / seconds,
        "mfu": flops["model_flops"] / (seconds * systems * flops["peak_flops_per_s_per_system"]),
        "phases_cycles": {
            "forward": c.forward, "backward": c.backward, "gradient_stream_out": c.gradient_stream_out,
            "swarmx_reduce": c.swarmx_reduce, "optimizer": c.optimizer,
        },
        **traffic,
        "energy": step_energy(wafer, systems, [passes[s] for s in sizes], c, traffic, tokens),
        "flops": flops,
        **_bounds(config, spec, wafer, cluster, systems, len(sizes)),
    }


def step_energy(wafer: WaferSpec, systems: int, step_passes: list[PassTiming], c: StepCycles, traffic: dict,
                tokens: int) -> dict:
    """The step's ``energy``: one system's passes (every forward and backward engine run, priced by
    :func:`~wse_sim.report.energy.energy_section` as ``run`` prices a prefill), its gradient bytes over SwarmX
    (priced per byte as inter-wafer 100 GbE traffic) and the exposed SwarmX and optimizer time (the wafer idles:
    static, idle-PE and system power), times ``systems`` (every system runs the busiest one's passes)."""
    idle = PassEnergy([], [], [], [], [], round(c.swarmx_reduce + c.optimizer), 1)
    swarmx = Counts()
    swarmx.values["interwafer_bytes"] = float(traffic["swarmx"]["reduce_bytes_per_system"])
    links = PassEnergy(["swarmx.gradient_reduce"], ["swarmx"], ["swarmx"], [0], [swarmx], 0, 1)
    one = energy_section(wafer, [idle, links, *(e for p in step_passes for e in p.energy)],
                         tokens // systems, scope="train step, one system")
    seconds = one["seconds"]
    total = one["joules"] * systems
    return {
        "scope": "one optimizer step, every system", "systems": systems, "joules": total,
        "by_category_joules": {k: v * systems for k, v in one["by_category_joules"].items()},
        "joules_per_token": total / tokens, "average_w": total / seconds if seconds else 0.0,
        "per_system": one,
        "not_counted": "MemoryX's AdamW arithmetic and DRAM traffic (no per-update energy parameter; its exposed "
                       "time is charged as idle wafer and system power), SwarmX's node compute beyond link bytes",
    }


def _activation_memory(split: BatchSplit, passes: dict[int, PassTiming]) -> dict:
    return {
        "sequences_per_pass": split.pass_seqs, "passes_per_micro_batch": -(-split.micro // split.pass_seqs),
        "micro_batch_sizes": split.micro_sizes,
        "recomputation": False,
        "sram_peak_bytes_per_pe": max(passes[s].sram_peak_bytes_per_pe for s in set(split.sizes)),
        "note": "activations of a pass stay resident from its forward to its backward (no recomputation); "
                "a micro-batch larger than fits runs in passes, each streaming the weights again",
    }


def _traffic(config: ModelConfig, precision: str, wafer: WaferSpec, cluster: ClusterSpec, systems: int,
             passes: dict[int, PassTiming], sizes: list[int], c: StepCycles) -> dict:
    """The report's ``memoryx`` and ``swarmx`` sections: bytes moved per system and exposed times."""
    params = config.param_count()
    weight_bytes = params * BYTES_PER_ELEM[precision]
    rate = cluster.memoryx_optimizer_params_per_s
    n_passes = len(sizes)
    return {
        "memoryx": {
            "weight_stream_bytes_per_system": sum(
                passes[s].forward_stream_bytes + passes[s].backward_stream_bytes for s in sizes),
            "gradient_stream_out_bytes_per_system": sum(passes[s].wgrad_stream_bytes for s in sizes),
            "weight_stream_busy_s_per_system": sum(passes[s].memoryx_in_busy_cycles for s in sizes) / wafer.clock_hz,
            "gradient_stream_out_busy_s_per_system": sum(passes[s].memoryx_out_busy_cycles for s in sizes)
            / wafer.clock_hz,
            "link_bytes_per_s": wafer.memoryx_bytes_per_s,
            "link_duplex": "full: weights in and gradients out each at link_bytes_per_s, at once",
            "optimizer_params": params, "optimizer_total_s": params / rate,
            "optimizer_exposed_s": c.optimizer / wafer.clock_hz,
        },
        "swarmx": {
            "levels": c.levels, "fan_in": cluster.swarmx_fan_in,
            "broadcast_bytes": n_passes * 2 * weight_bytes if systems > 1 else 0,
            "reduce_bytes_per_system": n_passes * weight_bytes if systems > 1 else 0,
            "exposed_s": c.swarmx_reduce / wafer.clock_hz,
        },
    }


def _step_flops(config: ModelConfig, spec: TrainSpec, wafer: WaferSpec, systems: int,
                passes: dict[int, PassTiming], sizes: list[int]) -> dict:
    params, tokens = config.param_count(), spec.batch * spec.seq
    attn = attention_flops(config, spec.seq, spec.batch)
    return {
        "model_flops": 6 * params * tokens + attn, "six_n_t": 6 * params * tokens, "attention_flops": attn,
        "definition": "mfu = (6 x params x tokens + attention flops) / (step_seconds x systems x peak); "
                      "attention flops = 3 x 2 x 2 x seq^2 x d_model x layers per sequence (fwd + 2x bwd, "
                      "the full unmasked score and context products)",
        "simulated_flops": systems * sum(passes[s].forward_flops + passes[s].backward_flops for s in sizes),
        "closed_form_weight_matmul_flops": matmul_flops_closed_form(config, tokens)["six_n_t"],
        "peak_flops_per_s_per_system": wafer.peak_flops_per_s(spec.precision),
    }


def _bounds(config: ModelConfig, spec: TrainSpec, wafer: WaferSpec, cluster: ClusterSpec, systems: int,
            n_passes: int) -> dict:
    """Closed-form floors of the step: compute at peak, the weight streams at MemoryX, gradients over SwarmX."""
    tokens = spec.batch * spec.seq
    weight_bytes = config.param_count() * BYTES_PER_ELEM[spec.precision]
    bounds = {
        "compute_s": matmul_flops_closed_form(config, tokens)["six_n_t"] / (systems * wafer.peak_flops_per_s(
            spec.precision)),
        "memoryx_weight_stream_s": n_passes * 2 * weight_bytes / wafer.memoryx_bytes_per_s,
        "swarmx_gradient_s": (n_passes * weight_bytes / cluster.swarmx_link_bytes_per_s) if systems > 1 else 0.0,
    }
    return {"bounds_s": bounds, "bound_s": max(bounds.values())}


def run_train(spec: TrainSpec, log=lambda msg: None) -> dict:
    """Simulate one optimizer step for every system count in ``spec.systems``; the report dict."""
    spec = apply_recipe(spec)
    config, weights = _resolve_model(spec)
    if config.is_llama:
        raise UserError("wse-sim train covers GPT-2 models (the Cerebras-GPT family)")
    healthy = load_wafer(spec.wafer)
    remap = wafer_remap(healthy, spec.defects, spec.defect_seed, spec.defect_map)
    wafer = usable_wafer(healthy, remap)  # every system's wafer has the same defects (a simplification)
    cluster = load_cluster(wafer.name, spec.cluster_overrides)
    check_memoryx(config, spec.precision, wafer, ADAMW_STATE_BYTES_PER_PARAM)
    grid = make_grid(wafer, spec.grid, spec.tiles)
    if spec.seq > config.n_positions:
        raise UserError(f"seq {spec.seq} exceeds the model's {config.n_positions} positions")
    t0 = time.perf_counter()
    passes: dict[int, PassTiming] = {}
    steps = [step_model(config, spec, wafer, cluster, n, passes, grid, log, remap) for n in spec.systems]
    head = steps[0]
    report: dict = {
        "kind": "train",
        "model": config.name,
        "wafer": wafer.name,
        "mapping": "weight-streaming",
        "cluster": cluster.to_dict(),
        "run": {"batch": spec.batch, "micro_batch": spec.micro_batch, "seq": spec.seq, "precision": spec.precision,
                "systems": list(spec.systems), "recipe": spec.recipe},
        "params": config.param_count(),
        "grid_pes": grid.rows * grid.cols,
        **{k: head[k] for k in head},
    }
    if spec.recipe:
        r = RECIPES[spec.recipe.lower()]
        report["recipe"] = {**r, "seq": RECIPE_SEQ, "source": RECIPE_SOURCE}
    if spec.train_tokens:
        n_steps = spec.train_tokens / (spec.batch * spec.seq)
        report["train_tokens"] = spec.train_tokens
        report["train_steps"] = n_steps
        report["time_to_train_s"] = n_steps * head["step_seconds"]
        report["system_days"] = report["time_to_train_s"] * head["systems"] / 86400
    if len(steps) > 1:
        base = steps[0]
        report["scaling"] = [{
            "systems": s["systems"], "step_seconds": s["step_seconds"],
            "speedup": base["step_seconds"] / s["step_seconds"],
            "efficiency": base["step_seconds"] / s["step_seconds"] / (s["systems"] / base["systems"]),
            **({"time_to_train_s": spec.train_tokens / (spec.batch * spec.seq) * s["step_seconds"]}
               if spec.train_tokens else {}),
            "joules_per_token": s["energy"]["joules_per_token"],
        } for s in steps]
    report["passes"] = {str(k): v.to_dict() for k, v in sorted(passes.items())}
    if remap is not None:
        rate = defect_rate(healthy, spec.defects) if spec.defects is not None else None
        report["defects"] = remap.summary() | {"rate_per_pe": rate,
            "extra_hops_charged": {str(k): v.defect_extra_hops for k, v in sorted(passes.items())},
            "note": "every system's wafer has this defect map; extra hops per simulated pass (forward + backward)"}
    report["numerics"] = _numerics(spec, config, weights, wafer, grid)
    report["loss"] = report["numerics"].get("loss")
    report["simulation_wall_s"] = time.perf_counter() - t0
    return report


def plan_matmuls(*plans):
    """``weight_matmul(name, a, b, bias)`` for the training numerics: op ``name`` of the forward or backward
    ``plans``, executed block by block as the mapping partitions and reduces it."""
    from ..sim.numerics import run_matmul_plan  # the kernels (numba): imported only when numerics run

    ops = {p.op.name: (p, plan.precision) for plan in plans for p in plan.ops}

    def run(name, a, b, bias=None):
        op_plan, precision = ops[name]
        return run_matmul_plan(op_plan, precision, a, b, bias)

    return run


def _numerics(spec: TrainSpec, config: ModelConfig, weights, wafer: WaferSpec, grid) -> dict:
    on = spec.numerics if spec.numerics is not None else (
        weights is not None or config.param_count() <= NUMERICS_MAX_PARAMS)
    if not on:
        return {"enabled": False, "reason": f"off: over {NUMERICS_MAX_PARAMS:,} parameters (use --numerics)"}
    from ..sim.train_numerics import PlanOps
    from ..workloads import random_weights
    from ..workloads.training import AdamWConfig, train_step

    if weights is None:
        weights = random_weights(config, spec.seed)
    ids = spec.tokens if spec.tokens is not None else random_tokens(config.vocab_size, spec.batch, spec.seq,
                                                                   spec.seed)
    ids = np.asarray(ids).reshape(spec.batch, spec.seq)
    systems = spec.systems[0]
    if spec.batch % systems:  # an uneven split: the same gradients, computed as one system's
        systems = 1
    per = spec.batch // systems
    pass_seqs = split_batch(config, spec, wafer, grid, spec.systems[0]).pass_seqs
    # in the simulated passes' pieces where they divide the share (accumulation is exact either way)
    micro = pass_seqs if per % pass_seqs == 0 else min(spec.micro_batch or per, per)
    opt = AdamWConfig(lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
                      max_grad_norm=spec.max_grad_norm)
    t0 = time.perf_counter()
    mapping = get_mapping("weight-streaming")
    plans = [mapping.plan(lower(config, micro, spec.seq, spec.precision), wafer, grid)
             for lower in (lower_model, lower_backward)]
    result, updated = train_step(weights, ids, opt, micro_batch=micro, systems=systems, precision=spec.precision,
                                 weight_matmul=plan_matmuls(*plans), ops=PlanOps(*plans))
    out = {"enabled": True, "loss": result.loss, "grad_norm": result.grad_norm,
           "predicted_tokens": result.predicted_tokens, "systems": systems, "micro_batch": micro,
           "weight_matmuls": "every matmul with a weight (forward X W + b, backward dX = dY W^T and "
                             "dW = X^T dY) runs its plan's tile blocks and reductions (weight-streaming, "
                             f"{micro} sequence(s) per pass)",
           "attention": "forward scores, softmax and context (the plan's own actions) and backward dP = dC V^T, "
                        "dS, dQ = dS K, dK = dS^T Q, dV = P^T dC on the plan's tile blocks (tile column j: heads "
                        "h % TC == j; tile row i: its token rows, keys up to its last query); dK and dV: one fp32 "
                        "partial per tile row, summed per (sequence, head) in tile-row order",
           "row_ops": "in the block layout's partition: LayerNorm backward (each row's sums over d one partial "
                      "per tile column, in column order; dgamma, dbeta one per tile row, in tile-row order), "
                      "bias gradients (one row sum per tile row, in tile-row order), the loss (each row's sum of "
                      "exponentials one partial per tile column's vocabulary block); whole-tensor kernels where "
                      "the partition changes no bit: forward LayerNorm (whole rows per tile row), GELU and its "
                      "backward, residual adds (elementwise), the embedding and its scatter-add (token order)",
           "not_modelled": "all of it runs beside the timing model on the plans' blocks, not inside the engine's "
                           "tasks; AdamW runs on whole tensors (MemoryX)",
           "precision": spec.precision if spec.precision == "fp32" else
           f"{spec.precision} mixed: matmul operands and products rounded to {spec.precision}, fp32 accumulation, "
           "norms, softmax, loss and AdamW on fp32 master weights (torch autocast's split)",
           "wall_s": time.perf_counter() - t0}
    if spec.save_grads:
        np.savez(spec.save_grads, **result.grads)
        out["grads_file"] = spec.save_grads
    if spec.save_updated:
        from ..workloads import save_hf_checkpoint

        save_hf_checkpoint(updated, spec.save_updated)
        out["updated_checkpoint"] = spec.save_updated
    return out


def summary_lines(report: dict) -> list[str]:
    lines = [
        f"model {report['model']} on {report['systems']} x {report['wafer']} (weight streaming), "
        f"batch {report['run']['batch']} x seq {report['run']['seq']}, micro-batch {report['micro_batch']}, "
        f"{report['accumulation_steps']} accumulation step(s), {report['run']['precision']}",
        f"step {report['step_seconds']:.4g} s   tokens/s {report['tokens_per_s']:,.0f}   "
        f"samples/s {report['samples_per_s']:.4g}   MFU {100 * report['mfu']:.1f} %",
        "phases (cycles): " + ", ".join(f"{k} {v:,.0f}" for k, v in report["phases_cycles"].items()),
        f"energy {report['energy']['joules']:.4g} J per step ({report['energy']['joules_per_token']:.3g} J/token, "
        f"{report['energy']['average_w'] / 1e3:.3g} kW average over {report['systems']} system(s))",
        f"closed-form bound {report['bound_s']:.4g} s ("
        + ", ".join(f"{k} {v:.3g}" for k, v in report["bounds_s"].items()) + ")",
        f"activations: {report['activation_memory']['sequences_per_pass']} sequence(s) per pass, "
        f"{report['activation_memory']['passes_per_micro_batch']} pass(es) per micro-batch, no recomputation",
    ]
    if "defects" in report:
        d = report["defects"]
        lines.append(f"defects: {d['dead_pes']} dead PE(s), {d['lost_rows']} row(s) lost, detour hops charged per "
                     f"pass {d['extra_hops_charged']}")
    if report.get("loss") is not None:
        lines.append(f"loss {report['loss']:.6f}   grad norm {report['numerics']['grad_norm']:.4g}")
    if "time_to_train_s" in report:
        lines.append(f"time to train {report['train_tokens']:.3g} tokens: {report['time_to_train_s'] / 3600:.3g} h "
                     f"on {report['systems']} system(s) ({report['system_days']:.3g} system-days)")
    for row in report.get("scaling", []):
        lines.append(f"  {row['systems']:>3} systems: step {row['step_seconds']:.4g} s, speed-up "
                     f"{row['speedup']:.2f}, efficiency {100 * row['efficiency']:.0f} %"
                     + (f", time to train {row['time_to_train_s'] / 3600:.3g} h" if "time_to_train_s" in row else ""))
    return lines


