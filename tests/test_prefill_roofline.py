"""Prefill of every model preset stays at or below its FLOP and bandwidth bounds (issue 16): with the PE's
instruction costs (DSD issue overhead, per-step GEMM software) the simulated time can only grow past the roofline,
never fall below it. One layer of each model (the C5 setup: a layer on the whole grid) keeps this quick."""

from dataclasses import replace

import pytest
from wse_sim.workloads import PRESETS, get_preset, lower_model

from wse_sim.arch import get_wafer
from wse_sim.mapping import TileGrid, estimate, get_mapping
from wse_sim.sim import Engine

WAFER = get_wafer("wse2")
SEQ = 512


@pytest.mark.parametrize("model", sorted(PRESETS))
@pytest.mark.parametrize("mapping", ["meshgemm", "weight-streaming"])
def test_prefill_is_at_or_below_the_flop_and_bandwidth_bounds(model, mapping):
    config = replace(get_preset(model), n_layer=1)
    graph = lower_model(config, 1, SEQ, "fp16")
    grid = TileGrid.make(480, 480, 8, 8)
    plan = get_mapping(mapping).plan(graph, WAFER, grid)
    cycles = Engine(WAFER, plan).run().total_cycles
    flop_bound = graph.total_flops / WAFER.peak_flops_per_cycle("fp16", grid.rows * grid.cols)
    stream_bound = plan.streamed_bytes / WAFER.memoryx_bytes_per_cycle
    assert cycles >= max(flop_bound, stream_bound) > 0
    assert all(estimate.bound_cycles(WAFER, "fp16", op) <= cycles for op in plan.ops)
