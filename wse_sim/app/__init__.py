"""Use cases, one module each: ``run`` (prefill, or serving for decode and generate), ``serve`` (serving and KV
capacity), ``gemm`` (one matmul), ``compare`` (mappings side by side), ``sweep`` (many runs on Dask), ``verify``
(checks against the references), ``calibrate`` (fit and validate against published figures), ``catalog`` (the
presets). Each resolves its inputs once (:class:`Scenario`) and calls the floors below: workloads, mapping, sim,
report. Nothing below this package imports it.

The Python API::

    from wse_sim.app import RunSpec, run
    out = run(RunSpec(model="cerebras-gpt-111m", seq=512, numerics=False))
    out.report["total_cycles"], out.report["tokens_per_s"]
"""

from .. import gc_pause
from ..mapping import DEFAULT_TILES
from ..precision import PRECISIONS
from ..workloads.hf_reference import ReferenceImportError
from .run import run
from .scenario import RunOutput, RunSpec, Scenario


def one_run_process() -> None:
    """This process ends after its run (the ``wse-sim`` command): what the run's collector pauses make is frozen
    when they end instead of being traversed by later full collections (see :mod:`wse_sim.gc_pause`)."""
    gc_pause.freeze_on_resume = True


__all__ = ["DEFAULT_TILES", "PRECISIONS", "ReferenceImportError", "RunOutput", "RunSpec", "Scenario",
           "one_run_process", "run"]
