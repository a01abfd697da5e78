"""Argument types and the options several subcommands share, declared once."""

from __future__ import annotations

import argparse

from ..app import DEFAULT_TILES, PRECISIONS


def int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return int_at_least(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="cerebras-gpt-111m",
                   help="preset name (see `wse-sim models`) or a GPT-2 / Llama config.json or checkpoint folder")


def add_wafer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wafer", default="wse2", help="preset name (see `wse-sim wafers`) or a .toml override file")


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="fp16", help="storage precision")


def add_grid(p: argparse.ArgumentParser, tile: bool = True) -> None:
    """``--grid``, ``--tiles`` and (with ``tile``) ``--tile``: the PE region and how it is cut into tiles."""
    p.add_argument("--grid", help="use a ROWSxCOLS sub-rectangle of the wafer (default: the whole usable mesh)")
    tr, tc = DEFAULT_TILES
    p.add_argument("--tiles", help=f"tile grid TRxTC (default {tr}x{tc}; auto also tries others unless given)")
    if tile:
        p.add_argument("--tile", help="PEs per tile HxW (1x1 = PE-level; use on small grids)")


def add_numerics(p: argparse.ArgumentParser, default_help: str) -> None:
    num = p.add_mutually_exclusive_group()
    num.add_argument("--numerics", dest="numerics", action="store_true", default=None, help=default_help)
    num.add_argument("--no-numerics", dest="numerics", action="store_false", help="timing only")


def add_check_transformers(p: argparse.ArgumentParser) -> None:
    """``--check-transformers``: the logits against transformers too, not only the float64 reference."""
    p.add_argument("--check-transformers", action="store_true", default=None,
                   help="also compare the simulated logits with transformers' float32 forward on the same weights "
                        "(imports torch: about 4 s more); by default they are checked against the float64 numpy "
                        "reference alone")


def add_defects(p: argparse.ArgumentParser) -> None:
    """``--defects``, ``--defect-seed`` and ``--defect-map``: a defective wafer (docs/defects.md)."""
    p.add_argument("--defects", metavar="RATE",
                   help="draw failed PEs at this per-PE rate: a number, 'published' (the wafer's defect density x "
                        "PE area) or a multiple of it such as 10x")
    p.add_argument("--defect-seed", type=int, metavar="N", help="seed of the drawn defects (default 0)")
    p.add_argument("--defect-map", metavar="FILE", help="failed PEs, one 'ROW COL' per line (physical coordinates)")


def add_shared(p: argparse.ArgumentParser) -> None:
    """The options every whole-model subcommand takes: model, wafer, grid, tiles, precision and defects."""
    add_model(p)
    add_wafer(p)
    add_grid(p)
    add_precision(p)
    add_defects(p)
