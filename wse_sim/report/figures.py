"""Which figures a report gets and how their drawing splits between processes, without importing matplotlib
(about 0.5 s): the ``wse-sim`` command checks ``--format`` and plans the drawing before any child draws."""

from __future__ import annotations

from ..errors import UserError

FORMATS = ("png", "svg")
# Share of each figure in the four's drawing CPU time (write_figures after prepare_figures, the least of 5, two
# rounds, on the 13B weight-streaming and the 111M demo reports, averaged: 0.98 and 0.83 CPU s in all, load 3.2).
# Used only to balance the figures between drawing processes; a wrong guess costs time, never a figure.
FIGURE_COST = {"utilization": 0.22, "timeline": 0.27, "layers": 0.33, "energy": 0.18}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"image format {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def figure_names(report: dict) -> list[str]:
    """The figures :func:`wse_sim.report.plots.write_plots` draws for ``report``, in the order it lists them:
    utilization and layers always, the timeline when the run was recorded, energy when the report has it."""
    return [name for name, drawn in (("utilization", True), ("timeline", bool(report.get("timeline"))),
                                     ("layers", True), ("energy", bool(report.get("energy")))) if drawn]


def figure_parts(names: list[str], parts: int) -> list[list[str]]:
    """``names`` split into at most ``parts`` non-empty groups of about equal :data:`FIGURE_COST` (the costliest
    first, each to the least loaded group), each group in ``names``' order."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(parts, len(names))))]
    loads = [0.0] * len(groups)
    for name in sorted(names, key=lambda n: -FIGURE_COST.get(n, 0.25)):
        k = loads.index(min(loads))
        groups[k].append(name)
        loads[k] += FIGURE_COST.get(name, 0.25)
    return [sorted(g, key=names.index) for g in groups if g]
