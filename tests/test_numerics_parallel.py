"""The parallel numerics path (queued MatmulBlock actions multiplied together) against the serial one, bit for bit.

``Numerics.max_pending_blocks = 1`` multiplies every block on its own with ``gemm`` as it comes (the serial
path); the default queues the blocks of a step and runs them through ``gemm_blocks``. Every stored tensor and
the logits must be the same bits, for each mapping, shape and storage precision.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wse_sim.kernels import gemm, gemm_blocks
from wse_sim.workloads import ModelConfig, lower_gemm, lower_model, random_tokens, random_weights

from wse_sim.arch import load_wafer
from wse_sim.mapping import TileGrid, get_mapping
from wse_sim.sim import Engine
from wse_sim.sim.numerics import Numerics

gemm_mod = importlib.import_module("wse_sim.kernels.gemm")  # the package re-exports a function named gemm

WSE2 = load_wafer("wse2")
MAPPINGS = ["summa", "cannon", "meshgemm", "systolic", "weight-streaming", "gemv-tree"]


def _run(plan, executor: Numerics, serial: bool) -> tuple[Numerics, dict]:
    if serial:
        executor.max_pending_blocks = 1
    flushes = []
    flush = executor.flush
    executor.flush = lambda: (flushes.append(len(executor._pending)), flush())[1]
    Engine(WSE2, plan, numerics=executor).run()
    executor.flush()
    return executor, {"largest batch": max(flushes, default=0)}


def _assert_same_bits(serial: Numerics, parallel: Numerics) -> None:
    assert serial.store.keys() == parallel.store.keys()
    for name, value in serial.store.items():
        assert value.dtype == parallel.store[name].dtype == np.float32
        assert np.array_equal(value.view(np.uint32), parallel.store[name].view(np.uint32)), name


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_model_parallel_numerics_bit_identical(tiny_config, mapping, precision):
    graph = lower_model(tiny_config, 2, 11, precision)
    grid = (8, 8, 4, 4) if mapping in ("cannon", "meshgemm") else (8, 12, 4, 3)
    plan = get_mapping(mapping).plan(graph, WSE2, TileGrid.make(*grid))
    weights, tokens = random_weights(tiny_config, seed=3), random_tokens(tiny_config.vocab_size, 2, 11, seed=4)
    serial, _ = _run(plan, Numerics(graph, weights, tokens), serial=True)
    parallel, seen = _run(plan, Numerics(graph, weights, tokens), serial=False)
    assert seen["largest batch"] > 1  # the parallel path was taken
    _assert_same_bits(serial, parallel)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_adopted_weights_run_the_same_bits(tiny_config, precision):
    """Weights given away (``adopt_weights``) are rounded in place and stored without a copy; the pass computes
    the same bits as with rounded copies, and the caller's arrays now hold the stored (rounded) values."""
    graph = lower_model(tiny_config, 2, 11, precision)
    plan = get_mapping("summa").plan(graph, WSE2, TileGrid.make(8, 12, 4, 3))
    tokens = random_tokens(tiny_config.vocab_size, 2, 11, seed=4)
    kept = random_weights(tiny_config, seed=3)
    copied, _ = _run(plan, Numerics(graph, kept, tokens), serial=False)
    given = random_weights(tiny_config, seed=3)
    adopted, _ = _run(plan, Numerics(graph, given, tokens, adopt_weights=True), serial=False)
    _assert_same_bits(copied, adopted)
    assert np.shares_memory(adopted.store["layer0.w_qkv"], given.layers[0].w_qkv)
    assert np.array_equal(given.wte, copied.store["embed.wte"])
    assert not np.shares_memory(copied.store["layer0.w_qkv"], kept.layers[0].w_qkv)
    # the arena reserved (and faulted in on a helper thread) with the executor held every output of the pass
    outputs = [name for name in adopted.store if name not in adopted._weights]
    assert outputs and all(np.shares_memory(adopted.store[name], adopted._arena) for name in outputs)
    assert adopted._arena_faulting is None  # joined at the first write


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize(("m", "k", "n", "grid"), [(37, 53, 29, (6, 6, 3, 3)), (96, 700, 130, (16, 16, 4, 4)),
                                                   (1, 300, 257, (4, 8, 2, 2))])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gemm_parallel_numerics_bit_identical(mapping, m, k, n, grid, precision):
    graph = lower_gemm(m, k, n, precision, bias=True)
    plan = get_mapping(mapping).plan(graph, WSE2, TileGrid.make(*grid))
    rng = np.random.default_rng(m * k + n)
    tensors = {"A": rng.standard_normal((m, k)).astype(np.float32),
               "gemm.B": rng.standard_normal((k, n)).astype(np.float32),
               "gemm.bias": rng.standard_normal(n).astype(np.float32)}
    serial, _ = _run(plan, Numerics.for_tensors(graph, tensors), serial=True)
    parallel, _ = _run(plan, Numerics.for_tensors(graph, tensors), serial=False)
    _assert_same_bits(serial, parallel)
    assert np.isfinite(parallel.output("gemm")).all()


def test_gemm_blocks_equal_gemm_per_block():
    """Blocks of one pair of tensors, plain and transposed, of uneven sizes: each the same bits as ``gemm``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((70, 90)).astype(np.float32)
    b = rng.standard_normal((90, 200)).astype(np.float32)
    cases = [  # (a view, its spec part, b view, its spec part)
        (a[3:40, 5:77], (3 * 90 + 5, 90, 1), b[5:77, 0:150], (5 * 200, 200, 1)),
        (a[0:1, :], (0, 90, 1), b[:, 199:200], (199, 200, 1)),
        (a[10:60, 0:50].T, (10 * 90, 1, 90), b[0:50, 7:200], (7, 200, 1)),  # transposed a: [50, 50]
        (a[0:70, 0:13], (0, 90, 1), b[0:13, 0:200], (0, 200, 1)),
    ]
    spec = np.array([(*sa, *sb, va.shape[0], va.shape[1], vb.shape[1]) for va, sa, vb, sb in cases])
    outs = gemm_blocks(a, b, spec)
    for (va, _, vb, _), out in zip(cases, outs, strict=True):
        ref = gemm(va, vb)
        assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))
        np.testing.assert_allclose(out, va.astype(np.float64) @ vb.astype(np.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads_work", [1 << 40, 1])  # the calling thread alone / with the helper threads
def test_gemm_blocks_into_adds_like_numpy(threads_work, monkeypatch):
    """``into``: each block's product added into the caller's array, the bits of ``buf += gemm(A_i, B_i)``,
    with k inside one KC block (the add fused into the micro-kernel, full and edge tiles) and past it (the
    product through the slab); a block without a target comes back as a product."""
    monkeypatch.setattr(gemm_mod, "PARALLEL_MIN_WORK", threads_work)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((70, 600)).astype(np.float32)
    w = rng.standard_normal((2400, 300)).astype(np.float32)  # used transposed, as the LM head's wte
    shapes = [(64, 96, 700, 0), (13, 96, 45, 50), (64, 300, 500, 0), (70, 37, 333, 100), (12, 64, 32, 7)]
    spec, refs, into = [], [], []
    for i, (m, k, n, c0) in enumerate(shapes):
        r0 = 480 * i
        spec.append((c0, 600, 1, r0 * 300 + c0, 1, 300, m, k, n))
        buf = rng.standard_normal((m, n)).astype(np.float32)
        ref = buf.copy()
        ref += gemm(a[:m, c0:c0 + k], w[r0:r0 + n, c0:c0 + k].T)
        assert not np.array_equal(ref, buf)
        refs.append(ref)
        into.append(buf)
    into[1], refs[1] = None, gemm(a[:13, 50:146], w[480:525, 50:146].T)
    outs = gemm_blocks(a, w, np.array(spec), into=into)
    for i, (out, ref) in enumerate(zip(outs, refs, strict=True)):
        assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), i
        assert into[i] is None or out is into[i]


def test_gemm_blocks_into_refuses_overlaps():
    a = np.ones((8, 8), np.float32)
    spec = np.array([(0, 8, 1, 0, 8, 1, 4, 8, 4)] * 2)
    with pytest.raises(ValueError, match="overlaps an operand"):
        gemm_blocks(a, a, spec, into=[a.reshape(-1)[:16].reshape(4, 4), None])
    shared = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        gemm_blocks(a, a, spec, into=[shared[:16].reshape(4, 4), shared[4:].reshape(4, 4)])


def test_gemm_blocks_refuses_blocks_outside_their_array():
    a = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="outside"):
        gemm_blocks(a, a, np.array([(0, 4, 1, 0, 4, 1, 5, 4, 4)]))



@st.composite
def _chains(draw):
    """Chains of blocks of ``a [96, 700]`` and ``b [700, 900]`` (b used plain or transposed): per chain a head
    (its own product, or added into a caller's array) and members added after it in order; k up to past KC
    (a reload, the product through the slab), few rows (row-major B read in place), n across panels."""
    m = draw(st.sampled_from([1, 7, 48, 64, 96]))
    n = draw(st.sampled_from([5, 33, 300, 600]))
    chains = []
    for _ in range(draw(st.integers(1, 3))):
        chains.append([(draw(st.integers(1, 300)), draw(st.booleans())) for _ in range(draw(st.integers(1, 4)))])
    return m, n, chains, draw(st.booleans()), draw(st.integers(0, 2 ** 16))


@settings(max_examples=25, deadline=None)
@given(_chains())
def test_gemm_blocks_chains_add_in_block_order(case):
    """``after``: a chain's members added into its head's result in block order, panel by panel, the bits of
    ``r = head; r += gemm(A_1, B_1); r += gemm(A_2, B_2) ...`` (numpy's fp32 adds), whatever the panel split,
    the driver path and the thread count; the members' entries are the head's array."""
    m, n, chains, into_head, seed = case
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((96, 700)).astype(np.float32)
    b = rng.standard_normal((700, 900)).astype(np.float32)
    spec, after, into, refs, heads = [], [], [], [], []
    for chain in chains:
        head, ref = len(spec), None
        for pos, (k, transposed) in enumerate(chain):
            r0, c0 = int(rng.integers(0, 96 - m + 1)), int(rng.integers(0, 700 - k + 1))
            if transposed:  # B_i = b[c1:c1+n, c0:c0+k].T
                c1 = int(rng.integers(0, 700 - n + 1))
                spec.append((r0 * 700 + c0, 700, 1, c1 * 900 + c0, 1, 900, m, k, n))
                product = gemm(a[r0:r0 + m, c0:c0 + k], b[c1:c1 + n, c0:c0 + k].T)
            else:
                c1 = int(rng.integers(0, 900 - n + 1))
                spec.append((r0 * 700 + c0, 700, 1, c0 * 900 + c1, 900, 1, m, k, n))
                product = gemm(a[r0:r0 + m, c0:c0 + k], b[c0:c0 + k, c1:c1 + n])
            if pos == 0 and into_head:
                target = rng.standard_normal((m, n)).astype(np.float32)
                ref = target.copy()
                ref += product
                into.append(target)
            elif pos == 0:
                ref = product
                into.append(None)
            else:
                ref += product
                into.append(None)
            after.append(head if pos else -1)
        refs.append(ref)
        heads.append(head)
    outs = gemm_blocks(a, b, np.array(spec), into=into if into_head else None, after=after)
    for head, ref in zip(heads, refs, strict=True):
        assert np.array_equal(outs[head].view(np.uint32), ref.view(np.uint32))
    assert all(outs[i] is outs[j] for i, j in enumerate(after) if j >= 0)


def test_gemm_blocks_refuses_bad_chains():
    a = np.ones((8, 8), np.float32)
    spec = np.array([(0, 8, 1, 0, 8, 1, 4, 8, 4), (0, 8, 1, 0, 8, 1, 4, 8, 4), (0, 8, 1, 0, 8, 1, 4, 8, 2)])
    for after in ([-1, 1, -1], [1, -1, -1], [-1, 0, 1], [-1, -1, 0]):  # itself, later, onto a member, other shape
        with pytest.raises(ValueError, match="chain head"):
            gemm_blocks(a, a, spec, after=after)
    with pytest.raises(ValueError, match="entries"):
        gemm_blocks(a, a, spec, after=[-1, 0])


@pytest.mark.parametrize("mapping", ["meshgemm", "gemv-tree"])
def test_flush_chains_accumulations_and_reductions(tiny_config, mapping, monkeypatch):
    """The parallel path chains a mesh GEMM's accumulating steps and a GEMV tree's reduction terms into the
    GEMM kernel (the bits are checked against the serial path above); here: the chains are really formed."""
    links = []
    real = gemm_mod.gemm_blocks
    monkeypatch.setattr("wse_sim.sim.numerics.gemm_blocks", lambda *args: (links.extend(args[5]), real(*args))[1])
    graph = lower_model(tiny_config, 2, 11, "fp32")
    grid = (8, 8, 4, 4) if mapping == "meshgemm" else (8, 12, 4, 3)
    plan = get_mapping(mapping).plan(graph, WSE2, TileGrid.make(*grid))
    weights, tokens = random_weights(tiny_config, seed=3), random_tokens(tiny_config.vocab_size, 2, 11, seed=4)
    ex = Numerics(graph, weights, tokens)
    folds = []
    reduce_write = ex._reduce_write
    ex._reduce_write = lambda a: (folds.append(sum(len(ex._folded.get(g[0], ())) for g in a.groups)),
                                  reduce_write(a))[1]
    Engine(WSE2, plan, numerics=ex).run()
    assert sum(j >= 0 for j in links) > 0
    if mapping == "gemv-tree":
        assert sum(folds) > 0  # reductions found terms already added by the kernel


LLAMA = ModelConfig(name="tiny-llama", d_model=72, n_layer=2, n_head=6, n_kv_head=2, d_ff=130, family="llama",
                    activation="silu", vocab_size=97, n_positions=64, tie_word_embeddings=False, qkv_bias=False,
                    hf_model_type="llama")


@pytest.mark.parametrize(("model", "mapping"), [("gpt", "summa"), ("gpt", "gemv-tree"), ("llama", "weight-streaming")])
def test_per_element_runs_batched_bit_identical(tiny_config, model, mapping, monkeypatch):
    """Consecutive per-element actions (GELU, SwiGLU, residual adds) run as one action on the whole tensors when
    their blocks tile the output: the same bits as running them block by block."""
    config = tiny_config if model == "gpt" else LLAMA
    graph = lower_model(config, 2, 11, "bf16")
    plan = get_mapping(mapping).plan(graph, WSE2, TileGrid.make(8, 12, 4, 3))
    weights, tokens = random_weights(config, seed=3), random_tokens(config.vocab_size, 2, 11, seed=4)
    batched = Numerics(graph, weights, tokens)
    wholes = []
    whole = batched._whole
    batched._whole = lambda batch: (wholes.append(r := whole(batch)), r)[1]
    Engine(WSE2, plan, numerics=batched).run()
    batched.flush()
    assert any(w is not None for w in wholes)  # some runs did go as one action
    monkeypatch.setattr("wse_sim.sim.numerics.PER_ELEMENT", ())
    one_by_one, _ = _run(plan, Numerics(graph, weights, tokens), serial=False)
    _assert_same_bits(one_by_one, batched)
