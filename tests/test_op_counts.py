"""One table of elementwise op counts: the mappings charge each non-matmul op the FLOPs the workload graph (and so
MFU) counts for it."""

import pytest
from wse_sim.workloads import OpKind, config_from_hf, lower_model
from wse_sim.workloads.graph import FLOPS_PER_ELEM, NORM_STATS_FLOPS_PER_ELEM

from wse_sim.arch import get_wafer
from wse_sim.mapping import TaskKind, TileGrid, get_mapping

# Widths and token counts divisible by the grid below, so no PE does a rounded-up share.
GPT = {"model_type": "gpt2", "n_embd": 64, "n_layer": 1, "n_head": 4, "vocab_size": 96, "n_positions": 64,
       "n_inner": 128}
LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 96, "max_position_embeddings": 64}
ELEMENTWISE = (OpKind.EMBEDDING, OpKind.LAYERNORM, OpKind.RMSNORM, OpKind.GELU, OpKind.SWIGLU, OpKind.RESIDUAL)


@pytest.mark.parametrize("hf", [GPT, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("mapping", ["weight-streaming", "summa"])
def test_mapping_charges_the_graphs_elementwise_ops(hf, mapping):
    graph = lower_model(config_from_hf(hf), batch=2, seq=8, precision="fp16")
    grid = TileGrid.make(8, 8, 2, 2)  # 4x4 PEs per tile: 16 tokens and every width split evenly
    plan = get_mapping(mapping).plan(graph, get_wafer("wse2"), grid)
    checked = set()
    for op_plan in plan.ops:
        op = op_plan.op
        if op.kind not in ELEMENTWISE:
            continue
        charged = sum(t.elem_ops_per_pe * grid.pes(t.tile) for t in op_plan.tasks if t.kind == TaskKind.COMPUTE)
        assert charged == op.flops == op.m * op.n * FLOPS_PER_ELEM[op.kind], op.name
        checked.add(op.kind)
    norm = OpKind.RMSNORM if hf is LLAMA else OpKind.LAYERNORM
    assert {norm, OpKind.EMBEDDING, OpKind.RESIDUAL} <= checked


def test_rmsnorm_counts_square_sum_scale_gain():
    """Square and sum before the row all-reduce, times 1/rms and times the gain after: 4 per element."""
    assert FLOPS_PER_ELEM[OpKind.RMSNORM] == 4 and NORM_STATS_FLOPS_PER_ELEM[OpKind.RMSNORM] == 2
    assert FLOPS_PER_ELEM[OpKind.LAYERNORM] == 8 and NORM_STATS_FLOPS_PER_ELEM[OpKind.LAYERNORM] == 3
