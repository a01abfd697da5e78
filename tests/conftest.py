"""Shared fixtures: a tiny model config and a factory for tiny Hugging Face GPT-2 checkpoints on disk."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from wse_sim.workloads.config import ModelConfig
from wse_sim.workloads.hf_reference import import_transformers

# The independent reference is part of the test environment: missing or broken, it fails the whole run here
# (with the reason), so no test can quietly turn into a skip.
import_transformers()

TINY = {"vocab_size": 101, "n_positions": 64, "d_model": 48, "n_layer": 2, "n_head": 3, "d_ff": 192}


@pytest.fixture
def tiny_config() -> ModelConfig:
    """2 layers, d 48, 3 heads of 16, odd vocabulary 101, context 64, exact GELU, tied head."""
    return ModelConfig(name="tiny", **TINY)


@dataclass(frozen=True)
class TinyCheckpoint:
    path: Path  # checkpoint folder: config.json + model.safetensors or pytorch_model.bin
    model: Any  # the transformers GPT2LMHeadModel that was saved, float32, eval mode, eager attention


_counter = itertools.count()


@pytest.fixture
def tiny_checkpoint(tmp_path_factory) -> Callable[..., TinyCheckpoint]:
    """Factory: ``make(activation="gelu", safe_serialization=True, seed=0, **gpt2_config_overrides)``.

    Builds a random ``GPT2LMHeadModel`` whose every parameter (biases and LayerNorm included) is perturbed
    away from the HF init, so a loader or forward pass that drops a tensor shows up in the logits.
    """
    import torch
    import transformers

    def make(activation: str = "gelu", safe_serialization: bool = True, seed: int = 0,
             **overrides: Any) -> TinyCheckpoint:
        kwargs = {
            "vocab_size": TINY["vocab_size"], "n_positions": TINY["n_positions"], "n_embd": TINY["d_model"],
            "n_layer": TINY["n_layer"], "n_head": TINY["n_head"], "activation_function": activation,
            "bos_token_id": TINY["vocab_size"] - 1, "eos_token_id": TINY["vocab_size"] - 1,
        }
        kwargs.update(overrides)
        kwargs.setdefault("attn_implementation", "eager")
        config = transformers.GPT2Config(**kwargs)
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                is_gain = name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
                p.add_(torch.randn_like(p) * (0.1 if is_gain else 0.02))
        path = tmp_path_factory.mktemp(f"ckpt{next(_counter)}")
        if safe_serialization:
            model.save_pretrained(path)
        else:  # transformers 5 only writes safetensors; a .bin checkpoint is a torch.save'd state dict
            config.save_pretrained(path)
            torch.save(model.state_dict(), path / "pytorch_model.bin")
        return TinyCheckpoint(path=path, model=model)

    return make
