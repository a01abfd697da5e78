"""Transformer workloads: model configs and presets, lowering to operator graphs, weights and references.

Installed as ``wse_sim.workloads`` (see ``pyproject.toml``, setuptools ``package-dir``).
"""

from .checkpoint import CheckpointError, load_checkpoint
from .config import PRESETS, ModelConfig, config_from_hf, get_preset, load_hf_config
from .graph import OpKind, OpSpec, WorkloadGraph, at_context, lower_gemm, lower_model
from .hf_reference import (
    ReferenceImportError,
    import_transformers,
    save_hf_checkpoint,
    to_hf_config,
    transformers_generate,
    transformers_logits,
)
from .reference import reference_logits
from .tokens import encode_prompt, parse_token_list, random_tokens
from .weights import LayerWeights, LlamaLayerWeights, ModelWeights, layer_fields, random_weights

__all__ = [
    "PRESETS",
    "CheckpointError",
    "LayerWeights",
    "LlamaLayerWeights",
    "ModelConfig",
    "ModelWeights",
    "OpKind",
    "OpSpec",
    "ReferenceImportError",
    "WorkloadGraph",
    "at_context",
    "config_from_hf",
    "encode_prompt",
    "get_preset",
    "import_transformers",
    "layer_fields",
    "load_checkpoint",
    "load_hf_config",
    "lower_gemm",
    "lower_model",
    "parse_token_list",
    "random_tokens",
    "random_weights",
    "reference_logits",
    "save_hf_checkpoint",
    "to_hf_config",
    "transformers_generate",
    "transformers_logits",
]
