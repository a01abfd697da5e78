"""Transformer workloads: model configs and presets, lowering to operator graphs, weights and references.

Installed as ``wse_sim.workloads`` (see ``pyproject.toml``, setuptools ``package-dir``).
"""

from .config import PRESETS, ModelConfig, config_from_hf, get_preset, load_hf_config
from .graph import OpKind, OpSpec, WorkloadGraph, lower_model

__all__ = [
    "PRESETS",
    "ModelConfig",
    "OpKind",
    "OpSpec",
    "WorkloadGraph",
    "config_from_hf",
    "get_preset",
    "load_hf_config",
    "lower_model",
]
