"""The storage precisions a run accepts and the bytes each stores per element: the one definition, on the ground
floor beside ``errors`` because every floor speaks of it (the workload graph sizes tensors with it, the mappings
size blocks and streams with it, the kernels round to it, the CLI offers its names through wse_sim.app). Apart
from the kernels (numba, about 0.3 s to import), so a run without numerics never imports them."""

from __future__ import annotations

BYTES_PER_ELEM: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}
PRECISIONS: tuple[str, ...] = tuple(BYTES_PER_ELEM)
