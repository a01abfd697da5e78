"""GEMM throughput of the numba kernel (``wse_sim.kernels.gemm``) against numpy's ``@`` (BLAS), float32.

Cases: a large square product (GFLOP/s, all cores) and the small blocks the simulator issues tens of thousands
of times (calls/s, where per-call overhead dominates). Timings are best-of-N after a warm-up call, so numba
compilation and first-touch effects are excluded and interference from other processes is filtered out.
Run ``python benchmarks/bench_gemm.py``; ``run()`` returns the rows for other scripts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from wse_sim.kernels import gemm


def _best_seconds(fn: Callable[[], object], repeats: int, calls: int) -> float:
    """Best over ``repeats`` batches of the mean time of one call in a batch of ``calls``."""
    fn()  # warm-up: compilation / cache load, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def _case(name: str, a: np.ndarray, b: np.ndarray, repeats: int, calls: int) -> list[dict]:
    m, k = a.shape
    n = b.shape[1]
    rows = []
    for impl, fn in (("wse_sim gemm", lambda: gemm(a, b)), ("numpy @", lambda: a @ b)):
        sec = _best_seconds(fn, repeats, calls)
        rows.append({
            "case": name, "m": m, "k": k, "n": n, "impl": impl, "seconds": sec,
            "gflops": 2.0 * m * n * k / sec / 1e9, "calls_per_s": 1.0 / sec,
        })
    rows[0]["vs_numpy"] = rows[0]["gflops"] / rows[1]["gflops"]
    rows[1]["vs_numpy"] = 1.0
    return rows


def run(size: int = 1024, repeats: int = 15) -> list[dict]:
    """Measure every case; one row per (case, implementation)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    x = rng.standard_normal((43, 64)).astype(np.float32)
    w = rng.standard_normal((64, 192)).astype(np.float32)
    keys = rng.standard_normal((512, 64)).astype(np.float32)
    rows = _case(f"{size}^3", a, b, repeats, 1)
    rows += _case("43x64 @ 64x192 block", x, w, repeats, 2000)
    rows += _case("43x64 @ (512x64).T scores", x, keys.T, repeats, 1000)
    return rows


def main() -> None:
    rows = run()
    print(f"{'case':28s} {'impl':13s} {'time':>11s} {'GFLOP/s':>9s} {'calls/s':>11s} {'vs numpy':>9s}")
    for r in rows:
        print(
            f"{r['case']:28s} {r['impl']:13s} {r['seconds'] * 1e6:9.1f}us {r['gflops']:9.1f} "
            f"{r['calls_per_s']:11.0f} {r['vs_numpy']:8.0%}"
        )


if __name__ == "__main__":
    main()
