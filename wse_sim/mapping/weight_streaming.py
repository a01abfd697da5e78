"""Cerebras weight streaming: activations stay on the wafer, weights stream in from MemoryX.

Activations use the shared block layout (:mod:`.layout`). A matmul ``Y = X W + b`` streams ``W`` in column
chunks; chunk ``c`` (output columns owned by tile column ``c``, cut finer when SRAM requires) is broadcast down
every tile column (tile column ``j`` takes the rows ``k_j`` of ``W`` that match its slice of ``X``), every tile
multiplies its block, and the partial sums of each tile row are reduced along the row into the owner column
``c`` by a bidirectional chain (every PE on an arm adds its partial and forwards: one routing stage each).
Chunks pipeline: while one is reduced the next is broadcast and computed, and the stream runs ahead by
``stream_buffers`` chunks (double buffering by default), across op and layer boundaries.

A weight gradient ``dW = X^T dY`` (a training backward's ``wgrad`` op) moves the other way: nothing streams in;
chunk ``c``'s columns of ``dY`` (resident in owner tile column ``c``) are broadcast along every tile row, every
tile multiplies its ``X`` block transposed by them, each tile column's partial sums (over its tokens) are chain-
reduced down the tile rows, and the reduced ``k x nc`` gradient streams out to MemoryX on the link's egress
direction (:meth:`StreamingLayout.wgrad_matmul`).
"""

from __future__ import annotations

from ..arch import WaferSpec
from ..errors import UserError
from ..workloads import ModelConfig, OpSpec, WorkloadGraph
from ..workloads.graph import BYTES_PER_ELEM
from .layout import ACC_BYTES, BlockLayout, Builder, weight_tensor
from .plan import (
    Free,
    MatmulBlock,
    ModelPlan,
    OpPlan,
    ReduceWrite,
    Ref,
    SramOverflowError,
    TaskKind,
    TileGrid,
    ceil_div,
    split,
)
from .registry import register

# Training keeps AdamW's state beside the weights in MemoryX: an fp32 master copy and the two fp32 moments
# (Loshchilov & Hutter's AdamW; mixed-precision training keeps fp32 masters), 4 bytes each per parameter.
ADAMW_STATE_BYTES_PER_PARAM = 12


def memoryx_bytes(config: ModelConfig, precision: str, optimizer_state_bytes_per_param: int = 0) -> int:
    """Bytes MemoryX holds for ``config``: every weight at the storage precision, plus optimizer state."""
    return config.param_count() * (BYTES_PER_ELEM[precision] + optimizer_state_bytes_per_param)


def check_memoryx(config: ModelConfig, precision: str, wafer: WaferSpec, optimizer_state_bytes_per_param: int = 0):
    """Refuse a model whose weights (and optimizer state) exceed ``wafer.memoryx_capacity_bytes``."""
    need = memoryx_bytes(config, precision, optimizer_state_bytes_per_param)
    if need > wafer.memoryx_capacity_bytes:
        what = "weights and AdamW state" if optimizer_state_bytes_per_param else "weights"
        raise UserError(f"{config.name}'s {what} need {need / 1e9:.3g} GB of MemoryX but {wafer.name} has "
                        f"{wafer.memoryx_capacity_bytes / 1e9:.3g} GB (memoryx_capacity_bytes)")

@register("weight-streaming")
class WeightStreaming:
    name = "weight-streaming"

    def __init__(self, stream_buffers: int = 2):
        if stream_buffers < 1:
            raise ValueError("stream_buffers must be >= 1")
        self.stream_buffers = stream_buffers

    def layout(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> StreamingLayout:
        return StreamingLayout(graph, wafer, grid, self.stream_buffers)

    def plan(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> ModelPlan:
        if graph.config is not None:  # a model (a lone GEMM's operand fits any MemoryX)
            check_memoryx(graph.config, graph.precision, wafer)
        ctx = self.layout(graph, wafer, grid)
        ops = tuple(ctx.plan_op(op) for op in graph.ops())
        return ModelPlan(
            mapping=self.name,
            grid=grid,
            precision=graph.precision,
            ops=ops,
            stream_buffers=self.stream_buffers,
            params={"stream_buffers": self.stream_buffers},
        )


class StreamingLayout(BlockLayout):
    name = "weight-streaming"

    def __init__(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid, stream_buffers: int = 2):
        super().__init__(graph, wafer, grid)
        self.buffers = stream_buffers

    # ---- matmul ----------------------------------------------------------------------------------------------
    def chunks(self, op: OpSpec) -> tuple[list[tuple[int, int, int]], int]:
        """The weight's column chunks ``(root tile column, n0, n1)``, each as wide as the SRAM left over allows,
        and the SRAM per PE the widest takes beside the resident blocks."""
        b, TR, TC = self.b, self.TR, self.TC
        # SRAM: resident blocks, plus per output column of a chunk: the weight buffers and fp32 partials (x2);
        # a weight gradient: the dY buffers and fp32 partials of dW (x2: one being chain-reduced or, at the root
        # row, waiting as the reduced gradient chunk for its stream-out, while the next is computed)
        resident = max(self.resident_bytes_per_pe([op.k, op.n], i, j) for i in range(TR) for j in range(TC))
        if op.grad == "wgrad":
            per_col = max(self.buffers * self.rows_per_pe(i) * b + 2 * self.cols_per_pe(op.k, j) * ACC_BYTES
                          for i in range(TR) for j in range(TC))
        else:
            per_col = max(
                self.buffers * self.cols_per_pe(op.k, j) * b + 2 * self.rows_per_pe(i) * ACC_BYTES
                for i in range(TR)
                for j in range(TC)
            )
        free = self.wafer.sram_bytes_per_pe - resident - self.reserved_bytes_per_pe
        if free < per_col:
            raise SramOverflowError(
                op.name, resident + self.reserved_bytes_per_pe + per_col, self.wafer.sram_bytes_per_pe,
                "resident activations" + (" and weights" if self.reserved_bytes_per_pe else "")
                + " leave no room for one streamed weight column",
            )
        chunk_cols_max = free // per_col
        n_edges = split(op.n, TC)
        chunks: list[tuple[int, int, int]] = []
        for c in range(TC):
            lo, hi = n_edges[c], n_edges[c + 1]
            if hi == lo:
                continue
            sub = split(hi - lo, ceil_div(hi - lo, chunk_cols_max))
            chunks.extend((c, lo + sub[s], lo + sub[s + 1]) for s in range(len(sub) - 1))
        return chunks, resident + per_col * max(n1 - n0 for _, n0, n1 in chunks)

    def matmul(self, op: OpSpec) -> OpPlan:
        if op.grad == "wgrad":
            return self.wgrad_matmul(op)
        g, b, TR, TC = self.grid, self.b, self.TR, self.TC
        K = op.k
        x, y = op.inputs[0], op.name
        w_name = weight_tensor(op, op.weight)
        # the tied LM head reads the [vocab, d] embedding as [d, vocab]; a dgrad reads its weight transposed
        w_transposed = (op.weight == "wte") != (op.grad == "dgrad")
        bias = weight_tensor(op, op.bias) if op.bias else None
        chunks, sram = self.chunks(op)
        widest = max(n1 - n0 for _, n0, n1 in chunks)

        # What every chunk repeats, per tile column j and tile row i: the slice of K, the rows and the block of x.
        k_span = [self.cols(K, j) for j in range(TC)]
        k_per_pe = [self.cols_per_pe(K, j) for j in range(TC)]
        m_span = [self.rows(i) for i in range(TR)]
        m_per_pe = [self.rows_per_pe(i) for i in range(TR)]
        x_block = [[Ref(x, m_span[i], k_span[j]) for j in range(TC)] for i in range(TR)]
        down = [g.col_path(j, 0, TR - 1) for j in range(TC)]
        down_hops = g.col_hops(0, TR - 1) + 1

        t = Builder()
        for c, n0, n1 in chunks:
            nc = n1 - n0
            s = t.add(TaskKind.STREAM, label=f"stream[{n0}:{n1}]", nbytes=(K * nc + (nc if bias else 0)) * b)
            bcast = [t.add(TaskKind.TRANSFER, deps=(s,), label=f"bcast col {j}", links=down[j],
                           bytes_per_lane=k_per_pe[j] * nc * b, hops=down_hops,
                           nbytes=(k_span[j][1] - k_span[j][0]) * nc * b * TR)
                     for j in range(TC)]
            w_block = [Ref(w_name, k_span[j], (n0, n1), transpose=w_transposed) for j in range(TC)]
            keys = [[f"{y}#{n0},{i},{j}" for j in range(TC)] for i in range(TR)]
            blocks = [[MatmulBlock(out=keys[i][j], a=x_block[i][j], b=w_block[j]) for j in range(TC)]
                      for i in range(TR)]
            computes = [[t.add(TaskKind.COMPUTE, deps=(bcast[j],), tile=(i, j), label="gemm",
                               macs_per_pe=m_per_pe[i] * k_per_pe[j] * nc,
                               dsd_ops_per_pe=k_per_pe[j] * nc, dsd_len=m_per_pe[i],
                               sw_steps=1,  # one received weight block per chunk: one PE-level step
                               actions=(blocks[i][j],))
                         for j in range(TC)]
                        for i in range(TR)]
            arm = max(g.row_hops(0, c), g.row_hops(c, TC - 1))  # the longer arm of the reduction into column c
            for i in range(TR):
                m0, m1 = m_span[i]
                row_keys = keys[i]
                groups = tuple(grp for grp in (tuple(row_keys[: c + 1]), tuple(reversed(row_keys[c + 1:]))) if grp)
                t.add(
                    TaskKind.TRANSFER, deps=tuple(computes[i]), label=f"reduce row {i}",
                    links=g.row_path(i, 0, c) + g.row_path(i, TC - 1, c),
                    bytes_per_lane=m_per_pe[i] * nc * ACC_BYTES,
                    hops=arm, stages=arm,  # every PE on an arm adds and forwards
                    nbytes=(TC - 1) * (m1 - m0) * nc * ACC_BYTES,
                    actions=(
                        ReduceWrite(dst=Ref(y, (m0, m1), (n0, n1)), groups=groups,
                                    bias=Ref(bias, (0, 1), (n0, n1)) if bias else None),
                        Free(tuple(row_keys)),
                    ),
                )
            t.add(TaskKind.BARRIER, deps=tuple(idx for row in computes for idx in row), label="weights consumed",
                  frees_buffer_of=s)
        return OpPlan(
            op=op, mapping="weight-streaming", tasks=t.finish(), sram_bytes_per_pe=sram,
            notes=f"{len(chunks)} weight chunks of <= {widest} columns",
        )

    def wgrad_matmul(self, op: OpSpec) -> OpPlan:
        """``dW = X^T dY`` (``op.grad == "wgrad"``, the forward's shape ``m x k x n``) as its data moves, per
        chunk ``(c, n0, n1)`` of ``dY``'s (and ``dW``'s) columns:

        - the chunk's ``dY`` columns, resident in owner tile column ``c``, are broadcast along each tile row ``i``
          to every tile column (``rows_per_pe(i) x nc`` elements per lane; waiting for a free dY buffer: the
          computes ``stream_buffers`` chunks back);
        - tile ``(i, j)`` multiplies its ``X[m_i, k_j]`` transposed by them (:func:`_wgrad_blocks`: the forward's
          MACs and DSD shape);
        - each tile column's partials (over its tokens) are chain-reduced down the tile rows into the last row,
          every PE row on the way adding and forwarding (``cols_per_pe(k, j) x nc`` fp32 per lane), in tile-row
          order (:func:`_wgrad_reduce`, the numerics' order);
        - the reduced ``k x nc`` gradient (and the bias's ``nc`` column sums) streams out to MemoryX on the link's
          egress direction (``STREAM_OUT``: full-duplex, beside the weight stream-ins, no weight buffer).

        The op ends with its last column reduction: its stream-outs overlap the ops after it ("as soon as it is
        ready"), each queuing only for the egress port. The SRAM holds two fp32 partial buffers per chunk column
        (one being reduced while the next is computed; in the last tile row the reduced gradient waits in it for
        its stream-out), like the forward's partial sums; as there, no dependency enforces the count (an
        egress-bound run could queue more reduced chunks than two: docs/training.md, weaknesses).
        """
        g, b, TR, TC, K = self.grid, self.b, self.TR, self.TC, op.k
        chunks, sram = self.chunks(op)
        k_span = [self.cols(K, j) for j in range(TC)]
        k_per_pe = [self.cols_per_pe(K, j) for j in range(TC)]
        m_span = [self.rows(i) for i in range(TR)]
        m_per_pe = [self.rows_per_pe(i) for i in range(TR)]
        down, down_hops = [g.col_path(j, 0, TR - 1) for j in range(TC)], g.col_hops(0, TR - 1)
        t = Builder()
        done: list[tuple[list[list[int]], int]] = []  # per chunk: its computes and its stream-out
        for q, (c, n0, n1) in enumerate(chunks):
            nc = n1 - n0
            arm = max(g.row_hops(0, c), g.row_hops(c, TC - 1))  # the longer arm of the broadcast from column c
            dy_free = done[q - self.buffers][0] if q >= self.buffers else None
            bcast = [t.add(TaskKind.TRANSFER, deps=tuple(dy_free[i]) if dy_free else (), label=f"bcast dy row {i}",
                           links=g.row_path(i, c, 0) + g.row_path(i, c, TC - 1),
                           bytes_per_lane=m_per_pe[i] * nc * b, hops=arm,
                           nbytes=(m_span[i][1] - m_span[i][0]) * nc * b * TC)
                     for i in range(TR)]
            keys = [[f"{op.name}#{n0},{i},{j}" for j in range(TC)] for i in range(TR)]
            blocks = _wgrad_blocks(op, keys, k_span, m_span, (n0, n1))
            computes = [[t.add(TaskKind.COMPUTE, label="gemm", tile=(i, j), deps=(bcast[i],),
                               macs_per_pe=m_per_pe[i] * k_per_pe[j] * nc,
                               dsd_ops_per_pe=k_per_pe[j] * nc, dsd_len=m_per_pe[i], sw_steps=1,
                               actions=(blocks[i][j],))
                         for j in range(TC)]
                        for i in range(TR)]
            reduce = [t.add(TaskKind.TRANSFER, deps=tuple(computes[i][j] for i in range(TR)),
                            label=f"reduce col {j}", links=down[j], bytes_per_lane=k_per_pe[j] * nc * ACC_BYTES,
                            hops=down_hops, stages=down_hops,  # every PE row on the chain adds and forwards
                            nbytes=(TR - 1) * (k_span[j][1] - k_span[j][0]) * nc * ACC_BYTES,
                            actions=_wgrad_reduce(op.name, keys, k_span, (n0, n1), j))
                      for j in range(TC)]
            out = t.add(TaskKind.STREAM_OUT, deps=tuple(reduce), label=f"stream out[{n0}:{n1}]",
                        nbytes=(K * nc + (nc if op.bias else 0)) * b)
            done.append((computes, out))
        outs = frozenset(out for _, out in done)  # the op ends without them: they overlap the ops after it
        return OpPlan(op=op, mapping="weight-streaming", tasks=t.finish(trailing=outs), sram_bytes_per_pe=sram,
                      notes=f"{len(chunks)} gradient chunks of <= {max(n1 - n0 for _, n0, n1 in chunks)} columns")


def wgrad_operand(op: OpSpec) -> str:
    """Name of the output gradient ``dY`` a weight-gradient op (``op.grad == "wgrad"``) reads."""
    return f"{op.name}.dy"


def _wgrad_blocks(op: OpSpec, keys, k_span, m_span, cols) -> list[list[MatmulBlock]]:
    """``dW = X^T dY`` on the forward's partitioning: tile (i, j) holds ``X[m_i, k_j]`` and multiplies it,
    transposed, by its tokens' rows of the chunk's ``dY`` columns, the same MACs as the forward block."""
    x, dy = op.inputs[0], wgrad_operand(op)
    return [[MatmulBlock(out=keys[i][j], a=Ref(x, k_span[j], m_span[i], transpose=True), b=Ref(dy, m_span[i], cols))
             for j in range(len(k_span))] for i in range(len(m_span))]


def _wgrad_reduce(y: str, keys, k_span, cols, j: int) -> tuple:
    """The weight gradient's partial sums are over tokens, i.e. over tile rows: tile column ``j``'s partials are
    added in tile-row order (the chain down the column) into its rows ``k_j`` of ``dW``, then freed."""
    col_keys = tuple(row[j] for row in keys)
    return ReduceWrite(dst=Ref(y, k_span[j], cols), groups=(col_keys,)), Free(col_keys)
