"""GPT-style model configurations and the Cerebras-GPT presets.

Shapes are the Hugging Face ``config.json`` values of ``cerebras/Cerebras-GPT-<size>``
(source: ../shared/facts/models.md). Parameter counts with tied embeddings are checked in the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


class ConfigError(UserError):
    """A model config that cannot be used (unknown preset, malformed or inconsistent values)."""


@dataclass(frozen=True)
class ModelConfig:
    """A GPT-2-style decoder: learned positions, pre-LayerNorm, fused QKV, GELU MLP, tied LM head."""

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

    def __post_init__(self) -> None:
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

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def layer_param_count(self) -> int:
        """Parameters of one decoder block: 4d^2 + 4d attention, 2*d*d_ff + d_ff + d MLP, 4d LayerNorm."""
        d, f = self.d_model, self.d_ff
        attn = d * 3 * d + 3 * d + d * d + d
        mlp = d * f + f + f * d + d
        norms = 4 * d
        return attn + mlp + norms

    def param_count(self) -> int:
        """Total parameters; the LM head shares the token embedding when tied."""
        embed = self.vocab_size * self.d_model + self.n_positions * self.d_model
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.d_model
        return embed + self.n_layer * self.layer_param_count() + 2 * self.d_model + head

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
    )
}


def get_preset(name: str) -> ModelConfig:
    key = name.lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[key]


def config_from_hf(cfg: dict[str, Any], name: str = "hf-model") -> ModelConfig:
    """Build a ModelConfig from a GPT-2-style Hugging Face ``config.json`` dict."""
    model_type = cfg.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ConfigError(f"config {name!r}: model_type {model_type!r} is not supported (expected 'gpt2')")
    try:
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
