"""``wse-sim calibrate`` (fit the unsourced cost parameters to published figures) and ``wse-sim validate``."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from tqdm import tqdm

from ..app import calibrate as cal
from ..app.calibrate.fit import format_value
from ..app.catalog import load_wafer
from ..errors import UserError


def add_parsers(sub) -> None:
    c = sub.add_parser("calibrate", help="fit the wafer's unsourced cost parameters to published measurements")
    c.add_argument("--wafer", default="wse2", help="preset name or .toml file to start from (default wse2)")
    c.add_argument("--params", default=",".join(cal.DEFAULT_FIT_PARAMS),
                   help=f"comma-separated wafer parameters to fit (default: {','.join(cal.DEFAULT_FIT_PARAMS)}, the "
                        "ones without a source)")
    c.add_argument("--cases", help="comma-separated case names (default: the cases marked for fitting)")
    c.add_argument("--write", action="store_true", help="write the fitted values into the --toml file")
    c.add_argument("--toml", help="with --write (required): the wafer TOML file to rewrite, e.g. "
                                  "wse_sim/arch/presets/wse2.toml in a checkout")
    c.add_argument("--date", help="with --write: the date put in the comment, YYYY-MM-DD (default: today)")
    c.add_argument("--quiet", action="store_true", help="no progress line per evaluation")
    c.set_defaults(func=cmd_calibrate)

    v = sub.add_parser("validate", help="run every calibration case; write validation.csv, .md and .png")
    v.add_argument("--out", default="out/validation", help="output folder (default out/validation)")
    v.add_argument("--wafer", default="wse2", help="preset name or .toml file (default wse2)")
    v.add_argument("--cases", help="comma-separated case names (default: all)")
    v.set_defaults(func=cmd_validate)


def cmd_calibrate(args) -> None:
    if args.write and not args.toml:
        raise UserError("--write needs --toml FILE, the wafer TOML to rewrite (never an implicit preset file)")
    wafer = load_wafer(args.wafer)
    params = [p.strip() for p in args.params.split(",") if p.strip()]
    for p in params:
        cal.param_bounds(p, wafer)  # unknown parameter: a clear error before any simulation
    chosen = cal.select(args.cases) if args.cases else tuple(c for c in cal.cases() if c.fit)
    date = args.date or datetime.date.today().isoformat()
    if args.date:
        try:
            datetime.date.fromisoformat(args.date)
        except ValueError:
            raise UserError(f"--date wants YYYY-MM-DD, got {args.date!r}") from None
    target = None
    if args.write:
        target = Path(args.toml)
        if not target.is_file():
            raise UserError(f"--write: {target} is not a file")
    elif args.toml or args.date:
        raise UserError("--toml and --date only apply with --write")
    result = cal.fit(chosen, params, wafer, on_eval=None if args.quiet else _fit_progress())
    print(cal.format_fit(result))
    if target is not None:
        cal.write_fitted(target, result, date)
        print(f"wrote {', '.join(f'{p} = {format_value(v)}' for p, v in result.values.items())} to {target}")


def _fit_progress():
    """A tqdm counter of fit evaluations (their number is not known in advance) showing the latest point."""


    bar = tqdm(desc="fit evaluations", unit="eval", leave=False, disable=not sys.stderr.isatty())

    def on_eval(values: dict[str, float], cost: float) -> None:
        bar.set_postfix_str(", ".join(f"{p}={v:.4g}" for p, v in values.items()) + f", cost={cost:.4g}")
        bar.update()

    return on_eval


def cmd_validate(args) -> None:
    wafer = load_wafer(args.wafer)
    chosen = cal.select(args.cases)
    results = cal.validate(wafer, args.out, chosen)
    print(cal.format_results(results))
    ok = sum(r.ok for r in results)
    known = sum(not r.ok and r.case.name in cal.KNOWN_MISSES for r in results)
    print(f"{ok} of {len(results)} cases within {cal.TOLERANCE:.0%} of the published figure (or bound, or range)"
          + (f"; {known} known miss(es), see docs/validation.md" if known else ""))
    out = Path(args.out)
    print("wrote " + ", ".join(str(out / f) for f in ("validation.csv", "validation.md", "validation.png")))
