"""``wse-sim train``: one optimizer step of data-parallel weight-streaming training (wse_sim.app.train)."""

from __future__ import annotations

import json
from pathlib import Path

from ..app.train import RECIPES, TrainSpec, run_train, summary_lines
from ..errors import UserError
from ..report.training import write_training_plots
from .options import add_defects, add_grid, add_numerics, add_wafer, positive_int


def _systems(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--systems takes a count or a comma-separated list, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"--systems counts must be >= 1, got {text!r}")
    return values


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise UserError(f"expected a positive number, got {text!r}")
    return v


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="simulate one training step (weight streaming, SwarmX data parallelism)")
    p.add_argument("--model", help="preset name or a GPT-2 config.json / checkpoint folder")
    p.add_argument("--checkpoint", help="Hugging Face GPT-2 checkpoint folder (weights for the numerics)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="take batch, micro-batch, seq, systems, tokens and "
                   "the model from the published Cerebras-GPT recipe (training.md)")
    add_wafer(p)
    add_grid(p, tile=False)
    add_defects(p)
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="bf16", help="storage precision")
    p.add_argument("--systems", type=_systems, help="systems (CS-2s), or a list such as 1,2,4,8,16 for a scaling "
                   "table (default 1, or the recipe's)")
    p.add_argument("--batch", type=positive_int, default=8, help="global batch (sequences)")
    p.add_argument("--micro-batch", type=positive_int, help="sequences per micro-batch and system")
    p.add_argument("--seq", type=positive_int, default=128, help="sequence length")
    p.add_argument("--max-pass-batch", type=positive_int, help="cap on sequences per on-wafer pass")
    p.add_argument("--train-tokens", type=_positive_float, help="tokens of the whole run (time to train)")
    add_numerics(p, "compute loss, gradients and the AdamW step (default: with --checkpoint or small models)")
    p.add_argument("--tokens", help="comma-separated token ids, batch*seq of them, row-major")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=_positive_float, default=6e-4)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--adam-eps", type=_positive_float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm clipping (0: off)")
    p.add_argument("--save-grads", help="write the gradients (Hugging Face names) to this .npz")
    p.add_argument("--save-updated", help="write the weights after the AdamW step as a checkpoint folder")
    p.add_argument("--out", help="output folder for report.json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> None:
    import numpy as np

    tokens = None
    if args.tokens:
        try:
            tokens = np.array([int(t) for t in args.tokens.split(",")], dtype=np.int64)
        except ValueError:
            raise UserError("--tokens takes comma-separated integers") from None
        if tokens.size != args.batch * args.seq:
            raise UserError(f"--tokens has {tokens.size} ids, batch x seq is {args.batch * args.seq}")
    spec = TrainSpec(
        model=args.model, checkpoint=args.checkpoint, wafer=args.wafer, systems=args.systems, batch=args.batch,
        micro_batch=args.micro_batch, seq=args.seq, precision=args.precision, recipe=args.recipe, grid=args.grid,
        tiles=args.tiles, max_pass_batch=args.max_pass_batch, numerics=args.numerics, tokens=tokens, seed=args.seed,
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.adam_eps, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm or None, save_grads=args.save_grads, save_updated=args.save_updated,
        train_tokens=args.train_tokens, defects=args.defects, defect_seed=args.defect_seed,
        defect_map=args.defect_map,
    )
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    report = run_train(spec, log)
    for line in summary_lines(report):
        print(line)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
        plots = write_training_plots(report, out)
        print(f"wrote {out / 'report.json'}, " + ", ".join(str(p) for p in plots))
