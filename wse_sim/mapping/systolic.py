"""Output-stationary 1D systolic: each tile keeps its output block while A panels stream through its tile row.

Tile (i, j) owns ``C[m_i, n_j]`` and keeps the weight column block ``B[:, n_j]`` resident (every tile of column
``j`` holds a copy: weights are placed once, so replication costs SRAM, not time). A is in the block layout:
tile (i, s) holds panel ``A[m_i, k_s]``. Each panel travels its tile row neighbour to neighbour, east and west
from its home, store-and-forward (a tile receives a whole panel, then sends it on: one routing stage per hop),
and every tile multiplies each panel as it passes, nearest panels first, into an fp32 accumulator.

Communication: each A panel crosses ``TC - 1`` tile boundaries, so the fabric carries ``M K b (TC - 1)`` bytes
and nothing for B; the price is ``TR`` copies of every weight in SRAM.
"""

from __future__ import annotations

from ..workloads import OpSpec
from .collectives import pe_hops
from .layout import Builder
from .plan import MatmulBlock, OpPlan, Ref, TaskKind, ceil_div, split
from .registry import register
from .resident import Operands, ResidentLayout, ResidentMapping


class SystolicLayout(ResidentLayout):
    name = "systolic"

    def weight_bytes_per_pe(self, op: OpSpec) -> int:
        return max(ceil_div(op.k, self.grid.height(i)) * self.cols_per_pe(op.n, j) * self.b
                   for i in range(self.TR) for j in range(self.TC))

    def matmul(self, op: OpSpec) -> OpPlan:
        g, b, TR, TC, N = self.grid, self.b, self.TR, self.TC, op.n
        k_edges = split(op.k, TC)
        ops = Operands.of(op)
        t = Builder()
        labels = [f"gemm panel {s}" for s in range(TC)]
        for i in range(TR):
            m0, m1 = self.rows(i)
            arrival: dict[tuple[int, int], tuple[int, ...]] = {}  # (tile column, panel) -> hop that delivered it
            for s in range(TC):
                ks = k_edges[s + 1] - k_edges[s]
                arrival[s, s] = ()
                for step in (1, -1):
                    p = s
                    while 0 <= p + step < TC:
                        arrival[p + step, s] = (t.add(
                            TaskKind.TRANSFER, deps=arrival[p, s], label=f"A panel {s} row {i} -> col {p + step}",
                            links=g.row_path(i, p, p + step), bytes_per_lane=self.rows_per_pe(i) * ks * b,
                            hops=pe_hops(g, (i, p), (i, p + step)), stages=1, nbytes=(m1 - m0) * ks * b,
                        ),)
                        p += step
            rows_pe = self.rows_per_pe(i)
            for j in range(TC):
                prev: tuple[int, ...] = ()
                nt, cols, acc = self.cols_per_pe(N, j), self.cols(N, j), f"{ops.y}#{i},{j}"
                for s in sorted(range(TC), key=lambda s, j=j: (abs(s - j), s)):  # nearest panels arrive first
                    k0, k1 = k_edges[s], k_edges[s + 1]
                    prev = (t.add(
                        TaskKind.COMPUTE, deps=arrival[j, s] + prev, tile=(i, j), label=labels[s],
                        macs_per_pe=rows_pe * (k1 - k0) * nt, dsd_ops_per_pe=(k1 - k0) * nt, dsd_len=rows_pe,
                        sw_steps=g.width(s),  # the panel arrives as one block from each PE column of tile s
                        actions=(MatmulBlock(acc, Ref(ops.x, (m0, m1), (k0, k1)), ops.w_ref((k0, k1), cols),
                                             accumulate=True),),
                    ),)
                self.write_output(t, op, ops, i, j, acc, prev)
        widest = max(k_edges[s + 1] - k_edges[s] for s in range(TC))
        sram = max(self.io_bytes_per_pe(op, i, j) + 2 * self.rows_per_pe(i) * ceil_div(widest, g.width(j)) * b
                   for i in range(TR) for j in range(TC))
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, "systolic panels and accumulators"),
                      notes=f"{TC} A panels per tile row, store-and-forward; B columns replicated x{TR}")


@register("systolic", resident=True)
class Systolic(ResidentMapping):
    name = "systolic"
    layout_cls = SystolicLayout
