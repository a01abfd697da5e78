"""The parallel numerics path (queued MatmulBlock actions multiplied together) against the serial one, bit for bit.

``Numerics.max_pending_blocks = 1`` multiplies every block on its own with ``gemm`` as it comes (the serial
path); the default queues the blocks of a step and runs them through ``gemm_blocks``. Every stored tensor and
the logits must be the same bits, for each mapping, shape and storage precision.
"""

from __future__ import annotations

import numpy as np
import pytest
from wse_sim.kernels import gemm, gemm_blocks
from wse_sim.workloads import lower_gemm, lower_model, random_tokens, random_weights

from wse_sim.arch import load_wafer
from wse_sim.mapping import TileGrid, get_mapping
from wse_sim.sim import Engine
from wse_sim.sim.numerics import Numerics

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


def test_gemm_blocks_refuses_blocks_outside_their_array():
    a = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="outside"):
        gemm_blocks(a, a, np.array([(0, 4, 1, 0, 4, 1, 5, 4, 4)]))

