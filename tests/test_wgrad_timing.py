"""The weight gradient's timing follows its data (issue 17): dY broadcast along tile rows, the tile products, the
partials chain-reduced down tile columns, the gradient streamed out on the MemoryX link's egress direction."""

from dataclasses import replace

from wse_sim.workloads import lower_gemm

from wse_sim.arch import get_wafer
from wse_sim.arch.costs import compute_cycles, stream_cycles, transfer_cycles
from wse_sim.mapping import ModelPlan, OpPlan, Task, TaskKind, TileGrid
from wse_sim.mapping.weight_streaming import StreamingLayout
from wse_sim.sim import Engine

WAFER = get_wafer("tiny")  # 8 x 8 PEs
GRID = TileGrid.make(8, 8, 2, 2)  # 2 x 2 tiles of 4 x 4 PEs


def _wgrad_plan(m: int, k: int, n: int, precision: str = "fp16"):
    graph = lower_gemm(m, k, n, precision)
    op = replace(next(iter(graph.ops())), grad="wgrad")
    layout = StreamingLayout(graph, WAFER, GRID)
    op_plan = layout.wgrad_matmul(op)
    return op_plan, ModelPlan("weight-streaming", GRID, precision, (op_plan,), stream_buffers=2)


def test_one_wgrad_op_closed_form():
    """dW = X^T dY, m 32 x k 16 x n 16 in fp16 on 2 x 2 tiles: one chunk of 8 columns per tile column. Per PE:
    4 token rows (32 / 2 tile rows / 4 PE rows), 2 rows of k, so the dY broadcast carries 4 x 8 x 2 B per lane,
    the tile multiplies 4 x 2 x 8 MACs as 2 x 8 DSD ops of length 4, the column chain carries 2 x 8 fp32 per
    lane, and each chunk's 16 x 8 x 2 B gradient streams out. Both chunks' broadcasts run at once (opposite
    directions of the row links); each tile computes chunk 0 then chunk 1; the two stream-outs queue on the
    egress port."""
    op_plan, plan = _wgrad_plan(32, 16, 16)
    outs = [t for t in op_plan.tasks if t.kind == TaskKind.STREAM_OUT]
    assert [t.label for t in outs] == ["stream out[0:8]", "stream out[8:16]"]
    assert not [t for t in op_plan.tasks if t.kind == TaskKind.STREAM]  # nothing streams in
    hops = 8 - 1  # PE hops across both tiles of a row (the broadcast's longer arm) or a column (the chain)
    bcast = sum(transfer_cycles(WAFER, 4 * 8 * 2, hops, phases=1))  # each transfer starts one fabric operation
    comp = compute_cycles(WAFER, "fp16", 4 * 2 * 8, dsd_ops_per_pe=2 * 8, dsd_len=4, sw_steps=1)
    red_ser, red_lat = transfer_cycles(WAFER, 2 * 8 * 4, hops, stages=hops, phases=1)
    out = stream_cycles(WAFER, 16 * 8 * 2)
    assert red_ser <= comp  # chunk 1's column chain finds its links free (the closed form below assumes it)
    reduced = bcast + 2 * comp + red_ser + red_lat  # the op ends with chunk 1's column chain
    r = Engine(WAFER, plan).run()
    assert r.ops[0].end_cycles == reduced
    assert r.total_cycles == max(reduced, bcast + comp + red_ser + red_lat + out) + out  # then the last stream-out
    assert r.memoryx_out_busy_cycles == 2 * out and r.memoryx_busy_cycles == 0
    assert r.stream_out_bytes == 2 * 16 * 8 * 2 and r.stream_bytes == 0
    op = r.ops[0]
    assert op.compute_cycles + op.fabric_cycles + op.stream_cycles == op.cycles


def test_stream_outs_trail_the_op_on_their_own_port():
    """On a wafer whose MemoryX link is 1e5 x slower the op still ends with its last column chain (computes never
    wait for the egress), and the run ends when the stream-outs, queued back to back on the egress port from the
    first one's start, are done. (m 4096 fills the SRAM with dY buffers: the chunks are a few columns wide.)"""
    from wse_sim.sim.engine import _Run

    slow = replace(WAFER, memoryx_bytes_per_s=WAFER.memoryx_bytes_per_s / 1e5)
    op_plan, plan = _wgrad_plan(4096, 64, 64, "fp32")
    fast = Engine(WAFER, plan).run()
    run = _Run(slow, plan, None, False)
    run.run()
    outs = [x for x, t in enumerate(op_plan.tasks) if t.kind == TaskKind.STREAM_OUT]
    assert len(outs) > 4
    assert run.end_t[len(op_plan.tasks) - 1] == fast.ops[0].end_cycles  # the op's end: the egress changes nothing
    per_out = [stream_cycles(slow, op_plan.tasks[x].nbytes) for x in outs]
    assert run.now == run.end_t[outs[0]] - per_out[0] + sum(per_out) > fast.ops[0].end_cycles


def test_wgrad_sram_holds_dy_buffers_and_gradient_partials():
    """The op's SRAM per PE: the resident X and dY blocks, plus per column of the widest chunk two dY buffers
    (fp16) and two fp32 partial / reduced-gradient buffers."""
    op_plan, _ = _wgrad_plan(32, 16, 16)
    resident = 4 * 2 * 2 + 4 * 2 * 2  # X [32, 16] and dY [32, 16]: 4 rows x 2 columns per PE each, fp16
    assert op_plan.sram_bytes_per_pe == resident + 8 * (2 * 4 * 2 + 2 * 2 * 4)


def test_stream_out_uses_the_egress_port_beside_the_ingress():
    """Full duplex: a weight stream-in and a gradient stream-out of the same bytes overlap, and a stream-out takes
    no weight buffer (one buffer, held by a stream no barrier frees, does not stop it)."""
    dummy = next(iter(lower_gemm(1, 1, 1).ops()))
    nbytes = 100_000
    tasks = (Task(TaskKind.STREAM, nbytes=nbytes), Task(TaskKind.STREAM_OUT, nbytes=nbytes),
             Task(TaskKind.BARRIER, deps=(0, 1)))
    r = Engine(WAFER, ModelPlan("test", GRID, "fp16", (OpPlan(dummy, "test", tasks, 0),), stream_buffers=1)).run()
    assert r.total_cycles == stream_cycles(WAFER, nbytes)
    assert r.memoryx_busy_cycles == r.memoryx_out_busy_cycles == stream_cycles(WAFER, nbytes)
