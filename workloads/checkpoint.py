"""Loading Hugging Face GPT-2, Llama and Qwen2 checkpoint folders (safetensors, sharded, pytorch_model.bin).

Only ``numpy`` and ``safetensors`` are required. ``torch`` is used when present, to read ``.bin`` files
and bf16 safetensors; without it bf16 is decoded from the raw bytes and ``.bin`` is refused.
Every failure is a :class:`CheckpointError` with a one-line message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .config import ROPE_TYPES, ConfigError, ModelConfig, load_hf_config
from .weights import (
    HF_LAYER_NAMES,
    HF_LLAMA_LAYER_NAMES,
    HF_LLAMA_TOP_NAMES,
    HF_TOP_NAMES,
    LayerWeights,
    LlamaLayerWeights,
    ModelWeights,
    layer_fields,
    layer_shapes,
    top_shapes,
)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"

# Non-parameter buffers (by canonical name) that older checkpoints store: GPT-2's causal mask and its fill
# value, Llama's rotary inverse frequencies.
_BUFFER_RE = {
    "gpt2": re.compile(r"h\.\d+\.attn\.(bias|masked_bias)"),
    "llama": re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),
}
_PREFIX = "transformer."
_LLAMA_PREFIX = "model."
_HEAD = "lm_head.weight"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


@dataclass(frozen=True)
class _Tensor:
    """A tensor in a weights file: its shape and dtype, read lazily as float32."""

    file: Path
    shape: tuple[int, ...]
    dtype: str
    read: Callable[[], np.ndarray]


# ---------------------------------------------------------------------------------------------- safetensors

_ST_NUMPY_DTYPES = {"F64", "F32", "F16"}


def _bf16_raw(path: Path, key: str) -> np.ndarray:
    """Decode a bf16 tensor without torch: bf16 is the top half of a float32, so shift it left by 16 bits."""
    with path.open("rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    entry = header[key]
    begin, end = entry["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - begin) // 2, offset=8 + header_len + begin)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _open_safetensors(path: Path, stack: ExitStack) -> dict[str, _Tensor]:
    """Index one safetensors file; f64/f32/f16 read through numpy, bf16 through torch or raw bytes."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        handle = stack.enter_context(safe_open(str(path), framework="numpy"))
        pt_handle = None
        out = {}
        for key in handle.keys():
            sl = handle.get_slice(key)
            dtype = sl.get_dtype()
            if dtype in _ST_NUMPY_DTYPES:
                read = partial(handle.get_tensor, key)
            elif dtype == "BF16" and _torch_available():
                if pt_handle is None:
                    pt_handle = stack.enter_context(safe_open(str(path), framework="pt"))
                read = partial(_bf16_torch, pt_handle, key)
            elif dtype == "BF16":
                read = partial(_bf16_raw, path, key)
            else:
                read = partial(_unsupported, path, key, dtype)
            out[key] = _Tensor(path, tuple(sl.get_shape()), dtype, read)
        return out
    except Exception as exc:  # SafetensorError and friends: corrupt or truncated file
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_first_line(exc)})") from None


def _bf16_torch(pt_handle, key: str) -> np.ndarray:
    import torch

    return pt_handle.get_tensor(key).to(torch.float32).numpy()


def _unsupported(path: Path, key: str, dtype: str) -> np.ndarray:
    raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {dtype} (expected a float type)")


# ---------------------------------------------------------------------------------------------- torch .bin


def _open_bin(path: Path) -> dict[str, _Tensor]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs torch (pip install 'wse-sim[reference]'), "
            "or convert the checkpoint to safetensors"
        ) from None
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        state = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as exc:  # zip/pickle errors, EOF: corrupt or truncated file
        raise CheckpointError(f"{path}: corrupt or truncated pytorch_model.bin ({_first_line(exc)})") \
            from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")

    out = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key} is a {type(t).__name__}, not a tensor")
        dtype = str(t.dtype).removeprefix("torch.")
        if t.is_floating_point():
            read = partial(_torch_to_numpy, t)
        else:
            read = partial(_unsupported, path, key, dtype)
        out[key] = _Tensor(path, tuple(t.shape), dtype, read)
    return out


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    return t.detach().to(torch.float32).numpy()


# ---------------------------------------------------------------------------------------------- folder


def _shards(folder: Path, index_name: str) -> list[Path]:
    index = folder / index_name
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: unreadable shard index ({_first_line(exc)})") from None
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard {missing[0]} is missing")
    return [folder / n for n in names]


def _open_weights(folder: Path, stack: ExitStack) -> dict[str, _Tensor]:
    """All tensors of the folder's weights, by their raw names, from the first format present."""
    if (folder / SAFETENSORS_NAME).is_file():
        files, opener = [folder / SAFETENSORS_NAME], lambda p: _open_safetensors(p, stack)
    elif (folder / SAFETENSORS_INDEX_NAME).is_file():
        files, opener = _shards(folder, SAFETENSORS_INDEX_NAME), lambda p: _open_safetensors(p, stack)
    elif (folder / BIN_NAME).is_file():
        files, opener = [folder / BIN_NAME], _open_bin
    elif (folder / BIN_INDEX_NAME).is_file():
        files, opener = _shards(folder, BIN_INDEX_NAME), _open_bin
    else:
        raise CheckpointError(
            f"no weights file in {folder} "
            f"(expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {BIN_NAME})"
        )
    tensors: dict[str, _Tensor] = {}
    for f in files:
        for key, t in opener(f).items():
            if key in tensors:
                raise CheckpointError(
                    f"{folder}: tensor {key} appears in both {tensors[key].file.name} and {f.name}"
                )
            tensors[key] = t
    return tensors


def _canonical_name(key: str, config: ModelConfig) -> str:
    """GPT-2: the name without the optional ``transformer.`` prefix. Llama: the full ``model.`` name."""
    if not config.is_llama:
        return key.removeprefix(_PREFIX)
    return key if key.startswith(_LLAMA_PREFIX) or key == _HEAD else _LLAMA_PREFIX + key


def _canonical(tensors: dict[str, _Tensor], folder: Path, config: ModelConfig) -> dict[str, _Tensor]:
    """Tensors by canonical name (see :func:`_canonical_name`), without the non-parameter buffers."""
    prefix = _LLAMA_PREFIX if config.is_llama else _PREFIX
    buffers = _BUFFER_RE[config.family]
    out: dict[str, _Tensor] = {}
    for key, t in tensors.items():
        name = _canonical_name(key, config)
        if buffers.fullmatch(name):
            continue
        if name in out:
            raise CheckpointError(
                f"{folder}: tensor {name} is stored both with and without the {prefix!r} prefix"
            )
        out[name] = t
    return out


def _qkv_columns(config: ModelConfig) -> dict[str, slice]:
    """Column ranges of q, k and v inside the fused ``w_qkv`` / ``b_qkv``."""
    d, kv = config.d_model, config.kv_width
    return {"q": slice(0, d), "k": slice(d, d + kv), "v": slice(d + kv, d + 2 * kv)}


def _llama_entries(config: ModelConfig) -> list[tuple[str, str, str | None]]:
    """The HF_LLAMA_LAYER_NAMES rows present for ``config`` (the q/k/v biases only with ``qkv_bias``)."""
    present = layer_fields(config)
    return [row for row in HF_LLAMA_LAYER_NAMES if row[1] in present]


def _hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical checkpoint name -> shape as stored in the checkpoint, excluding ``lm_head.weight``."""
    tops, shapes = top_shapes(config), layer_shapes(config)
    if not config.is_llama:
        out = {hf: tops[field] for field, hf in HF_TOP_NAMES.items()}
        for i in range(config.n_layer):
            out |= {f"h.{i}.{hf}": shapes[field] for field, hf in HF_LAYER_NAMES.items()}
        return out
    out = {hf: tops[field] for field, hf in HF_LLAMA_TOP_NAMES.items()}
    cols = _qkv_columns(config)
    for i in range(config.n_layer):
        for suffix, field, part in _llama_entries(config):
            shape = shapes[field]
            if part:
                shape = (*shape[:-1], cols[part].stop - cols[part].start)
            out[f"model.layers.{i}.{suffix}"] = shape[::-1]  # nn.Linear stores [out, in]
    return out


def _llama_layer(config: ModelConfig, i: int, read: Callable[[str], np.ndarray]) -> LlamaLayerWeights:
    """Layer ``i`` from its HF tensors: transpose the ``nn.Linear`` weights, concatenate q | k | v."""
    parts: dict[str, list[np.ndarray]] = {}
    for suffix, field, _ in _llama_entries(config):  # q, k, v appear in that order
        parts.setdefault(field, []).append(read(f"model.layers.{i}.{suffix}").T)
    return LlamaLayerWeights(**{field: _concat_columns(arrays) for field, arrays in parts.items()})


def _concat_columns(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the last axis into one new C-contiguous float32 array (inputs may be transposed views)."""
    shape = (*arrays[0].shape[:-1], sum(a.shape[-1] for a in arrays))
    return np.concatenate(arrays, axis=-1, out=np.empty(shape, dtype=np.float32))


def _assemble(config: ModelConfig, read: Callable[[str], np.ndarray]) -> dict[str, object]:
    """ModelWeights keyword arguments except ``config`` and ``lm_head``, reading tensors by canonical name.

    Tensors are read as they are needed, so at most one layer's raw Llama tensors live beside the result.
    """
    if config.is_llama:
        tops = {field: read(hf) for field, hf in HF_LLAMA_TOP_NAMES.items()}
        layers = tuple(_llama_layer(config, i, read) for i in range(config.n_layer))
        return {**tops, "wpe": None, "lnf_b": None, "layers": layers}
    tops = {field: read(hf) for field, hf in HF_TOP_NAMES.items()}
    layers = tuple(
        LayerWeights(**{field: read(f"h.{i}.{hf}") for field, hf in HF_LAYER_NAMES.items()})
        for i in range(config.n_layer)
    )
    return {**tops, "layers": layers}


def _read(t: _Tensor, name: str) -> np.ndarray:
    try:
        arr = t.read()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{t.file}: cannot read tensor {name} ({_first_line(exc)})") from None
    return np.ascontiguousarray(arr, dtype=np.float32)


def hf_state_dict(weights: ModelWeights, prefix: str | None = None) -> dict[str, np.ndarray]:
    """The Hugging Face state dict of ``weights``; ``lm_head.weight`` is the head (``wte`` when tied).

    GPT-2: ``GPT2LMHeadModel`` names under ``prefix`` (default ``transformer.``). Llama family:
    ``LlamaForCausalLM``/``Qwen2ForCausalLM`` names, matrices transposed to ``[out, in]`` and q | k | v split.
    """
    if weights.config.is_llama:
        return _llama_state_dict(weights)
    prefix = _PREFIX if prefix is None else prefix
    out = {prefix + hf: getattr(weights, field) for field, hf in HF_TOP_NAMES.items()}
    for i, layer in enumerate(weights.layers):
        for field, hf in HF_LAYER_NAMES.items():
            out[f"{prefix}h.{i}.{hf}"] = getattr(layer, field)
    out[_HEAD] = weights.head_weight()
    return out


def _llama_state_dict(weights: ModelWeights) -> dict[str, np.ndarray]:
    config = weights.config
    cols = _qkv_columns(config)
    out = {hf: getattr(weights, field) for field, hf in HF_LLAMA_TOP_NAMES.items()}
    for i, layer in enumerate(weights.layers):
        for suffix, field, part in _llama_entries(config):
            arr = getattr(layer, field)
            if part:
                arr = arr[..., cols[part]]
            out[f"model.layers.{i}.{suffix}"] = np.ascontiguousarray(arr.T)
    out[_HEAD] = weights.head_weight()
    return out


def _check_unsupported_options(config_json: Path, config: ModelConfig) -> None:
    """Refuse config.json options that ModelConfig cannot express (they would change the numerics)."""
    raw = json.loads(config_json.read_text())
    if not config.is_llama:
        for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
            if raw.get(key, supported) != supported:
                raise CheckpointError(f"{config_json}: {key}={raw[key]!r} is not supported (only {supported})")
        return
    if config.hf_model_type == "llama" and raw.get("attention_bias"):
        raise CheckpointError(
            f"{config_json}: attention_bias=true is not supported for llama (it also adds an o_proj bias)"
        )
    if raw.get("use_sliding_window"):
        raise CheckpointError(f"{config_json}: use_sliding_window=true is not supported (full attention only)")
    # load_hf_config has parsed the rotary options (default, or Llama 3.1's llama3 scaling, from rope_scaling
    # or rope_parameters) and refused the rest; this restates that for config.json files read here directly.
    for key in ("rope_scaling", "rope_parameters"):
        rope = raw.get(key) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else rope
        if rope_type not in ROPE_TYPES:
            raise CheckpointError(f"{config_json}: {key} rope_type {rope_type!r} is not supported (supported: "
                                  f"{', '.join(map(repr, ROPE_TYPES))})")


def _model_label(config: ModelConfig) -> str:
    return f"{config.n_layer}-layer {config.hf_model_type if config.is_llama else 'GPT-2'}"


def _check_tensors(tensors: dict[str, _Tensor], config: ModelConfig, folder: Path) -> None:
    """Every expected tensor present with its shape, nothing unexpected (``lm_head.weight`` is optional)."""
    expected = _hf_shapes(config)
    unexpected = sorted(set(tensors) - set(expected) - {_HEAD})
    if unexpected:
        raise CheckpointError(
            f"{folder}: unexpected tensor {unexpected[0]} for a {_model_label(config)} "
            f"({len(unexpected)} unexpected in all)"
        )
    for name in expected:
        if name not in tensors:
            raise CheckpointError(f"{folder}: missing tensor {name}")
    if _HEAD in tensors:
        expected[_HEAD] = (config.vocab_size, config.d_model)
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise CheckpointError(
                f"{folder}: tensor {name} has shape {tensors[name].shape}, expected {shape} from config.json"
            )


def _resolve_head(config: ModelConfig, lm_head: np.ndarray | None, wte: np.ndarray, folder: Path) -> np.ndarray | None:
    """The untied head, or None for a tied one (an explicit ``lm_head.weight`` must then equal the embedding)."""
    if config.tie_word_embeddings:
        if lm_head is not None and not np.array_equal(lm_head, wte):
            embed = HF_LLAMA_TOP_NAMES["wte"] if config.is_llama else HF_TOP_NAMES["wte"]
            raise CheckpointError(
                f"{folder}: lm_head.weight differs from {embed} "
                "but config.json ties them (tie_word_embeddings)"
            )
        return None
    if lm_head is None:
        raise CheckpointError(
            f"{folder}: missing tensor lm_head.weight (config.json has tie_word_embeddings=false)"
        )
    return lm_head


def load_checkpoint(path: str | Path) -> ModelWeights:
    """Load a Hugging Face GPT-2, Llama or Qwen2 checkpoint folder into float32 :class:`ModelWeights`.

    The config comes from ``config.json``. GPT-2 tensor names may carry the ``transformer.`` prefix or not,
    Llama-family names the ``model.`` prefix or not; old attention-mask and rotary buffers are ignored.
    ``lm_head.weight`` absent or equal to the token embedding means a tied head.
    """
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint path {folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no config.json in checkpoint folder {folder}")
    try:
        config = load_hf_config(folder)
    except ConfigError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from None
    _check_unsupported_options(folder / "config.json", config)

    with ExitStack() as stack:
        tensors = _canonical(_open_weights(folder, stack), folder, config)
        _check_tensors(tensors, config, folder)

        def read(name: str) -> np.ndarray:
            return _read(tensors[name], name)

        arrays = _assemble(config, read)
        lm_head = read(_HEAD) if _HEAD in tensors else None

    weights = ModelWeights(config=config, lm_head=_resolve_head(config, lm_head, arrays["wte"], folder), **arrays)
    weights.validate()
    return weights
