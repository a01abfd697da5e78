"""Every calibration case, by name: the built-in ones (C1, C3 kernels; C2 decode; C5 prefill) and any a user
registers."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ...arch import WaferSpec
from ...errors import UserError
from .case import Case, CaseResult
from .decode import DECODE_CASES
from .kernels import KERNEL_CASES
from .prefill import PREFILL_CASES

BUILTIN_CASES: tuple[Case, ...] = (*KERNEL_CASES, *DECODE_CASES, *PREFILL_CASES)
_REGISTERED: list[Case] = []

# Known misses: cases the physical model cannot meet together with the others, kept in the table as misses rather
# than bent by a factor (docs/validation.md, "Known misses"). `wse-sim validate` prints them as such, and
# tests/test_calibration.py asserts that they still miss, so a model change that fixes one shows up.
# - C3-meshgemm-efficiency-720: "> 70 % compute efficiency" scored as FLOP/s over the grid's peak. WaferLLM's
#   MeshGEMM issues one @fmach per (k, n) of Mt elements, the same loop as its prefill kernel; with the per-
#   instruction and per-step costs that C5 needs, 8K^3 on 720 x 720 runs at about a quarter of peak. The paper's
#   figure is most likely the compute share of cycles (docs/research/prefill.md §7), which the model meets.
# - C3-meshgemm-vs-summa, C3-meshgemm-vs-cannon ("2-3x faster"): the same per-instruction and per-step costs
#   are paid by all three algorithms alike and dominate their steps, so what separates them (the fabric) is a
#   small share: 1.47x and 1.10x in geometric mean (docs/validation.md).
KNOWN_MISSES: frozenset[str] = frozenset({"C3-meshgemm-efficiency-720", "C3-meshgemm-vs-summa",
                                          "C3-meshgemm-vs-cannon"})


def register(*new: Case) -> None:
    """Add cases (from another module, at import). Names must be unique across all cases."""
    taken = {c.name for c in (*BUILTIN_CASES, *_REGISTERED)}
    for case in new:
        if case.name in taken:
            raise ValueError(f"calibration case {case.name!r} is already registered")
        taken.add(case.name)
        _REGISTERED.append(case)


def cases() -> tuple[Case, ...]:
    """Every case: the built-in ones, then the registered ones."""
    return (*BUILTIN_CASES, *_REGISTERED)


def select(names: str | None) -> tuple[Case, ...]:
    """Cases by comma-separated names (None: all)."""
    every = cases()
    if not names:
        return every
    by_name = {c.name: c for c in every}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise UserError(f"unknown calibration case(s) {', '.join(unknown)} (known: {', '.join(by_name)})")
    return tuple(by_name[n] for n in wanted)


def run_cases(case_list: Iterable[Case], wafer: WaferSpec) -> list[CaseResult]:
    out = []
    for case in case_list:
        t0 = time.perf_counter()
        value = float(case.simulate(wafer))
        out.append(CaseResult(case, value, time.perf_counter() - t0))
    return out
