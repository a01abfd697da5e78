"""Running and saving :class:`ModelWeights` through Hugging Face ``transformers`` (optional extra).

``torch`` and ``transformers`` are imported inside the functions so the rest of the package works without
them. The model (``GPT2LMHeadModel``, ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``) is built in float32 with
eager attention, the plain matmul-softmax-matmul path whose numerics the simulator mirrors.
"""

from __future__ import annotations

import importlib.util
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


class ReferenceImportError(RuntimeError):
    """torch and transformers are installed but do not import: the reference is broken, not optional.

    Distinct from ``ImportError`` (the extra is not installed), which callers may report as "unavailable".
    """


def _shadowed_kernels_folder() -> Path | None:
    """Our ``kernels/`` folder when it stands in for the PyPI package ``kernels`` (which transformers imports).

    That happens when the repository root is on ``sys.path`` (``python -m ...`` or a notebook started there).
    """
    try:
        spec = importlib.util.find_spec("kernels")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).resolve().parent
    return folder if (folder.parent / "wse_sim" / "__init__.py").is_file() else None  # our checkout's kernels/


def import_transformers():
    """``(torch, transformers)``; ``ImportError`` if either is not installed, ``ReferenceImportError`` if it is
    installed but fails to import (the exception named)."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"the transformers reference needs {' and '.join(missing)} (not installed): {_INSTALL_HINT}")
    shadow = _shadowed_kernels_folder()
    if shadow is not None:
        raise ReferenceImportError(
            f"transformers cannot import its dependency 'kernels': {shadow} shadows it because the repository "
            "root is on sys.path; run Python with -P or from another folder"
        )
    try:
        import torch
        import transformers

        transformers.PreTrainedModel  # noqa: B018 (transformers imports lazily: this loads its model machinery)
    except Exception as exc:
        raise ReferenceImportError(
            f"transformers is installed but failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    return torch, transformers


# hf_model_type -> (config class, model class) in transformers.
_HF_CLASSES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


def to_hf_config(config: ModelConfig) -> transformers.PretrainedConfig:
    """The ``GPT2Config``, ``LlamaConfig`` or ``Qwen2Config`` of ``config``: no dropout, eager attention."""
    _, transformers = import_transformers()
    if config.is_llama:
        return _llama_hf_config(config, transformers)
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


def _llama_hf_config(config: ModelConfig, transformers):
    """``LlamaConfig``/``Qwen2Config`` with full attention and ``config``'s rotary embeddings.

    Llama 3.1's rope scaling goes in as ``rope_scaling={"rope_type": "llama3", ...}`` beside ``rope_theta``:
    transformers 5 moves both into ``rope_parameters`` (which ``save_pretrained`` writes), older versions keep
    them as they are; without scaling neither key is passed (the default rotary).

    ``LlamaConfig.attention_bias`` would also put a bias on ``o_proj``, which ModelConfig cannot express, so
    q/k/v biases need ``hf_model_type="qwen2"`` (whose attention has exactly those) and Qwen2 needs them.
    Random weights have no tokenizer: no bos/eos/pad ids.
    """
    if config.hf_model_type not in ("llama", "qwen2"):
        raise ValueError(f"model {config.name!r}: a llama-family model needs hf_model_type 'llama' or 'qwen2', "
                         f"got {config.hf_model_type!r}")
    if config.qkv_bias != (config.hf_model_type == "qwen2"):
        raise ValueError(
            f"model {config.name!r}: hf_model_type {config.hf_model_type!r} with qkv_bias={config.qkv_bias} has "
            "no transformers equivalent (q/k/v biases alone are Qwen2; Llama's attention_bias also biases o_proj)"
        )
    config_cls, model_cls = _HF_CLASSES[config.hf_model_type]
    extra = {"use_sliding_window": False} if config.hf_model_type == "qwen2" else {
        "attention_bias": False, "mlp_bias": False}
    if config.rope_scaling is not None:
        extra["rope_scaling"] = config.rope_scaling.to_hf()
    return getattr(transformers, config_cls)(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        head_dim=config.head_dim,
        max_position_embeddings=config.n_positions,
        rms_norm_eps=config.layer_norm_epsilon,
        hidden_act="silu",
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        architectures=[model_cls],
        attn_implementation="eager",
        **extra,
    )


def _adopt_meta_rotary(model, hf_config) -> None:
    """Rebuild rotary-embedding modules whose (non-persistent) frequency buffers stayed on the meta device."""
    for name, module in list(model.named_modules()):
        if name.endswith("rotary_emb") and any(b.is_meta for b in module.buffers()):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, type(module)(config=hf_config))


def _build_model(weights: ModelWeights, dtype: str = "float32"):
    """An eval-mode transformers causal LM holding copies of ``weights``, in float32 (or ``dtype``: "float64"
    makes transformers a second float64 reference, for tests of the numpy one)."""
    torch, transformers = import_transformers()
    config = weights.config
    if config.tie_word_embeddings != (weights.lm_head is None):
        weights.validate()  # raises CheckpointError explaining the tied/untied mismatch
    hf_config = to_hf_config(config)
    model_cls = getattr(transformers, _HF_CLASSES[config.hf_model_type][1])
    state = {k: torch.tensor(np.asarray(v, dtype=dtype)) for k, v in hf_state_dict(weights).items()}
    # Build on the meta device and adopt the tensors (skips a random init: ~3 s for the 111M model); Llama's
    # rotary buffers are computed, not loaded, so they are rebuilt. Buffers still on meta (other transformers
    # versions) mean falling back to a normal build.
    with torch.device("meta"):
        model = model_cls(hf_config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    _adopt_meta_rotary(model, hf_config)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = model_cls(hf_config)
        model.load_state_dict(state, strict=True)
    model.config._attn_implementation = "eager"
    return model.to(getattr(torch, dtype)).eval()


def transformers_logits(weights: ModelWeights, token_ids: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Logits ``[batch, seq, vocab]`` of the transformers model loaded with ``weights``, computed and returned in
    ``dtype`` ("float32" or "float64")."""
    torch, _ = import_transformers()
    ids = check_token_ids(token_ids, weights.config)
    model = _build_model(weights, dtype)
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(np.ascontiguousarray(ids))).logits.numpy()


def save_hf_checkpoint(weights: ModelWeights, path: str | Path, safe_serialization: bool = True) -> None:
    """Write ``weights`` as a Hugging Face checkpoint folder (``config.json`` plus weights).

    ``safe_serialization`` picks ``model.safetensors`` (via ``save_pretrained``) or ``pytorch_model.bin``
    (``torch.save`` of the state dict: transformers 5 no longer writes ``.bin`` itself, but still loads it).
    """
    torch, _ = import_transformers()
    weights.validate()
    model = _build_model(weights)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / BIN_NAME)


def transformers_generate(weights: ModelWeights, prompt_ids: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy decoding with ``model.generate``: int64 ``[batch, P + new_tokens]``, the prompt first.

    float32, eager attention, with the KV cache. No eos or pad token, so every row runs to ``new_tokens``
    and each new token is the argmax of the logits (no logits processors).
    """
    torch, transformers = import_transformers()
    ids = check_token_ids(prompt_ids, weights.config)
    if not isinstance(new_tokens, int | np.integer) or new_tokens <= 0:
        raise ValueError(f"new_tokens must be a positive integer, got {new_tokens!r}")
    if ids.shape[1] + new_tokens > weights.config.n_positions:
        raise ValueError(
            f"prompt of {ids.shape[1]} plus {new_tokens} new tokens exceeds the context of {weights.config.name} "
            f"({weights.config.n_positions} positions)"
        )
    model = _build_model(weights)
    generation = transformers.GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=int(new_tokens), min_new_tokens=0, use_cache=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    model.generation_config = generation
    prompt = torch.from_numpy(np.ascontiguousarray(ids))
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             generation_config=generation)
    return out.numpy().astype(np.int64, copy=False)
