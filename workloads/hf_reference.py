"""Running and saving :class:`ModelWeights` through Hugging Face ``transformers`` (optional extra).

``torch`` and ``transformers`` are imported inside the functions so the rest of the package works without
them. The model is built in float32 with eager attention, the plain matmul-softmax-matmul path whose
numerics the simulator mirrors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .checkpoint import BIN_NAME, hf_state_dict
from .config import ModelConfig
from .tokens import check_token_ids
from .weights import ModelWeights

if TYPE_CHECKING:
    import transformers

_INSTALL_HINT = "pip install 'wse-sim[reference]'"


def _import_hf():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"the transformers reference needs torch and transformers ({exc}): {_INSTALL_HINT}"
        ) from None
    return torch, transformers


def to_hf_config(config: ModelConfig) -> transformers.GPT2Config:
    """The ``GPT2Config`` of ``config``: no dropout, eager attention, bos/eos inside the vocabulary."""
    _, transformers = _import_hf()
    special = config.vocab_size - 1  # GPT-2 uses 50256 = vocab - 1; valid for any vocabulary size
    return transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.d_model,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.d_ff,
        activation_function=config.activation,
        layer_norm_epsilon=config.layer_norm_epsilon,
        tie_word_embeddings=config.tie_word_embeddings,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        bos_token_id=special,
        eos_token_id=special,
        architectures=["GPT2LMHeadModel"],
        attn_implementation="eager",
    )


def _build_model(weights: ModelWeights):
    """A float32 eval-mode ``GPT2LMHeadModel`` holding copies of ``weights``."""
    torch, transformers = _import_hf()
    config = weights.config
    if config.tie_word_embeddings != (weights.lm_head is None):
        weights.validate()  # raises CheckpointError explaining the tied/untied mismatch
    hf_config = to_hf_config(config)
    state = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in hf_state_dict(weights).items()}
    # Build on the meta device and adopt the tensors (skips a random init: ~3 s for the 111M model). Older
    # transformers register non-persistent buffers that would stay on meta: fall back to a normal build.
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(hf_config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = transformers.GPT2LMHeadModel(hf_config)
        model.load_state_dict(state, strict=True)
    model.config._attn_implementation = "eager"
    return model.to(torch.float32).eval()


def transformers_logits(weights: ModelWeights, token_ids: np.ndarray) -> np.ndarray:
    """Logits float32 ``[batch, seq, vocab]`` of ``transformers.GPT2LMHeadModel`` loaded with ``weights``."""
    torch, _ = _import_hf()
    ids = check_token_ids(token_ids, weights.config)
    model = _build_model(weights)
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(np.ascontiguousarray(ids))).logits.numpy()


def save_hf_checkpoint(weights: ModelWeights, path: str | Path, safe_serialization: bool = True) -> None:
    """Write ``weights`` as a Hugging Face checkpoint folder (``config.json`` plus weights).

    ``safe_serialization`` picks ``model.safetensors`` (via ``save_pretrained``) or ``pytorch_model.bin``
    (``torch.save`` of the state dict: transformers 5 no longer writes ``.bin`` itself, but still loads it).
    """
    torch, _ = _import_hf()
    weights.validate()
    model = _build_model(weights)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / BIN_NAME)
