"""GEMV mappings for decode (M = 1, any M works): K split over the mesh, partial sums reduced across each row.

Tile (i, j) keeps the weight block ``W[k_j, n_i]`` resident: K over tile columns (matching the block layout of
``x``), N over tile rows; inside a tile, K over PE columns and N over PE rows. Each tile column all-gathers its
slice of ``x`` (one row for decode), every tile multiplies, and each row of PEs then reduces its partial vectors
across the whole row of the grid. The two mappings differ only in that reduction:

- ``gemv-allreduce``: the vendor's pipelined row allreduce. Partials flow from the east end to the west end
  through every PE, each adding its own (one routing stage per PE), and the sum is multicast back along the row.
- ``gemv-tree``: a K-ary reduction tree (MeshGEMV, WaferLLM OSDI'25): at each level groups of ``fan_in``
  neighbours send to their leader, which adds them in one stage. Inside a tile the tree's first levels run over
  the tile's PE columns; across tiles each level is a transfer. Stages grow with ``log_fan_in`` of the row width
  instead of the width, which is why it wins when the row is long and each stage has a software cost.

The row sums ``y[:, n_i]`` are then moved to the block layout (tile (r, j) holds ``y[m_r, n_j]``) so the next op
finds them where every mapping leaves its outputs.
"""

from __future__ import annotations

from ..errors import UserError
from ..workloads import OpSpec
from .collectives import Message
from .layout import ACC_BYTES, Builder
from .plan import Combine, MatmulBlock, OpPlan, ReduceWrite, Ref, TaskKind, ceil_div, split
from .registry import register
from .resident import Operands, ResidentLayout, ResidentMapping

DEFAULT_FAN_IN = 2


def tree_levels(width: int, fan_in: int) -> int:
    """Levels of a ``fan_in``-ary tree over ``width`` leaves."""
    levels, span = 0, 1
    while span < width:
        span *= fan_in
        levels += 1
    return levels


class GemvLayout(ResidentLayout):
    name = "gemv-allreduce"
    tree = False
    fan_in = DEFAULT_FAN_IN

    def n_rows(self, n: int, i: int) -> tuple[int, int]:
        e = split(n, self.TR)
        return e[i], e[i + 1]

    def weight_bytes_per_pe(self, op: OpSpec) -> int:
        return max(self.cols_per_pe(op.k, j) * ceil_div(self.n_rows(op.n, i)[1] - self.n_rows(op.n, i)[0],
                                                         self.grid.height(i)) * self.b
                   for i in range(self.TR) for j in range(self.TC))

    def matmul(self, op: OpSpec) -> OpPlan:
        g, b, TR, TC, M, K, N = self.grid, self.b, self.TR, self.TC, self.M, op.k, op.n
        ops = Operands.of(op)
        t = Builder(g)
        gather: list[tuple[int, ...]] = [()] * TC
        if TR > 1:
            for j in range(TC):
                k0, k1 = self.cols(K, j)
                gather[j] = (t.add(TaskKind.TRANSFER, label=f"all-gather x col {j}", links=self.col_transfer_links(j),
                                   bytes_per_lane=M * self.cols_per_pe(K, j) * b, hops=g.col_hops(0, TR - 1),
                                   nbytes=M * (k1 - k0) * b * (TR - 1)),)
        row_done: list[int] = []
        for i in range(TR):
            r0, r1 = self.n_rows(N, i)
            vec = M * ceil_div(r1 - r0, g.height(i)) * ACC_BYTES  # one PE row's partial vector
            keys = [f"{ops.y}#{i},{j}" for j in range(TC)]
            part = []
            for j in range(TC):
                k0, k1 = self.cols(K, j)
                part.append(t.add(
                    TaskKind.COMPUTE, deps=gather[j], tile=(i, j), label="gemv",
                    macs_per_pe=M * self.cols_per_pe(K, j) * ceil_div(r1 - r0, g.height(i)),
                    actions=(MatmulBlock(keys[j], Ref(ops.x, (0, M), (k0, k1)), ops.w_ref((k0, k1), (r0, r1))),),
                ))
            write = ReduceWrite(Ref(ops.y, (0, M), (r0, r1)), ((keys[0],),),
                                Ref(ops.bias, (0, 1), (r0, r1)) if ops.bias else None)
            if self.tree:
                row_done.append(self._tree(t, i, keys, part, vec, write))
            else:
                row_done.append(self._chain(t, i, keys, part, vec, write))
        self._relayout(t, op, ops, row_done)
        sram = max(self.io_bytes_per_pe(op, i, j) + M * self.cols_per_pe(K, j) * b
                   + self.fan_in * M * ceil_div(N, TR * g.height(i)) * ACC_BYTES
                   for i in range(TR) for j in range(TC))
        how = f"{self.fan_in}-ary tree" if self.tree else "pipelined chain allreduce"
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, "GEMV blocks and partial sums"),
                      notes=f"row reduction over {g.cols} PEs by {how}")

    def _chain(self, t: Builder, i: int, keys, part, vec: float, write: ReduceWrite) -> int:
        g, TC = self.grid, self.TC
        width = g.cols - 1  # PE hops from the east end to the west end of the row
        red = t.add(TaskKind.TRANSFER, deps=tuple(part), label=f"chain reduce row {i}",
                    links=g.row_path(i, TC - 1, 0), bytes_per_lane=vec, hops=width, stages=width,
                    nbytes=self._row_payload(write) * (TC - 1),
                    actions=(ReduceWrite(write.dst, (tuple(reversed(keys)),), write.bias), ))
        return t.add(TaskKind.TRANSFER, deps=(red,), label=f"multicast sum row {i}", links=g.row_path(i, 0, TC - 1),
                     bytes_per_lane=vec, hops=width, nbytes=self._row_payload(write) * (TC - 1))

    def _row_payload(self, write: ReduceWrite) -> int:
        """Bytes of one tile's fp32 partial (or sum) vector ``[M, n_i]``."""
        return self.M * (write.dst.cols[1] - write.dst.cols[0]) * ACC_BYTES

    def _tree(self, t: Builder, i: int, keys, part, vec: float, write: ReduceWrite) -> int:
        g, TC, F = self.grid, self.TC, self.fan_in
        done = []
        for j in range(TC):  # levels inside the tile: over its PE columns, no tile-to-tile links
            lv = tree_levels(g.width(j), F)
            done.append(t.add(TaskKind.TRANSFER, deps=(part[j],), label=f"tree in tile ({i},{j})",
                              bytes_per_lane=lv * (F - 1) * vec, hops=g.width(j) - 1, stages=lv) if lv else part[j])
        stride = 1
        while stride < TC:
            for lead in range(0, TC, stride * F):
                members = [lead + u * stride for u in range(1, F) if lead + u * stride < TC]
                if not members:
                    continue
                (done[lead],) = t.send(
                    [Message((i, mj), (i, lead), vec, 0, self._row_payload(write)) for mj in members],
                    (done[lead], *(done[mj] for mj in members)), label=f"tree level stride {stride} row {i}",
                    stages=1, actions=(Combine(keys[lead], (keys[lead], *(keys[mj] for mj in members))),),
                )
            stride *= F
        return t.add(TaskKind.COMPUTE, deps=(done[0],), tile=(i, 0), label="tree root writes",
                     elem_ops_per_pe=self.M * ceil_div(write.dst.cols[1] - write.dst.cols[0], g.height(i)),
                     actions=(write,))

    def _relayout(self, t: Builder, op: OpSpec, ops: Operands, row_done: list[int]) -> None:
        """Row sums ``y[:, n_i]`` -> block layout: tile (r, j) gets ``y[m_r, n_j]`` (XY-routed, one step)."""
        g, b = self.grid, self.b
        msgs = []
        for i in range(self.TR):
            r0, r1 = self.n_rows(op.n, i)
            for j in range(self.TC):
                c0, c1 = self.cols(op.n, j)
                overlap = min(r1, c1) - max(r0, c0)
                if overlap <= 0:
                    continue
                src = (i, 0) if self.tree else (i, j)
                for r in range(self.TR):
                    m0, m1 = self.rows(r)
                    if m1 > m0:
                        msgs.append(Message(src, (r, j), (m1 - m0) * ceil_div(overlap, g.height(i)) * b,
                                            (m1 - m0) * ceil_div(overlap, g.width(src[1])) * b,
                                            (m1 - m0) * overlap * b))
        t.send(msgs, tuple(row_done), label="to block layout")


class GemvTreeLayout(GemvLayout):
    name = "gemv-tree"
    tree = True


@register("gemv-allreduce")
class GemvAllreduce(ResidentMapping):
    name = "gemv-allreduce"
    layout_cls = GemvLayout


@register("gemv-tree")
class GemvTree(ResidentMapping):
    name = "gemv-tree"
    layout_cls = GemvTreeLayout

    def __init__(self, fan_in: int = DEFAULT_FAN_IN):
        if fan_in < 2:
            raise UserError(f"gemv-tree fan-in must be at least 2, got {fan_in}")
        self.fan_in = fan_in

    def layout(self, graph, wafer, grid):
        ctx = super().layout(graph, wafer, grid)
        ctx.fan_in = self.fan_in
        return ctx
