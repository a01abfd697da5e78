"""Every GEMM mapping against independent references.

- numerics: the simulated fp32 GEMM (with bias) equals float64 numpy ``A @ B + bias`` on random shapes and grids;
- communication: ``SimResult.fabric_bytes`` equals each mapping's closed form, derived here from the module
  docstrings (balanced splits and rings recomputed with numpy, not imported from the mapping code);
- latency: MeshGEMM beats Cannon in fabric cycles on a large grid, gemv-tree beats gemv-allreduce for decode;
- the roofline is a lower bound of every mapping's cycles;
- a GPT-2 with awkward widths (d_model 68, 17 heads) runs under every mapping and matches transformers.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from wse_sim.workloads import lower_gemm

from wse_sim.app import RunSpec, run
from wse_sim.arch import load_wafer
from wse_sim.mapping import SramOverflowError, TileGrid, get_mapping
from wse_sim.mapping.plan import Task, TaskKind
from wse_sim.sim import Engine
from wse_sim.sim.numerics import Numerics

WSE2 = load_wafer("wse2")
MAPPINGS = ["weight-streaming", "summa", "cannon", "meshgemm", "systolic", "gemv-tree", "gemv-allreduce"]
SQUARE_ONLY = {"cannon", "meshgemm"}  # Cannon-style shifts need a q x q tile grid
BYTES = {"fp32": 4, "fp16": 2}
ACC = 4  # partial sums travel in fp32

PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43]
DIMS = st.one_of(st.integers(1, 12), st.sampled_from(PRIMES), st.integers(13, 48))


# ---- helpers --------------------------------------------------------------------------------------------------
def sizes(n: int, parts: int) -> list[int]:
    """Balanced block sizes (the first ``n % parts`` one larger), via numpy rather than the mapping's ``split``."""
    return [len(a) for a in np.array_split(np.arange(n), parts)]


def edges(n: int, parts: int) -> list[int]:
    return [0, *np.cumsum(sizes(n, parts)).tolist()]


def natural_ring(q: int) -> list[int]:
    return list(range(q))


def interleaved_ring(q: int) -> list[int]:
    """MeshGEMM's ring from its docstring: ``0, 2, 4, ..., 5, 3, 1`` (evens out, odds back)."""
    return [p for p in range(q) if p % 2 == 0] + [p for p in reversed(range(q)) if p % 2 == 1]


@st.composite
def grids(draw, square: bool):
    """(pe_rows, pe_cols, tile_rows, tile_cols): 1-5 tiles a side, 1-3 PEs per tile, uneven tile sizes allowed."""
    tr = draw(st.integers(1, 5))
    tc = tr if square else draw(st.integers(1, 5))
    pe_rows = tr * draw(st.integers(1, 3)) + draw(st.integers(0, tr - 1))
    pe_cols = tc * draw(st.integers(1, 3)) + draw(st.integers(0, tc - 1))
    return pe_rows, pe_cols, tr, tc


def plan_gemm(mapping, m, k, n, grid, precision="fp32", bias=True, wafer=WSE2):
    graph = lower_gemm(m, k, n, precision, bias=bias)
    tile_grid = TileGrid.make(*grid)
    return graph, tile_grid, get_mapping(mapping).plan(graph, wafer, tile_grid)


def plan_or_reject(*args, **kw):
    """In property tests a drawn shape may not fit a drawn grid of a few PEs (e.g. 41x43x43 on one PE): that is
    a correct refusal, not a failure, so the example is discarded."""
    try:
        return plan_gemm(*args, **kw)
    except SramOverflowError:
        event("SRAM overflow (rejected)")
        reject()


def simulate_numerics(mapping, m, k, n, grid, seed, planner=plan_gemm):
    graph, _, plan = planner(mapping, m, k, n, grid)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    numerics = Numerics.for_tensors(graph, {"A": a, "gemm.B": b, "gemm.bias": bias})
    Engine(WSE2, plan, numerics=numerics).run()
    return numerics.output("gemm"), a, b, bias


# ---- numerics ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mapping", MAPPINGS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_gemm_numerics_match_float64(mapping, data):
    m = data.draw(st.one_of(st.just(1), DIMS), label="m")
    k, n = data.draw(DIMS, label="k"), data.draw(DIMS, label="n")
    grid = data.draw(grids(mapping in SQUARE_ONLY), label="grid")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    y, a, b, bias = simulate_numerics(mapping, m, k, n, grid, seed, planner=plan_or_reject)
    ref = a.astype(np.float64) @ b.astype(np.float64) + bias.astype(np.float64)
    assert y.shape == (m, n)
    scale = np.abs(a).max() * np.abs(b).max()
    atol = 1e-5 * math.sqrt(k) * scale + 1e-6 * np.abs(bias).max()
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_gemm_numerics_catch_a_wrong_answer(mapping):
    """The tolerance above is tight enough to see one dropped k-column (guards against a vacuous check)."""
    y, a, b, bias = simulate_numerics(mapping, 9, 11, 7, (8, 8, 2, 2), seed=1)
    wrong = a[:, 1:].astype(np.float64) @ b[1:].astype(np.float64) + bias
    atol = 1e-5 * math.sqrt(11) * np.abs(a).max() * np.abs(b).max()
    assert np.abs(y - wrong).max() > atol


# ---- communication volume ------------------------------------------------------------------------------------
def cannon_bytes(m, k, n, b, tr, ring):
    """(q - 1) shifts of every A and B block by one ring place, plus the skew of A.

    Skew: ring row ``a`` rotates its blocks ``a`` ring places to the front; a block moves (and costs its bytes)
    only when its destination column differs from its source column.
    """
    q = tr
    m_sizes, k_sizes = sizes(m, q), sizes(k, q)
    shifts = (q - 1) * (m * k + k * n) * b
    skew = 0
    for i in range(q):
        a = ring.index(i)
        for kb in range(q):
            dst = ring[(ring.index(kb) - a) % q]
            if dst != kb:
                skew += m_sizes[i] * k_sizes[kb] * b
    return shifts + skew


def tree_root_col(width, fan_in):
    """The PE column where gemv-tree's row sum ends, from its docstring: per level, groups of ``fan_in``
    consecutive nodes reduce into their middle member (index ``len // 2``), until one node remains."""
    nodes = list(range(width))
    while len(nodes) > 1:
        nodes = [g[len(g) // 2] for g in (nodes[s:s + fan_in] for s in range(0, len(nodes), fan_in))]
    return nodes[0]


def gemv_bytes(m, k, n, b, pe_cols, tr, tc, tree, fan_in=WSE2.reduce_fan_in):
    """All-gather of x down each tile column, the row reduction of fp32 partial vectors, and the relayout.

    The reduction moves fp32 partial vectors ``[M, n_i]``: a chain sends TC - 1 of them towards the west end and
    multicasts the sum back (TC - 1 again), a tree sends TC - 1 (each tile's partial leaves its tile once). The row
    sums ``y[:, n_i]`` then go to the block layout (tile (r, j) gets ``y[m_r, n_j]``) from tile (i, j) (chain:
    every tile has the sum after the multicast) or from the tile holding the tree's root PE column. (The root
    used to be tile column 0; MeshGEMV's two-way tree ends in the middle of the row, so the relayout now starts
    there.)
    """
    n_row = edges(n, tr)  # N over tile rows (the weight layout)
    n_col = edges(n, tc)  # N over tile columns (the block layout)
    m_sizes = sizes(m, tr)
    root_col = tree_root_col(pe_cols, fan_in)
    root_tile = max(j for j, e in enumerate(edges(pe_cols, tc)[:-1]) if e <= root_col)
    gather = m * k * b * (tr - 1)
    reduce = 0
    for i in range(tr):
        ni = n_row[i + 1] - n_row[i]
        reduce += (tc - 1) * m * ni * ACC * (1 if tree else 2)
    relayout = 0
    for i in range(tr):
        for j in range(tc):
            overlap = min(n_row[i + 1], n_col[j + 1]) - max(n_row[i], n_col[j])
            if overlap <= 0:
                continue
            src = (i, root_tile) if tree else (i, j)
            relayout += sum(m_sizes[r] * overlap * b for r in range(tr) if m_sizes[r] and (r, j) != src)
    return gather + reduce + relayout


def expected_fabric_bytes(mapping, m, k, n, b, grid):
    _, pe_cols, tr, tc = grid
    if mapping == "weight-streaming":
        # Each chunk of W is broadcast down every tile column (delivered to all TR tiles: it enters at the edge),
        # and every tile row reduces TC - 1 fp32 partial blocks into the chunk's owner column.
        return k * n * b * tr + (tc - 1) * m * n * ACC
    if mapping == "summa":
        return m * k * b * (tc - 1) + k * n * b * (tr - 1)
    if mapping == "systolic":
        return m * k * b * (tc - 1)
    if mapping == "cannon":
        return cannon_bytes(m, k, n, b, tr, natural_ring(tr))
    if mapping == "meshgemm":
        return cannon_bytes(m, k, n, b, tr, interleaved_ring(tr))
    return gemv_bytes(m, k, n, b, pe_cols, tr, tc, tree=mapping == "gemv-tree")


@pytest.mark.parametrize("mapping", MAPPINGS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fabric_bytes_match_closed_form(mapping, data):
    m = data.draw(st.one_of(st.just(1), DIMS), label="m")
    k, n = data.draw(DIMS, label="k"), data.draw(DIMS, label="n")
    grid = data.draw(grids(mapping in SQUARE_ONLY), label="grid")
    precision = data.draw(st.sampled_from(["fp32", "fp16"]), label="precision")
    b = BYTES[precision]
    _, _, plan = plan_or_reject(mapping, m, k, n, grid, precision=precision)
    res = Engine(WSE2, plan).run()
    assert res.fabric_bytes == res.ops[0].fabric_bytes == expected_fabric_bytes(mapping, m, k, n, b, grid)
    # Weights: streamed once from MemoryX (with the bias) by weight streaming, never by resident mappings.
    assert res.stream_bytes == ((k * n + n) * b if mapping == "weight-streaming" else 0)


def test_closed_forms_on_a_worked_example():
    """37x53x29 fp32 on a 40x40 PE grid cut into 4x4 tiles, by hand."""
    b, g = 4, (40, 40, 4, 4)
    assert expected_fabric_bytes("summa", 37, 53, 29, b, g) == 37 * 53 * 4 * 3 + 53 * 29 * 4 * 3
    # Cannon/MeshGEMM: 3 shifts of A and B, and every tile row but ring row 0 (tile row 0: 10 of the 37 rows)
    # moves all of its A blocks in the skew.
    skew = (37 - 10) * 53 * 4
    for name in ("cannon", "meshgemm"):
        assert expected_fabric_bytes(name, 37, 53, 29, b, g) == 3 * (37 * 53 + 53 * 29) * 4 + skew
    assert interleaved_ring(6) == [0, 2, 4, 5, 3, 1]


# ---- latency ------------------------------------------------------------------------------------------------
def run_gemm(mapping, m, k, n, precision, grid, wafer=WSE2):
    _, _, plan = plan_gemm(mapping, m, k, n, grid, precision=precision, bias=False, wafer=wafer)
    return Engine(wafer, plan).run(), plan


def test_meshgemm_beats_cannon_on_fabric_latency():
    """2048^3 fp16 on 720x720 PEs in 24x24 tiles: Cannon's wrap-around message crosses the whole row each shift,
    MeshGEMM's ring neighbours are at most two tiles apart. Same bytes, same compute, less fabric time."""
    grid = (720, 720, 24, 24)
    cannon, _ = run_gemm("cannon", 2048, 2048, 2048, "fp16", grid)
    mesh, _ = run_gemm("meshgemm", 2048, 2048, 2048, "fp16", grid)
    assert mesh.total_cycles < cannon.total_cycles
    assert mesh.fabric_bytes == cannon.fabric_bytes
    # Same work on every tile. (With 1-cycle hops on wse2 MeshGEMM's critical path runs through its multiplies
    # while Cannon's stays on the wrap-around, so the critical-path split differs; the work does not.)
    assert (mesh.tile_busy_cycles == cannon.tile_busy_cycles).all()
    assert mesh.ops[0].fabric_cycles < cannon.ops[0].fabric_cycles
    # The wrap-around costs at least (q - 1) tile widths of hops on each of the q - 1 shifts.
    q, width = 24, 30
    hop_gap = (q - 1) * ((q - 1) * width - 2 * width) * WSE2.hop_latency_cycles
    assert cannon.total_cycles - mesh.total_cycles >= 0.9 * hop_gap


def test_gemv_tree_beats_allreduce_for_decode():
    """M = 1, K = N = 8192 fp16 on 600x600 PEs (20x20 tiles): a chain pays a routing stage at each of the 599 PEs
    of a row, a binary tree only log2 of the row's width."""
    grid = (600, 600, 20, 20)
    tree, _ = run_gemm("gemv-tree", 1, 8192, 8192, "fp16", grid)
    chain, _ = run_gemm("gemv-allreduce", 1, 8192, 8192, "fp16", grid)
    assert tree.total_cycles < chain.total_cycles
    assert tree.fabric_bytes < chain.fabric_bytes  # no multicast back along the row


# ---- roofline ---------------------------------------------------------------------------------------------------
ROOFLINE_CASES = [
    (37, 53, 29, "fp32", (40, 40, 4, 4)),
    (512, 1024, 1024, "fp16", (240, 240, 8, 8)),
    (1, 8192, 8192, "fp16", (600, 600, 20, 20)),
    (2048, 2048, 2048, "fp16", (240, 240, 8, 8)),
]


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize(("m", "k", "n", "precision", "grid"), ROOFLINE_CASES)
def test_cycles_respect_roofline(mapping, m, k, n, precision, grid):
    if mapping.startswith("gemv") and m == 2048:
        # A GEMV tile keeps all M rows of its x slice (decode has one): a 2048-row prefill does not fit.
        with pytest.raises(SramOverflowError):
            run_gemm(mapping, m, k, n, precision, grid)
        return
    res, plan = run_gemm(mapping, m, k, n, precision, grid)
    pes = grid[0] * grid[1]
    flops = 2 * m * k * n
    assert res.ops[0].flops == flops  # no bias: the op is exactly its matmul
    compute_bound = flops / (2 * WSE2.fmac_per_pe_per_cycle(precision) * pes)
    assert res.total_cycles >= compute_bound
    if mapping == "weight-streaming":
        assert res.stream_bytes == k * n * BYTES[precision]
        assert res.total_cycles >= res.stream_bytes / WSE2.memoryx_bytes_per_cycle
    assert plan.sram_peak_bytes_per_pe <= WSE2.sram_bytes_per_pe


# ---- whole models with awkward widths -------------------------------------------------------------------------
ODD_GPT2 = {"model_type": "gpt2", "n_embd": 68, "n_layer": 2, "n_head": 17, "vocab_size": 101,
            "n_positions": 64, "activation_function": "gelu_new"}  # 68 / 17 heads, like the 256M's 1088 / 17


@pytest.fixture(scope="module")
def odd_config(tmp_path_factory):
    p = tmp_path_factory.mktemp("odd") / "config.json"
    p.write_text(json.dumps(ODD_GPT2))
    return str(p)


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_model_with_non_divisible_widths_matches_transformers(odd_config, mapping):
    spec = RunSpec(model=odd_config, wafer="wse2", grid="16x16", tiles="4x4", seq=8, precision="fp32",
                   numerics=True, mapping=mapping, check_transformers=True)
    out = run(spec, log=lambda *_: None)
    num = out.report["numerics"]
    assert num["enabled"] is True
    assert num["max_abs_err_vs_transformers"] <= 1e-3
    assert num["top1_agreement"] == 1.0
    # resident mappings run inside the resident placement (regions), weight streaming as it is
    assert out.plan.params.get("inner", out.plan.mapping) == mapping


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_builder_tasks_are_those_of_the_dataclass_constructor(mapping):
    """Planners build tasks with ``Task.of`` (fields set directly, for speed): each equals, hashes like and keeps
    its fields in the order of the dataclass's own constructor given the fields that differ from the defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(Task) if f.name != "kind"}
    _, _, plan = plan_gemm(mapping, 7, 13, 11, (6, 6, 3, 3))
    tasks = [t for op in plan.ops for t in op.tasks]
    assert len({t.kind for t in tasks}) >= 3
    for t in tasks:
        given = {k: v for k, v in vars(t).items() if k != "kind" and v != defaults[k]}
        made = Task(kind=t.kind, **given)
        assert made == t and hash(made) == hash(t) and list(vars(made)) == list(vars(t))
        assert Task.of(t.kind, **given) == made
    with pytest.raises(TypeError, match="no field"):
        Task.of(TaskKind.COMPUTE, tiles=(0, 0))
