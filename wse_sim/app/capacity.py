"""``wse-sim capacity``: how many tokens of KV cache fit beside the resident weights.

Two answers, both reported:

* ``max_context_tokens``, the physical one: the SRAM of every usable PE of the wafers, less the weights as the
  chosen mapping lays them out (``kept`` bytes per PE over each stage's region, so a mapping that replicates
  weights pays for it) and less room for the largest working set on every PE, over the KV bytes per token of
  all layers (``batch`` sequences). It does not depend on how layers are packed into whole ``--grid`` regions,
  so it does not jump as the region count does (1 to 4 regions fit the WSE-2 mesh for grids of 750 down to 360);
  a larger grid changes it only through the per-PE layout and working set.
* ``placement``: the longest context the serving placement (``--phase decode --grid PxQ``) accepts, layers packed
  whole into whole regions, each layer's cache in its own region. It is at most the physical answer; the gap is
  SRAM in PEs outside the regions and in regions whose next layer did not fit. A decode at this context runs, one
  more token is refused with the same figure.

Both stop at the model's trained context unless ``ignore_model_context`` (published capacity tables give the
SRAM's capacity whatever the model was trained for).
"""

from __future__ import annotations

from ..arch import WaferSpec
from ..arch.defects import usable_wafer, wafer_remaps
from ..mapping.serving import assign_wafers, wafers_needed
from ..workloads.graph import BYTES_PER_ELEM
from .scenario import RunSpec, make_grid, resolve_model, simulated_cycles
from .serve import ServingRun


def physical_positions(pes: int, sram_bytes_per_pe: int, resident_bytes: int, working_bytes_per_pe: int,
                       kv_bytes_per_position: int) -> int:
    """Cache positions (per sequence) the SRAM of ``pes`` PEs holds after the resident bytes and a working set on
    every PE; ``kv_bytes_per_position``: all layers, all sequences (0 or less when nothing fits)."""
    return (pes * (sram_bytes_per_pe - working_bytes_per_pe) - resident_bytes) // kv_bytes_per_position


def capacity(spec: RunSpec, wafer: WaferSpec, ignore_model_context: bool = False) -> dict:
    """The longest KV-cache context for ``spec``'s model, wafer(s), region grid, mapping, precision and batch."""
    config, _ = resolve_model(spec)
    # defects only shrink the usable rectangle here (docs/defects.md)
    wafer = usable_wafer(wafer, wafer_remaps(wafer, spec.defects, spec.defect_seed, spec.defect_map,
                                             max(spec.wafers, 1)))
    region = make_grid(wafer, spec.grid, spec.tiles, spec.tile)
    sr = ServingRun(config, wafer, region, spec.mapping, spec.precision, spec.batch, spec.layer_subset, 1,
                    simulated_cycles, wafers=spec.wafers)
    graph = sr.graph(1, "decode", 0)
    serving = sr.serving
    choice = serving.decide(graph, wafer, region, sr.n_regions, sr.wafers, 1, most_room=True)[0] if serving.searches \
        else None
    _, _, needs, base = serving.stage_needs(graph, wafer, region, choice.mappings if choice else None)
    sram, pes = wafer.sram_bytes_per_pe, wafer.mesh_rows * wafer.mesh_cols * sr.wafers
    limit = config.n_positions
    kv_per_position = spec.batch * sr.config.kv_cache_bytes_per_token(BYTES_PER_ELEM[spec.precision])
    resident = sum(n.kept_bytes_per_pe for n in needs) * region.rows * region.cols
    working = max(n.working_bytes_per_pe for n in needs)
    physical = physical_positions(pes, sram, resident, working, kv_per_position)
    out = {
        "model": config.name, "wafer": wafer.name, "precision": spec.precision, "batch": spec.batch,
        "region_pes": [region.rows, region.cols], "region_tiles": list(region.shape), "regions_on_wafer": sr.n_regions,
        "wafers": sr.wafers, "simulated_layers": sr.config.n_layer, "model_layers": config.n_layer,
        "weights_bytes": sum(op.weight_bytes for op in graph.ops() if op.kind != "embedding"),
        "model_context": config.n_positions, "ignore_model_context": ignore_model_context,
        "sram_bytes": pes * sram, "resident_bytes": resident, "working_bytes_per_pe": working,
        "kv_cache_bytes_per_token": kv_per_position,
    }
    if physical < 1:
        out |= {"max_context_tokens": None, "reason": "the weights and working sets alone fill the SRAM"}
    else:
        positions = physical if ignore_model_context else min(physical, limit)
        out |= {"max_context_tokens": positions - 1,  # cached positions include the new token
                "limited_by": "SRAM" if positions == physical else "the model's context",
                "kv_cache_bytes": sr.kv_cache_bytes(positions)}
    return out | {"placement": placement(sr, needs, base, limit, max(limit, physical) if ignore_model_context
                                         else limit)}


def placement(sr: ServingRun, needs, base, context: int, limit: int) -> dict:
    """The longest context the region placement accepts (cached positions up to ``limit``; ``context``: the
    model's), as a dict."""
    serving, sram = sr.serving, sr.wafer.sram_bytes_per_pe
    longest = serving.longest_context(needs, base, sram, sr.n_regions, limit, sr.wafers)
    if longest is None:
        least = wafers_needed(serving.with_cache(needs, base.kv_cache_bytes_per_pe(1)), sram, sr.n_regions)
        return {"max_context_tokens": None, "wafers_needed": least,
                "reason": "the weights and working sets alone do not fit the regions"
                + (f" ({least} wafers would hold them)" if least and least > sr.wafers else "")}
    per_wafer = assign_wafers(serving.with_cache(needs, base.kv_cache_bytes_per_pe(longest)), sram, sr.n_regions,
                              sr.wafers)
    return {"max_context_tokens": longest - 1,
            "limited_by": "the model's context" if longest == context else "SRAM",
            "kv_cache_bytes": sr.kv_cache_bytes(longest),
            "kv_cache_bytes_per_pe_per_layer": base.kv_cache_bytes_per_pe(longest),
            "regions_used": sum(len(g) for g in per_wafer)}

