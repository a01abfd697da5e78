"""The command line, thin: each subcommand module declares its parser and a ``func`` that builds the app's
inputs, calls one use case in :mod:`wse_sim.app`, prints and writes. ``main`` turns user errors into one line
and exit code 2."""

from __future__ import annotations

import argparse
import sys

from ..app import ReferenceImportError
from ..errors import UserError
from . import calibrate, catalog, mapping, run, serving, viz

SUBCOMMANDS = (run, catalog, mapping, serving, viz, calibrate)  # each has add_parsers(sub), in help order


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wse-sim", description="Simulate transformer workloads on a wafer-scale engine.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ReferenceImportError) as exc:  # config, checkpoint, SRAM and input errors derive from UserError
        print(f"wse-sim: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
