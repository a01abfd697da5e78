"""Layer-pipelined execution (Cerebras's mode for models below ~1B): all weights resident, one region per layer.

The grid is cut into horizontal bands, one per stage: a stage is a transformer layer (the embedding rides with
the first) or the LM head. Band heights follow the stages' FLOPs, so stage times balance. Inside its band a
stage keeps all its weights in SRAM and runs on one row of tiles (the tile columns of ``--tiles``): matmuls by
SUMMA on that row, i.e. weight-stationary (each tile holds ``W[:, n_j]``, A panels broadcast along the row);
LayerNorm, attention and the pointwise ops as in every mapping. Activations flow down from band to band.

If a band's weights and working set overflow its PEs' SRAM, rows move to it from bands with SRAM to spare
before planning. The batch is split into micro-batches of whole sequences (one per sequence by default), which enter the
pipeline one after another: while stage ``s`` works on micro-batch ``u``, stage ``s - 1`` already works on
``u + 1``. With one sequence there is nothing to overlap, and each layer runs on a small part of the wafer.

If the weights cannot fit, planning fails with the bytes needed and available: first for the whole model against
the grid's SRAM, then per stage (weights + activations + buffers per PE).
"""

from __future__ import annotations

from dataclasses import replace

from ..arch import WaferSpec
from ..errors import UserError
from ..kernels.precision import BYTES_PER_ELEM
from ..workloads import OpKind, WorkloadGraph
from .plan import ModelPlan, OpPlan, SramOverflowError, Task, TaskKind, TileGrid, ceil_div, split
from .registry import register
from .summa import SummaLayout


class StageLayout(SummaLayout):
    """SUMMA on one row of tiles, for the token rows ``[r0, r1)`` of one micro-batch."""

    name = "pipelined"

    def __init__(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid, r0: int, r1: int):
        super().__init__(graph, wafer, grid)
        self.M = r1 - r0
        self.m_edges = (r0, r1)


def _shift(task: Task, row: int, offset: int) -> Task:
    """Move a task planned on a one-tile-row grid to tile row ``row``; its dependencies move by ``offset``."""
    def tile(t):
        return (t[0] + row, t[1])

    return replace(task, deps=tuple(d + offset for d in task.deps),
                   tile=tile(task.tile) if task.tile is not None else None,
                   links=tuple((tile(a), tile(b)) for a, b in task.links),
                   frees_buffer_of=task.frees_buffer_of + offset if task.frees_buffer_of is not None else None)


def _place(op_plan: OpPlan, row: int, inbound: list[Task]) -> OpPlan:
    """The op's tasks moved to tile row ``row``, after ``inbound`` transfers that bring its input."""
    n = len(inbound)
    first = tuple(range(n))
    tasks = list(inbound)
    for t in op_plan.tasks:
        moved = _shift(t, row, n)
        if n and not t.deps and t.kind != TaskKind.STREAM:
            moved = replace(moved, deps=first)
        tasks.append(moved)
    return replace(op_plan, tasks=tuple(tasks))


@register("pipelined")
class Pipelined:
    name = "pipelined"

    def __init__(self, microbatches: int | None = None):
        self.microbatches = microbatches  # None: one micro-batch per sequence

    def plan(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> ModelPlan:
        if graph.config is None:
            raise UserError("pipelined runs whole models; use another mapping for a single matmul")
        ops = list(graph.ops())
        blocks = [name for name, _ in graph.blocks]
        stage_of = {blk: max(0, i - 1) for i, blk in enumerate(blocks)}  # embed shares layer 0's band
        n_stages = len(blocks) - 1
        if n_stages > grid.rows:
            raise UserError(f"pipelined needs at least one PE row per stage: {n_stages} stages, {grid.rows} rows")

        weight_bytes = sum(op.weight_bytes for op in ops if op.kind != OpKind.EMBEDDING)
        sram_total = grid.rows * grid.cols * wafer.sram_bytes_per_pe
        if weight_bytes > sram_total:
            raise SramOverflowError(
                "model", weight_bytes, sram_total,
                f"pipelined keeps every weight resident: the weights alone ({weight_bytes / 1e9:.2f} GB) exceed "
                f"the SRAM of the {grid.rows}x{grid.cols} grid ({sram_total / 1e9:.2f} GB)", per_pe=False,
            )

        # Bands: PE rows per stage in proportion to the larger of its share of FLOPs (balanced stage times) and
        # of weights (so each band's SRAM is filled evenly); at least one row each.
        flops, weights = [0] * n_stages, [0] * n_stages
        for op in ops:
            flops[stage_of[op.block]] += op.flops
            weights[stage_of[op.block]] += op.weight_bytes if op.kind != OpKind.EMBEDDING else 0
        share = [max(f / sum(flops), w / max(sum(weights), 1)) for f, w in zip(flops, weights, strict=True)]
        heights = [max(1, int(grid.rows * x / sum(share))) for x in share]
        while sum(heights) > grid.rows:
            heights[heights.index(max(heights))] -= 1
        heights[heights.index(max(heights))] += grid.rows - sum(heights)
        n_mb = self.microbatches or graph.batch
        if graph.batch % n_mb:
            raise UserError(f"pipelined: {graph.batch} sequences do not split into {n_mb} equal micro-batches")
        seqs = graph.batch // n_mb
        heights = self._rebalance(graph, wafer, grid, ops, stage_of, heights, seqs * graph.seq)
        row_edges = [0]
        for h in heights:
            row_edges.append(row_edges[-1] + h)
        tc = grid.tile_cols
        full = TileGrid(grid.rows, grid.cols, tuple(row_edges), grid.col_edges)
        bands = [TileGrid(h, grid.cols, (0, h), grid.col_edges) for h in heights]

        b = BYTES_PER_ELEM[graph.precision]

        # Per stage: resident weights (layouts of the first micro-batch; the same for every micro-batch).
        kept = [0] * n_stages
        first_layouts = [StageLayout(graph, wafer, bands[s], 0, seqs * graph.seq) for s in range(n_stages)]
        for op in ops:
            kept[stage_of[op.block]] += first_layouts[stage_of[op.block]].kept_bytes_per_pe(op)

        op_plans: list[OpPlan] = []
        index: dict[tuple[int, str], int] = {}
        for u in range(n_mb):
            r0, r1 = u * seqs * graph.seq, (u + 1) * seqs * graph.seq
            layouts = [StageLayout(graph, wafer, bands[s], r0, r1) for s in range(n_stages)]
            for s, ctx in enumerate(layouts):
                ctx.reserved_bytes_per_pe = kept[s]
            prev_name = None
            prev_stage = None
            for op in ops:
                s = stage_of[op.block]
                ctx = layouts[s]
                try:
                    p = ctx.plan_op(op)
                except SramOverflowError as exc:
                    raise SramOverflowError(
                        exc.op_name, exc.needed, exc.available,
                        f"pipelined stage {s} ({heights[s]} of {grid.rows} PE rows): {kept[s]:,} B/PE of resident "
                        f"weights + {exc.needed - kept[s]:,} B/PE working set (activations, buffers, accumulators)",
                    ) from None
                inbound = []
                if prev_stage is not None and s != prev_stage:
                    d_edges = split(graph.config.d_model, tc)
                    for j in range(tc):
                        c0, c1 = d_edges[j], d_edges[j + 1]
                        inbound.append(Task(
                            TaskKind.TRANSFER, label=f"activations band {prev_stage} -> {s}, col {j}",
                            links=tuple(((i, j), (i + 1, j)) for i in range(prev_stage, s)),
                            bytes_per_lane=(r1 - r0) * ceil_div(c1 - c0, full.width(j)) * b,
                            hops=row_edges[s] - row_edges[prev_stage], nbytes=(r1 - r0) * (c1 - c0) * b,
                        ))
                p = _place(p, s, inbound)
                after = [index[u, prev_name]] if prev_name else []
                if u:
                    after.append(index[u - 1, op.name])
                index[u, op.name] = len(op_plans)
                op_plans.append(replace(p, mapping=self.name, after=tuple(after),
                                        notes=f"stage {s} (PE rows {row_edges[s]}-{row_edges[s + 1] - 1}), "
                                              f"micro-batch {u}"))
                prev_name, prev_stage = op.name, s
        return ModelPlan(
            mapping=self.name, grid=full, precision=graph.precision, ops=tuple(op_plans),
            params={"stages": n_stages, "microbatches": n_mb, "stage_pe_rows": heights,
                    "stage_resident_bytes_per_pe": kept, "weights_bytes": weight_bytes,
                    "grid_sram_bytes": sram_total},
            resident_bytes_per_pe=max(kept),
        )

    @staticmethod
    def stage_need(graph, wafer, grid, ops, height: int, rows: int) -> int:
        """Bytes per PE a stage needs on a band of ``height`` PE rows: resident weights + largest working set."""
        band = TileGrid(height, grid.cols, (0, height), grid.col_edges)
        ctx = StageLayout(graph, wafer, band, 0, rows)
        ctx.enforce_sram = False  # measure the working set without refusing it
        kept = sum(ctx.kept_bytes_per_pe(op) for op in ops)
        return kept + max(ctx.plan_op(op).sram_bytes_per_pe for op in ops)

    def _rebalance(self, graph, wafer, grid, ops, stage_of, heights, rows) -> list[int]:
        """Move PE rows from stages with SRAM to spare to stages that overflow (their FLOP share set the start).

        A stage's bytes per PE fall roughly as 1 / its height, so an overflowing stage asks for
        ``height * need / SRAM`` rows (+1), taken from the stages with the most spare, none below its own need.
        """
        sram = wafer.sram_bytes_per_pe
        by_stage = [[op for op in ops if stage_of[op.block] == s] for s in range(len(heights))]
        heights = list(heights)
        need = [self.stage_need(graph, wafer, grid, by_stage[s], h, rows) for s, h in enumerate(heights)]
        for _ in range(4 * len(heights)):
            short = [s for s in range(len(heights)) if need[s] > sram]
            if not short:
                break
            s = max(short, key=lambda s: need[s] / sram)
            want = -(-heights[s] * need[s] // sram) + 1 - heights[s]
            donors = sorted((d for d in range(len(heights)) if d != s and need[d] < sram),
                            key=lambda d: need[d] / sram)
            moved = False
            for d in donors:
                spare = heights[d] - (-(-heights[d] * need[d] // sram) + 1)
                give = min(spare, want)
                if give <= 0:
                    continue
                heights[d] -= give
                heights[s] += give
                want -= give
                need[d] = self.stage_need(graph, wafer, grid, by_stage[d], heights[d], rows)
                moved = True
                if want <= 0:
                    break
            need[s] = self.stage_need(graph, wafer, grid, by_stage[s], heights[s], rows)
            if not moved:
                break  # nobody can spare a row: planning below reports the overflow with its budget
        return heights
