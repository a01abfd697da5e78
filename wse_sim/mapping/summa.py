"""SUMMA: the vendor's default GEMM on wafers (van de Geijn and Watts' Scalable Universal Matrix Multiply).

``C = A B`` on a ``TR x TC`` tile grid, everything in 2D blocks. ``A`` ([M, K], an activation) is in the block
layout: tile (i, s) holds ``A[m_i, k_s]``. ``K`` is cut into the ``TC`` panels ``k_s`` of A's column blocks; the
weight panel ``B[k_s, n_j]`` is resident on tile (s mod TR, j). At step ``s`` tile column ``s`` broadcasts its
A panel along every tile row and tile row ``s mod TR`` broadcasts its B panel down every tile column; each tile
adds ``A[m_i, k_s] B[k_s, n_j]`` to its fp32 accumulator.

PE-level steps. On the PEs, SUMMA is a loop of one step per PE column: the PE column owning the step's slice of
``K`` broadcasts its A block along every PE row (and the owning PE row its B block down every PE column), then
every PE multiplies. A tile step ``s`` stands for ``n = min(|k_s|, width(s))`` of them, one per PE column of tile
column ``s``. Each PE-level broadcast travels from its source PE column to the far end of the row (``max(c,
cols - 1 - c)`` hops for source column ``c``), is one fabric operation started anew
(:data:`~wse_sim.arch.costs.STEP_PHASES`) and ends in one receive stage at every PE
(:data:`~wse_sim.arch.costs.STEP_STAGES`), so a tile step's broadcast carries the sum of its ``n`` PE-level
routes' hops, ``n`` phases and ``n`` stages, beside the ``n`` blocks' bytes. The vendor's SUMMA (Cerebras csl-examples,
``benchmarks/gemm-collectives_2d/pe.csl``) keeps one receive buffer per operand (``A_buffer``, ``B_buffer``) and
issues step ``s + 1``'s broadcasts after step ``s``'s multiply, so a step costs its broadcast plus its multiply
(:func:`~wse_sim.arch.costs.pe_step` with one buffer); :data:`PANEL_BUFFERS` = 1 here reproduces that at tile
level: a tile step's broadcast waits for the previous tile step's multiplies. :class:`PeSummaLayout` (the
``summa`` mapping) does all this; its base :class:`SummaLayout` prices a tile step as one broadcast and one
multiply with double-buffered panels, as the pipelined mapping's stages (weight-stationary rows of tiles, not the
vendor's SUMMA kernel) use it.

Communication: every A panel reaches ``TC - 1`` other tiles and every B panel ``TR - 1``, so the fabric carries
``M K b (TC - 1) + K N b (TR - 1)`` bytes (``sqrt(P) - 1`` copies of each operand on a square grid).
"""

from __future__ import annotations

from functools import lru_cache

from ..arch.costs import STEP_PHASES, STEP_STAGES, PeStep, pe_step
from ..workloads import OpSpec
from .layout import Builder
from .plan import MatmulBlock, OpPlan, Ref, TaskKind, ceil_div, split
from .registry import register
from .resident import Operands, ResidentLayout, ResidentMapping

PANEL_BUFFERS = 1  # one receive buffer per operand, as the vendor's SUMMA (module docstring)
TILE_PANEL_BUFFERS = 2  # SummaLayout's tile-level panels: double-buffered


def pe_steps(k_width: int, extent: int) -> int:
    """PE-level steps a tile step of ``k_width`` columns of ``K`` stands for when they are spread over ``extent``
    PE lines (one step per line that holds any of them)."""
    return min(k_width, extent)


@lru_cache(maxsize=4096)
def broadcast_hops(edges: tuple[int, ...], t: int, n: int) -> int:
    """Summed PE hops of ``n`` PE-level broadcasts from the PE lines of tile line ``t`` (spread evenly over it) to
    the far end of a line of ``edges[-1]`` PEs: a broadcast from PE ``p`` reaches both ends, ``max(p, last - p)``.

    Cached: a plan asks it for every tile row (or column) of every step, the same ``n`` sums each time."""
    lo, extent, last = edges[t], edges[t + 1] - edges[t], edges[-1] - 1
    return sum(max(p, last - p) for p in (lo + u * extent // n for u in range(n)))


class SummaLayout(ResidentLayout):
    """SUMMA with tile steps priced as one broadcast and one multiply (see :class:`PeSummaLayout`)."""

    name = "summa"
    panel_buffers = TILE_PANEL_BUFFERS  # receive buffers per operand and PE
    pe_level_steps = False  # True: a tile step's broadcast carries its PE-level steps' routes and stages

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
        bufs = self.panel_buffers
        t = Builder()
        computes: dict[tuple[int, int, int], int] = {}
        nts, cols = [self.cols_per_pe(N, j) for j in range(TC)], [self.cols(N, j) for j in range(TC)]
        accs = [[f"{ops.y}#{i},{j}" for j in range(TC)] for i in range(TR)]  # each tile's accumulator
        for s in range(TC):
            k0, k1 = k_edges[s], k_edges[s + 1]
            ks = k1 - k0
            r = self.owner_row(s)
            n = pe_steps(ks, g.width(s)) if self.pe_level_steps else 0  # PE-level steps (module docstring)
            a_bc: list[tuple[int, ...]] = [()] * TR
            b_bc: list[tuple[int, ...]] = [()] * TC
            if TC > 1:
                for i in range(TR):
                    m0, m1 = self.rows(i)
                    free = tuple(computes[i, j, s - bufs] for j in range(TC)) if s >= bufs else ()
                    a_bc[i] = (t.add(
                        TaskKind.TRANSFER, deps=free, label=f"A panel {s} along row {i}",
                        links=g.row_path(i, s, 0) + g.row_path(i, s, TC - 1),
                        bytes_per_lane=self.rows_per_pe(i) * ks * b,
                        hops=broadcast_hops(g.col_edges, s, n) if n else max(g.row_hops(0, s), g.row_hops(s, TC - 1)),
                        stages=n * STEP_STAGES, phases=max(n * STEP_PHASES, 1), nbytes=(m1 - m0) * ks * b * (TC - 1),
                    ),)
            if TR > 1:
                for j in range(TC):
                    n0, n1 = self.cols(N, j)
                    free = tuple(computes[i, j, s - bufs] for i in range(TR)) if s >= bufs else ()
                    b_bc[j] = (t.add(
                        TaskKind.TRANSFER, deps=free, label=f"B panel {s} down col {j}",
                        links=g.col_path(j, r, 0) + g.col_path(j, r, TR - 1),
                        bytes_per_lane=ks * self.cols_per_pe(N, j) * b,
                        hops=broadcast_hops(g.row_edges, r, n) if n else max(g.col_hops(0, r), g.col_hops(r, TR - 1)),
                        stages=n * STEP_STAGES, phases=max(n * STEP_PHASES, 1), nbytes=ks * (n1 - n0) * b * (TR - 1),
                    ),)
            label = f"gemm k-step {s}"
            for i in range(TR):
                m0, m1 = self.rows(i)
                rows_pe = self.rows_per_pe(i)
                for j in range(TC):
                    prev = (computes[i, j, s - 1],) if s else ()
                    computes[i, j, s] = t.add(
                        TaskKind.COMPUTE, deps=a_bc[i] + b_bc[j] + prev, tile=(i, j), label=label,
                        macs_per_pe=rows_pe * ks * nts[j], dsd_ops_per_pe=ks * nts[j], dsd_len=rows_pe, sw_steps=n,
                        actions=(MatmulBlock(accs[i][j], Ref(ops.x, (m0, m1), (k0, k1)), ops.w_ref((k0, k1), cols[j]),
                                             accumulate=True),),
                    )
        for i in range(TR):
            for j in range(TC):
                self.write_output(t, op, ops, i, j, accs[i][j], (computes[i, j, TC - 1],))
        # A tile-level step is ``width`` PE-level steps: a PE buffers ``bufs`` PE-level slices of each panel.
        sram = max(
            self.io_bytes_per_pe(op, i, j)
            + bufs * max(self.rows_per_pe(i) * ceil_div(k_edges[s + 1] - k_edges[s], g.width(s)) * b
                                  + ceil_div(k_edges[s + 1] - k_edges[s], g.height(self.owner_row(s)))
                                  * self.cols_per_pe(N, j) * b for s in range(TC))
            for i in range(TR) for j in range(TC)
        )
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, "SUMMA panels and accumulators"),
                      notes=f"{TC} k-steps; A panels along rows, B panels down columns")

    def pe_step(self, op: OpSpec, s: int, i: int = 0, j: int = 0) -> PeStep:
        """The mean PE-level step inside tile step ``s`` on tile (i, j) (what the plan's tasks add up to)."""
        g, b = self.grid, self.b
        k_edges = split(op.k, self.TC)
        ks = k_edges[s + 1] - k_edges[s]
        n = max(pe_steps(ks, g.width(s)), 1)
        hops = max(broadcast_hops(g.col_edges, s, n) if self.TC > 1 else 0,
                   broadcast_hops(g.row_edges, self.owner_row(s), n) if self.TR > 1 else 0)
        lane = max(self.rows_per_pe(i) * ks * b if self.TC > 1 else 0,
                   ks * self.cols_per_pe(op.n, j) * b if self.TR > 1 else 0)
        return pe_step(self.wafer, self.graph.precision, self.rows_per_pe(i) * ks * self.cols_per_pe(op.n, j) / n,
                       lane / n, round(hops / n), buffers=self.panel_buffers,
                       dsd_ops_per_pe=ks * self.cols_per_pe(op.n, j) / n, dsd_len=self.rows_per_pe(i),
                       sw_steps=1 if self.pe_level_steps else 0)


class PeSummaLayout(SummaLayout):
    """The ``summa`` mapping: tile steps carry their PE-level steps, one receive buffer (module docstring)."""

    panel_buffers = PANEL_BUFFERS
    pe_level_steps = True


@register("summa", resident=True)
class Summa(ResidentMapping):
    name = "summa"
    layout_cls = PeSummaLayout
