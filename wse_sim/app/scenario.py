"""The inputs of a run, resolved once: the :class:`RunSpec` a user gives, and the :class:`Scenario` (wafer, model,
weights, PE grid) every use case builds from it. Shared by prefill, serving, gemm, compare, sweep and calibrate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..arch import WaferSpec, load_wafer, parse_grid
from ..errors import UserError
from ..mapping import DEFAULT_TILES, ModelPlan, TileGrid, get_mapping
from ..mapping.auto import Auto
from ..sim import Engine, SimResult
from ..workloads import ModelConfig, get_preset, load_hf_config
from ..workloads.checkpoint import load_checkpoint
from ..workloads.tokens import encode_prompt, parse_token_list, random_tokens
from ..workloads.weights import random_weights

# Numerics are on by default up to this size (issue 3: "default for models up to 1.3B").
NUMERICS_DEFAULT_MAX_PARAMS = 1_400_000_000


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
        weights = load_checkpoint(spec.checkpoint)
        return weights.config, weights
    path = Path(spec.model)
    if spec.model.endswith(".json") or path.is_dir():
        return load_hf_config(path), None
    return get_preset(spec.model), None


def make_grid(wafer: WaferSpec, grid: str | None = None, tiles: str | None = None,
              tile: str | None = None) -> TileGrid:
    """The PE grid (``grid`` "ROWSxCOLS", default the whole usable mesh) cut into ``tiles`` ("TRxTC", default
    DEFAULT_TILES) or into tiles of ``tile`` ("HxW") PEs."""
    rows, cols = parse_grid(grid, wafer)
    if tile and tiles:
        raise UserError("give --tile (PEs per tile) or --tiles (tile grid), not both")
    if tile:
        h, w = _parse_pair(tile, "tile")
        if h > rows or w > cols:
            raise UserError(f"tile {h}x{w} is larger than the grid {rows}x{cols}")
        return TileGrid.make(rows, cols, -(-rows // h), -(-cols // w))
    tr, tc = _parse_pair(tiles, "tiles") if tiles else DEFAULT_TILES
    return TileGrid.make(rows, cols, tr, tc)


def input_tokens(spec: RunSpec, config: ModelConfig, seq: int | None = None) -> np.ndarray:
    """Token ids ``[batch, seq]``: ``--tokens``, ``--prompt`` (tokenized), or seeded random ones."""
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
        log(f"generating seeded random weights for {config.name} (seed {spec.seed}) ...")
        return random_weights(config, seed=spec.seed)
    if len(weights.layers) != config.n_layer:
        weights = replace(weights, config=config, layers=weights.layers[:config.n_layer])
    return weights


@dataclass(frozen=True)
class Scenario:
    """A :class:`RunSpec` resolved once: the wafer object, the model's config, its checkpoint weights (None:
    seeded random ones are made when numerics need them) and the PE grid."""

    spec: RunSpec
    wafer: WaferSpec
    config: ModelConfig
    weights: object | None
    grid: TileGrid

    @classmethod
    def resolve(cls, spec: RunSpec, wafer: WaferSpec | None = None) -> Scenario:
        """Check ``spec.phase``, load the wafer (``wafer`` overrides ``spec.wafer``), the model and the grid."""
        if spec.phase not in PHASES:
            raise UserError(f"unknown phase {spec.phase!r} (known: {', '.join(PHASES)})")
        wafer = wafer or load_wafer(spec.wafer)
        config, weights = resolve_model(spec)
        return cls(spec, wafer, config, weights, make_grid(wafer, spec.grid, spec.tiles, spec.tile))
