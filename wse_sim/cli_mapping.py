"""Subcommands about mappings: ``wse-sim gemm``, ``wse-sim compare`` and ``wse-sim mappings``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli import _positive_int
from .errors import UserError

COMPARE_DEFAULT = "weight-streaming,summa,cannon,meshgemm,systolic,pipelined,auto"


def add_parsers(sub) -> None:
    g = sub.add_parser("gemm", help="simulate one matmul (M = 1 is a GEMV) on a PE grid and write report.json")
    g.add_argument("--m", type=_positive_int, required=True)
    g.add_argument("--k", type=_positive_int, required=True)
    g.add_argument("--n", type=_positive_int, required=True)
    g.add_argument("--grid", help="ROWSxCOLS PE region (default: the whole usable mesh)")
    g.add_argument("--tiles", help="tile grid TRxTC (default 8x8)")
    g.add_argument("--tile", help="PEs per tile HxW (1x1 = PE level; small grids only)")
    g.add_argument("--wafer", default="wse2")
    g.add_argument("--mapping", default="auto", help="a registry name (see `wse-sim mappings`) or auto")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    g.add_argument("--numerics", action="store_true", help="multiply seeded random matrices; compare with float64")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--fan-in", type=_positive_int, help="gemv-tree: reduction tree fan-in (>= 2; default: the wafer's)")
    g.add_argument("--out", default="out/gemm", help="output folder for report.json")

    c = sub.add_parser("compare", help="run one model under several mappings; table + compare.json/.csv/.png")
    c.add_argument("--model", default="cerebras-gpt-111m")
    c.add_argument("--wafer", default="wse2")
    c.add_argument("--mappings", default=COMPARE_DEFAULT, help="comma-separated registry names")
    c.add_argument("--seq", type=_positive_int, default=512)
    c.add_argument("--batch", type=_positive_int, default=1)
    c.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    c.add_argument("--grid", help="ROWSxCOLS PE region")
    c.add_argument("--tiles", help="tile grid TRxTC (default 8x8; auto also tries others unless given)")
    num = c.add_mutually_exclusive_group()
    num.add_argument("--numerics", dest="numerics", action="store_true", default=None)
    num.add_argument("--no-numerics", dest="numerics", action="store_false")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default="out/compare", help="compare.json/.csv/.png, and <mapping>/ report + plots")
    c.add_argument("--format", choices=["png", "svg"], default="png", help="image format of the per-mapping plots")
    c.add_argument("--quiet", action="store_true")

    sub.add_parser("mappings", help="list the dataflow mappings")


def dispatch(args) -> bool:
    if args.command == "gemm":
        _cmd_gemm(args)
    elif args.command == "compare":
        _cmd_compare(args)
    elif args.command == "mappings":
        _cmd_mappings()
    else:
        return False
    return True


def _cmd_gemm(args) -> None:
    from .single_op import GemmSpec, format_gemm, run_gemm

    spec = GemmSpec(m=args.m, k=args.k, n=args.n, wafer=args.wafer, grid=args.grid, tiles=args.tiles, tile=args.tile,
                    mapping=args.mapping, precision=args.precision, numerics=args.numerics, seed=args.seed,
                    fan_in=args.fan_in)
    report = run_gemm(spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(format_gemm(report))
    print(f"wrote {out / 'report.json'}")


def _cmd_compare(args) -> None:
    from .compare import compare, format_table, write_outputs
    from .mapping import mapping_names
    from .pipeline import RunSpec

    names = [m.strip() for m in args.mappings.split(",") if m.strip()]
    unknown = [m for m in names if m not in mapping_names()]
    if unknown:
        raise UserError(f"unknown mapping(s) {', '.join(unknown)} (known: {', '.join(mapping_names())})")
    spec = RunSpec(model=args.model, wafer=args.wafer, seq=args.seq, batch=args.batch, precision=args.precision,
                   grid=args.grid, tiles=args.tiles, numerics=args.numerics, seed=args.seed)

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr)

    from .arch import load_wafer
    from .pipeline import resolve_model

    resolve_model(spec)  # a bad model or wafer is the user's error, not a row per mapping
    load_wafer(spec.wafer)
    rows = compare(spec, names, log=log, out=Path(args.out), fmt=args.format)
    paths = write_outputs(rows, spec, Path(args.out))
    print(format_table(rows))
    print("wrote " + ", ".join(str(p) for p in paths))


def _cmd_mappings() -> None:
    from .mapping import get_mapping, mapping_names

    for name in mapping_names():
        doc = (sys.modules[type(get_mapping(name)).__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name:<16} {doc}")
