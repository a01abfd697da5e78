"""Llama 3.1: the "llama3" rope scaling end to end, checked against transformers.

The kernel's scaled fp32 ``inv_freq`` against ``ROPE_INIT_FUNCTIONS["llama3"]`` (bit for bit), the float64
reference and the simulated decode against ``LlamaForCausalLM`` built with the same scaling, config.json parsing
(Meta's ``rope_scaling`` and transformers 5's ``rope_parameters``) and its refusals, and the two presets.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import transformers
import transformers.modeling_rope_utils as rope_utils
from wse_sim.kernels import rope
from wse_sim.kernels.llama import rope_inv_freq
from wse_sim.workloads.checkpoint import CheckpointError, load_checkpoint
from wse_sim.workloads.config import (
    LLAMA31_PRESETS,
    ConfigError,
    ModelConfig,
    RopeScaling,
    config_from_hf,
    get_preset,
    load_hf_config,
)
from wse_sim.workloads.hf_reference import save_hf_checkpoint, to_hf_config, transformers_logits
from wse_sim.workloads.reference import reference_logits
from wse_sim.workloads.tokens import random_tokens
from wse_sim.workloads.weights import random_weights

from wse_sim.app import RunSpec, run

VOCAB = 97
# float64 reference vs float32 transformers; the brief's bound is 1e-5. Measured errors are in the report.
REF_TOL = 1e-5


def llama3(factor=8.0, low=1.0, high=4.0, original=8192) -> RopeScaling:
    return RopeScaling(rope_type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
                       original_max_position_embeddings=original)


# A tiny original context (16) so that a ~40-token sequence runs past it, and low/high factors that put the
# head_dim-16 frequencies (theta 10000) in all three bands: wavelength 2 pi < 16/2 kept, 20.4 in [8, 32]
# interpolated, 62.8 and longer divided by 8 (asserted in test_tiny_scaling_covers_all_three_bands).
TINY_SCALING = llama3(factor=8.0, low=0.5, high=2.0, original=16)
# Odd d_ff and vocabulary, GQA with 3 query heads per KV head (head_dim 16), untied head, context 48.
TINY31 = ModelConfig(name="tiny-llama31", vocab_size=VOCAB, n_positions=48, d_model=96, n_layer=2, n_head=6,
                     n_kv_head=2, d_ff=130, layer_norm_epsilon=1e-5, activation="silu", tie_word_embeddings=False,
                     family="llama", rope_theta=10000.0, qkv_bias=False, hf_model_type="llama",
                     rope_scaling=TINY_SCALING)
# Meta's low/high factors (1, 4) with the tiny original context: interpolated and divided bands only.
TINY31_META = dataclasses.replace(TINY31, name="tiny-llama31-meta-factors", rope_scaling=llama3(original=16))

# Meta's config.json of meta-llama/Llama-3.1-8B (shape and rope keys; tokenizer ids and dtype left out).
META_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": False, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "vocab_size": 128256,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def hf_llama3_inv_freq(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """transformers' own llama3 inverse frequencies for a config with this head_dim, theta and scaling."""
    cfg = transformers.LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                                   intermediate_size=8, num_hidden_layers=1, vocab_size=8,
                                   max_position_embeddings=4 * scaling.original_max_position_embeddings,
                                   rope_parameters={"rope_theta": theta, **scaling.to_hf()})
    inv_freq, attention_scaling = rope_utils.ROPE_INIT_FUNCTIONS["llama3"](cfg)
    assert attention_scaling == 1.0
    return inv_freq.numpy()


# --------------------------------------------------------------------------------------------- kernel inv_freq


@pytest.mark.parametrize(("head_dim", "theta", "scaling"), [
    (128, 500000.0, llama3()),  # Llama 3.1 8B / 70B
    (64, 500000.0, llama3(factor=32.0, original=8192)),  # Llama 3.2 1B's factor
    (16, 10000.0, TINY_SCALING),
    (16, 10000.0, llama3(original=16)),
    (96, 1e6, llama3(factor=3.7, low=2.0, high=7.0, original=100)),
    (12, 500000.0, llama3(factor=2.0, low=0.5, high=1.5, original=33)),
], ids=["llama3.1", "factor32", "tiny", "tiny-meta-factors", "odd-factors", "head12"])
def test_scaled_inv_freq_equals_transformers(head_dim, theta, scaling):
    ours = rope_inv_freq(head_dim, theta, scaling)
    theirs = hf_llama3_inv_freq(head_dim, theta, scaling)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
    unscaled = rope_inv_freq(head_dim, theta)
    assert not np.array_equal(ours, unscaled)
    assert np.all(ours <= unscaled) and np.all(ours >= unscaled / np.float32(scaling.factor) * (1 - 1e-6))


def test_tiny_scaling_covers_all_three_bands():
    inv = rope_inv_freq(16, 10000.0)
    scaled = rope_inv_freq(16, 10000.0, TINY_SCALING)
    ratio = scaled.astype(np.float64) / inv
    assert ratio[0] == 1.0  # wavelength 2 pi < 8: kept
    assert 1 / 8 < ratio[1] < 1  # 20.4 in [8, 32]: interpolated
    np.testing.assert_allclose(ratio[2:], 1 / 8, rtol=1e-6)  # longer than 32: divided by the factor


@pytest.mark.parametrize(("scaling", "start"), [(llama3(), 100000), (TINY_SCALING, 0)], ids=["llama3.1", "tiny"])
def test_rope_kernel_with_scaling_matches_transformers(scaling, start):
    """The fp32 angles of the scaled frequencies, rotated as LlamaRotaryEmbedding + apply_rotary_pos_emb do."""
    from transformers.models.llama import modeling_llama as llama

    head_dim, theta, heads, m = (128, 500000.0, 2, 9) if scaling.original_max_position_embeddings > 16 else (
        16, 10000.0, 3, 40)
    config = transformers.LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, head_dim=head_dim,
                                      num_key_value_heads=heads, intermediate_size=8, num_hidden_layers=1,
                                      vocab_size=8, max_position_embeddings=start + m + 1,
                                      rope_parameters={"rope_theta": theta, **scaling.to_hf()})
    rotary = llama.LlamaRotaryEmbedding(config)
    assert rotary.rope_type == "llama3"
    np.testing.assert_array_equal(rope_inv_freq(head_dim, theta, scaling), rotary.inv_freq.numpy())
    positions = start + np.arange(m)
    x = np.random.default_rng(1).standard_normal((m, heads * head_dim)).astype(np.float32)
    q = torch.from_numpy(x).reshape(1, m, heads, head_dim).transpose(1, 2)
    cos, sin = rotary(q, torch.from_numpy(positions)[None])
    expected, _ = llama.apply_rotary_pos_emb(q, q.clone(), cos, sin)
    expected = expected.transpose(1, 2).reshape(m, heads * head_dim).numpy()
    y = rope(x, positions, head_dim, theta, scaling)
    # Same fp32 angles (inv_freq equal, asserted above): the bound of tests/test_kernels_llama.py, 8 units of
    # fp32 rounding times |x1| + |x2| of each rotated pair (torch's cos/sin within an ulp, three roundings each).
    a = np.abs(x.astype(np.float64)).reshape(m, heads, head_dim)
    pair = a[..., :head_dim // 2] + a[..., head_dim // 2:]
    tol = 8 * 2.0**-24 * np.concatenate([pair, pair], axis=-1).reshape(x.shape)
    assert np.all(np.abs(y - expected) <= tol)
    assert np.abs(y - rope(x, positions, head_dim, theta)).max() > 0.1  # the scaling moved the angles


def test_rope_kernel_refuses_other_scalings():
    with pytest.raises(ValueError, match=r"rope scaling type 'linear' is not supported"):
        rope_inv_freq(16, 10000.0, dataclasses.make_dataclass("S", ["rope_type"])("linear"))


# --------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("config", [TINY31, TINY31_META], ids=["tiny", "meta-factors"])
def test_reference_matches_transformers(config):
    w = random_weights(config, seed=11)
    ids = random_tokens(VOCAB, batch=2, seq=40, seed=11)  # positions 0..39, past original_max_position 16
    hf_config = to_hf_config(config)
    assert hf_config.rope_parameters["rope_type"] == "llama3"
    ref = reference_logits(w, ids)
    hf = transformers_logits(w, ids)
    assert np.abs(ref).max() > 0.3  # logits are not vanishingly small, so the tolerance means something
    err = np.abs(ref - hf).max()
    print(f"{config.name}: max |float64 reference - transformers| = {err:.3g}")
    assert err <= REF_TOL
    # the tolerance tells the scaling apart: without it (or with another factor) the logits move far more
    for other in (dataclasses.replace(config, rope_scaling=None),
                  dataclasses.replace(config, rope_scaling=dataclasses.replace(config.rope_scaling, factor=4.0))):
        assert np.abs(reference_logits(dataclasses.replace(w, config=other), ids) - hf).max() > 10 * REF_TOL


# --------------------------------------------------------------------------------------------- through the mapping


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama31")
    save_hf_checkpoint(random_weights(TINY31, seed=3), path)
    return path


def test_decode_through_the_simulated_mapping_matches_transformers(checkpoint):
    # decode at position 30 after a 30-token KV cache: past the original 16 positions
    ids = random_tokens(VOCAB, batch=1, seq=31, seed=5)
    spec = RunSpec(checkpoint=str(checkpoint), wafer="tiny", grid="4x4", tiles="2x2", precision="fp32",
                   phase="decode", context=30, numerics=True, check_transformers=True,
                   tokens=",".join(map(str, ids[0])))
    out = run(spec, log=lambda *_: None)
    n = out.report["numerics"]
    print(f"simulated decode vs transformers: {n}")
    assert n["max_abs_err_vs_transformers"] <= 1e-3, n
    assert n["top1_agreement"] == 1.0
    assert n["max_abs_err_vs_reference"] <= 1e-5, n
    # the simulated mapping applied the scaling: the same model without it is far off (measured ~3e-3)
    w = load_checkpoint(checkpoint)
    unscaled = dataclasses.replace(w, config=dataclasses.replace(w.config, rope_scaling=None))
    off = np.abs(out.logits[:, -1] - transformers_logits(unscaled, ids)[:, -1]).max()
    assert off > 100 * max(n["max_abs_err_vs_transformers"], 1e-6), off


def test_checkpoint_round_trip(checkpoint, tmp_path):
    w = load_checkpoint(checkpoint)
    assert w.config == TINY31.with_name(checkpoint.name)
    raw = json.loads((checkpoint / "config.json").read_text())
    assert raw["rope_parameters"]["rope_type"] == "llama3" or raw["rope_scaling"]["rope_type"] == "llama3"
    # transformers itself loads the folder with the scaling and agrees with the float64 reference
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    assert model.model.rotary_emb.rope_type == "llama3"
    ids = random_tokens(VOCAB, batch=1, seq=40, seed=4)
    with torch.no_grad():
        hf = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(hf - reference_logits(w, ids)).max() <= REF_TOL
    # the same folder with Meta's older layout (rope_theta on top, the scaling under rope_scaling) loads the same
    params = dict(raw.pop("rope_parameters", None) or raw.pop("rope_scaling"))
    raw["rope_theta"] = params.pop("rope_theta", raw.get("rope_theta"))
    raw["rope_scaling"] = params
    (tmp_path / "config.json").write_text(json.dumps(raw))
    for f in checkpoint.glob("*.safetensors"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    assert load_checkpoint(tmp_path).config == TINY31.with_name(tmp_path.name)


# --------------------------------------------------------------------------------------------- config.json


def test_meta_config_json_is_the_preset(tmp_path):
    preset = get_preset("llama3.1-8b")
    assert config_from_hf(META_8B, name="llama3.1-8b") == preset
    (tmp_path / "config.json").write_text(json.dumps(META_8B))
    assert load_hf_config(tmp_path) == preset.with_name(tmp_path.name)
    # transformers 5 rewrites it with rope_parameters (rope_theta inside); older versions keep rope_scaling
    rewritten = transformers.LlamaConfig.from_dict(META_8B).to_dict()
    assert config_from_hf(rewritten, name="llama3.1-8b") == preset
    assert config_from_hf(json.loads(to_hf_config(preset).to_json_string()), name="llama3.1-8b") == preset
    # the old "type" key name and a missing original context (transformers falls back to the model's)
    old = {**META_8B, "rope_scaling": {k: v for k, v in META_8B["rope_scaling"].items()
                                       if k not in ("rope_type", "original_max_position_embeddings")}}
    old["rope_scaling"]["type"] = "llama3"
    assert config_from_hf(old).rope_scaling == dataclasses.replace(
        preset.rope_scaling, original_max_position_embeddings=131072)


@pytest.mark.parametrize("config", [TINY31, TINY31_META, *LLAMA31_PRESETS],
                         ids=["tiny", "meta-factors", *(c.name for c in LLAMA31_PRESETS)])
def test_config_round_trip_through_transformers(config):
    hf = to_hf_config(config)
    assert hf.rope_parameters == {"rope_theta": config.rope_theta, **config.rope_scaling.to_hf()}
    assert config_from_hf(hf.to_dict(), name=config.name) == config
    assert config_from_hf(json.loads(hf.to_json_string()), name=config.name) == config


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "longrope", "proportional"])
@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_config_from_hf_refuses_other_rope_types(key, rope_type):
    raw = {k: v for k, v in META_8B.items() if k != "rope_scaling"}
    raw[key] = {"rope_type": rope_type, "factor": 2.0}
    with pytest.raises(ConfigError, match=rf"{key} .* is not supported: rope_type '{rope_type}' \(supported rope "
                                          rf"types: 'default', 'llama3'\)"):
        config_from_hf(raw, name="m")
    raw[key] = {"type": rope_type, "factor": 2.0}
    with pytest.raises(ConfigError, match=rf"rope_type '{rope_type}'"):
        config_from_hf(raw, name="m")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.pop("low_freq_factor"), r"rope_scaling .* is not supported: rope_type 'llama3' needs "
                                         r"low_freq_factor$"),
    (lambda s: s.update(low_freq_factor=4.0), r"need 0 < low_freq_factor < high_freq_factor, got 4.0 and 4.0"),
    (lambda s: s.update(factor=0.5), r"factor must be >= 1, got 0.5"),
    (lambda s: s.update(factor="8"), r"factor must be a finite number, got '8'"),
    (lambda s: s.update(original_max_position_embeddings=-1),
     r"original_max_position_embeddings must be a positive integer, got -1"),
    (lambda s: s.update(partial_rotary_factor=0.5), r"partial_rotary_factor 0.5 is not supported"),
], ids=["missing", "low-high", "factor", "factor-type", "original", "partial"])
def test_config_from_hf_refuses_bad_llama3_scaling(edit, message):
    raw = json.loads(json.dumps(META_8B))
    edit(raw["rope_scaling"])
    with pytest.raises(ConfigError, match=message):
        config_from_hf(raw, name="m")


def test_other_refusals_stay():
    with pytest.raises(ConfigError, match=r"llama attention_bias .* is not supported"):
        config_from_hf({**META_8B, "attention_bias": True})
    with pytest.raises(ConfigError, match=r"original_max_position_embeddings 4096 differs from rope_scaling's 8192"):
        config_from_hf({**META_8B, "original_max_position_embeddings": 4096})
    with pytest.raises(ConfigError, match=r"rope_type 'yarn' is not supported \(only 'llama3'\)"):
        dataclasses.replace(TINY_SCALING, rope_type="yarn")
    with pytest.raises(ConfigError, match=r"rope_scaling must be a RopeScaling or None"):
        dataclasses.replace(TINY31, rope_scaling=TINY_SCALING.to_hf())
    gpt2 = ModelConfig(name="g", vocab_size=50, n_positions=32, d_model=16, n_layer=1, n_head=2, d_ff=64)
    with pytest.raises(ConfigError, match=r"rope_scaling needs the llama family"):
        dataclasses.replace(gpt2, rope_scaling=TINY_SCALING)


def test_checkpoint_refuses_other_rope_types(checkpoint, tmp_path):
    raw = json.loads((checkpoint / "config.json").read_text())
    raw.pop("rope_parameters", None)
    raw["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"rope_scaling .* is not supported: rope_type 'yarn'"):
        load_checkpoint(tmp_path)


# --------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("config", LLAMA31_PRESETS, ids=[c.name for c in LLAMA31_PRESETS])
def test_preset_param_count_matches_transformers_on_meta(config):
    hf_config = to_hf_config(config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.model.rotary_emb.rope_type == "llama3"
    assert config.param_count() == sum(p.numel() for p in model.parameters())
    # Llama 3.1 has the shapes of Llama 3 (models.md: "LLaMA3-70B (3.1 same shape)")
    base = get_preset(config.name.replace("3.1", "3"))
    assert config.param_count() == base.param_count()
    assert dataclasses.replace(config, name=base.name, n_positions=base.n_positions, rope_scaling=None) == base
    assert config.n_positions == 131072 and config.rope_scaling == llama3()
    assert math.isclose(config.rope_theta, 500000.0)
