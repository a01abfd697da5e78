"""``wse-sim plot`` (figures from a report.json) and ``wse-sim sweep`` (many runs on Dask, one CSV)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..app.files import read_json
from ..app.sweep import CSV_NAME, plot_sweep, run_sweep
from ..errors import UserError
from .options import positive_int

FORMAT_HELP = "image format: png or svg"  # checked by report.figures.check_format


def add_parsers(sub) -> None:
    p = sub.add_parser("plot", help="draw utilization, timeline and per-layer/roofline plots from a report.json")
    p.add_argument("report", help="report.json written by `wse-sim run`")
    p.add_argument("--out", help="output folder (default: the report's folder)")
    p.add_argument("--format", default="png", help=FORMAT_HELP)
    p.set_defaults(func=cmd_plot)

    s = sub.add_parser("sweep", help="run the cartesian product of a sweep TOML on Dask, one CSV row per point")
    s.add_argument("toml", nargs="?", help="sweep file: lists `models`, `wafers`, `mappings`, `seq`, `batch`, "
                                           "`precision` (or any run option) and scalar run options")
    s.add_argument("--out", default="out/sweep", help="folder for sweep.csv (and sweep.png with --plot)")
    s.add_argument("--scheduler", help="address of a running Dask scheduler, tcp://HOST:PORT "
                                       "(default: a local cluster)")
    s.add_argument("--workers", type=positive_int, help="local cluster workers (default: one per core)")
    s.add_argument("--retry-errors", action="store_true", help="run again the points whose rows have an error")
    s.add_argument("--plot", action="store_true", help="draw sweep.png from sweep.csv (alone: plot only)")
    s.add_argument("--x", help="sweep.csv column for the plot's x axis (default: grid_pes, seq, batch or "
                               "parameters, the first that varies)")
    s.add_argument("--format", default="png", help=FORMAT_HELP)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sweep)


def cmd_plot(args) -> None:
    from ..report.build import last_pass_view
    from ..report.plots import check_format, write_plots

    check_format(args.format)
    path = Path(args.report)
    report = read_json(path, "report")
    if not isinstance(report, dict) or "layers" not in report or "utilization" not in report:
        raise UserError(f"{path} is not a wse-sim report.json")
    paths = write_plots(last_pass_view(report), Path(args.out) if args.out else path.parent, args.format)
    if not report.get("timeline"):
        print("no timeline in the report (run was not recorded): timeline plot skipped", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths))


def cmd_sweep(args) -> None:
    from ..report.figures import check_format

    check_format(args.format)
    out = Path(args.out)
    if args.toml is None and not args.plot:
        raise UserError("give a SWEEP.toml to run, or --plot to draw an existing sweep.csv")
    if args.toml is not None:
        from ..app.train_sweep import is_train_sweep, run_train_sweep

        runner = run_train_sweep if is_train_sweep(args.toml) else run_sweep  # command = "train": training steps
        s = runner(args.toml, out, scheduler=args.scheduler, n_workers=args.workers, progress=not args.quiet,
                   retry_errors=args.retry_errors)
        print(f"{s.csv_path}: {s.points} points, {s.skipped} already done, {s.ran} run, {s.failed} of them failed")
        if s.all_failed:
            raise UserError(f"every point of the sweep failed (see the error column of {s.csv_path})")
    if args.plot:
        print(f"wrote {plot_sweep(out / CSV_NAME, out / f'sweep.{args.format}', args.x)}")
