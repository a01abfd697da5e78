"""numba's first use without SciPy's linear algebra (wse_sim.numba_setup), in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import numpy as np
from numba import njit
import wse_sim.sim.loop  # loads numba's registries at import, scipy.linalg hidden
assert "scipy.linalg" not in sys.modules
from wse_sim.kernels import gemm
a = np.arange(12, dtype=np.float32).reshape(3, 4)
assert np.array_equal(gemm(a, a.T), a @ a.T)  # a cached numba kernel
assert "scipy.linalg" not in sys.modules

@njit
def dot(x, y):
    return np.dot(x, y)

assert np.allclose(dot(a.astype(np.float64), a.T.astype(np.float64)), a @ a.T)  # BLAS through numba still works
assert "scipy.linalg" in sys.modules
print("ok")
"""


def test_registries_load_without_scipy_linalg_and_blas_still_compiles():
    out = subprocess.run([sys.executable, "-P", "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
