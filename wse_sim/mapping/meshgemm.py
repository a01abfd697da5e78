"""MeshGEMM (WaferLLM, OSDI'25): Cannon with an interleaved ring so that every shift is a bounded 2-hop move.

The ring visits the even positions of a row going out and the odd ones coming back (``0, 2, 4, ..., 5, 3, 1``),
so ring neighbours are at most two tiles apart and no message wraps across the whole mesh. Data movement per
step is the same as Cannon's; the latency of a shift no longer grows with the grid. At PE level the ring runs over
the PEs of a row (or column) the same way, so every PE-level shift is a move of at most two PE hops (the kernel's
``two_hop_comm`` in WaferLLM's ``MeshGEMM/WSE-2/src/meshgemm.csl``) plus one receive stage, and a step is bound by
its multiply unless the blocks are tiny. Everything else is :mod:`.cannon`.
"""

from __future__ import annotations

from .cannon import CannonLayout
from .registry import register
from .resident import ResidentMapping


def interleaved_ring(q: int) -> tuple[int, ...]:
    """Positions in ring order: evens ascending, then odds descending (neighbours <= 2 apart)."""
    return tuple(range(0, q, 2)) + tuple(reversed(range(1, q, 2)))


class MeshGemmLayout(CannonLayout):
    name = "meshgemm"

    def ring(self, q: int) -> tuple[int, ...]:
        return interleaved_ring(q)


@register("meshgemm", resident=True, square_tiles=True)
class MeshGemm(ResidentMapping):
    name = "meshgemm"
    layout_cls = MeshGemmLayout
