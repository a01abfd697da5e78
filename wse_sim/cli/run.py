"""``wse-sim run``: one forward pass, decode step or generation; report.json, plots, trace, logits."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..app import RunSpec, run
from ..app.files import read_toml
from ..app.scenario import MAX_MEMORY_ENV, MAX_MEMORY_GB, generated_texts, prompt_ids
from ..errors import UserError
from ..report.build import format_summary, last_pass_view
from ..report.figures import check_format, figure_names, figure_parts
from ..report.tables import ops_csv
from ..report.trace import write_trace
from .options import add_check_transformers, add_numerics, add_shared, nonnegative_int, positive_float, positive_int
from .outputs import Drawing, NoDrawing, Staged, check_file, check_folder, start_drawing


def add_parsers(sub) -> None:
    r = sub.add_parser("run", help="simulate one forward pass and write report.json and plots")
    add_run_options(r)
    r.set_defaults(func=cmd_run)


def add_run_options(r: argparse.ArgumentParser) -> None:
    """Every option of ``wse-sim run``."""
    r.add_argument("--config", help="TOML file of run options (keys are the flags without --, e.g. "
                                    "prompt-len = 6); flags on the command line override it")
    add_shared(r)
    r.add_argument("--checkpoint", help="Hugging Face checkpoint folder (config.json + safetensors or .bin)")
    r.add_argument("--mapping", default="auto", help="dataflow mapping: a name from `wse-sim mappings`, or auto")
    r.add_argument("--seq", type=positive_int, help=f"sequence length (tokens per sequence; default {RunSpec.seq}, or "
                                                    "the --prompt's length)")
    r.add_argument("--batch", type=positive_int, default=1)
    add_numerics(r, "run real numerics through the mapping (default for models up to 1.3B)")
    add_check_transformers(r)
    r.add_argument("--tokens", help="comma-separated token ids (sets the input; must be batch*seq long)")
    r.add_argument("--prompt", help="text prompt (needs --checkpoint with tokenizer files)")
    r.add_argument("--seed", type=int, default=0, help="seed for random weights and tokens")
    r.add_argument("--save-logits", help="write the simulated logits to this .npy file")
    r.add_argument("--out", default="out/run", help="output folder for report.json and the plots")
    r.add_argument("--format", default="png", help="image format of the plots: png or svg")
    r.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the utilization, timeline, layers and energy figures (default); --no-plots writes "
                        "report.json and ops.csv only, about 1.5 s sooner on a 13B run (for quick reruns)")
    r.add_argument("--trace", help="also write a Chrome trace-event JSON (Perfetto, chrome://tracing) to this file")
    r.add_argument("--trace-limit", type=positive_int, help="keep only the first N trace slices per resource")
    r.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    r.add_argument("--max-memory-gb", type=positive_float, metavar="GB",
                   help=f"refuse a run whose memory estimate exceeds GB (default ${MAX_MEMORY_ENV}, else "
                        f"{MAX_MEMORY_GB:g})")
    _add_serving(r)


def _add_serving(r: argparse.ArgumentParser) -> None:
    srv = r.add_argument_group("placement and serving (resident weights: --grid is one layer's region, layers fill "
                               "the wafers' regions; every phase places its passes alike)")
    srv.add_argument("--phase", choices=["prefill", "decode", "generate"], default="prefill",
                     help="prefill: one forward pass over --seq tokens; decode: one new token after --context "
                          "cached ones; generate: prefill --prompt-len tokens, then decode to --gen-tokens")
    srv.add_argument("--context", type=nonnegative_int, help="decode: tokens already in the KV cache")
    srv.add_argument("--prompt-len", type=positive_int, help="generate: prompt tokens (default: --seq)")
    srv.add_argument("--gen-tokens", type=positive_int, help="generate: tokens to generate (default 8); prefill: the "
                                                             "request's tokens its KV cache is placed for (default 1)")
    srv.add_argument("--weights", choices=["auto", "resident", "streamed"],
                     help="weights resident in SRAM (layers filling --grid regions), streamed from MemoryX (one "
                          "--grid), or auto (default): resident when they fit the wafers, else streamed")
    srv.add_argument("--prefill-grid", metavar="PxQ", help="generate: the prefill's region grid (default --grid)")
    srv.add_argument("--decode-grid", metavar="PxQ", help="generate: the decode steps' region grid (default --grid)")
    srv.add_argument("--layer-subset", type=positive_int, metavar="K",
                     help="simulate K layers and scale the layer time to the model's depth (published practice "
                          "when a model does not fit the wafer)")
    srv.add_argument("--wafers", type=positive_int, default=1, metavar="N",
                     help="split the layers over N wafers in a pipeline joined by the inter-wafer link (decode "
                          "and generate)")


def with_config(argv: list[str], path: str) -> argparse.Namespace:
    """``wse-sim run`` arguments ``argv`` (the command first) parsed again with the TOML file ``path``'s values as
    defaults, so flags given on the command line win."""
    r = argparse.ArgumentParser(prog="wse-sim run")
    add_run_options(r)
    r.set_defaults(command="run", func=cmd_run, **config_values(path))
    return r.parse_args(argv[1:])


class _CheckingParser(argparse.ArgumentParser):
    """The run options, parsed one config value at a time: an error raises instead of exiting."""

    def error(self, message: str):
        raise ValueError(message.removeprefix("argument ").split(": ", 1)[-1])


def config_values(path: str) -> dict:
    """The file's keys as {dest: value}, each checked by parsing it as its flag; an unknown key is an error."""
    data = read_toml(path, "--config file")
    checker = _CheckingParser(prog="wse-sim run", add_help=False)
    add_run_options(checker)
    dests = set(vars(checker.parse_args([]))) - {"config"}
    values = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in dests:
            known = ", ".join(sorted(d.replace("_", "-") for d in dests))
            raise UserError(f"--config {path}: unknown key {key!r} (known: {known})")
        values[dest] = _config_value(checker, dest, value, f"--config {path}: {key}")
    return values


def _takes_no_value(checker: _CheckingParser, flag: str) -> bool:
    try:
        checker.parse_args([flag])
    except ValueError:
        return False
    return True


def _config_value(checker: _CheckingParser, dest: str, value, where: str):
    """``value`` checked (and converted) as the flag of ``dest`` would be."""
    flag = "--" + dest.replace("_", "-")
    if _takes_no_value(checker, flag):  # a switch: --quiet, --numerics / --no-numerics
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool | dict | list):
        raise UserError(f"{where}: {value!r} is not a single value")
    try:
        parsed = getattr(checker.parse_args([f"{flag}={value}"]), dest)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    if isinstance(parsed, str) and not isinstance(value, str):
        raise UserError(f"{where} must be a string, got {value!r}")
    return parsed


def spec_of(args) -> RunSpec:
    """The run's spec; without --seq, a --prompt (with --checkpoint) sets it to the prompt's length."""
    seq = args.seq
    if seq is None and args.prompt and args.checkpoint:
        seq = prompt_ids(args.checkpoint, args.prompt).shape[1]
    return RunSpec(
        model=args.model, wafer=args.wafer, mapping=args.mapping, seq=seq or RunSpec.seq, batch=args.batch,
        precision=args.precision, grid=args.grid, tiles=args.tiles, tile=args.tile, numerics=args.numerics,
        check_transformers=args.check_transformers, checkpoint=args.checkpoint, tokens=args.tokens,
        prompt=args.prompt, seed=args.seed, phase=args.phase,
        context=args.context, prompt_len=args.prompt_len, gen_tokens=args.gen_tokens, layer_subset=args.layer_subset,
        wafers=args.wafers, defects=args.defects, defect_seed=args.defect_seed, defect_map=args.defect_map,
        weights=args.weights, prefill_grid=args.prefill_grid, decode_grid=args.decode_grid,
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


def _import_plots() -> None:
    """What drawing needs, in the drawing child while the parent simulates: matplotlib imported and the figures'
    empty axes made (:func:`~wse_sim.report.plots.prepare_figures`)."""
    from ..report import plots

    plots.prepare_figures()


def _draw(job: tuple[dict, Path, str], part: int, parts: int) -> list[Path]:
    """Part ``part`` of ``parts`` of the run's figures (``job``: report view, folder, format), written."""
    from ..report import plots

    view, folder, fmt = job
    if parts == 1:
        return plots.write_plots(view, folder, fmt)
    return plots.write_figures(view, folder, fmt, figure_parts(figure_names(view), parts)[part])


def cmd_run(args) -> None:
    check_format(args.format)
    check_outputs(args)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    spec = spec_of(args)
    drawing = start_drawing(_draw, _import_plots) if args.plots else NoDrawing()
    with drawing:  # the command: a child imports matplotlib meanwhile
        out_run = run(spec, progress=not args.quiet, log=log, record=True,  # intervals: timeline, trace
                      max_memory=args.max_memory_gb, defer_checks=True)
        _write_outputs(args, spec, out_run, drawing)


def _write_outputs(args, spec: RunSpec, out_run, drawing: Drawing | NoDrawing) -> None:
    """Outputs go to temporary names moved into place together once everything succeeded. The plots (of the
    last pass; they do not show the numerics) are drawn beside the reference checks and the writes; the summary
    prints as soon as the checks are done, the written files once they are in place."""
    report, logits, wall = out_run.report, out_run.logits, out_run.sim_wall_s
    if args.save_logits and logits is None:
        raise UserError("--save-logits needs numerics on (drop --no-numerics)")
    out = Path(args.out)
    with Staged() as staged:
        tmp = staged.folder(out)
        try:
            drawing.send((last_pass_view(report), tmp, args.format))
            if out_run.pending_checks is not None:
                out_run.pending_checks()  # fills report["numerics"]
            note = " (numerics inside; reference checks not counted)" if logits is not None else ""
            print(format_summary(report, [("simulation wall time", f"{wall:.2f} s{note}")]), flush=True)
            (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            (tmp / "ops.csv").write_text(ops_csv(report))
            if args.trace:
                info = {k: report[k]["name"] for k in ("model", "wafer", "mapping")} | {"run": report["run"]}
                write_trace(staged.file(args.trace), out_run.result, out_run.plan.grid, out_run.wafer.clock_hz,
                            args.trace_limit, info)
            if args.save_logits:
                import numpy as np

                np.save(staged.file(args.save_logits), logits)
            names = figure_names(report)
            plots = [out / p.name for p in sorted(drawing.wait(), key=lambda p: names.index(p.stem))]
        finally:
            drawing.close()  # before the staging folder is discarded
        staged.commit()
    for i, text in enumerate(generated_texts(spec, report)):
        print(f"generated text{f' [{i}]' if args.batch > 1 else ''}: {text!r}")
    written = [out / "report.json", out / "ops.csv", *plots, *([args.trace] if args.trace else []),
               *([args.save_logits] if args.save_logits else [])]
    print("wrote " + ", ".join(str(p) for p in written))
