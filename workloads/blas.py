"""Running numpy's float64 BLAS calls on one thread for a while (the float64 reference's matmuls).

The 111M reference multiplies per head (12 products of 512 x 64 x 512 per layer) and per layer; with OpenBLAS's
default of one thread per core, each call wakes a helper thread that spins waiting for the next call. On the
2-core machine of benchmarks/README.md, loaded by other processes, the head products took 190 CPU ms per layer on
two threads against 11 ms on one, and the whole 111M reference 7.3 CPU s against 4.1 s (the spinning thread also
takes a core from the plot-drawing children running beside the check). Its results do not depend on it: every
product element is the same sum, to the last bit of the report's figures (measured on the 111M demo).

OpenBLAS has no Python interface, so its own ``openblas_set_num_threads`` is called through ``ctypes`` on the
library numpy loaded (found in ``/proc/self/maps``). Anything else (another BLAS, another system) runs as it is.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

# (setter, getter) names as OpenBLAS builds export them: numpy's wheels bundle scipy-openblas with a prefix and the
# 64-bit-integer suffix; a system OpenBLAS has the plain names.
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


@cache
def _openblas() -> tuple | None:
    """(set_num_threads, get_num_threads) of the OpenBLAS numpy uses, or None when none is found."""
    import numpy as np  # noqa: F401  (numpy loads its BLAS; it is what /proc/self/maps is searched for)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:  # not Linux
        return None
    for path in sorted(p for p in paths if "numpy" in p) + sorted(p for p in paths if "numpy" not in p):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for setter, getter in _SYMBOLS:
            if hasattr(lib, setter) and hasattr(lib, getter):
                return getattr(lib, setter), getattr(lib, getter)
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's OpenBLAS on one thread inside the block, its previous thread count restored after it. The setting
    is process-wide: only for blocks that are the process's only BLAS user (the simulator's kernels use none)."""
    lib = _openblas()
    if lib is None:
        yield
        return
    set_threads, get_threads = lib
    before = int(get_threads())
    set_threads(1)
    try:
        yield
    finally:
        set_threads(before)
