"""Serving subcommands: ``wse-sim capacity`` (the longest context whose KV cache fits)."""

from __future__ import annotations

import json

from ..app import RunSpec
from ..app.capacity import capacity
from ..app.catalog import load_wafer
from .options import add_shared, positive_int


def add_parsers(sub) -> None:
    c = sub.add_parser("capacity", help="longest context whose KV cache fits beside the resident weights")
    add_shared(c)
    c.add_argument("--batch", type=positive_int, default=1, help="sequences whose caches share the SRAM")
    c.add_argument("--mapping", default="auto", help="matmul mapping inside a region (auto or a resident one)")
    c.add_argument("--layer-subset", type=positive_int, metavar="K", help="only K layers must fit")
    c.add_argument("--wafers", type=positive_int, default=1, metavar="N", help="layers split over N wafers")
    c.add_argument("--ignore-model-context", action="store_true",
                   help="report the SRAM's capacity beyond the model's trained context (as capacity tables do)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=cmd_capacity)


def cmd_capacity(args) -> None:
    spec = RunSpec(model=args.model, wafer=args.wafer, grid=args.grid, tiles=args.tiles, tile=args.tile,
                   precision=args.precision, batch=args.batch, mapping=args.mapping, layer_subset=args.layer_subset,
                   phase="decode", wafers=args.wafers, defects=args.defects, defect_seed=args.defect_seed,
                   defect_map=args.defect_map)
    out = capacity(spec, load_wafer(args.wafer), args.ignore_model_context)
    print(json.dumps(out, indent=1) if args.json else format_capacity(out))


def format_capacity(out: dict) -> str:
    r, c = out["region_pes"]
    on = f"{out['regions_on_wafer']} on the wafer" if out["wafers"] == 1 else \
        f"{out['regions_on_wafer']} on each of {out['wafers']} wafers"
    where = f"{out['model']} on {out['wafer']}, {r}x{c}-PE regions ({on}), {out['precision']}, batch {out['batch']}"
    subset = (f" (only {out['simulated_layers']} of {out['model_layers']} layers must fit)"
              if out["simulated_layers"] != out["model_layers"] else "")
    lines = [f"{where}{subset}:"]
    if out["max_context_tokens"] is None:
        lines.append(f"  SRAM of the wafer{'s' if out['wafers'] > 1 else ''}: no context fits ({out['reason']})")
    else:
        lines.append(f"  SRAM of the wafer{'s' if out['wafers'] > 1 else ''}: {out['max_context_tokens']:,} tokens "
                     f"(limited by {out['limited_by']}; KV cache {out['kv_cache_bytes'] / 1e9:.3f} GB beside "
                     f"{out['resident_bytes'] / 1e9:.3f} GB of resident weights)")
    p = out["placement"]
    if p["max_context_tokens"] is None:
        lines.append(f"  placed in whole regions (--phase decode): no context fits ({p['reason']})")
    else:
        lines.append(f"  placed in whole regions (--phase decode): {p['max_context_tokens']:,} tokens (limited by "
                     f"{p['limited_by']}; {p['kv_cache_bytes_per_pe_per_layer']:,} B per PE per layer, "
                     f"{p['regions_used']} regions used)")
    return "\n".join(lines)
