"""Calibration cases C2: LLaMA3-8B decode throughput on WSE-2 (WaferLLM, OSDI'25, Table 4; calibration.md C2).

Each case runs ``wse-sim run --model llama3-8b --phase decode --context 4096 --grid PxP --layer-subset K`` on
the wafer under calibration (fp16, weights resident, matmuls by the auto-mapper's choice among the resident
GEMV/GEMM mappings) and reads ``tokens_per_s_per_request`` (1 / time per output token). The published setup
gives the model, the grids, the context and fp16; that the layers are simulated as a subset and scaled is our
assumption (``LAYER_SUBSET``), as is the 8 x 8 tile grid per region (the engine's default granularity).
The trend case checks the fall from 420 x 420 to 660 x 660, which a level-only fit could miss.
"""

from __future__ import annotations

from functools import lru_cache, partial

from ...arch import WaferSpec
from ..run import run
from ..scenario import RunSpec
from .case import Case

# (PE grid side, published tokens/s per request), calibration.md C2
LLAMA3_8B_TPR = ((420, 2699.9), (540, 2501.5), (660, 2243.3))
CONTEXT_TOKENS = 4096
LAYER_SUBSET = 2  # simulated layers; the layer time is scaled to LLaMA3-8B's 32
SETUP = (f"llama3-8b decode, context {CONTEXT_TOKENS}, fp16, one layer per PxP region packed by SRAM, "
         f"{LAYER_SUBSET} of 32 layers simulated and scaled, 8x8 tiles per region, auto GEMV mapping")


@lru_cache(maxsize=64)
def decode_tokens_per_s(wafer: WaferSpec, grid: int) -> float:
    """Simulated LLaMA3-8B tokens/s per request on a ``grid x grid`` region (cached per wafer value)."""
    spec = RunSpec(model="llama3-8b", grid=f"{grid}x{grid}", phase="decode", context=CONTEXT_TOKENS,
                   precision="fp16", numerics=False, layer_subset=LAYER_SUBSET,
                   weights="resident")  # as WaferLLM decodes; a calibration run never falls back to streaming
    return run(spec, wafer=wafer, log=lambda *_: None).report["tokens_per_s_per_request"]


def _trend(wafer: WaferSpec) -> float:
    (small, _), (large, _) = LLAMA3_8B_TPR[0], LLAMA3_8B_TPR[-1]
    return decode_tokens_per_s(wafer, small) / decode_tokens_per_s(wafer, large)


DECODE_CASES: tuple[Case, ...] = (
    *(Case(name=f"C2 llama3-8b decode {g}x{g}", figure="WaferLLM Table 4 (calibration.md C2)", published=tpr,
           unit="tokens/s/request", simulate=partial(decode_tokens_per_s, grid=g),
           published_text=f"{tpr} tokens/s per request",
           setup=SETUP, fit=True) for g, tpr in LLAMA3_8B_TPR),
    Case(name="C2 trend 420x420 / 660x660", figure="WaferLLM Table 4 (calibration.md C2)",
         published=LLAMA3_8B_TPR[0][1] / LLAMA3_8B_TPR[-1][1], unit="ratio", simulate=_trend,
         published_text="2699.9 / 2243.3: throughput falls as the grid grows", setup=SETUP),
)
