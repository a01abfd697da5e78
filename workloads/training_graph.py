"""The backward pass of a GPT-2 model as a workload graph the existing mappings can plan.

Every backward matmul is a GEMM with transposed operands, lowered as an ordinary ``matmul`` op:

- ``<op>.dgrad``: ``dX = dY W^T``: ``m = tokens``, contraction over the forward's ``n``, output width the
  forward's ``k``; its weight streams in from MemoryX a second time (weight streaming keeps no weights).
- ``<op>.wgrad``: ``dW = X^T dY``: the forward's ``m x k x n`` multiply-adds, the ``k x n`` result leaving
  the wafer for MemoryX. It keeps the forward's shape (``grad="wgrad"``); the weight-streaming mapping plans
  it as its data moves (``dY`` broadcast along tile rows, partials reduced down tile columns, the gradient
  streamed out on the MemoryX link's egress direction: ``StreamingLayout.wgrad_matmul``).
- attention: ``dQ = dS K`` and ``dK = dS^T Q`` are two ops of the scores' shape, ``dP = dC V^T`` and
  ``dV = P^T dC`` two of the context's; the softmax, GELU, norms and residual adds appear once each at their
  forward FLOPs per element (their backward costs about the same elementwise work).

Blocks come in reverse order (head first, then layer N-1 ... 0, then the embedding's scatter-add), each with
the forward's internal dependency structure (op names get a ``.bwd`` suffix), so the weight-streaming plan
streams layer weights in reverse order, as the hardware does.
"""

from __future__ import annotations

from dataclasses import replace

import networkx as nx

from .graph import OpKind, OpSpec, WorkloadGraph, _block_graph, lower_model

_SUFFIX = ".bwd"


def _rename(name: str, names: set[str]) -> str:
    return name + _SUFFIX if name in names else name


def _backward_ops(ops: list[OpSpec], names: set[str]) -> list[OpSpec]:
    out: list[OpSpec] = []
    for op in ops:
        base = replace(op, name=op.name + _SUFFIX, inputs=tuple(_rename(i, names) for i in op.inputs))
        if op.kind == OpKind.MATMUL and op.weight:
            # dgrad: [tokens, n] @ [n, k]; the same weight streams again (no bias in a dgrad)
            b = op.act_in_bytes // max(op.groups * op.m * op.k, 1)
            dgrad = replace(base, name=op.name + ".dgrad", k=op.n, n=op.k, bias=None, grad="dgrad",
                            flops=op.groups * 2 * op.m * op.k * op.n, weight_bytes=op.k * op.n * b,
                            act_in_bytes=op.groups * op.m * op.n * b, act_out_bytes=op.groups * op.m * op.k * b)
            wgrad = replace(base, name=op.name + ".wgrad", grad="wgrad")  # dW (and the bias's row sum) streams out
            out += [dgrad, wgrad]
        elif op.kind in (OpKind.ATTN_SCORES, OpKind.ATTN_CONTEXT):
            out += [base, replace(base, name=op.name + ".bwd2", inputs=base.inputs)]
        else:
            out.append(base)
    return out


def lower_backward(config, batch: int, seq: int, precision: str = "fp32") -> WorkloadGraph:
    """The backward pass of ``lower_model(config, batch, seq, precision)`` (see the module docstring)."""
    if config.is_llama:
        raise ValueError("training graphs cover GPT-2 models")
    fwd = lower_model(config, batch, seq, precision)
    names = {op.name for op in fwd.ops()}
    blocks: list[tuple[str, nx.DiGraph]] = []
    for block, g in reversed(fwd.blocks):
        ops = [g.nodes[n]["op"] for n in nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"])]
        blocks.append((block, _block_graph(block, _backward_ops(ops, names))))
    return WorkloadGraph(config=config, batch=batch, seq=seq, precision=precision, blocks=tuple(blocks))


def attention_flops(config, tokens_per_seq: int, sequences: int) -> int:
    """Forward + backward FLOPs of the attention score and context products (not in 6 x params x tokens):
    ``3 x 2 x 2 x seq^2 x d`` per sequence per layer (forward 1x, backward 2x; scores and context; full,
    unmasked products as the wafer computes them)."""
    return 3 * 2 * 2 * tokens_per_seq**2 * config.d_model * config.n_layer * sequences
