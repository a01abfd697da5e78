"""Cost formulas: pure functions from work quantities to cycles on a wafer.

Mappings describe *what* moves and computes (MACs per PE, bytes per lane, hops); these formulas turn that into
cycles. The engine and any analytical estimate use these same functions, so there is one source of truth.
"""

from __future__ import annotations

import math

from .wafer import WaferSpec


def compute_cycles(wafer: WaferSpec, precision: str, macs_per_pe: float, elem_ops_per_pe: float = 0.0) -> int:
    """Cycles for one PE to do ``macs_per_pe`` FMACs and ``elem_ops_per_pe`` elementwise ops.

    Elementwise ops (add, exp, normalise, ...) use the same SIMD lanes as FMACs: one op per lane per cycle.
    """
    lanes = wafer.fmac_per_pe_per_cycle(precision)
    return math.ceil((macs_per_pe + elem_ops_per_pe) / lanes)


def wavelets(wafer: WaferSpec, nbytes: float) -> int:
    """Wavelets (fabric messages of ``wafer.wavelet_bytes``) that carry ``nbytes``; a partial one is a whole one."""
    return math.ceil(nbytes / wafer.wavelet_bytes)


def serialization_cycles(wafer: WaferSpec, bytes_per_lane: float) -> int:
    """Cycles to push ``bytes_per_lane`` through one PE-to-PE link (each lane of a tile edge is one link): one
    wavelet every ``cycles_per_wavelet``."""
    return math.ceil(wavelets(wafer, bytes_per_lane) * wafer.cycles_per_wavelet)


def hop_cycles(wafer: WaferSpec, hops: int) -> int:
    """Latency of the head of a message travelling ``hops`` PE-to-PE hops (cut-through)."""
    return math.ceil(hops * wafer.hop_latency_cycles)


def stage_cycles(wafer: WaferSpec, stages: int) -> int:
    """Software cost of ``stages`` receive-combine-send steps on a path (a chain or tree reduction's adds)."""
    return math.ceil(stages * wafer.stage_overhead_cycles)


def transfer_cycles(wafer: WaferSpec, bytes_per_lane: float, hops: int, stages: int = 0,
                    turns: int = 0) -> tuple[int, int]:
    """(serialization, latency) of a pipelined transfer: links are held for the first, the tail adds the second.

    The latency is the head's hop latency, plus the overhead of each stage that combines and re-sends it, plus
    the extra cycles of each turn of its route.
    """
    latency = hop_cycles(wafer, hops) + stage_cycles(wafer, stages) + math.ceil(turns * wafer.turn_cycles)
    return serialization_cycles(wafer, bytes_per_lane), latency


def stream_cycles(wafer: WaferSpec, nbytes: float) -> int:
    """Cycles for ``nbytes`` of weights to cross the MemoryX -> wafer link."""
    return math.ceil(nbytes / wafer.memoryx_bytes_per_cycle)


def interwafer_cycles(wafer: WaferSpec, nbytes: float, hops: int = 0) -> tuple[int, int]:
    """(serialization, latency) in ``wafer``'s cycles of ``nbytes`` of activations crossing to the next wafer of
    a pipeline: the bytes at the inter-wafer link's bandwidth hold the link; the link's latency and ``hops`` PE
    hops on the two wafers (to the edge and from it) follow."""
    ser = math.ceil(nbytes / wafer.interwafer_bytes_per_s * wafer.clock_hz)
    return ser, math.ceil(wafer.interwafer_latency_s * wafer.clock_hz) + hop_cycles(wafer, hops)
