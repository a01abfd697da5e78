"""One run, end to end: spec -> workload graph -> mapping plan -> simulation (+ numerics) -> report dict.

This is the only module that knows every layer; each layer below it only knows the ones before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .arch import WaferSpec, load_wafer, parse_grid
from .errors import UserError
from .gc_pause import gc_paused
from .mapping import ModelPlan, TileGrid, get_mapping
from .report.build import build_report
from .sim import Engine, SimResult
from .workloads import ModelConfig, get_preset, load_hf_config, lower_model
from .workloads.graph import BYTES_PER_ELEM

# Numerics are on by default up to this size (issue 3: "default for models up to 1.3B").
NUMERICS_DEFAULT_MAX_PARAMS = 1_400_000_000
DEFAULT_TILES = (8, 8)


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; the same spec gives a byte-identical report."""

    model: str = "cerebras-gpt-111m"
    wafer: str = "wse2"
    mapping: str = "auto"
    seq: int = 512
    batch: int = 1
    precision: str = "fp16"
    grid: str | None = None  # "ROWSxCOLS" sub-rectangle of the wafer; None = whole usable mesh
    tiles: str | None = None  # "TRxTC" tile grid; default DEFAULT_TILES (capped by the grid)
    tile: str | None = None  # "HxW" PEs per tile (alternative to tiles)
    numerics: bool | None = None  # None = automatic by model size
    checkpoint: str | None = None
    tokens: str | None = None
    prompt: str | None = None
    seed: int = 0
    phase: str = "prefill"  # prefill | decode | generate
    context: int | None = None  # decode: tokens already in the KV cache
    prompt_len: int | None = None  # generate: prompt tokens (default: seq)
    gen_tokens: int | None = None  # generate: new tokens (the first from the prefill, then decode steps)
    layer_subset: int | None = None  # simulate this many layers and scale to the model's depth
    wafers: int = 1  # decode and generate: layers split over this many wafers in a pipeline

PHASES = ("prefill", "decode", "generate")


def _parse_pair(spec: str, what: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise UserError(f"{what} {spec!r} is not of the form AxB (e.g. 8x8)") from None
    if a <= 0 or b <= 0:
        raise UserError(f"{what} {spec!r}: sizes must be positive")
    return a, b


def resolve_model(spec: RunSpec):
    """(config, weights or None). Weights come from a checkpoint, else later from a seeded generator."""
    if spec.checkpoint:
        from .workloads.checkpoint import load_checkpoint

        weights = load_checkpoint(spec.checkpoint)
        return weights.config, weights
    path = Path(spec.model)
    if spec.model.endswith(".json") or path.is_dir():
        return load_hf_config(path), None
    return get_preset(spec.model), None


def make_grid(spec: RunSpec, wafer: WaferSpec) -> TileGrid:
    rows, cols = parse_grid(spec.grid, wafer)
    if spec.tile and spec.tiles:
        raise UserError("give --tile (PEs per tile) or --tiles (tile grid), not both")
    if spec.tile:
        h, w = _parse_pair(spec.tile, "tile")
        if h > rows or w > cols:
            raise UserError(f"tile {h}x{w} is larger than the grid {rows}x{cols}")
        return TileGrid.make(rows, cols, -(-rows // h), -(-cols // w))
    tr, tc = _parse_pair(spec.tiles, "tiles") if spec.tiles else DEFAULT_TILES
    return TileGrid.make(rows, cols, tr, tc)


def input_tokens(spec: RunSpec, config: ModelConfig, seq: int | None = None) -> np.ndarray:
    from .workloads.tokens import encode_prompt, parse_token_list, random_tokens

    if spec.tokens and spec.prompt:
        raise UserError("give --tokens or --prompt, not both")
    if spec.tokens:
        try:
            ids = parse_token_list(spec.tokens, config.vocab_size)
        except ValueError as exc:
            raise UserError(f"--tokens: {exc}") from None
    elif spec.prompt:
        if not spec.checkpoint:
            raise UserError("--prompt needs --checkpoint with tokenizer files")
        ids = encode_prompt(spec.checkpoint, spec.prompt)
    else:
        return random_tokens(config.vocab_size, spec.batch, seq or spec.seq, seed=spec.seed)
    if ids.shape[1] != (seq or spec.seq) or ids.shape[0] != spec.batch:
        raise UserError(
            f"the input has {ids.shape[0]}x{ids.shape[1]} tokens but {spec.batch}x{seq or spec.seq} were needed "
            f"(--batch x {'--seq' if seq is None else 'the prompt or context length'})"
        )
    return ids


@dataclass(frozen=True)
class RunOutput:
    """What one run produced: the report dict, the simulated logits (None without numerics), the simulation's
    wall time, and the objects behind the report (for traces and plots)."""

    report: dict
    logits: np.ndarray | None
    sim_wall_s: float
    result: SimResult
    plan: ModelPlan
    wafer: WaferSpec


def simulated_cycles(wafer: WaferSpec, plan: ModelPlan) -> int:
    """Total cycles of ``plan`` on the discrete-event engine (what the auto-mapper confirms estimates with)."""
    return Engine(wafer, plan).run().total_cycles


def make_mapping(name: str):
    """The registered mapping ``name``; ``auto`` gets the engine to confirm its estimates."""
    if name == "auto":
        from .mapping.auto import Auto

        return Auto(simulate=simulated_cycles)
    return get_mapping(name)


def numerics_enabled(spec: RunSpec, config: ModelConfig) -> tuple[bool, str | None]:
    """(on, reason when off): on by default up to NUMERICS_DEFAULT_MAX_PARAMS."""
    if spec.numerics is None:
        if config.param_count() <= NUMERICS_DEFAULT_MAX_PARAMS:
            return True, None
        return False, f"off by default above {NUMERICS_DEFAULT_MAX_PARAMS:,} parameters (use --numerics)"
    return spec.numerics, None if spec.numerics else "disabled with --no-numerics"


def model_weights(spec: RunSpec, config: ModelConfig, weights, log):
    """The checkpoint's weights (cut to ``config.n_layer`` layers for a layer subset) or seeded random ones."""
    if weights is None:
        from .workloads.weights import random_weights

        log(f"generating seeded random weights for {config.name} (seed {spec.seed}) ...")
        return random_weights(config, seed=spec.seed)
    if len(weights.layers) != config.n_layer:
        weights = replace(weights, config=config, layers=weights.layers[:config.n_layer])
    return weights


def run(spec: RunSpec, progress: bool = False, log=print, record: bool = False,
        wafer: WaferSpec | None = None) -> RunOutput:
    """Simulate ``spec``; ``record`` keeps every busy interval (for traces and timelines). ``wafer`` overrides
    ``spec.wafer`` with a WaferSpec object (calibration varies its parameters)."""
    if spec.phase not in PHASES:
        raise UserError(f"unknown phase {spec.phase!r} (known: {', '.join(PHASES)})")
    wafer = wafer or load_wafer(spec.wafer)
    config, weights = resolve_model(spec)
    if spec.phase != "prefill":
        from .serve import run_serving

        return run_serving(spec, wafer, config, weights, progress, log, record)
    if spec.layer_subset is not None:
        raise UserError("--layer-subset applies to decode and generate (serving placement)")
    if spec.wafers != 1:
        raise UserError("--wafers applies to decode and generate (resident weights, a layer pipeline); a prefill "
                        "with weight streaming runs on one wafer (--phase generate reports the prefill's TTFT "
                        "on N wafers)")
    graph = lower_model(config, spec.batch, spec.seq, spec.precision)
    grid = make_grid(spec, wafer)
    mapping = make_mapping(spec.mapping)
    with gc_paused():  # hundreds of thousands of tasks, no cycles: see wse_sim.gc_pause
        if spec.mapping == "auto":  # the auto-mapper also searches tile grids unless the user fixed one
            plan = mapping.plan(graph, wafer, grid, fixed_tiles=bool(spec.tiles or spec.tile))
        else:
            plan = mapping.plan(graph, wafer, grid)

    numerics_on, reason = numerics_enabled(spec, config)
    executor = tokens = None
    if numerics_on:
        from .sim.numerics import Numerics

        tokens = input_tokens(spec, config)
        weights = model_weights(spec, config, weights, log)
        executor = Numerics(graph, weights, tokens)

    t0 = time.perf_counter()
    result = Engine(wafer, plan, numerics=executor, progress=progress, record=record).run()
    sim_wall = time.perf_counter() - t0

    logits = None
    numerics_report: dict = {"enabled": bool(numerics_on), "reason": reason}
    if executor is not None:
        logits = executor.output("head.lm_head").reshape(spec.batch, spec.seq, config.vocab_size)
        log("checking logits against the float64 reference and transformers ...")
        from .verify import compare_logits

        numerics_report.update(compare_logits(logits, executor, weights, tokens, spec.precision))
    seconds = result.total_cycles / wafer.clock_hz
    serving = {"phase": "prefill", "ttft_s": seconds, "tpot_s": None,
               "tokens_per_s_per_request": spec.seq / seconds if seconds else None,
               "kv_cache_bytes": graph.tokens * config.kv_cache_bytes_per_token(BYTES_PER_ELEM[spec.precision])}
    report = build_report(spec, config, wafer, graph, plan, result, numerics_report, serving)
    return RunOutput(report, logits, sim_wall, result, plan, wafer)
