"""Results: report.json, the printed summary and plots."""

from .build import SCHEMA_VERSION, build_report, roofline_cycles

__all__ = ["SCHEMA_VERSION", "build_report", "roofline_cycles"]
