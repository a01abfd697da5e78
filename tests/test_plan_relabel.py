"""Matmul plans relabelled from another op of the same shape equal the plans built for the op itself."""

from dataclasses import replace

import pytest
from wse_sim.workloads import OpKind, get_preset, lower_model

import wse_sim.mapping.relabel as relabel_module
from wse_sim.app.scenario import make_grid
from wse_sim.arch import load_wafer
from wse_sim.mapping import get_mapping
from wse_sim.mapping.relabel import cached_matmul, relabel


@pytest.mark.parametrize(("model", "mapping"), [
    ("cerebras-gpt-111m", "weight-streaming"), ("cerebras-gpt-111m", "cannon"), ("cerebras-gpt-111m", "summa"),
    ("cerebras-gpt-111m", "systolic"), ("cerebras-gpt-111m", "meshgemm"), ("llama3-8b", "weight-streaming"),
    ("llama3-8b", "gemv-tree"), ("llama3-8b", "gemv-allreduce"),
])
def test_relabelled_matmul_plans_equal_fresh_ones(model, mapping, monkeypatch):
    config = get_preset(model)
    config = replace(config, n_layer=3) if config.n_layer > 3 else config
    graph = lower_model(config, 1, 1 if mapping.startswith("gemv") else 64, "fp16")
    wafer = load_wafer("wse2")
    grid = make_grid(wafer, tiles="4x4")
    cached = get_mapping(mapping).layout(graph, wafer, grid)
    fresh = get_mapping(mapping).layout(graph, wafer, grid)
    matmuls = [op for op in graph.ops() if op.kind == OpKind.MATMUL]
    relabelled = []
    monkeypatch.setattr(relabel_module, "relabel", lambda p, op: relabelled.append(op) or relabel(p, op))
    for op in matmuls:
        assert cached_matmul(cached, op) == fresh.matmul(op), op.name
    assert len(relabelled) >= len(matmuls) // 2  # most ops of a repeated layer are relabelled, not rebuilt
