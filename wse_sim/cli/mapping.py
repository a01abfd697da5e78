"""Subcommands about mappings: ``wse-sim gemm`` (one matmul) and ``wse-sim compare`` (one model, many mappings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..app import RunSpec
from ..app.catalog import check_names, mapping_names
from ..app.compare import compare, format_table, write_outputs
from ..app.gemm import GemmSpec, format_gemm, run_gemm
from ..app.train import TrainSpec
from ..errors import UserError
from .options import (
    add_check_transformers,
    add_defects,
    add_grid,
    add_numerics,
    add_precision,
    add_shared,
    add_wafer,
    positive_int,
)

COMPARE_DEFAULT = "weight-streaming,summa,cannon,meshgemm,systolic,pipelined,auto"


def add_parsers(sub) -> None:
    g = sub.add_parser("gemm", help="simulate one matmul (M = 1 is a GEMV) on a PE grid and write report.json")
    g.add_argument("--m", type=positive_int, required=True)
    g.add_argument("--k", type=positive_int, required=True)
    g.add_argument("--n", type=positive_int, required=True)
    add_grid(g)
    add_wafer(g)
    g.add_argument("--mapping", default="auto", help="a registry name (see `wse-sim mappings`) or auto")
    add_precision(g)
    g.add_argument("--numerics", action="store_true", help="multiply seeded random matrices; compare with float64")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--fan-in", type=positive_int, help="gemv-tree: reduction tree fan-in (>= 2; default: the wafer's)")
    add_defects(g)
    g.add_argument("--out", default="out/gemm", help="output folder for report.json")
    g.set_defaults(func=cmd_gemm)

    c = sub.add_parser("compare", help="run one model under several mappings; table + compare.json/.csv/.png")
    add_shared(c)
    c.add_argument("--mappings", default=COMPARE_DEFAULT, help="comma-separated registry names")
    c.add_argument("--seq", type=positive_int, default=512)
    c.add_argument("--batch", type=positive_int, default=1)
    add_numerics(c, "run real numerics through each mapping (default for models up to 1.3B)")
    add_check_transformers(c)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default="out/compare", help="compare.json/.csv/.png, and <mapping>/ report + plots")
    c.add_argument("--format", choices=["png", "svg"], default="png", help="image format of the per-mapping plots")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--train", action="store_true",
                   help="compare one training step (wse-sim train) per mapping and system count instead of a prefill")
    c.add_argument("--systems", help="--train: system counts, e.g. 1,2,4 (default 1)")
    c.add_argument("--micro-batch", type=positive_int, help="--train: sequences per micro-batch and system")
    c.set_defaults(func=cmd_compare)


def cmd_gemm(args) -> None:
    spec = GemmSpec(m=args.m, k=args.k, n=args.n, wafer=args.wafer, grid=args.grid, tiles=args.tiles, tile=args.tile,
                    mapping=args.mapping, precision=args.precision, numerics=args.numerics, seed=args.seed,
                    fan_in=args.fan_in, defects=args.defects, defect_seed=args.defect_seed,
                    defect_map=args.defect_map)
    report = run_gemm(spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(format_gemm(report))
    print(f"wrote {out / 'report.json'}")


def cmd_compare(args) -> None:
    known = mapping_names()
    names = [m.strip() for m in args.mappings.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise UserError(f"unknown mapping(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if args.train:
        return _compare_train(args, names)
    spec = RunSpec(model=args.model, wafer=args.wafer, seq=args.seq, batch=args.batch, precision=args.precision,
                   grid=args.grid, tiles=args.tiles, tile=args.tile, numerics=args.numerics, seed=args.seed,
                   check_transformers=args.check_transformers, defects=args.defects, defect_seed=args.defect_seed,
                   defect_map=args.defect_map)

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr)

    check_names(spec)  # a bad model or wafer is the user's error, not a row per mapping
    rows = compare(spec, names, log=log, out=Path(args.out), fmt=args.format)
    paths = write_outputs(rows, spec, Path(args.out))
    print(format_table(rows))
    print("wrote " + ", ".join(str(p) for p in paths))


def _compare_train(args, names: list[str]) -> None:
    from ..app.train_sweep import compare_train, format_train_table, write_train_compare
    from .train import _systems

    if args.tile:
        raise UserError("--tile does not apply to --train (weight streaming takes --tiles)")
    spec = TrainSpec(model=args.model, wafer=args.wafer, seq=args.seq, batch=args.batch, precision=args.precision,
                     grid=args.grid, tiles=args.tiles, micro_batch=args.micro_batch,
                     systems=_systems(args.systems) if args.systems else (1,), numerics=args.numerics,
                     seed=args.seed, defects=args.defects, defect_seed=args.defect_seed, defect_map=args.defect_map)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    rows = compare_train(spec, names, log=log)
    paths = write_train_compare(rows, spec, Path(args.out))
    print(format_train_table(rows))
    print("wrote " + ", ".join(str(p) for p in paths))
