"""``wse-sim models``, ``wse-sim wafers`` and ``wse-sim mappings``: the presets one can name."""

from __future__ import annotations

from ..app.catalog import MODEL_PRESETS, WAFER_PRESETS, mapping_docs


def add_parsers(sub) -> None:
    sub.add_parser("models", help="list model presets").set_defaults(func=cmd_models)
    sub.add_parser("wafers", help="list wafer presets").set_defaults(func=cmd_wafers)
    sub.add_parser("mappings", help="list the dataflow mappings").set_defaults(func=cmd_mappings)


def cmd_models(_args) -> None:
    print(f"{'name':<20} {'params':>16} {'d_model':>8} {'layers':>7} {'heads':>6} {'d_ff':>7} {'vocab':>7}")
    for name, c in MODEL_PRESETS.items():
        print(f"{name:<20} {c.param_count():>16,} {c.d_model:>8} {c.n_layer:>7} {c.n_head:>6} {c.d_ff:>7} "
              f"{c.vocab_size:>7}")


def cmd_wafers(_args) -> None:
    print(f"{'name':<6} {'mesh (rows x cols)':>19} {'clock GHz':>9} {'SRAM/PE':>8} {'fp16 FMAC/cyc':>13} "
          f"{'MemoryX GB/s':>12}  description")
    for name, w in WAFER_PRESETS.items():
        print(f"{name:<6} {f'{w.mesh_rows} x {w.mesh_cols}':>19} {w.clock_hz / 1e9:>9.3g} "
              f"{w.sram_bytes_per_pe // 1024:>6}Ki {w.fp16_fmac_per_pe_per_cycle:>13g} "
              f"{w.memoryx_bytes_per_s / 1e9:>12g}  {w.description}")


def cmd_mappings(_args) -> None:
    for name, doc in mapping_docs():
        print(f"{name:<16} {doc}")
