"""Calibration cases C5: LLaMA3-8B prefill throughput on WSE-2 (WaferLLM, OSDI'25, Table 3; calibration.md C5).

How the run is set up, and why (docs/research/prefill.md §2): WaferLLM's prefill kernel holds **one** layer's
weights on the whole P x P grid and its host times that one layer, repeated; Table 3 is 4096 / (32 x t_layer).
(A fully resident 32-layer LLaMA3-8B does not even fit 480 x 480 PEs: 16 GB against 11.3 GB of SRAM.) So each case
lowers LLaMA3-8B with a single layer (``n_layer = 1``), plans it with the ``meshgemm`` mapping (WaferLLM's GEMM,
every matmul of the layer on the whole grid, 8 x 8 tiles: the engine's default granularity) at fp16, runs it, and
takes the layer's time: from the start of its first op to the end of its last (embedding and LM head excluded: the
kernel times neither). Throughput = 4096 tokens / (32 x that time). What this leaves out of the kernel (its
attention is not causal and its K/V weights are d x d; ours skip causal blocks and use GQA's shapes) is listed in
docs/validation.md.

The trend case (720 x 720 over 480 x 480, published 1.36x) checks the slow growth with the grid that a level-only
fit could miss; it and the 600 x 600 point are held out of the fit.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache, partial

from ...arch import WaferSpec
from ...mapping import TileGrid, get_mapping
from ...sim import Engine
from ...workloads import get_preset, lower_model
from .case import Case

# (PE grid side, published tokens/s per request), calibration.md C5
LLAMA3_8B_PREFILL = ((480, 20320.6), (600, 25037.2), (720, 27686.5))
PROMPT_TOKENS = 4096
MODEL, MODEL_LAYERS = "llama3-8b", 32
MAPPING, TILES = "meshgemm", 8
FIT_GRIDS = (480, 720)  # fitted; 600 x 600 and the trend are held out
SETUP = (f"{MODEL} prefill of {PROMPT_TOKENS} tokens, fp16, one layer on the whole PxP grid ({MAPPING}, "
         f"{TILES}x{TILES} tiles), its time x {MODEL_LAYERS} layers, as WaferLLM's kernel and host time it "
         "(docs/research/prefill.md §2); no embedding or LM head")


@lru_cache(maxsize=64)
def prefill_layer_cycles(wafer: WaferSpec, grid: int) -> int:
    """Simulated cycles of one LLaMA3-8B prefill layer (4096 tokens) on a ``grid x grid`` PE rectangle."""
    config = replace(get_preset(MODEL), n_layer=1)
    graph = lower_model(config, 1, PROMPT_TOKENS, "fp16")
    tiles = TileGrid.make(grid, grid, TILES, TILES)
    plan = get_mapping(MAPPING).plan(graph, wafer, tiles)
    result = Engine(wafer, plan).run()
    layer = [op for op in result.ops if op.layer == 0 and op.block not in ("embed", "head")]
    return max(op.end_cycles for op in layer) - min(op.start_cycles for op in layer)


def prefill_tokens_per_s(wafer: WaferSpec, grid: int) -> float:
    """Simulated LLaMA3-8B prefill tokens/s (4096 / TTFT) on ``grid x grid`` PEs, timed as the paper does."""
    return PROMPT_TOKENS / (MODEL_LAYERS * prefill_layer_cycles(wafer, grid) / wafer.clock_hz)


def _trend(wafer: WaferSpec) -> float:
    (small, _), (large, _) = LLAMA3_8B_PREFILL[0], LLAMA3_8B_PREFILL[-1]
    return prefill_tokens_per_s(wafer, large) / prefill_tokens_per_s(wafer, small)


PREFILL_CASES: tuple[Case, ...] = (
    *(Case(name=f"C5 llama3-8b prefill {g}x{g}", figure="WaferLLM Table 3 (calibration.md C5)", published=tps,
           unit="tokens/s", simulate=partial(prefill_tokens_per_s, grid=g),
           published_text=f"{tps} tokens/s (4096 / TTFT)", setup=SETUP,
           fit=g in FIT_GRIDS) for g, tps in LLAMA3_8B_PREFILL),
    Case(name="C5 trend 720x720 / 480x480", figure="WaferLLM Table 3 (calibration.md C5)",
         published=LLAMA3_8B_PREFILL[-1][1] / LLAMA3_8B_PREFILL[0][1], unit="ratio", simulate=_trend,
         published_text="27686.5 / 20320.6: grows only 1.36x for 2.25x the PEs", setup=SETUP),
)
