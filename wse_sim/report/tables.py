"""Per-op results as CSV (ops.csv beside report.json), in SCALE-Sim / GenZ style: one row per op, units in the
column names."""

from __future__ import annotations

import csv
import io

# (column, key of the report's op entry); cycles are wafer clock cycles on the op's critical path
OP_COLUMNS = (
    ("total_cycles", "cycles"), ("compute_cycles", "compute_cycles"), ("fabric_cycles", "fabric_cycles"),
    ("stream_cycles", "stream_cycles"), ("interwafer_cycles", "interwafer_cycles"), ("flops", "flops"),
    ("stream_bytes", "stream_bytes"), ("fabric_bytes", "fabric_bytes"), ("sram_bytes_per_pe", "sram_bytes_per_pe"),
)


def ops_csv(report: dict) -> str:
    """The report's ops as CSV text: block, op, kind, latency_us, then OP_COLUMNS (for a generate run, the last
    pass's ops, as in ``layers``)."""
    clock = report["wafer"]["clock_hz"]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["block", "op", "kind", "latency_us", *(c for c, _ in OP_COLUMNS)])
    for layer in report["layers"]:
        for op in layer["ops"]:
            w.writerow([layer["name"], op["name"], op["kind"], f"{op['cycles'] / clock * 1e6:.6g}",
                        *(op[k] for _, k in OP_COLUMNS)])
    return out.getvalue()
