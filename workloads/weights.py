"""Model weights of a decoder (GPT-2 or Llama family) as plain float32 numpy arrays.

Layouts follow Hugging Face: matrices are ``[in, out]`` (GPT-2's ``Conv1D`` layout; Llama's ``nn.Linear``
weights are stored transposed) and the fused QKV projection holds q | k | v along ``out``, so one matmul
per projection serves both families.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np

from ..errors import CheckpointError
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

# Llama/Qwen2: (parameter inside ``model.layers.<i>.``, LlamaLayerWeights field, q/k/v part of the fused
# field or None). 2-D parameters are ``nn.Linear`` weights ``[out, in]``, the transpose of the field.
HF_LLAMA_LAYER_NAMES: tuple[tuple[str, str, str | None], ...] = (
    ("input_layernorm.weight", "ln1_g", None),
    ("self_attn.q_proj.weight", "w_qkv", "q"),
    ("self_attn.k_proj.weight", "w_qkv", "k"),
    ("self_attn.v_proj.weight", "w_qkv", "v"),
    ("self_attn.q_proj.bias", "b_qkv", "q"),
    ("self_attn.k_proj.bias", "b_qkv", "k"),
    ("self_attn.v_proj.bias", "b_qkv", "v"),
    ("self_attn.o_proj.weight", "w_attn_proj", None),
    ("post_attention_layernorm.weight", "ln2_g", None),
    ("mlp.gate_proj.weight", "w_gate", None),
    ("mlp.up_proj.weight", "w_up", None),
    ("mlp.down_proj.weight", "w_down", None),
)

# ModelWeights field -> full parameter name in a Llama/Qwen2 checkpoint (the LM head is ``lm_head.weight``).
HF_LLAMA_TOP_NAMES: dict[str, str] = {
    "wte": "model.embed_tokens.weight",
    "lnf_g": "model.norm.weight",
}


@dataclass(frozen=True, eq=False)
class LayerWeights:
    """One GPT-2 decoder block. Matrices are ``[in, out]``; ``w_qkv`` columns are q | k | v."""

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


@dataclass(frozen=True, eq=False, kw_only=True)
class LlamaLayerWeights:
    """One Llama-family block: RMSNorm gains, fused q | k | v (GQA widths), o_proj, SwiGLU gate/up/down.

    Matrices are ``[in, out]`` (the Hugging Face ``nn.Linear.weight`` transposed). ``b_qkv`` is None unless
    ``config.qkv_bias`` (Qwen2). Keyword-only so that the optional bias can keep its place in the field order.
    """

    ln1_g: np.ndarray  # [d] input_layernorm
    w_qkv: np.ndarray  # [d, qkv_width] columns q | k | v
    b_qkv: np.ndarray | None = None  # [qkv_width] or None
    w_attn_proj: np.ndarray  # [d, d] o_proj
    ln2_g: np.ndarray  # [d] post_attention_layernorm
    w_gate: np.ndarray  # [d, d_ff]
    w_up: np.ndarray  # [d, d_ff]
    w_down: np.ndarray  # [d_ff, d]


LAYER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LayerWeights))
LLAMA_LAYER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LlamaLayerWeights))


def layer_class(config: ModelConfig) -> type[LayerWeights] | type[LlamaLayerWeights]:
    """The per-layer weights class of the config's family."""
    return LlamaLayerWeights if config.is_llama else LayerWeights


def layer_fields(config: ModelConfig) -> tuple[str, ...]:
    """Names of the layer fields that hold arrays for ``config`` (without ``b_qkv`` when a Llama has none)."""
    if not config.is_llama:
        return LAYER_FIELDS
    return tuple(f for f in LLAMA_LAYER_FIELDS if f != "b_qkv" or config.qkv_bias)


def layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every array field of a layer for ``config`` (keys: ``layer_fields(config)``)."""
    d, f = config.d_model, config.d_ff
    if config.is_llama:
        qkv = config.qkv_width
        shapes = {"ln1_g": (d,), "w_qkv": (d, qkv), "b_qkv": (qkv,), "w_attn_proj": (d, d), "ln2_g": (d,),
                  "w_gate": (d, f), "w_up": (d, f), "w_down": (f, d)}
        return {k: shapes[k] for k in layer_fields(config)}
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
    """Expected shapes of the non-layer tensors (``lm_head`` only matters when the head is untied).

    The Llama family has no ``wpe`` (rotary positions) and no ``lnf_b`` (RMSNorm has no shift).
    """
    d = config.d_model
    if config.is_llama:
        return {"wte": (config.vocab_size, d), "lnf_g": (d,), "lm_head": (config.vocab_size, d)}
    return {
        "wte": (config.vocab_size, d),
        "wpe": (config.n_positions, d),
        "lnf_g": (d,),
        "lnf_b": (d,),
        "lm_head": (config.vocab_size, d),
    }


def _layer_arrays(layer: LayerWeights | LlamaLayerWeights) -> Iterator[tuple[str, np.ndarray]]:
    """The layer's fields in declaration order, skipping unset (None) optional ones."""
    for f in fields(layer):
        value = getattr(layer, f.name)
        if value is not None:
            yield f.name, value


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """All parameters of a model; ``lm_head is None`` means the LM head is tied to ``wte``.

    ``layers`` holds LayerWeights (GPT-2) or LlamaLayerWeights; a Llama has ``wpe`` and ``lnf_b`` None.
    Equality is identity (``eq=False``): comparing arrays elementwise belongs in tests, not ``==``.
    """

    config: ModelConfig
    wte: np.ndarray  # [vocab, d]
    wpe: np.ndarray | None  # [n_positions, d]; None for the llama family
    layers: tuple[LayerWeights, ...] | tuple[LlamaLayerWeights, ...]
    lnf_g: np.ndarray  # [d]
    lnf_b: np.ndarray | None  # [d]; None for the llama family
    lm_head: np.ndarray | None = None  # [vocab, d] when untied

    def head_weight(self) -> np.ndarray:
        """The ``[vocab, d]`` matrix the final hidden state is multiplied with (transposed)."""
        return self.wte if self.lm_head is None else self.lm_head

    def named_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every stored array once, named like ``wte`` or ``layers[3].w_qkv`` (a tied head appears once).

        Unset optional tensors (None: a Llama's ``wpe``, ``lnf_b``, bias-free ``b_qkv``) are skipped.
        """
        yield "wte", self.wte
        if self.wpe is not None:
            yield "wpe", self.wpe
        for i, layer in enumerate(self.layers):
            for name, arr in _layer_arrays(layer):
                yield f"layers[{i}].{name}", arr
        yield "lnf_g", self.lnf_g
        if self.lnf_b is not None:
            yield "lnf_b", self.lnf_b
        if self.lm_head is not None:
            yield "lm_head", self.lm_head

    def param_count(self) -> int:
        """Number of stored parameters; equals ``config.param_count()`` for valid weights."""
        return sum(int(a.size) for _, a in self.named_arrays())

    def map_arrays(self, fn: Callable[[np.ndarray], np.ndarray]) -> ModelWeights:
        """A new ModelWeights with ``fn`` applied to every array (e.g. rounding to a storage format).

        A tied head stays tied, so ``fn`` sees the shared matrix once; None fields stay None. The result is
        not validated: ``fn`` may deliberately change the dtype.
        """

        def opt(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else fn(a)

        layers = tuple(type(layer)(**{name: fn(a) for name, a in _layer_arrays(layer)}) for layer in self.layers)
        return ModelWeights(
            config=self.config,
            wte=fn(self.wte),
            wpe=opt(self.wpe),
            layers=layers,
            lnf_g=fn(self.lnf_g),
            lnf_b=opt(self.lnf_b),
            lm_head=opt(self.lm_head),
        )

    def validate(self) -> None:
        """Raise CheckpointError naming the first tensor whose presence, shape, dtype or layout disagrees.

        Layout means C-contiguous float32, which the simulator's kernels assume.
        """

        cfg = self.config
        where = f"model {cfg.name!r}"
        if len(self.layers) != cfg.n_layer:
            raise CheckpointError(f"{where}: {len(self.layers)} layers, config has n_layer={cfg.n_layer}")
        cls = layer_class(cfg)
        for i, layer in enumerate(self.layers):
            if type(layer) is not cls:
                raise CheckpointError(f"{where}: layers[{i}] is a {type(layer).__name__}, expected {cls.__name__}")
        if cfg.tie_word_embeddings and self.lm_head is not None:
            raise CheckpointError(f"{where}: lm_head is set but the config ties it to wte")
        if not cfg.tie_word_embeddings and self.lm_head is None:
            raise CheckpointError(f"{where}: lm_head is missing but the config has an untied head")
        expected = {**top_shapes(cfg), **{f"layers[{i}].{k}": s for i in range(cfg.n_layer)
                                          for k, s in layer_shapes(cfg).items()}}
        if cfg.tie_word_embeddings:
            del expected["lm_head"]
        seen = set()
        for name, arr in self.named_arrays():
            if name not in expected:
                raise CheckpointError(f"{where}: tensor {name} is set but a {cfg.family} model with this config "
                                      "has no such tensor")
            seen.add(name)
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
        missing = [name for name in expected if name not in seen]
        if missing:
            raise CheckpointError(f"{where}: tensor {missing[0]} is missing")


def _init_specs(config: ModelConfig) -> list[tuple[str, tuple[int, ...], float, float]]:
    """(name, shape, std, mean) of every tensor in a fixed order; the order fixes each tensor's child stream.

    Layer tensors are named ``"<i>.<field>"``. GPT-2's order is the historical one (wte, wpe, layers,
    lnf_g, lnf_b, lm_head), so its random weights do not change.
    """
    d = config.d_model
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    gain, small = (0.1, 1.0), (0.02, 0.0)
    if config.is_llama:
        layer_init = {"ln1_g": gain, "w_qkv": small, "b_qkv": small, "w_attn_proj": (proj_std, 0.0),
                      "ln2_g": gain, "w_gate": small, "w_up": small, "w_down": (proj_std, 0.0)}
        head = [("wte", (config.vocab_size, d), *small)]
        tail = [("lnf_g", (d,), *gain)]
    else:
        layer_init = {
            "ln1_g": gain, "ln1_b": small,
            "w_qkv": small, "b_qkv": small,
            "w_attn_proj": (proj_std, 0.0), "b_attn_proj": small,
            "ln2_g": gain, "ln2_b": small,
            "w_fc": small, "b_fc": small,
            "w_fc_proj": (proj_std, 0.0), "b_fc_proj": small,
        }
        head = [("wte", (config.vocab_size, d), *small), ("wpe", (config.n_positions, d), *small)]
        tail = [("lnf_g", (d,), *gain), ("lnf_b", (d,), *small)]
    shapes = layer_shapes(config)
    specs = list(head)
    for i in range(config.n_layer):
        specs += [(f"{i}.{k}", shapes[k], *layer_init[k]) for k in shapes]
    specs += tail
    if not config.tie_word_embeddings:
        specs.append(("lm_head", (config.vocab_size, d), *small))
    return specs


def random_weights(config: ModelConfig, seed: int = 0) -> ModelWeights:
    """Seeded random weights of either family with every tensor non-trivial.

    Matrices and embeddings ~ N(0, 0.02); the residual-output projections (attention ``c_proj``/``o_proj``,
    MLP ``c_proj``/``down_proj``) ~ N(0, 0.02/sqrt(2 n_layer)) as in GPT-2. Unlike the usual inits, biases
    ~ N(0, 0.02), norm gains ~ 1 + N(0, 0.1) and LayerNorm shifts ~ N(0, 0.02), so a bug that drops any
    tensor changes the output.

    Each tensor draws from its own child stream of ``default_rng(seed)``, so the result does not depend on
    generation order and the tensors can be drawn in parallel threads (numpy releases the GIL).
    """
    specs = _init_specs(config)
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

    cls = layer_class(config)
    layers = tuple(
        cls(**{k: arrays[f"{i}.{k}"] for k in layer_fields(config)}) for i in range(config.n_layer)
    )
    weights = ModelWeights(
        config=config,
        wte=arrays["wte"],
        wpe=arrays.get("wpe"),
        layers=layers,
        lnf_g=arrays["lnf_g"],
        lnf_b=arrays.get("lnf_b"),
        lm_head=arrays.get("lm_head"),
    )
    weights.validate()
    return weights
