"""Token ids for model runs: from a prompt (via the checkpoint's tokenizer), a literal list, or random."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .config import ConfigError, ModelConfig, load_hf_config


def check_token_ids(token_ids: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Return ``token_ids`` as int64 ``[batch, seq]`` after checking rank, length and id range."""
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or 0 in ids.shape:
        raise ValueError(f"token ids must be a non-empty [batch, seq] array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.shape[1] > config.n_positions:
        raise ValueError(
            f"sequence length {ids.shape[1]} exceeds the context of {config.name} "
            f"({config.n_positions} positions)"
        )
    bad = (ids < 0) | (ids >= config.vocab_size)
    if bad.any():
        b, s = np.argwhere(bad)[0]
        raise ValueError(
            f"token id {ids[b, s]} at [{b}, {s}] is outside the vocabulary [0, {config.vocab_size})"
        )
    return ids.astype(np.int64, copy=False)


def _load_tokenizer(folder: Path):
    try:
        from tokenizers import ByteLevelBPETokenizer, Tokenizer
    except ImportError:
        raise ImportError(
            "encoding prompts needs the tokenizers package: pip install 'wse-sim[reference]'"
        ) from None
    tokenizer_json = folder / "tokenizer.json"
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    try:
        if tokenizer_json.is_file():
            return Tokenizer.from_file(str(tokenizer_json))
        if vocab.is_file() and merges.is_file():
            return ByteLevelBPETokenizer(str(vocab), str(merges))
    except Exception as exc:  # the tokenizers library raises plain Exception subclasses on bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{folder}: unreadable tokenizer files ({first})") from None
    raise CheckpointError(f"no tokenizer in {folder} (expected tokenizer.json, or vocab.json and merges.txt)")


def encode_prompt(checkpoint_dir: str | Path, text: str) -> np.ndarray:
    """Encode ``text`` with the checkpoint folder's tokenizer into int64 ``[1, n]`` ids.

    Uses ``tokenizer.json`` when present, else the GPT-2 style ``vocab.json`` + ``merges.txt`` pair. When the
    folder also has a ``config.json`` the ids are checked against its vocabulary size.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    ids = np.asarray(_load_tokenizer(folder).encode(text).ids, dtype=np.int64)
    if ids.size == 0:
        raise ValueError(f"prompt {text!r} encodes to no tokens")
    if (folder / "config.json").is_file():
        try:
            vocab_size = load_hf_config(folder).vocab_size
        except ConfigError as exc:
            raise CheckpointError(f"{folder / 'config.json'}: {exc}") from None
        if ids.max() >= vocab_size:
            raise CheckpointError(
                f"{folder}: tokenizer produced id {int(ids.max())}, "
                f"outside the model vocabulary of {vocab_size}"
            )
    return ids[None, :]


def has_tokenizer(checkpoint_dir: str | Path) -> bool:
    """Whether the checkpoint folder holds tokenizer files (tokenizer.json, or vocab.json and merges.txt)."""
    folder = Path(checkpoint_dir)
    return (folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt"))


def decode_tokens(checkpoint_dir: str | Path, ids) -> str:
    """The text of token ``ids`` (a sequence of ints) by the checkpoint folder's tokenizer."""
    return _load_tokenizer(Path(checkpoint_dir)).decode([int(i) for i in ids])


def parse_token_list(spec: str, vocab_size: int) -> np.ndarray:
    """Parse a comma-separated id list such as ``"1, 2, 3"`` into int64 ``[1, n]``."""
    entries = spec.split(",")
    if not spec.strip():
        raise ValueError("token list is empty")
    ids = []
    for pos, entry in enumerate(entries, start=1):
        text = entry.strip()
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"token list entry {pos} ({text!r}) is not an integer") from None
        if not 0 <= value < vocab_size:
            raise ValueError(f"token list entry {pos} ({value}) is outside the vocabulary [0, {vocab_size})")
        ids.append(value)
    return np.asarray(ids, dtype=np.int64)[None, :]


def random_tokens(vocab_size: int, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    """Uniform random ids, int64 ``[batch, seq]``, reproducible for a given seed."""
    for name, value in (("vocab_size", vocab_size), ("batch", batch), ("seq", seq)):
        if not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return np.random.default_rng(seed).integers(0, vocab_size, size=(batch, seq), dtype=np.int64)
