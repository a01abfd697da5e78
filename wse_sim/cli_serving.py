"""Serving subcommands: ``wse-sim capacity`` (the longest context whose KV cache fits)."""

from __future__ import annotations

import json

from .cli import _positive_int


def add_parsers(sub) -> None:
    c = sub.add_parser("capacity", help="longest context whose KV cache fits beside the resident weights")
    c.add_argument("--model", default="cerebras-gpt-111m", help="preset name or config.json / checkpoint folder")
    c.add_argument("--wafer", default="wse2")
    c.add_argument("--grid", help="PxQ region one layer runs on (default: the whole usable mesh)")
    c.add_argument("--tiles", help="tile grid TRxTC per region (default 8x8)")
    c.add_argument("--tile", help="PEs per tile HxW")
    c.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    c.add_argument("--batch", type=_positive_int, default=1, help="sequences whose caches share the SRAM")
    c.add_argument("--mapping", default="auto", help="matmul mapping inside a region (auto or a resident one)")
    c.add_argument("--layer-subset", type=_positive_int, metavar="K", help="only K layers must fit")
    c.add_argument("--wafers", type=_positive_int, default=1, metavar="N", help="layers split over N wafers")
    c.add_argument("--json", action="store_true", help="print the result as JSON")


def dispatch(args) -> bool:
    if args.command != "capacity":
        return False
    from .arch import load_wafer
    from .pipeline import RunSpec
    from .serve import capacity

    spec = RunSpec(model=args.model, wafer=args.wafer, grid=args.grid, tiles=args.tiles, tile=args.tile,
                   precision=args.precision, batch=args.batch, mapping=args.mapping, layer_subset=args.layer_subset,
                   phase="decode", wafers=args.wafers)
    out = capacity(spec, load_wafer(args.wafer))
    if args.json:
        print(json.dumps(out, indent=1))
        return True
    r, c = out["region_pes"]
    on = f"{out['regions_on_wafer']} on the wafer" if out["wafers"] == 1 else \
        f"{out['regions_on_wafer']} on each of {out['wafers']} wafers"
    where = f"{out['model']} on {out['wafer']}, {r}x{c}-PE regions ({on}), " \
            f"{out['precision']}, batch {out['batch']}"
    if out["max_context_tokens"] is None:
        print(f"{where}: no context fits ({out['reason']})")
        return True
    subset = (f" (only {out['simulated_layers']} of {out['model_layers']} layers must fit)"
              if out["simulated_layers"] != out["model_layers"] else "")
    print(f"{where}{subset}:\n  longest context that fits: {out['max_context_tokens']:,} tokens "
          f"(limited by {out['limited_by']})\n  KV cache then: {out['kv_cache_bytes'] / 1e9:.3f} GB, "
          f"{out['kv_cache_bytes_per_pe_per_layer']:,} B per PE per layer, {out['regions_used']} regions used")
    return True
