"""One run, end to end: spec -> workload graph -> mapping plan -> simulation (+ numerics) -> report dict.

This is the only module that knows every layer; each layer below it only knows the ones before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arch import WaferSpec, load_wafer, parse_grid
from .errors import UserError
from .mapping import ModelPlan, TileGrid, get_mapping
from .report.build import build_report
from .sim import Engine, SimResult
from .workloads import ModelConfig, get_preset, load_hf_config, lower_model

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


def input_tokens(spec: RunSpec, config: ModelConfig) -> np.ndarray:
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
        return random_tokens(config.vocab_size, spec.batch, spec.seq, seed=spec.seed)
    if ids.shape[1] != spec.seq or ids.shape[0] != spec.batch:
        raise UserError(
            f"the input has {ids.shape[0]}x{ids.shape[1]} tokens but --batch {spec.batch} --seq {spec.seq} was asked"
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


def run(spec: RunSpec, progress: bool = False, log=print, record: bool = False) -> RunOutput:
    """Simulate ``spec``; ``record`` keeps every busy interval (for traces and timelines)."""
    wafer = load_wafer(spec.wafer)
    config, weights = resolve_model(spec)
    graph = lower_model(config, spec.batch, spec.seq, spec.precision)
    grid = make_grid(spec, wafer)
    mapping = make_mapping(spec.mapping)
    if spec.mapping == "auto":  # the auto-mapper also searches tile grids unless the user fixed one
        plan = mapping.plan(graph, wafer, grid, fixed_tiles=bool(spec.tiles or spec.tile))
    else:
        plan = mapping.plan(graph, wafer, grid)

    numerics_on = spec.numerics
    reason = None
    if numerics_on is None:
        numerics_on = config.param_count() <= NUMERICS_DEFAULT_MAX_PARAMS
        if not numerics_on:
            reason = f"off by default above {NUMERICS_DEFAULT_MAX_PARAMS:,} parameters (use --numerics)"
    elif not numerics_on:
        reason = "disabled with --no-numerics"

    executor = tokens = None
    if numerics_on:
        from .sim.numerics import Numerics
        from .workloads.weights import random_weights

        tokens = input_tokens(spec, config)
        if weights is None:
            log(f"generating seeded random weights for {config.name} (seed {spec.seed}) ...")
            weights = random_weights(config, seed=spec.seed)
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
    report = build_report(spec, config, wafer, graph, plan, result, numerics_report)
    return RunOutput(report, logits, sim_wall, result, plan, wafer)
