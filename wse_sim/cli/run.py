"""``wse-sim run``: one forward pass, decode step or generation; report.json, plots, trace, logits."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from ..app import RunSpec, run
from ..errors import UserError
from ..report.build import format_summary, last_pass_view
from ..report.tables import ops_csv
from ..report.trace import write_trace
from .options import add_numerics, add_shared, nonnegative_int, positive_int
from .outputs import Staged, check_file, check_folder

RUN_PARSER: list[argparse.ArgumentParser] = []  # the run subparser of the latest parser() (for --config)


def add_parsers(sub) -> None:
    r = sub.add_parser("run", help="simulate one forward pass and write report.json and plots")
    RUN_PARSER[:] = [r]
    r.add_argument("--config", help="TOML file of run options (keys are the flags without --, e.g. "
                                    "prompt-len = 6); flags on the command line override it")
    add_shared(r)
    r.add_argument("--checkpoint", help="Hugging Face checkpoint folder (config.json + safetensors or .bin)")
    r.add_argument("--mapping", default="auto", help="dataflow mapping: a name from `wse-sim mappings`, or auto")
    r.add_argument("--seq", type=positive_int, default=512, help="sequence length (tokens per sequence)")
    r.add_argument("--batch", type=positive_int, default=1)
    add_numerics(r, "run real numerics through the mapping (default for models up to 1.3B)")
    r.add_argument("--tokens", help="comma-separated token ids (sets the input; must be batch*seq long)")
    r.add_argument("--prompt", help="text prompt (needs --checkpoint with tokenizer files)")
    r.add_argument("--seed", type=int, default=0, help="seed for random weights and tokens")
    r.add_argument("--save-logits", help="write the simulated logits to this .npy file")
    r.add_argument("--out", default="out/run", help="output folder for report.json and the plots")
    r.add_argument("--format", default="png", help="image format of the plots: png or svg")
    r.add_argument("--trace", help="also write a Chrome trace-event JSON (Perfetto, chrome://tracing) to this file")
    r.add_argument("--trace-limit", type=positive_int, help="keep only the first N trace slices per resource")
    r.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    _add_serving(r)
    r.set_defaults(func=cmd_run)


def _add_serving(r: argparse.ArgumentParser) -> None:
    srv = r.add_argument_group("serving (decode and generate place every layer on its own --grid region)")
    srv.add_argument("--phase", choices=["prefill", "decode", "generate"], default="prefill",
                     help="prefill: one forward pass over --seq tokens; decode: one new token after --context "
                          "cached ones; generate: prefill --prompt-len tokens, then decode to --gen-tokens")
    srv.add_argument("--context", type=nonnegative_int, help="decode: tokens already in the KV cache")
    srv.add_argument("--prompt-len", type=positive_int, help="generate: prompt tokens (default: --seq)")
    srv.add_argument("--gen-tokens", type=positive_int, help="generate: tokens to generate (default 8)")
    srv.add_argument("--layer-subset", type=positive_int, metavar="K",
                     help="simulate K layers and scale the layer time to the model's depth (published practice "
                          "when a model does not fit the wafer)")
    srv.add_argument("--wafers", type=positive_int, default=1, metavar="N",
                     help="split the layers over N wafers in a pipeline joined by the inter-wafer link (decode "
                          "and generate)")


def with_config(make_parser, argv: list[str] | None, path: str) -> argparse.Namespace:
    """``argv`` parsed again with the TOML file ``path``'s values as the run command's defaults, so flags given
    on the command line win."""
    top = make_parser()
    r = RUN_PARSER[0]
    r.set_defaults(**config_values(path, r))
    return top.parse_args(argv)


def config_values(path: str, r: argparse.ArgumentParser) -> dict:
    """The file's keys as {dest: value}, each checked like its flag; an unknown key is an error."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"--config {path}: {exc}") from None
    actions = {a.dest: a for a in r._actions if a.option_strings and a.dest not in ("help", "config")}
    values = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise UserError(f"--config {path}: unknown key {key!r} (known: {known})")
        values[dest] = _config_value(actions[dest], key, value, path)
    return values


def _config_value(action: argparse.Action, key: str, value, path: str):
    """``value`` checked (and converted) as the flag of ``action`` would be."""
    where = f"--config {path}: {key}"
    if action.nargs == 0:  # a switch: --quiet, --numerics / --no-numerics
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool | dict | list):
        raise UserError(f"{where}: {value!r} is not a single value")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise UserError(f"{where}: {exc}") from None
    elif not isinstance(value, str):
        raise UserError(f"{where} must be a string, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def spec_of(args) -> RunSpec:
    return RunSpec(
        model=args.model, wafer=args.wafer, mapping=args.mapping, seq=args.seq, batch=args.batch,
        precision=args.precision, grid=args.grid, tiles=args.tiles, tile=args.tile, numerics=args.numerics,
        checkpoint=args.checkpoint, tokens=args.tokens, prompt=args.prompt, seed=args.seed, phase=args.phase,
        context=args.context, prompt_len=args.prompt_len, gen_tokens=args.gen_tokens, layer_subset=args.layer_subset,
        wafers=args.wafers, defects=args.defects, defect_seed=args.defect_seed, defect_map=args.defect_map,
    )


def check_outputs(args) -> None:
    """Every output path of ``wse-sim run``, checked before the simulation starts."""
    if args.trace_limit and not args.trace:
        raise UserError("--trace-limit needs --trace FILE")
    if args.save_logits and not args.save_logits.endswith(".npy"):
        raise UserError(f"--save-logits wants a .npy file name, got {args.save_logits!r}")
    check_folder(args.out, "--out")
    if args.trace:
        check_file(args.trace, "--trace", make_folder=True)
    if args.save_logits:
        check_file(args.save_logits, "--save-logits")


def cmd_run(args) -> None:
    from ..report.plots import check_format, write_plots  # matplotlib: imported only when a command draws

    check_format(args.format)
    check_outputs(args)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    out_run = run(spec_of(args), progress=not args.quiet, log=log, record=True)  # intervals feed timeline, trace
    report, logits, wall = out_run.report, out_run.logits, out_run.sim_wall_s
    if args.save_logits and logits is None:
        raise UserError("--save-logits needs numerics on (drop --no-numerics)")

    # Everything succeeded: only now write outputs, to temporary names moved into place together.
    out = Path(args.out)
    with Staged() as staged:
        tmp = staged.folder(out)
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "ops.csv").write_text(ops_csv(report))
        plots = [out / p.name for p in write_plots(last_pass_view(report), tmp, args.format)]  # draw the last pass
        if args.trace:
            info = {k: report[k]["name"] for k in ("model", "wafer", "mapping")} | {"run": report["run"]}
            write_trace(staged.file(args.trace), out_run.result, out_run.plan.grid, out_run.wafer.clock_hz,
                        args.trace_limit, info)
        if args.save_logits:
            import numpy as np

            np.save(staged.file(args.save_logits), logits)
        staged.commit()
    note = " (numerics inside; reference checks not counted)" if logits is not None else ""
    print(format_summary(report, [("simulation wall time", f"{wall:.2f} s{note}")]))
    written = [out / "report.json", out / "ops.csv", *plots, *([args.trace] if args.trace else []),
               *([args.save_logits] if args.save_logits else [])]
    print("wrote " + ", ".join(str(p) for p in written))
