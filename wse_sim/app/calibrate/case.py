"""A calibration case: one published figure (a value, a one-sided bound or a range), its unit, and a function
that simulates the same thing on a :class:`~wse_sim.arch.WaferSpec` object (so a fit can vary parameters without
writing files). The published figures are in ../shared/facts/calibration.md (C1-C5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ...arch import WaferSpec

TOLERANCE = 0.10  # a case passes within 10 % of its published value (of a bound, of a range's ends)
BOUNDS = ("equal", "at_least", "at_most", "within")


@dataclass(frozen=True)
class Case:
    """One published figure and how to simulate it.

    ``published`` is what the simulation is compared with, in ``unit``: the figure itself, or for a range its
    middle (``published_text`` keeps the source's wording). ``bound`` says how: ``equal`` (within
    ``tolerance``), ``at_least`` / ``at_most`` (a one-sided figure such as "> 70 %": passes unless more than
    ``tolerance`` on the wrong side), ``within`` (a range such as "2-3x", given as ``published_range``: passes
    unless more than ``tolerance`` beyond either end, so both published ends pass). ``fit`` marks the cases
    :func:`fit` uses by default: those that depend on the unsourced parameters and whose setup is published, plus
    C3-meshgemv-vs-allreduce (why: beside it).
    """

    name: str
    figure: str  # where the number comes from
    published: float
    unit: str
    simulate: Callable[[WaferSpec], float]
    published_text: str = ""
    setup: str = ""  # what is simulated, and every assumption the source does not settle
    bound: str = "equal"
    fit: bool = False
    tolerance: float = TOLERANCE
    published_range: tuple[float, float] | None = None  # (low, high) of a range figure (bound "within")

    def __post_init__(self) -> None:
        if self.bound not in BOUNDS:
            raise ValueError(f"case {self.name}: bound must be one of {BOUNDS}, got {self.bound!r}")
        if not self.published > 0:
            raise ValueError(f"case {self.name}: published must be positive, got {self.published!r}")
        if (self.bound == "within") != (self.published_range is not None):
            raise ValueError(f"case {self.name}: a published_range goes with bound 'within', and only with it")
        if self.published_range is not None:
            low, high = self.published_range
            if not 0 < low <= self.published <= high:
                raise ValueError(f"case {self.name}: published_range must hold published, got "
                                 f"{self.published_range!r} around {self.published!r}")

    def passes(self, simulated: float) -> bool:
        if self.published_range is not None:
            low, high = self.published_range
            return low * (1 - self.tolerance) <= simulated <= high * (1 + self.tolerance)
        ratio = simulated / self.published
        if self.bound == "at_least":
            return ratio >= 1 - self.tolerance
        if self.bound == "at_most":
            return ratio <= 1 + self.tolerance
        return abs(ratio - 1) <= self.tolerance

    def residual(self, simulated: float) -> float:
        """``log(simulated / published)``; zero on the right side of a one-sided figure and inside a range (outside
        it: the log distance to its nearer end)."""
        if self.published_range is not None:
            low, high = self.published_range
            return min(math.log(simulated / low), 0.0) + max(math.log(simulated / high), 0.0)
        r = math.log(simulated / self.published)
        if self.bound == "at_least":
            return min(r, 0.0)
        if self.bound == "at_most":
            return max(r, 0.0)
        return r


@dataclass(frozen=True)
class CaseResult:
    case: Case
    simulated: float
    wall_s: float

    @property
    def ratio(self) -> float:
        return self.simulated / self.case.published

    @property
    def ok(self) -> bool:
        return self.case.passes(self.simulated)


def geomean(values: Iterable[float]) -> float:
    vals = list(values)
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
