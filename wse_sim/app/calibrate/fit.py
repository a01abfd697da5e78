"""Fitting the wafer's unsourced fabric parameters to the calibration cases: a bounded compass search on
``log(simulated / published)`` (the cycle counts are integers, so gradients are zero), within physical bounds.
Sourced parameters (hop latency, link rate, turn cost, FMAC rates) are never fitted by default."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...arch import WaferSpec
from ...errors import UserError
from .case import Case

DEFAULT_FIT_PARAMS = ("stage_overhead_cycles", "phase_overhead_cycles", "dsd_op_overhead_cycles", "gemm_step_sw_cycles")
PARAM_UNITS = {
    "stage_overhead_cycles": "cycles per receive-add-send routing stage at a PE (PLMR beta)",
    "phase_overhead_cycles": "cycles per fabric operation started (collective phase)",
    "dsd_op_overhead_cycles": "cycles per vector (DSD) instruction issued, beyond its SIMD work",
    "gemm_step_sw_cycles": "cycles of PE software per PE-level GEMM step, serial with the multiply",
    "hop_latency_cycles": "cycles per PE hop (PLMR alpha)",
    "turn_cycles": "extra cycles per turn of a route",
    "cycles_per_wavelet": "cycles per wavelet per link",
}


def param_bounds(name: str, wafer: WaferSpec) -> tuple[float, float]:
    """Physical range of a fittable parameter, from its sources (hardware.md, calibration.md C4, WaferLLM)."""
    if name == "stage_overhead_cycles":
        return wafer.hop_latency_cycles, 200.0  # PLMR: alpha < beta (hardware.md §2a); 200: a few hundred instrs
    if name == "phase_overhead_cycles":
        return 0.0, 500.0  # off .. a few hundred instructions of task activation and DSD/switch set-up
    if name == "dsd_op_overhead_cycles":
        return 0.0, 20.0  # off .. about 3x the ~6.2 cycles per @map->@fmach measured on WSE-3 simfabric [T]
    if name == "gemm_step_sw_cycles":
        return 0.0, 1000.0  # off .. a few hundred instructions per step (four task activations, DSR reloads)
    if name == "hop_latency_cycles":
        return 1.0, 2.0  # 1 (SC20) .. 2 (simulator log, WSE-3 silicon): hardware.md §2a and gap 4
    if name == "cycles_per_wavelet":
        return 1.0, 1.125  # simulator .. WSE-3 silicon (calibration.md C4)
    if name == "turn_cycles":
        return 1.0, 40.0  # ~20 on WSE-3 silicon (C4); up to twice that
    raise UserError(f"{name} is not a fittable wafer parameter (fittable: {', '.join(PARAM_UNITS)})")


@dataclass(frozen=True)
class FitResult:
    wafer: WaferSpec  # the input wafer with the fitted values
    start: dict[str, float]
    values: dict[str, float]
    bounds: dict[str, tuple[float, float]]
    cases: tuple[Case, ...]
    residuals: dict[str, float]  # per case, log(simulated / published) at the fitted values
    simulated: dict[str, float]
    cost: float  # 0.5 * sum of squared residuals (scipy's convention)
    nfev: int
    message: str = ""
    history: list = field(default_factory=list, compare=False)


FIT_FIRST_STEP = 0.1  # compass search: first step, as a fraction of each parameter's bounded range
FIT_LAST_STEP = 0.005  # ... and the step (in the parameter's unit) below which it stops: finer than the TOML's 0.01


def fit(case_list: Iterable[Case], params: Iterable[str], wafer: WaferSpec,
        start: dict[str, float] | None = None,
        on_eval: Callable[[dict[str, float], float], None] | None = None) -> FitResult:
    """Least squares of ``log(simulated / published)`` over ``params``, each kept inside :func:`param_bounds`;
    ``start`` overrides the wafer's values as the starting point; ``on_eval(values, cost)`` is called after
    every evaluation (progress).

    Simulated cycles are integers (ceilings of the cost formulas), so the residuals are step functions of the
    parameters: finite-difference gradients are zero or noise, and line searches stall on plateaus (a gradient
    method started at a phase overhead of 0 does not move). The sum of squares is minimised by a bounded compass
    search instead (Kolda, Lewis and Torczon, SIAM Review 2003): try each parameter one step up and down (clipped
    to its bounds), move to the best point that lowers the cost, halve the steps when none does, and stop when
    every step is below :data:`FIT_LAST_STEP`. First steps are :data:`FIT_FIRST_STEP` of each range.
    """
    case_list, params = tuple(case_list), tuple(params)
    if not case_list:
        raise UserError("fit needs at least one case")
    if not params:
        raise UserError("fit needs at least one parameter")
    bounds = {p: param_bounds(p, wafer) for p in params}
    x0 = [float((start or {}).get(p, getattr(wafer, p))) for p in params]
    x0 = [min(max(x, bounds[p][0]), bounds[p][1]) for x, p in zip(x0, params, strict=True)]
    history: list = []
    seen: dict[tuple[float, ...], float] = {}

    def at(x) -> WaferSpec:
        return replace(wafer, **{p: float(v) for p, v in zip(params, x, strict=True)})

    def cost(x: tuple[float, ...]) -> float:
        if x not in seen:
            w = at(x)
            seen[x] = sum(case.residual(case.simulate(w)) ** 2 for case in case_list) / 2
            history.append((x, seen[x]))
            if on_eval is not None:
                on_eval(dict(zip(params, x, strict=True)), seen[x])
        return seen[x]

    x, best = tuple(x0), cost(tuple(x0))
    steps = [FIT_FIRST_STEP * (bounds[p][1] - bounds[p][0]) for p in params]
    while max(steps) >= FIT_LAST_STEP:
        trials = []
        for i, p in enumerate(params):
            for sign in (1, -1):
                v = min(max(x[i] + sign * steps[i], bounds[p][0]), bounds[p][1])
                if v != x[i]:
                    trials.append((*x[:i], v, *x[i + 1:]))
        cand = min(trials, key=cost, default=None)
        if cand is not None and cost(cand) < best:
            x, best = cand, cost(cand)
        else:
            steps = [s / 2 for s in steps]
    fitted = at(x)
    sims = {c.name: float(c.simulate(fitted)) for c in case_list}
    res = {c.name: c.residual(sims[c.name]) for c in case_list}
    return FitResult(fitted, dict(zip(params, x0, strict=True)), dict(zip(params, x, strict=True)), bounds,
                     case_list, res, sims, sum(v * v for v in res.values()) / 2, len(history),
                     "compass search: every step below its limit", history)


def format_fit(result: FitResult) -> str:
    lines = [f"fit of {result.wafer.name} to {len(result.cases)} case(s) over {', '.join(result.values)} "
             f"(least squares on log(simulated / published) by compass search, {result.nfev} evaluations)"]
    lines.append(f"  {'parameter':<24} {'start':>9} {'fitted':>9} {'bounds':>15}  unit")
    for p, v in result.values.items():
        lo, hi = result.bounds[p]
        lines.append(f"  {p:<24} {result.start[p]:>9.4g} {v:>9.4g} {f'[{lo:g}, {hi:g}]':>15}  {PARAM_UNITS[p]}")
    lines.append(f"  {'case':<28} {'published':>10} {'simulated':>10} {'ratio':>7} {'residual':>9}  unit")
    for c in result.cases:
        s = result.simulated[c.name]
        lines.append(f"  {c.name:<28} {c.published:>10.4g} {s:>10.4g} {s / c.published:>7.3f} "
                     f"{result.residuals[c.name]:>+9.4f}  {c.unit}")
    lines.append(f"  cost (0.5 * sum of squared residuals) {result.cost:.6g}")
    return "\n".join(lines)


def format_value(value: float) -> str:
    """A fitted value as written into a TOML (deterministic: two decimals)."""
    return f"{round(value, 2):.2f}"


def write_fitted(path: Path, result: FitResult, date: str) -> str:
    """Rewrite ``key = value  # comment`` for each fitted parameter in the TOML at ``path`` (appended when the key
    is absent); the comment says it was fitted, when and to which cases. Returns the new text."""
    text = Path(path).read_text()
    names = ", ".join(c.name for c in result.cases)
    for p, v in result.values.items():
        line = (f"{p} = {format_value(v)}  # {PARAM_UNITS[p]}; no source: fitted by `wse-sim calibrate` on {date} "
                f"to {names} (least squares on log(simulated/published), docs/validation.md)")
        pattern = re.compile(rf"^{re.escape(p)}\s*=.*$", re.MULTILINE)
        if pattern.search(text):
            text = pattern.sub(lambda _m, line=line: line, text, count=1)
        else:
            text = text.rstrip("\n") + "\n" + line + "\n"
    Path(path).write_text(text)
    return text
