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

from dataclasses import dataclass, replace
from itertools import accumulate

from ..arch import WaferSpec
from ..errors import UserError
from ..precision import BYTES_PER_ELEM
from ..workloads import OpKind, WorkloadGraph
from .placement import shift, stage_count, stage_of
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


@dataclass(frozen=True)
class Bands:
    """The grid cut into one band of PE rows per stage."""

    heights: tuple[int, ...]
    row_edges: tuple[int, ...]  # PE row where each band starts, and the grid's end
    full: TileGrid  # the whole grid, one tile row per band
    grids: tuple[TileGrid, ...]  # each band on its own (one tile row)

    @classmethod
    def of(cls, grid: TileGrid, heights: list[int]) -> Bands:
        edges = (0, *accumulate(heights))
        return cls(tuple(heights), edges, TileGrid(grid.rows, grid.cols, edges, grid.col_edges),
                   tuple(TileGrid(h, grid.cols, (0, h), grid.col_edges) for h in heights))


@register("pipelined", resident=True, whole_model=True)
class Pipelined:
    name = "pipelined"

    def __init__(self, microbatches: int | None = None):
        self.microbatches = microbatches  # None: one micro-batch per sequence

    def plan(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> ModelPlan:
        if graph.config is None:
            raise UserError("pipelined runs whole models; use another mapping for a single matmul")
        ops = list(graph.ops())
        n_stages = stage_count(graph)
        if n_stages > grid.rows:
            raise UserError(f"pipelined needs at least one PE row per stage: {n_stages} stages, {grid.rows} rows")
        weight_bytes, sram_total = self._check_weights_fit(wafer, grid, ops)
        n_mb = self.microbatches or graph.batch
        if graph.batch % n_mb:
            raise UserError(f"pipelined: {graph.batch} sequences do not split into {n_mb} equal micro-batches")
        rows = graph.batch // n_mb * graph.seq  # token rows per micro-batch
        heights = self._rebalance(graph, wafer, grid, ops, self._band_heights(grid, ops, n_stages), rows)
        bands = Bands.of(grid, heights)
        # Per stage: resident weights (layouts of the first micro-batch; the same for every micro-batch).
        kept = [0] * n_stages
        first_layouts = [StageLayout(graph, wafer, band, 0, rows) for band in bands.grids]
        for op in ops:
            kept[stage_of(op)] += first_layouts[stage_of(op)].kept_bytes_per_pe(op)
        op_plans: list[OpPlan] = []
        index: dict[tuple[int, str], int] = {}
        for u in range(n_mb):
            layouts = [StageLayout(graph, wafer, band, u * rows, (u + 1) * rows) for band in bands.grids]
            for ctx, reserved in zip(layouts, kept, strict=True):
                ctx.reserved_bytes_per_pe = reserved
            prev = None
            for op in ops:
                s = stage_of(op)
                inbound = self._inbound(graph, bands, stage_of(prev), s, rows) if prev else []
                p = shift(self._plan_op(layouts[s], op, s, bands, kept[s]), s, 0, inbound)
                after = [index[u, prev.name]] if prev else []
                if u:
                    after.append(index[u - 1, op.name])
                index[u, op.name] = len(op_plans)
                op_plans.append(replace(p, mapping=self.name, after=tuple(after),
                                        notes=f"stage {s} (PE rows {bands.row_edges[s]}-"
                                              f"{bands.row_edges[s + 1] - 1}), micro-batch {u}"))
                prev = op
        return ModelPlan(
            mapping=self.name, grid=bands.full, precision=graph.precision, ops=tuple(op_plans),
            params={"stages": n_stages, "microbatches": n_mb, "stage_pe_rows": heights,
                    "stage_resident_bytes_per_pe": kept, "weights_bytes": weight_bytes,
                    "grid_sram_bytes": sram_total},
            resident_bytes_per_pe=max(kept),
        )

    @staticmethod
    def _check_weights_fit(wafer: WaferSpec, grid: TileGrid, ops) -> tuple[int, int]:
        """(weight bytes, the grid's SRAM bytes); an SramOverflowError when the weights alone exceed it."""
        weight_bytes = sum(op.weight_bytes for op in ops if op.kind != OpKind.EMBEDDING)
        sram_total = grid.rows * grid.cols * wafer.sram_bytes_per_pe
        if weight_bytes > sram_total:
            raise SramOverflowError(
                "model", weight_bytes, sram_total,
                f"pipelined keeps every weight resident: the weights alone ({weight_bytes / 1e9:.2f} GB) exceed "
                f"the SRAM of the {grid.rows}x{grid.cols} grid ({sram_total / 1e9:.2f} GB)", per_pe=False,
            )
        return weight_bytes, sram_total

    @staticmethod
    def _band_heights(grid: TileGrid, ops, n_stages: int) -> list[int]:
        """PE rows per stage in proportion to the larger of its share of FLOPs (balanced stage times) and of
        weights (so each band's SRAM is filled evenly); at least one row each."""
        flops, weights = [0] * n_stages, [0] * n_stages
        for op in ops:
            flops[stage_of(op)] += op.flops
            weights[stage_of(op)] += op.weight_bytes if op.kind != OpKind.EMBEDDING else 0
        share = [max(f / sum(flops), w / max(sum(weights), 1)) for f, w in zip(flops, weights, strict=True)]
        heights = [max(1, int(grid.rows * x / sum(share))) for x in share]
        while sum(heights) > grid.rows:
            heights[heights.index(max(heights))] -= 1
        heights[heights.index(max(heights))] += grid.rows - sum(heights)
        return heights

    @staticmethod
    def _plan_op(ctx: StageLayout, op, s: int, bands: Bands, kept: int) -> OpPlan:
        """The op on its band; an SRAM overflow names the stage and its budget."""
        try:
            return ctx.plan_op(op)
        except SramOverflowError as exc:
            raise SramOverflowError(
                exc.op_name, exc.needed, exc.available,
                f"pipelined stage {s} ({bands.heights[s]} of {bands.full.rows} PE rows): {kept:,} B/PE of resident "
                f"weights + {exc.needed - kept:,} B/PE working set (activations, buffers, accumulators)",
            ) from None

    @staticmethod
    def _inbound(graph: WorkloadGraph, bands: Bands, src: int, dst: int, rows: int) -> list[Task]:
        """Activations ``[rows, d_model]`` flowing down from band ``src`` to band ``dst`` (none within a band)."""
        if src == dst:
            return []
        b = BYTES_PER_ELEM[graph.precision]
        full, tc = bands.full, bands.full.tile_cols
        d_edges = split(graph.config.d_model, tc)
        return [Task(TaskKind.TRANSFER, label=f"activations band {src} -> {dst}, col {j}",
                     links=tuple(((i, j), (i + 1, j)) for i in range(src, dst)),
                     bytes_per_lane=rows * ceil_div(d_edges[j + 1] - d_edges[j], full.width(j)) * b,
                     hops=bands.row_edges[dst] - bands.row_edges[src], nbytes=rows * (d_edges[j + 1] - d_edges[j]) * b)
                for j in range(tc)]

    @staticmethod
    def stage_need(graph, wafer, grid, ops, height: int, rows: int) -> int:
        """Bytes per PE a stage needs on a band of ``height`` PE rows: resident weights + largest working set."""
        band = TileGrid(height, grid.cols, (0, height), grid.col_edges)
        ctx = StageLayout(graph, wafer, band, 0, rows)
        ctx.enforce_sram = False  # measure the working set without refusing it
        kept = sum(ctx.kept_bytes_per_pe(op) for op in ops)
        return kept + max(ctx.plan_op(op).sram_bytes_per_pe for op in ops)

    def _rebalance(self, graph, wafer, grid, ops, heights, rows) -> list[int]:
        """Move PE rows from stages with SRAM to spare to stages that overflow (their FLOP share set the start).

        A stage's bytes per PE fall roughly as 1 / its height, so an overflowing stage asks for
        ``height * need / SRAM`` rows (+1), taken from the stages with the most spare, none below its own need.
        """
        sram = wafer.sram_bytes_per_pe
        by_stage = [[op for op in ops if stage_of(op) == s] for s in range(len(heights))]
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
