"""SUMMA: the vendor's default GEMM on wafers (van de Geijn and Watts' Scalable Universal Matrix Multiply).

``C = A B`` on a ``TR x TC`` tile grid, everything in 2D blocks. ``A`` ([M, K], an activation) is in the block
layout: tile (i, s) holds ``A[m_i, k_s]``. ``K`` is cut into the ``TC`` panels ``k_s`` of A's column blocks; the
weight panel ``B[k_s, n_j]`` is resident on tile (s mod TR, j). At step ``s`` tile column ``s`` broadcasts its
A panel along every tile row and tile row ``s mod TR`` broadcasts its B panel down every tile column; each tile
adds ``A[m_i, k_s] B[k_s, n_j]`` to its fp32 accumulator. Panels are double-buffered, so step ``s + 1``'s
broadcasts overlap step ``s``'s multiply.

Communication: every A panel reaches ``TC - 1`` other tiles and every B panel ``TR - 1``, so the fabric carries
``M K b (TC - 1) + K N b (TR - 1)`` bytes (``sqrt(P) - 1`` copies of each operand on a square grid).
"""

from __future__ import annotations

from ..workloads import OpSpec
from .layout import Builder
from .plan import MatmulBlock, OpPlan, Ref, TaskKind, ceil_div, split
from .registry import register
from .resident import Operands, ResidentLayout, ResidentMapping

PANEL_BUFFERS = 2  # double-buffered A and B panels


class SummaLayout(ResidentLayout):
    name = "summa"

    def owner_row(self, s: int) -> int:
        return s % self.TR

    def weight_bytes_per_pe(self, op: OpSpec) -> int:
        k_edges = split(op.k, self.TC)
        worst = 0
        for r in range(self.TR):
            rows = sum(ceil_div(k_edges[s + 1] - k_edges[s], self.grid.height(r))
                       for s in range(self.TC) if self.owner_row(s) == r)
            worst = max(worst, max(rows * self.cols_per_pe(op.n, j) * self.b for j in range(self.TC)))
        return worst

    def matmul(self, op: OpSpec) -> OpPlan:
        g, b, TR, TC = self.grid, self.b, self.TR, self.TC
        K, N = op.k, op.n
        ops = Operands.of(op)
        k_edges = split(K, TC)
        t = Builder()
        computes: dict[tuple[int, int, int], int] = {}
        for s in range(TC):
            k0, k1 = k_edges[s], k_edges[s + 1]
            ks = k1 - k0
            r = self.owner_row(s)
            a_bc: list[tuple[int, ...]] = [()] * TR
            b_bc: list[tuple[int, ...]] = [()] * TC
            if TC > 1:
                for i in range(TR):
                    m0, m1 = self.rows(i)
                    free = tuple(computes[i, j, s - PANEL_BUFFERS] for j in range(TC)) if s >= PANEL_BUFFERS else ()
                    a_bc[i] = (t.add(
                        TaskKind.TRANSFER, deps=free, label=f"A panel {s} along row {i}",
                        links=g.row_path(i, s, 0) + g.row_path(i, s, TC - 1),
                        bytes_per_lane=self.rows_per_pe(i) * ks * b,
                        hops=max(g.row_hops(0, s), g.row_hops(s, TC - 1)), nbytes=(m1 - m0) * ks * b * (TC - 1),
                    ),)
            if TR > 1:
                for j in range(TC):
                    n0, n1 = self.cols(N, j)
                    free = tuple(computes[i, j, s - PANEL_BUFFERS] for i in range(TR)) if s >= PANEL_BUFFERS else ()
                    b_bc[j] = (t.add(
                        TaskKind.TRANSFER, deps=free, label=f"B panel {s} down col {j}",
                        links=g.col_path(j, r, 0) + g.col_path(j, r, TR - 1),
                        bytes_per_lane=ks * self.cols_per_pe(N, j) * b,
                        hops=max(g.col_hops(0, r), g.col_hops(r, TR - 1)), nbytes=ks * (n1 - n0) * b * (TR - 1),
                    ),)
            for i in range(TR):
                m0, m1 = self.rows(i)
                for j in range(TC):
                    prev = (computes[i, j, s - 1],) if s else ()
                    computes[i, j, s] = t.add(
                        TaskKind.COMPUTE, deps=a_bc[i] + b_bc[j] + prev, tile=(i, j), label=f"gemm k-step {s}",
                        macs_per_pe=self.rows_per_pe(i) * ks * self.cols_per_pe(N, j),
                        actions=(MatmulBlock(f"{ops.y}#{i},{j}", Ref(ops.x, (m0, m1), (k0, k1)),
                                             ops.w_ref((k0, k1), self.cols(N, j)), accumulate=True),),
                    )
        for i in range(TR):
            for j in range(TC):
                self.write_output(t, op, ops, i, j, f"{ops.y}#{i},{j}", (computes[i, j, TC - 1],))
        # A tile-level step is ``width`` PE-level steps, pipelined: a PE buffers one PE-level slice of each panel.
        sram = max(
            self.io_bytes_per_pe(op, i, j)
            + PANEL_BUFFERS * max(self.rows_per_pe(i) * ceil_div(k_edges[s + 1] - k_edges[s], g.width(s)) * b
                                  + ceil_div(k_edges[s + 1] - k_edges[s], g.height(self.owner_row(s)))
                                  * self.cols_per_pe(N, j) * b for s in range(TC))
            for i in range(TR) for j in range(TC)
        )
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, "SUMMA panels and accumulators"),
                      notes=f"{TC} k-steps; A panels along rows, B panels down columns")


@register("summa")
class Summa(ResidentMapping):
    name = "summa"
    layout_cls = SummaLayout
