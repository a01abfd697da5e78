"""Numerical kernels of the simulator: fp32 arithmetic on float32 arrays, rounded to storage precision.

Everything here is a plain function of numpy arrays; the heavy ones are numba-compiled (``cache=True``).
"""

from ..numba_setup import load_registries
from .activations import GELU_VARIANTS, add, gelu
from .embedding import embedding
from .gemm import gemm, gemm_blocks, slab_room
from .llama import rmsnorm, rope, silu_gate
from .norm import layernorm
from .precision import PRECISIONS, round_in_place, round_to
from .softmax import causal_softmax, causal_softmax_many

load_registries()  # before the first kernel compiles or loads: see wse_sim.numba_setup

__all__ = [
    "GELU_VARIANTS",
    "PRECISIONS",
    "add",
    "causal_softmax",
    "causal_softmax_many",
    "embedding",
    "gelu",
    "gemm",
    "gemm_blocks",
    "layernorm",
    "rmsnorm",
    "rope",
    "round_in_place",
    "round_to",
    "silu_gate",
    "slab_room",
]
