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
        """Skew A, then ``q`` tile steps of multiplies with ring shifts between them, then the last step's PE
        shifts and the outputs (task order matters: it is the engine's tie-break)."""
        c = _CannonSteps(self, op)
        c.skew()
        for s in range(c.q):
            c.multiply(s)
            if s < c.q - 1:
                c.shift(s)
        c.finish_last_step()
        sram = self.check_sram(op, c.sram_bytes_per_pe(), f"{self.name} blocks and accumulators")
        return OpPlan(op=op, mapping=self.name, tasks=c.t.finish(), sram_bytes_per_pe=sram,
                      notes=f"{c.q} steps; ring {c.ring}")

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
        nt = self.cols_per_pe(op.n, j)
        return pe_step(self.wafer, self.graph.precision, self.rows_per_pe(i) * k * nt / n,
                       lane / n, hops, buffers=2, forwards=True, dsd_ops_per_pe=k * nt / n,
                       dsd_len=self.rows_per_pe(i), sw_steps=1 if q > 1 else 0)


@register("cannon", resident=True, square_tiles=True)
class Cannon(ResidentMapping):
    name = "cannon"
    layout_cls = CannonLayout


class _CannonSteps:
    """The tasks of one Cannon matmul on ``layout``, built step by step; ``a_ready[i, s]`` / ``b_ready[j, s]``
    are the tasks after which tile row i's A blocks / tile column j's B blocks for step ``s`` are in place."""

    def __init__(self, layout: CannonLayout, op: OpSpec):
        self.L, self.op, self.q = layout, op, layout._check_square()
        self.g, self.b, self.N = layout.grid, layout.b, op.n
        self.ring = layout.ring(self.q)
        rpos = {p: r for r, p in enumerate(self.ring)}
        self.rpos = rpos
        self.pred = {p: self.ring[(rpos[p] - 1) % self.q] for p in range(self.q)}  # ring predecessor
        self.k_edges = split(op.k, self.q)
        self.hops_row, self.hops_col = layout.pe_ring_hops(self.g.cols), layout.pe_ring_hops(self.g.rows)
        self.ops = Operands.of(op)
        self.t = Builder(self.g)
        self.a_ready: dict[tuple[int, int], tuple[int, ...]] = {}
        self.b_ready: dict[tuple[int, int], tuple[int, ...]] = {(j, 0): () for j in range(self.q)}
        self.computes: dict[tuple[int, int, int], int] = {}

    def kw(self, kb: int) -> int:
        return self.k_edges[kb + 1] - self.k_edges[kb]

    def n_row(self, i: int, s: int) -> int:
        """PE-level shifts per tile step in tile row i: one per PE column holding the moving k-block."""
        return max(min(self.kw(self.L.kblock(i, p, s)), self.g.width(p)) for p in range(self.q))

    def n_col(self, j: int, s: int) -> int:
        return max(min(self.kw(self.L.kblock(p, j, s)), self.g.height(p)) for p in range(self.q))

    def a_msgs(self, i: int, s: int, tile_bytes: bool = True) -> list[Message]:
        """Every A block of tile row i to its ring predecessor at step ``s``."""
        L, b = self.L, self.b
        rows, per_pe = L.rows(i)[1] - L.rows(i)[0], L.rows_per_pe(i)
        out = []
        for p in range(self.q):
            kw = self.kw(L.kblock(i, p, s))
            out.append(Message((i, p), (i, self.pred[p]), per_pe * kw * b, 0, rows * kw * b if tile_bytes else 0))
        return out

    def b_msgs(self, j: int, s: int, tile_bytes: bool = True) -> list[Message]:
        L, b = self.L, self.b
        n0, n1 = L.cols(self.N, j)
        per_pe = L.cols_per_pe(self.N, j)
        out = []
        for p in range(self.q):
            kw = self.kw(L.kblock(p, j, s))
            out.append(Message((p, j), (self.pred[p], j), 0, kw * per_pe * b, kw * (n1 - n0) * b if tile_bytes else 0))
        return out

    def skew(self) -> None:
        """Ring row a rotates its A blocks a ring places towards the front."""
        L, b = self.L, self.b
        for i in range(self.q):
            a = self.rpos[i]
            rows = L.rows(i)[1] - L.rows(i)[0]
            msgs = [Message((i, kb), (i, self.ring[(self.rpos[kb] - a) % self.q]), L.rows_per_pe(i) * self.kw(kb) * b,
                            0, rows * self.kw(kb) * b) for kb in range(self.q)]
            self.a_ready[i, 0] = self.t.send(msgs, label=f"skew A row {i}")

    def multiply(self, s: int) -> None:
        """Step ``s``'s multiplies, tile by tile (what does not change along a row or a column looked up once)."""
        L, ops, ke, q = self.L, self.ops, self.k_edges, self.q
        label = f"gemm step {s}"
        cols = [L.cols(self.N, j) for j in range(q)]
        nts = [L.cols_per_pe(self.N, j) for j in range(q)]
        widths = [self.g.width(j) for j in range(q)]
        for i in range(q):
            m0, m1 = L.rows(i)
            rows_pe, a_ready = L.rows_per_pe(i), self.a_ready[i, s]
            for j in range(q):
                kb = L.kblock(i, j, s)
                prev = (self.computes[i, j, s - 1],) if s else ()
                k_span, kw, nt = (ke[kb], ke[kb + 1]), ke[kb + 1] - ke[kb], nts[j]
                self.computes[i, j, s] = self.t.add(
                    TaskKind.COMPUTE, deps=a_ready + self.b_ready[j, s] + prev, tile=(i, j),
                    label=label, macs_per_pe=rows_pe * kw * nt,
                    dsd_ops_per_pe=kw * nt, dsd_len=rows_pe,
                    sw_steps=max(min(kw, widths[j]), 1) if q > 1 else 0,
                    actions=(MatmulBlock(f"{ops.y}#{i},{j}", Ref(ops.x, (m0, m1), k_span), ops.w_ref(k_span, cols[j]),
                                         accumulate=True),),
                )

    def shift(self, s: int) -> None:
        """Every block moves to its ring predecessor (buffers: the receiver finished step s - 1)."""
        q, c = self.q, self.computes
        for i in range(q):
            free = tuple(c[i, j, s - 1] for j in range(q)) if s else ()
            self.a_ready[i, s + 1] = self.L._shift(self.t, self.a_msgs(i, s), self.a_ready[i, s] + free,
                                                   self.n_row(i, s), self.hops_row, f"shift A row {i}")
        for j in range(q):
            free = tuple(c[i, j, s - 1] for i in range(q)) if s else ()
            self.b_ready[j, s + 1] = self.L._shift(self.t, self.b_msgs(j, s), self.b_ready[j, s] + free,
                                                   self.n_col(j, s), self.hops_col, f"shift B col {j}")

    def finish_last_step(self) -> None:
        """The last tile step's own PE-level shifts (the tile shifts carry those made during earlier steps): they
        overlap its multiplies, and the output is final only when both are done."""
        q, last, L = self.q, self.q - 1, self.L
        a_drain, b_drain = {}, {}
        for i in range(q):
            n = self.n_row(i, last)
            a_drain[i] = L._shift(self.t, self.a_msgs(i, last, False), self.a_ready[i, last], n - 1, self.hops_row,
                                  f"shift A row {i} in last step", (n - 1) / max(n, 1), payload=False)
        for j in range(q):
            n = self.n_col(j, last)
            b_drain[j] = L._shift(self.t, self.b_msgs(j, last, False), self.b_ready[j, last], n - 1, self.hops_col,
                                  f"shift B col {j} in last step", (n - 1) / max(n, 1), payload=False)
        for i in range(q):
            for j in range(q):
                L.write_output(self.t, self.op, self.ops, i, j, f"{self.ops.y}#{i},{j}",
                               (self.computes[i, j, last],) + a_drain[i] + b_drain[j])

    def sram_bytes_per_pe(self) -> int:
        """Two A buffers and one B buffer beside the resident B block, each spread over the tile's PEs."""
        L, g, b = self.L, self.g, self.b
        widest = max(self.kw(kb) for kb in range(self.q))
        return max(L.io_bytes_per_pe(self.op, i, j) + 2 * L.rows_per_pe(i) * ceil_div(widest, g.width(j)) * b
                   + ceil_div(widest, g.height(i)) * L.cols_per_pe(self.N, j) * b
                   for i in range(self.q) for j in range(self.q))
