"""Command line: ``wse-sim run | models | wafers``. Thin: parses, calls the pipeline, prints, writes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError
from .workloads.hf_reference import ReferenceImportError


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wse-sim", description="Simulate transformer workloads on a wafer-scale engine.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="simulate one forward pass and write report.json and plots")
    r.add_argument("--model", default="cerebras-gpt-111m",
                   help="preset name (see `wse-sim models`) or a GPT-2 config.json / checkpoint folder")
    r.add_argument("--checkpoint", help="Hugging Face checkpoint folder (config.json + safetensors or .bin)")
    r.add_argument("--wafer", default="wse2", help="preset name (see `wse-sim wafers`) or a .toml override file")
    r.add_argument("--mapping", default="auto", help="dataflow mapping: a name from `wse-sim mappings`, or auto")
    r.add_argument("--seq", type=_positive_int, default=512, help="sequence length (tokens per sequence)")
    r.add_argument("--batch", type=_positive_int, default=1)
    r.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16", help="storage precision")
    r.add_argument("--grid", help="use a ROWSxCOLS sub-rectangle of the wafer (default: the whole usable mesh)")
    r.add_argument("--tiles", help="tile grid TRxTC (default 8x8)")
    r.add_argument("--tile", help="PEs per tile HxW (1x1 = PE-level; use on small grids)")
    num = r.add_mutually_exclusive_group()
    num.add_argument("--numerics", dest="numerics", action="store_true", default=None,
                     help="run real numerics through the mapping (default for models up to 1.3B)")
    num.add_argument("--no-numerics", dest="numerics", action="store_false", help="timing only")
    r.add_argument("--tokens", help="comma-separated token ids (sets the input; must be batch*seq long)")
    r.add_argument("--prompt", help="text prompt (needs --checkpoint with tokenizer files)")
    r.add_argument("--seed", type=int, default=0, help="seed for random weights and tokens")
    r.add_argument("--save-logits", help="write the simulated logits to this .npy file")
    r.add_argument("--out", default="out/run", help="output folder for report.json and the plots")
    r.add_argument("--format", default="png", help="image format of the plots: png or svg")
    r.add_argument("--trace", help="also write a Chrome trace-event JSON (Perfetto, chrome://tracing) to this file")
    r.add_argument("--trace-limit", type=_positive_int, help="keep only the first N trace slices per resource")
    r.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    srv = r.add_argument_group("serving (decode and generate place every layer on its own --grid region)")
    srv.add_argument("--phase", choices=["prefill", "decode", "generate"], default="prefill",
                     help="prefill: one forward pass over --seq tokens; decode: one new token after --context "
                          "cached ones; generate: prefill --prompt-len tokens, then decode to --gen-tokens")
    srv.add_argument("--context", type=_nonnegative_int, help="decode: tokens already in the KV cache")
    srv.add_argument("--prompt-len", type=_positive_int, help="generate: prompt tokens (default: --seq)")
    srv.add_argument("--gen-tokens", type=_positive_int, help="generate: tokens to generate (default 8)")
    srv.add_argument("--layer-subset", type=_positive_int, metavar="K",
                     help="simulate K layers and scale the layer time to the model's depth (published practice "
                          "when a model does not fit the wafer)")
    srv.add_argument("--wafers", type=_positive_int, default=1, metavar="N",
                     help="split the layers over N wafers in a pipeline joined by the inter-wafer link (decode "
                          "and generate)")

    sub.add_parser("models", help="list model presets")
    sub.add_parser("wafers", help="list wafer presets")
    from . import cli_calibrate, cli_mapping, cli_serving, cli_viz

    cli_viz.add_parsers(sub)
    cli_mapping.add_parsers(sub)
    cli_serving.add_parsers(sub)
    cli_calibrate.add_parsers(sub)
    return p


def _cmd_models() -> None:
    from .workloads import PRESETS

    print(f"{'name':<20} {'params':>16} {'d_model':>8} {'layers':>7} {'heads':>6} {'d_ff':>7} {'vocab':>7}")
    for name, c in PRESETS.items():
        print(f"{name:<20} {c.param_count():>16,} {c.d_model:>8} {c.n_layer:>7} {c.n_head:>6} {c.d_ff:>7} "
              f"{c.vocab_size:>7}")


def _cmd_wafers() -> None:
    from .arch import PRESETS

    print(f"{'name':<6} {'mesh (rows x cols)':>19} {'clock GHz':>9} {'SRAM/PE':>8} {'fp16 FMAC/cyc':>13} "
          f"{'MemoryX GB/s':>12}  description")
    for name, w in PRESETS.items():
        print(f"{name:<6} {f'{w.mesh_rows} x {w.mesh_cols}':>19} {w.clock_hz / 1e9:>9.3g} "
              f"{w.sram_bytes_per_pe // 1024:>6}Ki {w.fp16_fmac_per_pe_per_cycle:>13g} "
              f"{w.memoryx_bytes_per_s / 1e9:>12g}  {w.description}")


def _cmd_run(args) -> None:
    from .pipeline import RunSpec, run
    from .report.plots import check_format

    check_format(args.format)
    if args.trace_limit and not args.trace:
        raise UserError("--trace-limit needs --trace FILE")
    if args.save_logits and not args.save_logits.endswith(".npy"):
        raise UserError(f"--save-logits wants a .npy file name, got {args.save_logits!r}")
    spec = RunSpec(
        model=args.model, wafer=args.wafer, mapping=args.mapping, seq=args.seq, batch=args.batch,
        precision=args.precision, grid=args.grid, tiles=args.tiles, tile=args.tile, numerics=args.numerics,
        checkpoint=args.checkpoint, tokens=args.tokens, prompt=args.prompt, seed=args.seed, phase=args.phase,
        context=args.context, prompt_len=args.prompt_len, gen_tokens=args.gen_tokens, layer_subset=args.layer_subset,
        wafers=args.wafers,
    )

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    out_run = run(spec, progress=not args.quiet, log=log, record=True)  # intervals feed the timeline and trace
    report, logits, wall = out_run.report, out_run.logits, out_run.sim_wall_s
    if args.save_logits and logits is None:
        raise UserError("--save-logits needs numerics on (drop --no-numerics)")

    # Everything succeeded: only now write outputs.
    from .report.build import format_summary
    from .report.plots import write_plots

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plots = write_plots(report, out, args.format)
    if args.trace:
        from .report.trace import write_trace

        info = {k: report[k]["name"] for k in ("model", "wafer", "mapping")} | {"run": report["run"]}
        write_trace(args.trace, out_run.result, out_run.plan.grid, out_run.wafer.clock_hz, args.trace_limit, info)
    if args.save_logits:
        import numpy as np

        np.save(args.save_logits, logits)
    note = " (numerics inside; reference checks not counted)" if logits is not None else ""
    print(format_summary(report, [("simulation wall time", f"{wall:.2f} s{note}")]))
    written = [out / "report.json", *plots, *([args.trace] if args.trace else []),
               *([args.save_logits] if args.save_logits else [])]
    print("wrote " + ", ".join(str(p) for p in written))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from . import cli_calibrate, cli_mapping, cli_serving, cli_viz

        if args.command == "models":
            _cmd_models()
        elif args.command == "wafers":
            _cmd_wafers()
        elif not (cli_viz.dispatch(args) or cli_mapping.dispatch(args) or cli_serving.dispatch(args)
                  or cli_calibrate.dispatch(args)):
            _cmd_run(args)
    except (UserError, ReferenceImportError) as exc:  # config, checkpoint, SRAM and input errors derive from UserError
        print(f"wse-sim: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
