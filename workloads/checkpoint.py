"""Loading Hugging Face GPT-2 checkpoint folders (safetensors, sharded safetensors or pytorch_model.bin).

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

from ..errors import UserError
from .config import ConfigError, ModelConfig, load_hf_config
from .weights import (
    HF_LAYER_NAMES,
    HF_TOP_NAMES,
    LAYER_FIELDS,
    LayerWeights,
    ModelWeights,
    layer_shapes,
    top_shapes,
)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"

# Non-parameter buffers that older GPT-2 checkpoints store (causal mask and its fill value).
_BUFFER_RE = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_PREFIX = "transformer."


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded: missing or corrupt files, missing or mis-shaped tensors.

    A :class:`UserError` (hence a ``ValueError``), so the CLI reports it as a one-line message.
    """


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


def _canonical(tensors: dict[str, _Tensor], folder: Path) -> dict[str, _Tensor]:
    """Strip the optional ``transformer.`` prefix and drop the attention-mask buffers."""
    out: dict[str, _Tensor] = {}
    for key, t in tensors.items():
        name = key.removeprefix(_PREFIX)
        if _BUFFER_RE.fullmatch(name):
            continue
        if name in out:
            raise CheckpointError(
                f"{folder}: tensor {name} is stored both with and without the 'transformer.' prefix"
            )
        out[name] = t
    return out


def _expected(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Checkpoint name (no prefix) -> (ModelWeights location, shape), excluding ``lm_head.weight``."""
    tops = top_shapes(config)
    exp = {hf: (field, tops[field]) for field, hf in HF_TOP_NAMES.items()}
    shapes = layer_shapes(config)
    for i in range(config.n_layer):
        for field, hf in HF_LAYER_NAMES.items():
            exp[f"h.{i}.{hf}"] = (f"{i}.{field}", shapes[field])
    return exp


def _read(t: _Tensor, name: str) -> np.ndarray:
    try:
        arr = t.read()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{t.file}: cannot read tensor {name} ({_first_line(exc)})") from None
    return np.ascontiguousarray(arr, dtype=np.float32)


def hf_state_dict(weights: ModelWeights, prefix: str = _PREFIX) -> dict[str, np.ndarray]:
    """The Hugging Face ``GPT2LMHeadModel`` state dict of ``weights``; ``lm_head.weight`` is the head."""
    out = {prefix + hf: getattr(weights, field) for field, hf in HF_TOP_NAMES.items()}
    for i, layer in enumerate(weights.layers):
        for field, hf in HF_LAYER_NAMES.items():
            out[f"{prefix}h.{i}.{hf}"] = getattr(layer, field)
    out["lm_head.weight"] = weights.head_weight()
    return out


def _check_attention_options(config_json: Path) -> None:
    """Refuse GPT-2 attention variants that ModelConfig cannot express (they would change the numerics)."""
    raw = json.loads(config_json.read_text())
    for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if raw.get(key, supported) != supported:
            raise CheckpointError(f"{config_json}: {key}={raw[key]!r} is not supported (only {supported})")


def load_checkpoint(path: str | Path) -> ModelWeights:
    """Load a Hugging Face GPT-2 checkpoint folder into float32 :class:`ModelWeights`.

    The config comes from ``config.json``. Tensor names may carry the ``transformer.`` prefix or not; the
    attention-mask buffers are ignored. ``lm_head.weight`` absent or equal to ``wte`` means a tied head.
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
    _check_attention_options(folder / "config.json")

    with ExitStack() as stack:
        tensors = _canonical(_open_weights(folder, stack), folder)
        expected = _expected(config)
        unexpected = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
        if unexpected:
            raise CheckpointError(
                f"{folder}: unexpected tensor {unexpected[0]} for a {config.n_layer}-layer GPT-2 "
                f"({len(unexpected)} unexpected in all)"
            )
        for name in expected:
            if name not in tensors:
                raise CheckpointError(f"{folder}: missing tensor {name}")
        head_shape = (config.vocab_size, config.d_model)
        checks = [(n, shape) for n, (_, shape) in expected.items()]
        if "lm_head.weight" in tensors:
            checks.append(("lm_head.weight", head_shape))
        for name, shape in checks:
            if tensors[name].shape != shape:
                raise CheckpointError(
                    f"{folder}: tensor {name} has shape {tensors[name].shape}, "
                    f"expected {shape} from config.json"
                )
        arrays = {loc: _read(tensors[name], name) for name, (loc, _) in expected.items()}
        lm_head = _read(tensors["lm_head.weight"], "lm_head.weight") if "lm_head.weight" in tensors else None

    if config.tie_word_embeddings:
        if lm_head is not None and not np.array_equal(lm_head, arrays["wte"]):
            raise CheckpointError(
                f"{folder}: lm_head.weight differs from wte.weight "
                "but config.json ties them (tie_word_embeddings)"
            )
        lm_head = None
    elif lm_head is None:
        raise CheckpointError(
            f"{folder}: missing tensor lm_head.weight (config.json has tie_word_embeddings=false)"
        )

    weights = ModelWeights(
        config=config,
        wte=arrays["wte"],
        wpe=arrays["wpe"],
        layers=tuple(
            LayerWeights(**{f: arrays[f"{i}.{f}"] for f in LAYER_FIELDS}) for i in range(config.n_layer)
        ),
        lnf_g=arrays["lnf_g"],
        lnf_b=arrays["lnf_b"],
        lm_head=lm_head,
    )
    weights.validate()
    return weights
