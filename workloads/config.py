"""Decoder-only model configurations: the GPT-2 family (Cerebras-GPT) and the Llama family (Llama, Qwen2).

Shapes are the Hugging Face ``config.json`` values (source: ../shared/facts/models.md). Parameter counts are
checked in the tests (Cerebras-GPT against models.md, Llama-family against ``transformers`` on the meta device).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
FAMILIES = ("gpt2", "llama")
# Hugging Face ``model_type`` -> family. Qwen2 is a Llama with biases on the q, k, v projections.
HF_MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama"}


class ConfigError(UserError):
    """A model config that cannot be used (unknown preset, malformed or inconsistent values)."""


# RoPE variants: "default" is the plain rotary (no rope_scaling); "llama3" is Llama 3.1's frequency scaling.
ROPE_TYPES = ("default", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's RoPE frequency scaling (Hugging Face ``rope_type: "llama3"``).

    The rotary inverse frequencies ``inv_freq = theta ** (-2i / head_dim)`` are rescaled by wavelength
    ``wavelen = 2 pi / inv_freq`` against the pre-training context ``original_max_position_embeddings`` (L):
    wavelengths below ``L / high_freq_factor`` keep their frequency, those above ``L / low_freq_factor`` are
    divided by ``factor``, and in between ``inv_freq * ((1 - s) / factor + s)`` with
    ``s = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)``, as transformers'
    ``_compute_llama3_parameters``. No attention scaling goes with it.
    """

    rope_type: str
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        if self.rope_type != "llama3":
            raise ConfigError(f"rope scaling: rope_type {self.rope_type!r} is not supported (only 'llama3')")
        for field in ("factor", "low_freq_factor", "high_freq_factor"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"rope scaling: {field} must be a finite number, got {value!r}")
            object.__setattr__(self, field, float(value))
        if not self.factor >= 1.0:
            raise ConfigError(f"rope scaling: factor must be >= 1, got {self.factor}")
        if not 0.0 < self.low_freq_factor < self.high_freq_factor:
            raise ConfigError(
                f"rope scaling: need 0 < low_freq_factor < high_freq_factor, got {self.low_freq_factor} and "
                f"{self.high_freq_factor}"
            )
        orig = self.original_max_position_embeddings
        if isinstance(orig, bool) or not isinstance(orig, int) or orig <= 0:
            raise ConfigError(
                f"rope scaling: original_max_position_embeddings must be a positive integer, got {orig!r}"
            )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``rope_scaling`` / ``rope_parameters`` entries (without ``rope_theta``)."""
        return {"rope_type": self.rope_type, "factor": self.factor, "low_freq_factor": self.low_freq_factor,
                "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_max_position_embeddings}


@dataclass(frozen=True)
class ModelConfig:
    """A pre-norm decoder.

    ``family="gpt2"``: learned positions, LayerNorm, fused QKV with bias, GELU MLP, (usually) tied LM head.
    ``family="llama"``: rotary positions (``rope_theta``; ``rope_scaling``: Llama 3.1's frequency scaling or
    None), RMSNorm (eps in ``layer_norm_epsilon``), grouped-query attention (``n_kv_head`` key/value heads),
    SwiGLU MLP (gate, up, down; no biases), optional q/k/v biases (``qkv_bias``, Qwen2), untied LM head.
    ``hf_model_type`` names the ``transformers`` class to check against.
    """

    name: str
    vocab_size: int
    n_positions: int
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu"
    tie_word_embeddings: bool = True
    family: str = "gpt2"
    n_kv_head: int | None = None  # None: as many as query heads (multi-head attention)
    rope_theta: float = 10000.0  # llama family only
    qkv_bias: bool = True  # gpt2: always; llama: False, Qwen2: True
    hf_model_type: str = "gpt2"
    rope_scaling: RopeScaling | None = None  # llama family only; None: the default rotary

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"model {self.name!r}: family {self.family!r} unknown (known: {', '.join(FAMILIES)})")
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        for field in ("vocab_size", "n_positions", "d_model", "n_layer", "n_head", "d_ff"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model {self.name!r}: {field} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model {self.name!r}: d_model {self.d_model} is not divisible by n_head {self.n_head}"
            )
        if self.activation not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"model {self.name!r}: activation {self.activation!r} not supported "
                f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        if not self.layer_norm_epsilon > 0:
            raise ConfigError(f"model {self.name!r}: layer_norm_epsilon must be > 0")
        if not isinstance(self.n_kv_head, int) or self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model {self.name!r}: n_kv_head {self.n_kv_head!r} must be a positive divisor of n_head {self.n_head}"
            )
        if HF_MODEL_TYPES.get(self.hf_model_type) != self.family:
            raise ConfigError(f"model {self.name!r}: hf_model_type {self.hf_model_type!r} is not a {self.family} model")
        if self.is_llama:
            if self.qkv_bias != (self.hf_model_type == "qwen2"):
                raise ConfigError(f"model {self.name!r}: q/k/v biases go with hf_model_type 'qwen2' (Qwen2); llama has "
                                  f"none")
            if self.activation != "silu":
                raise ConfigError(f"model {self.name!r}: the llama family uses activation 'silu'")
            if self.head_dim % 2:
                raise ConfigError(f"model {self.name!r}: rotary embeddings need an even head_dim, got {self.head_dim}")
            if not self.rope_theta > 0:
                raise ConfigError(f"model {self.name!r}: rope_theta must be > 0")
            if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
                raise ConfigError(f"model {self.name!r}: rope_scaling must be a RopeScaling or None, got "
                                  f"{self.rope_scaling!r}")
        elif self.rope_scaling is not None:
            raise ConfigError(f"model {self.name!r}: rope_scaling needs the llama family (GPT-2 has no rotary)")
        elif self.n_kv_head != self.n_head or self.activation == "silu" or not self.qkv_bias:
            raise ConfigError(f"model {self.name!r}: GPT-2 models have n_kv_head = n_head, biases and a GELU MLP")

    @property
    def is_llama(self) -> bool:
        return self.family == "llama"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_width(self) -> int:
        """Width of K (and of V): ``n_kv_head * head_dim``."""
        return self.n_kv_head * self.head_dim

    @property
    def qkv_width(self) -> int:
        """Output width of the fused q | k | v projection."""
        return self.d_model + 2 * self.kv_width

    def layer_param_count(self) -> int:
        """Parameters of one decoder block.

        GPT-2: 4d^2 + 4d attention, 2*d*d_ff + d_ff + d MLP, 4d LayerNorm. Llama: d*(d + 2 kv) (+ biases) + d^2
        attention, 3*d*d_ff MLP, 2d RMSNorm.
        """
        d, f = self.d_model, self.d_ff
        if self.is_llama:
            attn = d * self.qkv_width + (self.qkv_width if self.qkv_bias else 0) + d * d
            return attn + 3 * d * f + 2 * d
        attn = d * 3 * d + 3 * d + d * d + d
        mlp = d * f + f + f * d + d
        norms = 4 * d
        return attn + mlp + norms

    def param_count(self) -> int:
        """Total parameters; the LM head shares the token embedding when tied."""
        d = self.d_model
        embed = self.vocab_size * d + (0 if self.is_llama else self.n_positions * d)
        final_norm = d if self.is_llama else 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return embed + self.n_layer * self.layer_param_count() + final_norm + head

    def kv_cache_bytes_per_token(self, bytes_per_elem: int) -> int:
        """KV-cache bytes one token adds across all layers (K and V of every KV head)."""
        return 2 * self.n_layer * self.kv_width * bytes_per_elem

    def with_name(self, name: str) -> ModelConfig:
        return replace(self, name=name)


def _cerebras_gpt(size: str, d_model: int, n_layer: int, n_head: int) -> ModelConfig:
    # Common to all sizes (models.md): vocab 50257, context 2048, d_ff = 4 d, eps 1e-5, activation "gelu".
    return ModelConfig(
        name=f"cerebras-gpt-{size}",
        vocab_size=50257,
        n_positions=2048,
        d_model=d_model,
        n_layer=n_layer,
        n_head=n_head,
        d_ff=4 * d_model,
        layer_norm_epsilon=1e-5,
        activation="gelu",
    )


def _llama(name, hidden, layers, heads, kv_heads, ffn, vocab, theta, *, context, eps, hf_type="llama",
           rope_scaling=None):
    return ModelConfig(
        name=name, vocab_size=vocab, n_positions=context, d_model=hidden, n_layer=layers, n_head=heads,
        d_ff=ffn, layer_norm_epsilon=eps, activation="silu", tie_word_embeddings=False, family="llama",
        n_kv_head=kv_heads, rope_theta=theta, qkv_bias=hf_type == "qwen2", hf_model_type=hf_type,
        rope_scaling=rope_scaling,
    )


# Shapes and rope_theta: ../shared/facts/models.md. ``context`` (max_position_embeddings) and ``eps``
# (rms_norm_eps) are not in models.md; they are the models' Hugging Face config.json values. The context
# only bounds --seq and --context; it changes no cost.
LLAMA_PRESETS = (
    _llama("llama3-8b", 4096, 32, 32, 8, 14336, 128256, 500000.0, context=8192, eps=1e-5),
    _llama("llama3-70b", 8192, 80, 64, 8, 28672, 128256, 500000.0, context=8192, eps=1e-5),
    _llama("llama2-13b", 5120, 40, 40, 40, 13824, 32000, 10000.0, context=4096, eps=1e-5),
    _llama("codellama-34b", 8192, 48, 64, 8, 22016, 32000, 1000000.0, context=16384, eps=1e-5),
    _llama("qwen2-72b", 8192, 80, 64, 8, 29568, 152064, 1000000.0, context=32768, eps=1e-6, hf_type="qwen2"),
)

# Llama 3.1: the shapes and rope_theta of Llama 3 8B / 70B (models.md: "LLaMA3-70B (3.1 same shape)"). The
# context (max_position_embeddings 131072) and the rope scaling below are NOT in ../shared/facts: they are the
# values of Meta's published Hugging Face config.json of meta-llama/Llama-3.1-8B and meta-llama/Llama-3.1-70B
# ("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
# "original_max_position_embeddings": 8192}, "rms_norm_eps": 1e-05). Kept apart from LLAMA_PRESETS (the
# default-rotary models); both are in PRESETS.
LLAMA31_ROPE_SCALING = RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                   original_max_position_embeddings=8192)
LLAMA31_PRESETS = (
    _llama("llama3.1-8b", 4096, 32, 32, 8, 14336, 128256, 500000.0, context=131072, eps=1e-5,
           rope_scaling=LLAMA31_ROPE_SCALING),
    _llama("llama3.1-70b", 8192, 80, 64, 8, 28672, 128256, 500000.0, context=131072, eps=1e-5,
           rope_scaling=LLAMA31_ROPE_SCALING),
)

# Source: ../shared/facts/models.md (Hugging Face config.json of cerebras/Cerebras-GPT-<size>).
PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        _cerebras_gpt("111m", 768, 10, 12),
        _cerebras_gpt("256m", 1088, 14, 17),
        _cerebras_gpt("590m", 1536, 18, 12),
        _cerebras_gpt("1.3b", 2048, 24, 16),
        _cerebras_gpt("2.7b", 2560, 32, 32),
        _cerebras_gpt("6.7b", 4096, 32, 32),
        _cerebras_gpt("13b", 5120, 40, 40),
        *LLAMA_PRESETS[:2],  # llama3-8b, llama3-70b, then their 3.1 versions
        *LLAMA31_PRESETS,
        *LLAMA_PRESETS[2:],
    )
}


def get_preset(name: str) -> ModelConfig:
    key = name.lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[key]


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor")


def _rope_from_hf(cfg: dict[str, Any], name: str) -> tuple[float, RopeScaling | None]:
    """``(rope_theta, rope_scaling)`` of a Llama-family ``config.json``.

    Older transformers versions (and Meta's Llama 3.1 files) write ``rope_theta`` at the top and the scaling as
    ``rope_scaling``; recent ones (5.x) write both into ``rope_parameters`` (``rope_type`` "default" when
    unscaled). As in transformers, ``rope_scaling`` wins over ``rope_parameters``, ``type`` is an old name of
    ``rope_type``, and a llama3 scaling without ``original_max_position_embeddings`` takes it from a top-level
    key of that name or else from ``max_position_embeddings``.
    """
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or None
    if not isinstance(params, dict) or (scaling is not None and not isinstance(scaling, dict)):
        raise ConfigError(f"config {name!r}: rope_parameters / rope_scaling must be JSON objects")
    key, rope = ("rope_scaling", scaling) if scaling is not None else ("rope_parameters", params)
    if rope and "rope_type" not in rope and "type" not in rope and all(isinstance(v, dict) for v in rope.values()):
        raise ConfigError(f"config {name!r}: per-layer-type {key} {rope!r} is not supported (one rotary for all "
                          f"layers only)")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"config {name!r}: {key} {rope!r} is not supported: rope_type {rope_type!r} (supported "
                          f"rope types: {', '.join(map(repr, ROPE_TYPES))})")
    for partial in (rope.get("partial_rotary_factor"), cfg.get("partial_rotary_factor")):
        if partial not in (None, 1, 1.0):
            raise ConfigError(f"config {name!r}: partial_rotary_factor {partial!r} is not supported (only 1: every "
                              f"head dim rotates)")
    theta = rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0  # transformers: the rope dict's first
    if rope_type == "default":
        return float(theta), None
    missing = [k for k in _LLAMA3_KEYS if rope.get(k) is None]
    if missing:
        raise ConfigError(f"config {name!r}: {key} {rope!r} is not supported: rope_type 'llama3' needs "
                          f"{', '.join(missing)}")
    original = rope.get("original_max_position_embeddings")
    top = cfg.get("original_max_position_embeddings")
    if original is not None and top is not None and original != top:
        raise ConfigError(f"config {name!r}: original_max_position_embeddings {top!r} differs from {key}'s "
                          f"{original!r}")
    original = original if original is not None else top if top is not None else cfg.get("max_position_embeddings",
                                                                                          2048)
    if isinstance(original, float) and original.is_integer():
        original = int(original)
    try:
        scaling_cfg = RopeScaling(rope_type="llama3", **{k: rope[k] for k in _LLAMA3_KEYS},
                                  original_max_position_embeddings=original)
    except ConfigError as exc:
        raise ConfigError(f"config {name!r}: {key} {rope!r}: {exc}") from None
    return float(theta), scaling_cfg


def _llama_from_hf(cfg: dict[str, Any], name: str, model_type: str) -> ModelConfig:
    theta, rope_scaling = _rope_from_hf(cfg, name)
    if model_type == "llama" and cfg.get("attention_bias"):
        raise ConfigError(f"config {name!r}: llama attention_bias (biases on q, k, v and o) is not supported")
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("head_dim") not in (None, d // heads):
        raise ConfigError(f"config {name!r}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"config {name!r}: hidden_act {act!r} is not supported (expected 'silu')")
    bias = model_type == "qwen2"
    if cfg.get("mlp_bias"):
        raise ConfigError(f"config {name!r}: mlp_bias is not supported")
    return ModelConfig(
        name=name,
        vocab_size=cfg["vocab_size"],
        n_positions=cfg.get("max_position_embeddings", 2048),
        d_model=d,
        n_layer=cfg["num_hidden_layers"],
        n_head=heads,
        d_ff=cfg["intermediate_size"],
        layer_norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        activation="silu",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        family="llama",
        n_kv_head=cfg.get("num_key_value_heads") or heads,
        rope_theta=theta,
        qkv_bias=bias,
        hf_model_type=model_type,
        rope_scaling=rope_scaling,
    )


def config_from_hf(cfg: dict[str, Any], name: str = "hf-model") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face ``config.json`` dict (``gpt2``, ``llama`` or ``qwen2``)."""
    model_type = cfg.get("model_type", "gpt2")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(
            f"config {name!r}: model_type {model_type!r} is not supported (supported: {', '.join(HF_MODEL_TYPES)})"
        )
    try:
        if HF_MODEL_TYPES[model_type] == "llama":
            return _llama_from_hf(cfg, name, model_type)
        d_model = cfg["n_embd"]
        d_ff = cfg.get("n_inner") or 4 * d_model
        return ModelConfig(
            name=name,
            vocab_size=cfg["vocab_size"],
            n_positions=cfg["n_positions"],
            d_model=d_model,
            n_layer=cfg["n_layer"],
            n_head=cfg["n_head"],
            d_ff=d_ff,
            layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            activation=cfg.get("activation_function", "gelu_new"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        )
    except KeyError as exc:
        raise ConfigError(f"config {name!r}: missing key {exc.args[0]!r}") from None


def load_hf_config(path: str | Path) -> ModelConfig:
    """Read ``config.json`` (a file, or a checkpoint folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"no config.json at {p}")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: expected a JSON object")
    return config_from_hf(cfg, name=p.parent.name or "hf-model")
