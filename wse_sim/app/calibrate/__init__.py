"""Calibration and validation against published measurements on real wafers (../shared/facts/calibration.md).

A :class:`Case` is one published figure and a function that simulates it on a wafer object (``case``); the
built-in cases are C1/C3 kernels (``kernels``), C2 decode (``decode``) and C5 prefill (``prefill``), gathered
by name in ``registry``; ``fit`` adjusts the wafer's unsourced parameters to them; ``validate`` writes the table
and plot.
"""

from .case import BOUNDS, TOLERANCE, Case, CaseResult, geomean
from .fit import DEFAULT_FIT_PARAMS, PARAM_UNITS, FitResult, fit, format_fit, param_bounds, write_fitted
from .kernels import gemm_report
from .registry import BUILTIN_CASES, KNOWN_MISSES, cases, register, run_cases, select
from .validate import FABRIC_PARAMS, format_results, validate, validation_markdown, write_validation_plot

__all__ = [
    "BOUNDS",
    "BUILTIN_CASES",
    "DEFAULT_FIT_PARAMS",
    "FABRIC_PARAMS",
    "KNOWN_MISSES",
    "PARAM_UNITS",
    "TOLERANCE",
    "Case",
    "CaseResult",
    "FitResult",
    "cases",
    "fit",
    "format_fit",
    "format_results",
    "gemm_report",
    "geomean",
    "param_bounds",
    "register",
    "run_cases",
    "select",
    "validate",
    "validation_markdown",
    "write_fitted",
    "write_validation_plot",
]
