"""Every calibration case, by name: the built-in ones (C1, C3 kernels; C2 decode) and any a user registers."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ...arch import WaferSpec
from ...errors import UserError
from .case import Case, CaseResult
from .decode import DECODE_CASES
from .kernels import KERNEL_CASES

BUILTIN_CASES: tuple[Case, ...] = (*KERNEL_CASES, *DECODE_CASES)
_REGISTERED: list[Case] = []


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
