"""Cannon's algorithm: an initial skew, then nearest-neighbour shifts of A and B around a ring each step.

On a square ``q x q`` tile grid, tile (i, j) owns ``C[m_i, n_j]``. Number the tiles of each row and column in a
*ring order* (for Cannon, the natural order, whose last tile wraps to the first). At step ``s`` the tile with ring
coordinates (a, c) multiplies the A and B blocks of k-block ``ring[(a + c + s) mod q]``. A ([M, K], activation,
block layout) is skewed once at the start (ring row ``a`` rotates its blocks ``a`` places); B (weights, resident)
is stored pre-skewed, so it needs no skew. After each step every tile passes its A block to its ring predecessor
in the row and its B block to its ring predecessor in the column; with two buffers the shift overlaps the
multiply. After ``q`` steps each tile has seen every k-block. (The weights end up rotated by ``q - 1`` places: a
layout relabelling for the next use, not a data move.)

PE-level steps. On the PEs the same algorithm runs on a ring of PEs: one step per PE column, each shifting every
PE's A block to its ring predecessor in the PE row (and B in the PE column) while the PE multiplies the blocks it
has (WaferLLM's MeshGEMM kernel: two buffers per operand, the next step's shift issued before this step's
multiply, the next step waiting for both). A shift forwards the block received by the previous one, so shifts
chain and a step takes ``max(multiply, shift)`` (:func:`~wse_sim.arch.costs.pe_step` with ``forwards``). A tile
step stands for ``n = min(k-block width, tile width)`` PE-level steps, and its shift carries the ``n`` blocks'
bytes with ``n`` times the PE-level shift's route: the longest ring-neighbour move over the whole PE row
(:meth:`CannonLayout.pe_ring_hops`; the natural ring's wrap-around crosses all ``cols - 1`` PEs), one phase (a
fabric operation started, :data:`~wse_sim.arch.costs.STEP_PHASES`) and one receive stage
(:data:`~wse_sim.arch.costs.STEP_STAGES`). The tile shift into step ``s + 1`` stands for the PE-level
shifts made during tile step ``s`` (``n - 1`` inside it, one into the next); the last tile step's own ``n - 1``
follow the last tile shift ("in last step", no tile-level payload: its blocks are counted by the tile shifts), and
the output waits for them.

Communication: ``q - 1`` shifts move every A and B block one ring place each, ``(q - 1) (M K + K N) b`` bytes
in total, plus the skew. With the natural ring, the wrap-around message crosses the whole row: its latency grows
with the grid (every PE-level shift pays ``cols - 1`` hops), which is what :mod:`.meshgemm` removes.
"""

from __future__ import annotations

from ..arch.costs import STEP_PHASES, STEP_STAGES, PeStep, pe_step
from ..errors import UserError
from ..workloads import OpSpec
from .collectives import Message, route
from .layout import Builder
from .plan import MatmulBlock, OpPlan, Ref, TaskKind, ceil_div, memo_method, split
from .registry import register
from .resident import Operands, ResidentLayout, ResidentMapping


class CannonLayout(ResidentLayout):
    name = "cannon"

    def ring(self, q: int) -> tuple[int, ...]:
        """Physical positions in ring order (natural order: the last wraps around to the first)."""
        return tuple(range(q))

    def _check_square(self) -> int:
        if self.TR != self.TC:
            raise UserError(f"{self.name} needs a square tile grid, got {self.TR}x{self.TC} tiles "
                            f"(use --tiles QxQ)")
        return self.TR

    @memo_method
    def kblock(self, i: int, j: int, s: int) -> int:
        """Physical k-block index tile (i, j) multiplies at step ``s``."""
        q = self.TR
        ring = self.ring(q)
        rpos = self._ring_pos(q)
        return ring[(rpos[i] + rpos[j] + s) % q]

    @memo_method
    def _ring_pos(self, q: int) -> dict[int, int]:
        return {p: r for r, p in enumerate(self.ring(q))}

    @memo_method
    def pe_ring_hops(self, extent: int) -> int:
        """PE hops of the longest move of one PE-level shift when the ring runs over ``extent`` PEs."""
        ring = self.ring(extent)
        return max((abs(ring[r] - ring[r - 1]) for r in range(extent)), default=0) if extent > 1 else 0

    def _shift(self, t: Builder, msgs: list[Message], deps: tuple[int, ...], n: int, hops: int, label: str,
               fraction: float = 1.0, payload: bool = True) -> tuple[int, ...]:
        """One transfer for ``n`` PE-level shifts of the tile-level messages ``msgs``: their routed links and
        busiest-link load (times ``fraction``), ``n`` times one PE-level shift's ``hops`` and receive stages."""
        r = route(self.grid, msgs)
        if r.empty or n <= 0:
            return ()
        return (t.add(TaskKind.TRANSFER, deps=deps, label=label, links=r.links,
                      bytes_per_lane=r.bytes_per_lane * fraction, hops=n * hops, stages=n * STEP_STAGES,
                      phases=n * STEP_PHASES, turns=n * r.turns, nbytes=r.nbytes if payload else 0),)

    def weight_bytes_per_pe(self, op: OpSpec) -> int:
        """The resident B slot: blocks of every k-block width pass through it as B shifts, so the widest sets it."""
        q = self._check_square()
        k_edges = split(op.k, q)
        widest = max(k_edges[kb + 1] - k_edges[kb] for kb in range(q))
        return max(ceil_div(widest, self.grid.height(i)) * self.cols_per_pe(op.n, j) * self.b
                   for i in range(q) for j in range(q))

    def matmul(self, op: OpSpec) -> OpPlan:
        q = self._check_square()
        g, b, N = self.grid, self.b, op.n
        ring = self.ring(q)
        rpos = {p: r for r, p in enumerate(ring)}
        pred = {p: ring[(rpos[p] - 1) % q] for p in range(q)}  # ring predecessor of each position
        k_edges = split(op.k, q)

        def kw(kb: int) -> int:
            return k_edges[kb + 1] - k_edges[kb]

        # PE-level shifts per tile step: one per PE line holding the moving k-block (A: columns, B: rows).
        def n_row(i: int, s: int) -> int:
            return max(min(kw(self.kblock(i, p, s)), g.width(p)) for p in range(q))

        def n_col(j: int, s: int) -> int:
            return max(min(kw(self.kblock(p, j, s)), g.height(p)) for p in range(q))

        hops_row, hops_col = self.pe_ring_hops(g.cols), self.pe_ring_hops(g.rows)

        ops = Operands.of(op)
        t = Builder(g)
        a_ready: dict[tuple[int, int], tuple[int, ...]] = {}  # (row, step) -> task after which A blocks are in place
        b_ready: dict[tuple[int, int], tuple[int, ...]] = {}
        computes: dict[tuple[int, int, int], int] = {}

        # Skew: ring row a rotates its A blocks a ring places towards the front.
        for i in range(q):
            a = rpos[i]
            msgs = [Message((i, kb), (i, ring[(rpos[kb] - a) % q]), self.rows_per_pe(i) * kw(kb) * b, 0,
                            (self.rows(i)[1] - self.rows(i)[0]) * kw(kb) * b) for kb in range(q)]
            a_ready[i, 0] = t.send(msgs, label=f"skew A row {i}")
        for j in range(q):
            b_ready[j, 0] = ()

        for s in range(q):
            for i in range(q):
                m0, m1 = self.rows(i)
                for j in range(q):
                    kb = self.kblock(i, j, s)
                    prev = (computes[i, j, s - 1],) if s else ()
                    computes[i, j, s] = t.add(
                        TaskKind.COMPUTE, deps=a_ready[i, s] + b_ready[j, s] + prev, tile=(i, j),
                        label=f"gemm step {s}", macs_per_pe=self.rows_per_pe(i) * kw(kb) * self.cols_per_pe(N, j),
                        actions=(MatmulBlock(f"{ops.y}#{i},{j}", Ref(ops.x, (m0, m1), (k_edges[kb], k_edges[kb + 1])),
                                             ops.w_ref((k_edges[kb], k_edges[kb + 1]), self.cols(N, j)),
                                             accumulate=True),),
                    )
            if s == q - 1:
                break
            # Shift: every block moves to its ring predecessor (buffers: the receiver finished step s - 1).
            for i in range(q):
                msgs = [Message((i, p), (i, pred[p]), self.rows_per_pe(i) * kw(self.kblock(i, p, s)) * b, 0,
                                (self.rows(i)[1] - self.rows(i)[0]) * kw(self.kblock(i, p, s)) * b) for p in range(q)]
                free = tuple(computes[i, j, s - 1] for j in range(q)) if s else ()
                a_ready[i, s + 1] = self._shift(t, msgs, a_ready[i, s] + free, n_row(i, s), hops_row,
                                                f"shift A row {i}")
            for j in range(q):
                n0, n1 = self.cols(N, j)
                msgs = [Message((p, j), (pred[p], j), 0, kw(self.kblock(p, j, s)) * self.cols_per_pe(N, j) * b,
                                kw(self.kblock(p, j, s)) * (n1 - n0) * b) for p in range(q)]
                free = tuple(computes[i, j, s - 1] for i in range(q)) if s else ()
                b_ready[j, s + 1] = self._shift(t, msgs, b_ready[j, s] + free, n_col(j, s), hops_col,
                                                f"shift B col {j}")

        # The last tile step's own PE-level shifts (the tile shifts above carry the PE shifts made during the steps
        # before it): they overlap its multiplies, and the output is final only when both are done.
        a_drain, b_drain = {}, {}
        last = q - 1
        for i in range(q):
            n = n_row(i, last)
            msgs = [Message((i, p), (i, pred[p]), self.rows_per_pe(i) * kw(self.kblock(i, p, last)) * b, 0, 0)
                    for p in range(q)]
            a_drain[i] = self._shift(t, msgs, a_ready[i, last], n - 1, hops_row, f"shift A row {i} in last step",
                                     (n - 1) / max(n, 1), payload=False)
        for j in range(q):
            n = n_col(j, last)
            msgs = [Message((p, j), (pred[p], j), 0, kw(self.kblock(p, j, last)) * self.cols_per_pe(N, j) * b, 0)
                    for p in range(q)]
            b_drain[j] = self._shift(t, msgs, b_ready[j, last], n - 1, hops_col, f"shift B col {j} in last step",
                                     (n - 1) / max(n, 1), payload=False)
        for i in range(q):
            for j in range(q):
                self.write_output(t, op, ops, i, j, f"{ops.y}#{i},{j}",
                                  (computes[i, j, q - 1],) + a_drain[i] + b_drain[j])
        # Two A buffers and one B buffer beside the resident B block, each spread over the tile's PEs.
        widest = max(kw(kb) for kb in range(q))
        sram = max(self.io_bytes_per_pe(op, i, j) + 2 * self.rows_per_pe(i) * ceil_div(widest, g.width(j)) * b
                   + ceil_div(widest, g.height(i)) * self.cols_per_pe(N, j) * b
                   for i in range(q) for j in range(q))
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, f"{self.name} blocks and accumulators"),
                      notes=f"{q} steps; ring {ring}")

    def pe_step(self, op: OpSpec, s: int = 0, i: int = 0, j: int = 0) -> PeStep:
        """The mean PE-level step inside tile step ``s`` on tile (i, j) (what the plan's tasks add up to)."""
        q = self._check_square()
        g, b = self.grid, self.b
        k_edges = split(op.k, q)
        kb = self.kblock(i, j, s)
        k = k_edges[kb + 1] - k_edges[kb]
        n = max(min(k, g.width(j)), 1)
        lane = max(self.rows_per_pe(i) * k * b, k * self.cols_per_pe(op.n, j) * b) if q > 1 else 0
        hops = max(self.pe_ring_hops(g.cols), self.pe_ring_hops(g.rows)) if q > 1 else 0
        return pe_step(self.wafer, self.graph.precision, self.rows_per_pe(i) * k * self.cols_per_pe(op.n, j) / n,
                       lane / n, hops, buffers=2, forwards=True)


@register("cannon", resident=True, square_tiles=True)
class Cannon(ResidentMapping):
    name = "cannon"
    layout_cls = CannonLayout
