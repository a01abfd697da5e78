"""Cannon's algorithm: an initial skew, then nearest-neighbour shifts of A and B around a ring each step.

On a square ``q x q`` tile grid, tile (i, j) owns ``C[m_i, n_j]``. Number the tiles of each row and column in a
*ring order* (for Cannon, the natural order, whose last tile wraps to the first). At step ``s`` the tile with ring
coordinates (a, c) multiplies the A and B blocks of k-block ``ring[(a + c + s) mod q]``. A ([M, K], activation,
block layout) is skewed once at the start (ring row ``a`` rotates its blocks ``a`` places); B (weights, resident)
is stored pre-skewed, so it needs no skew. After each step every tile passes its A block to its ring predecessor
in the row and its B block to its ring predecessor in the column; with two buffers the shift overlaps the
multiply. After ``q`` steps each tile has seen every k-block. (The weights end up rotated by ``q - 1`` places: a
layout relabelling for the next use, not a data move.)

Communication: ``q - 1`` shifts move every A and B block one ring place each, ``(q - 1) (M K + K N) b`` bytes
in total, plus the skew. With the natural ring, the wrap-around message crosses the whole row: its latency grows
with the grid (``(q - 1)`` tile widths of hops), which is what :mod:`.meshgemm` removes.
"""

from __future__ import annotations

from functools import cache

from ..errors import UserError
from ..workloads import OpSpec
from .collectives import Message
from .layout import Builder
from .plan import MatmulBlock, OpPlan, Ref, TaskKind, ceil_div, split
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

    @cache  # noqa: B019  (one layout per plan call; bounded by its grid)
    def kblock(self, i: int, j: int, s: int) -> int:
        """Physical k-block index tile (i, j) multiplies at step ``s``."""
        q = self.TR
        ring = self.ring(q)
        rpos = self._ring_pos(q)
        return ring[(rpos[i] + rpos[j] + s) % q]

    @cache  # noqa: B019
    def _ring_pos(self, q: int) -> dict[int, int]:
        return {p: r for r, p in enumerate(self.ring(q))}

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
                a_ready[i, s + 1] = t.send(msgs, a_ready[i, s] + free, label=f"shift A row {i}")
            for j in range(q):
                n0, n1 = self.cols(N, j)
                msgs = [Message((p, j), (pred[p], j), 0, kw(self.kblock(p, j, s)) * self.cols_per_pe(N, j) * b,
                                kw(self.kblock(p, j, s)) * (n1 - n0) * b) for p in range(q)]
                free = tuple(computes[i, j, s - 1] for i in range(q)) if s else ()
                b_ready[j, s + 1] = t.send(msgs, b_ready[j, s] + free, label=f"shift B col {j}")

        for i in range(q):
            for j in range(q):
                self.write_output(t, op, ops, i, j, f"{ops.y}#{i},{j}", (computes[i, j, q - 1],))
        # Two A buffers and one B buffer beside the resident B block, each spread over the tile's PEs.
        widest = max(kw(kb) for kb in range(q))
        sram = max(self.io_bytes_per_pe(op, i, j) + 2 * self.rows_per_pe(i) * ceil_div(widest, g.width(j)) * b
                   + ceil_div(widest, g.height(i)) * self.cols_per_pe(N, j) * b
                   for i in range(q) for j in range(q))
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, f"{self.name} blocks and accumulators"),
                      notes=f"{q} steps; ring {ring}")


@register("cannon")
class Cannon(ResidentMapping):
    name = "cannon"
    layout_cls = CannonLayout
