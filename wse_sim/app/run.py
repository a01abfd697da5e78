"""One run, end to end: spec -> workload graph -> mapping plan -> simulation (+ numerics) -> report dict.

:func:`run` resolves the :class:`~wse_sim.app.scenario.Scenario` once and hands it to the phase's use case.
"""

from __future__ import annotations

from ..arch import WaferSpec
from ..mapping import mapping_info
from .prefill import run_prefill
from .scenario import RunOutput, RunSpec, Scenario
from .serve import run_serving


def run(spec: RunSpec, progress: bool = False, log=print, record: bool = False,
        wafer: WaferSpec | None = None, max_memory: float | None = None, defer_checks: bool = False) -> RunOutput:
    """Simulate ``spec``; ``record`` keeps every busy interval (for traces and timelines). ``wafer`` overrides
    ``spec.wafer`` with a WaferSpec object (calibration varies its parameters); ``max_memory`` (GB) overrides the
    memory limit (not an input of the result, so not in the spec). ``defer_checks``: return before the numerics
    checks, leaving them in ``RunOutput.pending_checks`` (the ``wse-sim`` command draws the plots meanwhile)."""
    scn = Scenario.resolve(spec, wafer, max_memory)
    if spec.phase == "prefill" and mapping_info(spec.mapping).whole_model:  # pipelined: its own band placement
        return run_prefill(scn, progress, log, record, defer_checks)
    return run_serving(scn, progress, log, record, defer_checks)
