"""GEMV mappings for decode (M = 1, any M works): K split over the mesh, partial sums reduced across each row.

Tile (i, j) keeps the weight block ``W[k_j, n_i]`` resident: K over tile columns (matching the block layout of
``x``), N over tile rows; inside a tile, K over PE columns and N over PE rows. Each tile column all-gathers its
slice of ``x`` (one row for decode), every tile multiplies, and each row of PEs then reduces its partial vectors
across the whole row of the grid. The two mappings differ only in that reduction:

- ``gemv-allreduce``: the vendor's pipelined row allreduce. Partials flow from the east end to the west end
  through every PE, each adding its own (one routing stage per PE), and the sum is multicast back along the row.
- ``gemv-tree``: MeshGEMV's two-way K-ary tree (WaferLLM, OSDI'25; ``two_tree_allreduce`` in its repository).
  The row's PEs form groups of ``fan_in`` consecutive members; each group reduces into its middle member by two
  chains, one from each end, every member on an arm adding its partial to the stream as it passes (a routing
  stage). The group roots form the next level, until one root remains. Wavelets stream through a level, so a
  level costs one vector's serialization plus its longest arm's hops and stages. With the wafer's fan-in (32)
  every row up to 1024 PEs reduces in two levels, as MeshGEMV does; ``fan_in`` 2 gives a binary tree.

The row sums ``y[:, n_i]`` are then moved to the block layout (tile (r, j) holds ``y[m_r, n_j]``) so the next op
finds them where every mapping leaves its outputs. Two options describe the layouts of the published MeshGEMV
kernel instead (used by the calibration, :mod:`wse_sim.calibration`): ``x_replicated`` (``x`` is already on
every tile row, as the host loads it and as a previous allreduce leaves it: no all-gather) and ``y_replicated``
(the reduction is an allreduce: the root multicasts the sums back along the row, and there is no relayout).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from ..errors import UserError
from ..workloads import OpSpec
from .collectives import Message
from .layout import ACC_BYTES, Builder
from .plan import Free, MatmulBlock, OpPlan, ReduceWrite, Ref, TaskKind, ceil_div, split
from .registry import register
from .resident import Operands, ResidentLayout, ResidentMapping

PARTIAL_BUFFERS = 2  # a PE keeps its own fp32 partial and the one arriving: arms stream into the accumulator


@dataclass(frozen=True)
class TreeGroup:
    """One group of a tree level: its members (PE columns, ascending) and the member they reduce into."""

    members: tuple[int, ...]
    root: int

    @property
    def arms(self) -> tuple[tuple[int, ...], ...]:
        """The two chains into the root, each from its far end inward (empty arms dropped)."""
        k = self.members.index(self.root)
        return tuple(a for a in (self.members[:k], self.members[:k:-1]) if a)


def two_way_tree(width: int, fan_in: int) -> tuple[tuple[TreeGroup, ...], ...]:
    """MeshGEMV's reduction over PE columns ``0 .. width-1``: per level, groups of ``fan_in`` consecutive nodes
    reduce into their middle member (index ``len // 2``, the repository's ``root_1st_phase = group / 2``)."""
    if fan_in < 2:
        raise UserError(f"reduction fan-in must be at least 2, got {fan_in}")
    nodes = tuple(range(width))
    levels = []
    while len(nodes) > 1:
        groups = tuple(TreeGroup(g, g[len(g) // 2]) for g in (nodes[s:s + fan_in]
                                                            for s in range(0, len(nodes), fan_in)))
        levels.append(groups)
        nodes = tuple(g.root for g in groups)
    return tuple(levels)


def tree_root(width: int, fan_in: int) -> int:
    """The PE column where the whole row's sum ends up."""
    levels = two_way_tree(width, fan_in)
    return levels[-1][0].root if levels else 0


class GemvLayout(ResidentLayout):
    name = "gemv-allreduce"
    tree = False
    fan_in: int | None = None  # None: the wafer's reduce_fan_in
    x_replicated = False
    y_replicated = False

    @property
    def tree_fan_in(self) -> int:
        return self.fan_in if self.fan_in is not None else self.wafer.reduce_fan_in

    def n_rows(self, n: int, i: int) -> tuple[int, int]:
        e = split(n, self.TR)
        return e[i], e[i + 1]

    def weight_bytes_per_pe(self, op: OpSpec) -> int:
        return max(self.cols_per_pe(op.k, j) * ceil_div(self.n_rows(op.n, i)[1] - self.n_rows(op.n, i)[0],
                                                         self.grid.height(i)) * self.b
                   for i in range(self.TR) for j in range(self.TC))

    def tile_col(self, pe_col: int) -> int:
        """The tile column holding PE column ``pe_col``."""
        return bisect_right(self.grid.col_edges, pe_col) - 1

    def matmul(self, op: OpSpec) -> OpPlan:
        g, b, TR, TC, M, K, N = self.grid, self.b, self.TR, self.TC, self.M, op.k, op.n
        ops = Operands.of(op)
        t = Builder(g)
        gather: list[tuple[int, ...]] = [()] * TC
        if TR > 1 and not self.x_replicated:
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
        if not self.y_replicated:
            self._relayout(t, op, ops, row_done)
        sram = max(self.io_bytes_per_pe(op, i, j) + M * self.cols_per_pe(K, j) * b
                   + PARTIAL_BUFFERS * M * ceil_div(N, TR * g.height(i)) * ACC_BYTES
                   for i in range(TR) for j in range(TC))
        how = f"two-way {self.tree_fan_in}-ary tree" if self.tree else "pipelined chain allreduce"
        return OpPlan(op=op, mapping=self.name, tasks=t.finish(),
                      sram_bytes_per_pe=self.check_sram(op, sram, "GEMV blocks and partial sums"),
                      notes=f"row reduction over {g.cols} PEs by {how}")

    def _chain(self, t: Builder, i: int, keys, part, vec: float, write: ReduceWrite) -> int:
        g, TC = self.grid, self.TC
        width = g.cols - 1  # PE hops from the east end to the west end of the row
        red = t.add(TaskKind.TRANSFER, deps=tuple(part), label=f"chain reduce row {i}",
                    links=g.row_path(i, TC - 1, 0), bytes_per_lane=vec, hops=width, stages=width,
                    nbytes=self._row_payload(write) * (TC - 1),
                    actions=(ReduceWrite(write.dst, (tuple(reversed(keys)),), write.bias), Free(tuple(keys))))
        return t.add(TaskKind.TRANSFER, deps=(red,), label=f"multicast sum row {i}", links=g.row_path(i, 0, TC - 1),
                     bytes_per_lane=vec, hops=width, nbytes=self._row_payload(write) * (TC - 1))

    def _row_payload(self, write: ReduceWrite, nbytes: int = ACC_BYTES) -> int:
        """Bytes of one tile's vector ``[M, n_i]`` (fp32 partials by default)."""
        return self.M * (write.dst.cols[1] - write.dst.cols[0]) * nbytes

    def _tree(self, t: Builder, i: int, keys, part, vec: float, write: ReduceWrite) -> int:
        """One transfer per tree level (all its groups at once), then the root tile writes the sum.

        A level holds the tile-to-tile links its arms cross; an arm inside one tile uses none. Its payload
        (``nbytes``) counts each tile's partial once, at the level where the last of the tile's nodes hands its
        data to a root in another tile, so a row delivers ``TC - 1`` partial vectors whatever the fan-in.
        """
        g = self.grid
        prev: tuple[int, ...] = tuple(part)
        tiles_before = set(range(self.TC))
        root = 0
        for depth, groups in enumerate(two_way_tree(g.cols, self.tree_fan_in)):
            arms = [(arm[0], grp.root, len(arm)) for grp in groups for arm in grp.arms]  # (far end, root, stages)
            links = sorted({link for far, r, _ in arms for link in g.row_path(i, self.tile_col(far), self.tile_col(r))})
            tiles_after = {self.tile_col(grp.root) for grp in groups}
            prev = (t.add(TaskKind.TRANSFER, deps=prev, label=f"tree level {depth} row {i}", links=tuple(links),
                          bytes_per_lane=vec, hops=max(abs(far - r) for far, r, _ in arms),
                          stages=max(s for *_, s in arms),
                          nbytes=len(tiles_before - tiles_after) * self._row_payload(write)),)
            tiles_before = tiles_after
            root = groups[0].root
        rt = self.tile_col(root)
        # Numerics at tile granularity, in the tree's two-way order: west tiles into the root, then the east.
        order = (tuple(keys[:rt + 1]), tuple(reversed(keys[rt + 1:]))) if rt + 1 < self.TC else (tuple(keys),)
        done = t.add(TaskKind.COMPUTE, deps=prev, tile=(i, rt), label="tree root writes",
                     elem_ops_per_pe=self.M * ceil_div(write.dst.cols[1] - write.dst.cols[0], g.height(i)),
                     actions=(ReduceWrite(write.dst, order, write.bias), Free(tuple(keys))))
        if not self.y_replicated:
            return done
        out = self.M * ceil_div(write.dst.cols[1] - write.dst.cols[0], g.height(i)) * self.b
        return t.add(TaskKind.TRANSFER, deps=(done,), label=f"multicast sum row {i}",
                     links=g.row_path(i, rt, 0) + g.row_path(i, rt, self.TC - 1), bytes_per_lane=out,
                     hops=max(root, g.cols - 1 - root), nbytes=self._row_payload(write, self.b) * (self.TC - 1))

    def _relayout(self, t: Builder, op: OpSpec, ops: Operands, row_done: list[int]) -> None:
        """Row sums ``y[:, n_i]`` -> block layout: tile (r, j) gets ``y[m_r, n_j]`` (XY-routed, one step)."""
        g, b = self.grid, self.b
        root_tile = self.tile_col(tree_root(g.cols, self.tree_fan_in)) if self.tree else None
        msgs = []
        for i in range(self.TR):
            r0, r1 = self.n_rows(op.n, i)
            for j in range(self.TC):
                c0, c1 = self.cols(op.n, j)
                overlap = min(r1, c1) - max(r0, c0)
                if overlap <= 0:
                    continue
                src = (i, root_tile) if self.tree else (i, j)
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


class _GemvMapping(ResidentMapping):
    """Options shared by both GEMV mappings: the kernel's input and output layouts (see the module docstring)."""

    def __init__(self, x_replicated: bool = False, y_replicated: bool = False):
        self.x_replicated, self.y_replicated = x_replicated, y_replicated

    def layout(self, graph, wafer, grid):
        ctx = super().layout(graph, wafer, grid)
        ctx.x_replicated, ctx.y_replicated = self.x_replicated, self.y_replicated
        return ctx


@register("gemv-allreduce", resident=True, gemv=True)
class GemvAllreduce(_GemvMapping):
    name = "gemv-allreduce"
    layout_cls = GemvLayout


@register("gemv-tree", resident=True, gemv=True)
class GemvTree(_GemvMapping):
    name = "gemv-tree"
    layout_cls = GemvTreeLayout

    def __init__(self, fan_in: int | None = None, x_replicated: bool = False, y_replicated: bool = False):
        """``fan_in`` None takes the wafer's ``reduce_fan_in``."""
        if fan_in is not None and fan_in < 2:
            raise UserError(f"gemv-tree fan-in must be at least 2, got {fan_in}")
        super().__init__(x_replicated, y_replicated)
        self.fan_in = fan_in

    def layout(self, graph, wafer, grid):
        ctx = super().layout(graph, wafer, grid)
        ctx.fan_in = self.fan_in
        return ctx
