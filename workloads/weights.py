"""Model weights of a GPT-2-style decoder as plain float32 numpy arrays.

Layouts follow Hugging Face ``GPT2LMHeadModel`` (``Conv1D`` stores matrices as ``[in, out]``, and the fused
QKV projection holds q | k | v along ``out``), so a checkpoint maps onto these fields without transposes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np

from .config import ModelConfig

# LayerWeights field -> parameter name inside ``transformer.h.<i>.`` of a Hugging Face GPT-2 checkpoint.
HF_LAYER_NAMES: dict[str, str] = {
    "ln1_g": "ln_1.weight",
    "ln1_b": "ln_1.bias",
    "w_qkv": "attn.c_attn.weight",
    "b_qkv": "attn.c_attn.bias",
    "w_attn_proj": "attn.c_proj.weight",
    "b_attn_proj": "attn.c_proj.bias",
    "ln2_g": "ln_2.weight",
    "ln2_b": "ln_2.bias",
    "w_fc": "mlp.c_fc.weight",
    "b_fc": "mlp.c_fc.bias",
    "w_fc_proj": "mlp.c_proj.weight",
    "b_fc_proj": "mlp.c_proj.bias",
}

# ModelWeights field -> parameter name inside ``transformer.`` (the LM head is ``lm_head.weight``).
HF_TOP_NAMES: dict[str, str] = {
    "wte": "wte.weight",
    "wpe": "wpe.weight",
    "lnf_g": "ln_f.weight",
    "lnf_b": "ln_f.bias",
}


@dataclass(frozen=True, eq=False)
class LayerWeights:
    """One decoder block. Matrices are ``[in, out]``; ``w_qkv`` columns are q | k | v."""

    ln1_g: np.ndarray  # [d]
    ln1_b: np.ndarray  # [d]
    w_qkv: np.ndarray  # [d, 3d]
    b_qkv: np.ndarray  # [3d]
    w_attn_proj: np.ndarray  # [d, d]
    b_attn_proj: np.ndarray  # [d]
    ln2_g: np.ndarray  # [d]
    ln2_b: np.ndarray  # [d]
    w_fc: np.ndarray  # [d, d_ff]
    b_fc: np.ndarray  # [d_ff]
    w_fc_proj: np.ndarray  # [d_ff, d]
    b_fc_proj: np.ndarray  # [d]


LAYER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LayerWeights))


def layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every LayerWeights field for ``config``."""
    d, f = config.d_model, config.d_ff
    return {
        "ln1_g": (d,),
        "ln1_b": (d,),
        "w_qkv": (d, 3 * d),
        "b_qkv": (3 * d,),
        "w_attn_proj": (d, d),
        "b_attn_proj": (d,),
        "ln2_g": (d,),
        "ln2_b": (d,),
        "w_fc": (d, f),
        "b_fc": (f,),
        "w_fc_proj": (f, d),
        "b_fc_proj": (d,),
    }


def top_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Expected shapes of the non-layer tensors (``lm_head`` only matters when the head is untied)."""
    d = config.d_model
    return {
        "wte": (config.vocab_size, d),
        "wpe": (config.n_positions, d),
        "lnf_g": (d,),
        "lnf_b": (d,),
        "lm_head": (config.vocab_size, d),
    }


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """All parameters of a model; ``lm_head is None`` means the LM head is tied to ``wte``.

    Equality is identity (``eq=False``): comparing arrays elementwise belongs in tests, not ``==``.
    """

    config: ModelConfig
    wte: np.ndarray  # [vocab, d]
    wpe: np.ndarray  # [n_positions, d]
    layers: tuple[LayerWeights, ...]
    lnf_g: np.ndarray  # [d]
    lnf_b: np.ndarray  # [d]
    lm_head: np.ndarray | None = None  # [vocab, d] when untied

    def head_weight(self) -> np.ndarray:
        """The ``[vocab, d]`` matrix the final hidden state is multiplied with (transposed)."""
        return self.wte if self.lm_head is None else self.lm_head

    def named_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every stored array once, named like ``wte`` or ``layers[3].w_qkv`` (a tied head appears once)."""
        yield "wte", self.wte
        yield "wpe", self.wpe
        for i, layer in enumerate(self.layers):
            for name in LAYER_FIELDS:
                yield f"layers[{i}].{name}", getattr(layer, name)
        yield "lnf_g", self.lnf_g
        yield "lnf_b", self.lnf_b
        if self.lm_head is not None:
            yield "lm_head", self.lm_head

    def param_count(self) -> int:
        """Number of stored parameters; equals ``config.param_count()`` for valid weights."""
        return sum(int(a.size) for _, a in self.named_arrays())

    def map_arrays(self, fn: Callable[[np.ndarray], np.ndarray]) -> ModelWeights:
        """A new ModelWeights with ``fn`` applied to every array (e.g. rounding to a storage format).

        A tied head stays tied, so ``fn`` sees the shared matrix once. The result is not validated: ``fn``
        may deliberately change the dtype.
        """
        layers = tuple(
            LayerWeights(**{name: fn(getattr(layer, name)) for name in LAYER_FIELDS}) for layer in self.layers
        )
        return ModelWeights(
            config=self.config,
            wte=fn(self.wte),
            wpe=fn(self.wpe),
            layers=layers,
            lnf_g=fn(self.lnf_g),
            lnf_b=fn(self.lnf_b),
            lm_head=None if self.lm_head is None else fn(self.lm_head),
        )

    def validate(self) -> None:
        """Raise CheckpointError naming the first tensor whose shape, dtype or layout disagrees with config.

        Layout means C-contiguous float32, which the simulator's kernels assume.
        """
        from .checkpoint import CheckpointError  # checkpoint.py imports this module

        cfg = self.config
        where = f"model {cfg.name!r}"
        if len(self.layers) != cfg.n_layer:
            raise CheckpointError(f"{where}: {len(self.layers)} layers, config has n_layer={cfg.n_layer}")
        if cfg.tie_word_embeddings and self.lm_head is not None:
            raise CheckpointError(f"{where}: lm_head is set but the config ties it to wte")
        if not cfg.tie_word_embeddings and self.lm_head is None:
            raise CheckpointError(f"{where}: lm_head is missing but the config has an untied head")
        expected = {**top_shapes(cfg), **{f"layers[{i}].{k}": s for i in range(cfg.n_layer)
                                          for k, s in layer_shapes(cfg).items()}}
        for name, arr in self.named_arrays():
            if not isinstance(arr, np.ndarray):
                raise CheckpointError(f"{where}: tensor {name} is a {type(arr).__name__}, not an ndarray")
            if arr.shape != expected[name]:
                raise CheckpointError(
                    f"{where}: tensor {name} has shape {arr.shape}, expected {expected[name]}"
                )
            if arr.dtype != np.float32:
                raise CheckpointError(f"{where}: tensor {name} has dtype {arr.dtype}, expected float32")
            if not arr.flags.c_contiguous:
                raise CheckpointError(f"{where}: tensor {name} is not C-contiguous")


def random_weights(config: ModelConfig, seed: int = 0) -> ModelWeights:
    """Seeded GPT-2-style random weights with every tensor non-trivial.

    Matrices and embeddings ~ N(0, 0.02); the residual-output projections (attention and MLP ``c_proj``)
    ~ N(0, 0.02/sqrt(2 n_layer)) as in GPT-2. Unlike GPT-2's init, biases ~ N(0, 0.02), LayerNorm gains
    ~ 1 + N(0, 0.1) and shifts ~ N(0, 0.02), so a bug that drops any tensor changes the output.

    Each tensor draws from its own child stream of ``default_rng(seed)``, so the result does not depend on
    generation order and the tensors can be drawn in parallel threads (numpy releases the GIL).
    """
    d = config.d_model
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    # (name, shape, std, mean) in a fixed order; the order fixes which child stream each tensor uses.
    layer_init = {
        "ln1_g": (0.1, 1.0), "ln1_b": (0.02, 0.0),
        "w_qkv": (0.02, 0.0), "b_qkv": (0.02, 0.0),
        "w_attn_proj": (proj_std, 0.0), "b_attn_proj": (0.02, 0.0),
        "ln2_g": (0.1, 1.0), "ln2_b": (0.02, 0.0),
        "w_fc": (0.02, 0.0), "b_fc": (0.02, 0.0),
        "w_fc_proj": (proj_std, 0.0), "b_fc_proj": (0.02, 0.0),
    }
    shapes = layer_shapes(config)
    specs: list[tuple[str, tuple[int, ...], float, float]] = [
        ("wte", (config.vocab_size, d), 0.02, 0.0),
        ("wpe", (config.n_positions, d), 0.02, 0.0),
    ]
    for i in range(config.n_layer):
        specs += [(f"{i}.{k}", shapes[k], std, mean) for k, (std, mean) in layer_init.items()]
    specs += [("lnf_g", (d,), 0.1, 1.0), ("lnf_b", (d,), 0.02, 0.0)]
    if not config.tie_word_embeddings:
        specs.append(("lm_head", (config.vocab_size, d), 0.02, 0.0))

    streams = np.random.default_rng(seed).spawn(len(specs))

    def draw(i: int) -> np.ndarray:
        _, shape, std, mean = specs[i]
        a = streams[i].standard_normal(shape, dtype=np.float32)
        a *= np.float32(std)
        if mean:
            a += np.float32(mean)
        return a

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = dict(zip((s[0] for s in specs), pool.map(draw, range(len(specs))), strict=True))

    layers = tuple(
        LayerWeights(**{k: arrays[f"{i}.{k}"] for k in LAYER_FIELDS}) for i in range(config.n_layer)
    )
    weights = ModelWeights(
        config=config,
        wte=arrays["wte"],
        wpe=arrays["wpe"],
        layers=layers,
        lnf_g=arrays["lnf_g"],
        lnf_b=arrays["lnf_b"],
        lm_head=arrays.get("lm_head"),
    )
    weights.validate()
    return weights
