"""Real numerics inside the simulation: interprets a plan's actions with the numba kernels.

The engine calls :meth:`Numerics.run` when a task completes, so every tile multiplies its own block and
partial sums are added in exactly the order the mapping reduces them. Tensors live in one store keyed by op
name (a simulation convenience: which tile holds which block is the plan's business). Every stored value is
rounded to the storage precision; products and partial sums accumulate in fp32.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from ..kernels import causal_softmax, embedding, gelu, gemm, layernorm, round_to
from ..mapping.plan import (
    Combine,
    ContextWrite,
    Elementwise,
    Free,
    MatmulBlock,
    ReduceWrite,
    Ref,
    SoftmaxBlock,
)
from ..workloads import OpKind, WorkloadGraph
from ..workloads.weights import ModelWeights


class Numerics:
    """Tensor store plus an interpreter for plan actions."""

    def __init__(self, graph: WorkloadGraph, weights: ModelWeights, token_ids: np.ndarray):
        cfg = graph.config
        if token_ids.shape != (graph.batch, graph.seq):
            raise ValueError(f"token ids have shape {token_ids.shape}, expected {(graph.batch, graph.seq)}")
        self._setup(graph)
        self.eps = cfg.layer_norm_epsilon
        self.activation = cfg.activation
        self.token_ids = np.ascontiguousarray(token_ids, dtype=np.int64)
        for op in graph.ops():
            if op.kind == OpKind.ATTN_CONTEXT:
                self.shapes[op.name] = (graph.tokens, cfg.d_model)
        self._load_weights(weights)

    @classmethod
    def for_tensors(cls, graph: WorkloadGraph, tensors: dict[str, np.ndarray]) -> Numerics:
        """An executor for a single-operator workload (``lower_gemm``): inputs and weights given by name."""
        self = cls.__new__(cls)
        self._setup(graph)
        for name, arr in tensors.items():
            self._put(name, arr)
        return self

    def _setup(self, graph: WorkloadGraph) -> None:
        self.precision = graph.precision
        self.seq = graph.seq
        self.store: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, int]] = {
            op.name: (op.m, op.n) for op in graph.ops() if op.kind not in (OpKind.ATTN_SCORES, OpKind.SOFTMAX)
        }

    def _put(self, name: str, arr: np.ndarray) -> None:
        arr = arr[None, :] if arr.ndim == 1 else arr
        self.store[name] = round_to(np.ascontiguousarray(arr, dtype=np.float32), self.precision)

    def _load_weights(self, w: ModelWeights) -> None:
        for layer, lw in enumerate(w.layers):
            for f in fields(lw):
                self._put(f"layer{layer}.{f.name}", getattr(lw, f.name))
        self._put("embed.wte", w.wte)
        self._put("embed.wpe", w.wpe)
        self.store["head.wte"] = self.store["embed.wte"] if w.lm_head is None else round_to(w.lm_head, self.precision)
        self._put("head.lnf_g", w.lnf_g)
        self._put("head.lnf_b", w.lnf_b)

    # ---- tensor access -----------------------------------------------------------------------------------------
    def get(self, ref: Ref) -> np.ndarray:
        t = self.store[ref.tensor]
        (r0, r1), (c0, c1) = ref.rows, ref.cols
        return t[c0:c1, r0:r1].T if ref.transpose else t[r0:r1, c0:c1]

    def write(self, ref: Ref, value: np.ndarray) -> None:
        t = self.store.get(ref.tensor)
        if t is None:
            t = self.store[ref.tensor] = np.zeros(self.shapes[ref.tensor], dtype=np.float32)
        (r0, r1), (c0, c1) = ref.rows, ref.cols
        t[r0:r1, c0:c1] = round_to(value, self.precision)

    def output(self, name: str) -> np.ndarray:
        return self.store[name]

    # ---- actions ---------------------------------------------------------------------------------------------
    def run(self, actions: tuple) -> None:
        for a in actions:
            if isinstance(a, MatmulBlock):
                out = gemm(self.get(a.a), self.get(a.b))
                if a.scale != 1.0:
                    out *= np.float32(a.scale)
                if a.accumulate and a.out in self.buffers:
                    self.buffers[a.out] += out
                else:
                    self.buffers[a.out] = round_to(out, self.precision) if a.round_output else out
            elif isinstance(a, ReduceWrite):
                total = None
                for group in a.groups:
                    part = self.buffers[group[0]]
                    for key in group[1:]:
                        part = part + self.buffers[key]
                    total = part if total is None else total + part
                if a.bias is not None:
                    total = total + self.get(a.bias)
                self.write(a.dst, total)
            elif isinstance(a, Combine):
                total = self.buffers[a.keys[0]]
                for key in a.keys[1:]:
                    total = total + self.buffers.pop(key)
                self.buffers[a.out] = total
            elif isinstance(a, Elementwise):
                self.write(a.dst, self._elementwise(a))
            elif isinstance(a, SoftmaxBlock):
                self.buffers[a.buf] = round_to(causal_softmax(self.buffers[a.buf], 1.0, a.q_offset), self.precision)
            elif isinstance(a, ContextWrite):
                self.write(a.dst, gemm(self.buffers[a.probs], self.get(a.v)))
            elif isinstance(a, Free):
                for key in a.keys:
                    self.buffers.pop(key, None)
            else:  # pragma: no cover - a new action type without an interpreter is a programming error
                raise TypeError(f"no interpreter for action {type(a).__name__}")

    def _elementwise(self, a: Elementwise) -> np.ndarray:
        if a.fn == "layernorm":
            gamma, beta = (self.get(p)[0] for p in a.params)
            return layernorm(np.ascontiguousarray(self.get(a.srcs[0])), gamma, beta, self.eps)
        if a.fn == "gelu":
            return gelu(np.ascontiguousarray(self.get(a.srcs[0])), self.activation)
        if a.fn == "add":
            return self.get(a.srcs[0]) + self.get(a.srcs[1])
        if a.fn == "embedding":
            (m0, m1), (c0, c1) = a.dst.rows, a.dst.cols
            wte, wpe = self.store["embed.wte"][:, c0:c1], self.store["embed.wpe"][:, c0:c1]
            parts = []
            flat = self.token_ids.reshape(-1)
            row = m0
            while row < m1:  # one piece per sequence the row block overlaps
                s0 = row % self.seq
                end = min(m1, row - s0 + self.seq)
                parts.append(embedding(flat[row:end][None, :], wte, wpe, s0))
                row = end
            if not parts:  # a tile row with no tokens (fewer tokens than tile rows)
                return np.zeros((0, c1 - c0), dtype=np.float32)
            return np.concatenate(parts, axis=0)
        raise ValueError(f"unknown elementwise function {a.fn!r}")
