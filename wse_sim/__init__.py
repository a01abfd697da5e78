"""wse-sim: a discrete-event simulator of wafer-scale AI hardware running transformer workloads."""

import os

__version__ = "0.1.0"

# OpenMP threads (numba's parallel GEMM, torch's kernels) sleep while they wait for work instead of spinning:
# on a machine whose cores other processes share, a spinning thread burns the core that the thread it waits for
# needs (under a load of 7 on 2 cores, the demo's simulation took 23.5 CPU s spinning, 3.4 s sleeping; on a
# quiet machine only each parallel region's wake-up, tens of microseconds, is added). Set before numba or torch
# loads the OpenMP runtime, which reads it once; a value the user set is kept.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
