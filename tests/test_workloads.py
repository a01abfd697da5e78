"""Model presets and lowering: shapes, parameter counts and FLOPs against closed forms."""

import networkx as nx
import pytest
from wse_sim.workloads import PRESETS, OpKind, at_context, config_from_hf, get_preset, lower_model
from wse_sim.workloads.config import ConfigError

# ../shared/facts/models.md, column "parameters, tied embeddings".
PUBLISHED_PARAMS = {
    "cerebras-gpt-111m": 111_050_496,
    "cerebras-gpt-256m": 255_977_024,
    "cerebras-gpt-590m": 590_310_912,
    "cerebras-gpt-1.3b": 1_315_723_264,
    "cerebras-gpt-2.7b": 2_651_553_280,
    "cerebras-gpt-6.7b": 6_658_404_352,
    "cerebras-gpt-13b": 12_853_386_240,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_counts_match_published(name):
    assert get_preset(name).param_count() == PUBLISHED_PARAMS[name]


def test_256m_has_non_power_of_two_shapes():
    c = get_preset("cerebras-gpt-256m")
    assert (c.d_model, c.n_head, c.head_dim) == (1088, 17, 64)


@pytest.mark.parametrize("name", ["cerebras-gpt-111m", "cerebras-gpt-256m"])
def test_lowering_flops_and_weights_closed_form(name):
    c = PRESETS[name]
    batch, seq = 2, 96
    g = lower_model(c, batch, seq, "fp16")
    m, d, f, h, dh = batch * seq, c.d_model, c.d_ff, c.n_head, c.head_dim
    matmul_flops = sum(op.flops for op in g.ops() if op.kind == OpKind.MATMUL)
    per_layer = 2 * m * (d * 3 * d + d * d + 2 * d * f) + m * (3 * d + d + f + d)  # GEMMs + bias adds
    assert matmul_flops == c.n_layer * per_layer + 2 * m * d * c.vocab_size
    attn = sum(op.flops for op in g.ops() if op.kind in (OpKind.ATTN_SCORES, OpKind.ATTN_CONTEXT))
    assert attn == c.n_layer * 2 * (2 * batch * h * seq * seq * dh)
    # Streamed weights: every layer parameter once (fp16), the tied head once, plus gathered embedding rows.
    layer_bytes = c.n_layer * c.layer_param_count() * 2
    assert g.streamed_weight_bytes == layer_bytes + 2 * d * 2 + c.vocab_size * d * 2 + 2 * m * d * 2


def test_graph_structure():
    g = lower_model(get_preset("cerebras-gpt-111m"), 1, 8)
    names = [name for name, _ in g.blocks]
    assert names[0] == "embed" and names[-1] == "head" and len(names) == 12
    layer = dict(g.blocks)["layer0"]
    assert nx.is_directed_acyclic_graph(layer)
    assert layer.has_edge("layer0.residual_1", "layer0.residual_2")  # the second residual skips the MLP
    assert [op.name for op in g.ops()][:3] == ["embed", "layer0.ln_1", "layer0.qkv"]



@pytest.mark.parametrize("name", ["cerebras-gpt-111m", "llama3-8b"])
def test_decode_graph_at_another_context_equals_lowering_it_afresh(name):
    """A serving run lowers its decode graph once and derives each step's (``at_context``): the same ops in the
    same order, block by block the same nodes, attributes and edges, as lowering that context afresh; the graph
    derived from is left as it was."""
    c = get_preset(name)
    first = lower_model(c, 2, 1, "fp16", "decode", 5)
    before = [(name, dict(g.nodes(data="op")), sorted(g.edges)) for name, g in first.blocks]
    for context in (5, 6, 300):
        derived, fresh = at_context(first, context), lower_model(c, 2, 1, "fp16", "decode", context)
        fields = ("config", "batch", "seq", "precision", "phase", "context")
        assert [getattr(derived, f) for f in fields] == [getattr(fresh, f) for f in fields]
        assert list(derived.ops()) == list(fresh.ops())
        for (na, a), (nb, b) in zip(derived.blocks, fresh.blocks, strict=True):
            assert na == nb and dict(a.nodes(data=True)) == dict(b.nodes(data=True)) and a.edges == b.edges
    assert [(name, dict(g.nodes(data="op")), sorted(g.edges)) for name, g in first.blocks] == before
    with pytest.raises(ValueError, match="decode graphs"):
        at_context(lower_model(c, 1, 4, "fp16"), 3)
    with pytest.raises(ConfigError, match="exceeds the context"):
        at_context(first, c.n_positions)


def test_config_from_hf_and_errors():
    c = config_from_hf({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 99,
                        "n_positions": 32, "activation_function": "gelu"}, name="t")
    assert c.d_ff == 256 and c.activation == "gelu"
    with pytest.raises(ConfigError, match="not divisible"):
        config_from_hf({"n_embd": 65, "n_layer": 1, "n_head": 4, "vocab_size": 9, "n_positions": 8})
    with pytest.raises(ConfigError, match="missing key 'n_layer'"):
        config_from_hf({"n_embd": 64, "n_head": 4, "vocab_size": 9, "n_positions": 8})
    with pytest.raises(ConfigError, match="exceeds the context"):
        lower_model(c, 1, 33)
    with pytest.raises(ConfigError, match="seq must be a positive"):
        lower_model(c, 1, 0)
