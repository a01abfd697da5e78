"""The inputs of a run, resolved once: the :class:`RunSpec` a user gives, and the :class:`Scenario` (wafer, model,
weights, PE grid) every use case builds from it. Shared by prefill, serving, gemm, compare, sweep and calibrate.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..arch import WaferSpec, load_wafer, parse_grid
from ..arch.defects import Remap, apply_defects, defect_rate, defects_report, usable_wafer, wafer_remaps
from ..errors import UserError
from ..mapping import DEFAULT_TILES, ModelPlan, TileGrid, get_mapping, mapping_info
from ..report.build import RunInputs
from ..sim import Engine, SimResult
from ..workloads import ModelConfig, get_preset, load_hf_config
from ..workloads.checkpoint import load_checkpoint
from ..workloads.tokens import decode_tokens, encode_prompt, has_tokenizer, parse_token_list, random_tokens
from ..workloads.weights import random_weights

# Numerics are on by default up to this size (issue 3: "default for models up to 1.3B").
NUMERICS_DEFAULT_MAX_PARAMS = 1_400_000_000

# Peak memory of a run, estimated up front so a run that cannot fit is refused instead of swapping the machine.
# Measured with /usr/bin/time (max RSS) on `wse-sim run --no-numerics --seq 16 --tile 1x1` of a 2-layer GPT-2
# config: grids 16x16, 32x32, 48x48 (256, 1024, 2304 tiles) peaked at 0.32, 1.34, 4.07 GB, i.e. about 36 kB per
# tiles**1.5 above the 0.19 GB base (routes grow with the grid's side; 4 layers instead of 2 changed it by 2 %);
# default 8x8 tiles on 4000x4000 and 8000x4000 meshes peaked at 0.36 and 0.49 GB, about 10 bytes per PE.
MEMORY_BASE_BYTES = 200e6
MEMORY_BYTES_PER_TILE_ROUTE = 40e3  # times tiles**1.5
MEMORY_BYTES_PER_PE = 12
MAX_MEMORY_GB = 8.0  # default limit; the environment variable below overrides it
MAX_MEMORY_ENV = "WSE_SIM_MAX_MEMORY_GB"


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
    check_transformers: bool | None = None  # logits also against transformers (None: float64 reference only)
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
    defects: str | None = None  # failed PEs drawn at this per-PE rate ("published", "10x", 1e-4; docs/defects.md)
    defect_seed: int | None = None  # seed of the drawn defects (default 0)
    defect_map: str | None = None  # a file of failed PEs, "ROW COL" per line (physical coordinates)
    weights: str | None = None  # resident | streamed | auto (None: auto); see wse_sim.app.serve
    prefill_grid: str | None = None  # generate: the prefill pass's region grid "PxQ" (default --grid)
    decode_grid: str | None = None  # generate: the decode steps' region grid "PxQ" (default --grid)

PHASES = ("prefill", "decode", "generate")
WEIGHTS = ("auto", "resident", "streamed")


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
              tile: str | None = None, max_memory: float | None = None) -> TileGrid:
    """The PE grid (``grid`` "ROWSxCOLS", default the whole usable mesh) cut into ``tiles`` ("TRxTC", default
    DEFAULT_TILES) or into tiles of ``tile`` ("HxW") PEs; refused above the memory limit (``max_memory`` GB, else
    :func:`max_memory_gb`)."""
    rows, cols = parse_grid(grid, wafer)
    if tile and tiles:
        raise UserError("give --tile (PEs per tile) or --tiles (tile grid), not both")
    if tile:
        h, w = _parse_pair(tile, "tile")
        if h > rows or w > cols:
            raise UserError(f"tile {h}x{w} is larger than the grid {rows}x{cols}")
        return check_memory(TileGrid.make(rows, cols, -(-rows // h), -(-cols // w)), max_memory)
    tr, tc = _parse_pair(tiles, "tiles") if tiles else DEFAULT_TILES
    if tiles and (tr > rows or tc > cols):
        raise UserError(f"tiles {tr}x{tc} is more than the grid {rows}x{cols} has PEs (at most {rows}x{cols})")
    return check_memory(TileGrid.make(rows, cols, tr, tc), max_memory)


def memory_estimate_bytes(grid: TileGrid) -> float:
    """Peak memory of a simulation on ``grid`` (see MEMORY_BYTES_PER_TILE_ROUTE for how it was measured)."""
    tiles = grid.tile_rows * grid.tile_cols
    return MEMORY_BASE_BYTES + MEMORY_BYTES_PER_TILE_ROUTE * tiles**1.5 + MEMORY_BYTES_PER_PE * grid.rows * grid.cols


def max_memory_gb() -> float:
    """The memory limit in GB: ``$WSE_SIM_MAX_MEMORY_GB``, else MAX_MEMORY_GB."""
    text = os.environ.get(MAX_MEMORY_ENV)
    if not text:
        return MAX_MEMORY_GB
    try:
        limit = float(text)
    except ValueError:
        raise UserError(f"{MAX_MEMORY_ENV}={text!r} is not a number") from None
    if not limit > 0:
        raise UserError(f"{MAX_MEMORY_ENV}={text!r} must be positive")
    return limit


def check_memory(grid: TileGrid, max_memory: float | None = None) -> TileGrid:
    """``grid``, or a :class:`UserError` when its memory estimate exceeds the limit (``max_memory`` GB, else
    :func:`max_memory_gb`)."""
    need, limit = memory_estimate_bytes(grid) / 1e9, max_memory or max_memory_gb()
    if need > limit:
        raise UserError(
            f"estimated memory {need:,.1f} GB ({grid.tile_rows}x{grid.tile_cols} tiles, {grid.rows}x{grid.cols} PEs) "
            f"exceeds the limit of {limit:g} GB: use fewer tiles or a smaller --grid, or raise --max-memory-gb "
            f"(or {MAX_MEMORY_ENV})"
        )
    return grid


def prompt_ids(checkpoint: str, prompt: str) -> np.ndarray:
    """``prompt`` encoded by the checkpoint's tokenizer, int64 ``[1, n]``."""
    try:
        return encode_prompt(checkpoint, prompt)
    except ValueError as exc:
        raise UserError(f"--prompt: {exc}") from None


def generated_texts(spec: RunSpec, report: dict) -> list[str]:
    """Each sequence's generated tokens as text by the checkpoint's tokenizer; empty without a tokenizer or
    generated tokens."""
    ids = report.get("generated_tokens")
    if not (ids and spec.checkpoint and has_tokenizer(spec.checkpoint)):
        return []
    return [decode_tokens(spec.checkpoint, row) for row in ids]


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
        ids = prompt_ids(spec.checkpoint, spec.prompt)
    else:
        return random_tokens(config.vocab_size, spec.batch, seq or spec.seq, seed=spec.seed)
    if ids.size == spec.batch * (seq or spec.seq):  # batch*seq ids, row-major
        ids = ids.reshape(spec.batch, seq or spec.seq)
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
    # The reference checks when ``run(defer_checks=True)`` left them to the caller: calling it fills
    # ``report["numerics"]`` (the same dict) with what was compared and the errors. None: nothing left to run.
    pending_checks: Callable[[], None] | None = None


def simulated_cycles(wafer: WaferSpec, plan: ModelPlan) -> int:
    """Total cycles of ``plan`` on the discrete-event engine (what the auto-mapper confirms estimates with)."""
    return Engine(wafer, plan).run().total_cycles


def make_mapping(name: str, fixed_tiles: bool = False, **options):
    """The registered mapping ``name`` with ``options``; one that searches gets the engine to confirm its
    estimates, and searches no other tile grid when the user fixed one (``fixed_tiles``)."""
    if mapping_info(name).searches:
        options |= {"simulate": simulated_cycles, "fixed_tiles": fixed_tiles}
    return get_mapping(name, **options)


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


# left out of the report's inputs while unset, so reports of runs that do not use them stay as they were
OMITTED_WHEN_UNSET = ("check_transformers", "defects", "defect_seed", "defect_map", "weights", "prefill_grid",
                      "decode_grid")


def report_inputs(spec: RunSpec) -> RunInputs:
    """What the report states about how ``spec`` asked for the run (every field under ``inputs``)."""
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if not (k in OMITTED_WHEN_UNSET and v is None)}
    return RunInputs(batch=spec.batch, seed=spec.seed, from_checkpoint=bool(spec.checkpoint), fields=fields)


@dataclass(frozen=True)
class Scenario:
    """A :class:`RunSpec` resolved once: the wafer object, the model's config, its checkpoint weights (None:
    seeded random ones are made when numerics need them) and the PE grid."""

    spec: RunSpec
    wafer: WaferSpec
    config: ModelConfig
    weights: object | None
    grid: TileGrid
    remap: tuple[Remap, ...] | None = None  # each defective wafer's remapped mesh; None: healthy wafers

    def with_defects(self, plan: ModelPlan) -> ModelPlan:
        """``plan`` with its transfers' detours around dead PEs charged (the plan itself on a healthy wafer)."""
        return plan if self.remap is None else apply_defects(plan, self.remap, self.wafer.wavelet_bytes)

    def defects_report(self, plan: ModelPlan) -> dict | None:
        if self.remap is None:
            return None
        rate = defect_rate(self.wafer, self.spec.defects) if self.spec.defects is not None else None
        return defects_report(self.remap, plan, rate)

    @classmethod
    def resolve(cls, spec: RunSpec, wafer: WaferSpec | None = None, max_memory: float | None = None) -> Scenario:
        """Check ``spec.phase``, load the wafer (``wafer`` overrides ``spec.wafer``), the model and the grid (refused
        above ``max_memory`` GB, see :func:`check_memory`)."""
        if spec.phase not in PHASES:
            raise UserError(f"unknown phase {spec.phase!r} (known: {', '.join(PHASES)})")
        if spec.prompt and not spec.checkpoint:
            raise UserError("--prompt needs --checkpoint with tokenizer files")
        if spec.context is not None and spec.phase != "decode":
            raise UserError(f"--context applies to --phase decode, not {spec.phase}")
        if spec.weights is not None and spec.weights not in WEIGHTS:
            raise UserError(f"unknown --weights {spec.weights!r} (known: {', '.join(WEIGHTS)})")
        if (spec.prefill_grid or spec.decode_grid) and spec.phase != "generate":
            raise UserError(f"--prefill-grid and --decode-grid apply to --phase generate, not {spec.phase} "
                            "(use --grid)")
        wafer = wafer or load_wafer(spec.wafer)
        rm = wafer_remaps(wafer, spec.defects, spec.defect_seed, spec.defect_map, max(spec.wafers, 1))
        wafer = usable_wafer(wafer, rm)
        config, weights = resolve_model(spec)
        if spec.tokens and spec.phase == "prefill":
            input_tokens(spec, config)  # the length is checked even when numerics are off
        return cls(spec, wafer, config, weights, make_grid(wafer, spec.grid, spec.tiles, spec.tile, max_memory), rm)
