"""numba's first use in a process, without importing SciPy's linear algebra.

The first time a process compiles a numba function or loads one from numba's cache, numba loads its
implementations of NumPy (``BaseContext.refresh``), and one of them, ``numba.np.arraymath``, checks for BLAS by
importing ``scipy.linalg``: 0.07-0.15 s of imports on the machine of benchmarks/README.md (SciPy's array-API layer
brings in ``numpy.testing`` and ``numpy.f2py``), about 4 % of a 13B timing-only run. No wse-sim kernel reaches
BLAS through numba (the GEMM is its own), so :func:`load_registries` makes that first load with ``scipy.linalg``
hidden. numba then computes ``np.correlate`` and ``np.convolve`` with its own loop instead of BLAS's dot; whatever
needs BLAS later (``np.dot`` or ``np.linalg`` in a jitted function) imports ``scipy.linalg`` as it compiles.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder


class _HideScipyLinalg(MetaPathFinder):
    """An import finder that refuses ``scipy.linalg`` and its submodules."""

    def find_spec(self, name, path=None, target=None):
        if name == "scipy.linalg" or name.startswith("scipy.linalg."):
            raise ModuleNotFoundError(f"{name} is hidden while numba loads its registries")
        return None


def load_registries() -> None:
    """Load numba's NumPy implementations now, with ``scipy.linalg`` hidden; nothing when they are loaded already
    (numba's ``arraymath`` imported: its BLAS check is made once) or when ``scipy.linalg`` is (nothing to spare)."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    from numba.core.registry import cpu_target

    hide = _HideScipyLinalg()
    sys.meta_path.insert(0, hide)
    try:
        cpu_target.target_context.refresh()
    finally:
        sys.meta_path.remove(hide)
