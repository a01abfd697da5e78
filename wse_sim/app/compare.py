"""``wse-sim compare``: one model, several mappings, one table (and JSON, CSV and a grouped bar chart).

Every row is a full run through the same pipeline as ``wse-sim run``; a mapping that cannot run the model
(SRAM overflow, a non-square tile grid for Cannon, ...) is a row with its reason, not a crash.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from ..mapping import mapping_info
from .run import run
from .scenario import RunSpec, report_inputs

COLUMNS = ("mapping", "feasible", "total_cycles", "seconds", "tokens_per_s", "mfu", "fabric_bytes",
           "streamed_bytes", "sram_peak_bytes_per_pe", "joules_per_token", "wafer_joules_per_token", "average_w",
           "defect_extra_hops", "max_abs_err_vs_reference", "top1_agreement_vs_reference",
           "max_abs_err_vs_transformers", "top1_agreement", "reason")


def compare(spec: RunSpec, mappings: list[str], log=print, out: Path | None = None, fmt: str = "png") -> list[dict]:
    """One row per mapping; with ``out``, each feasible run's report.json and plots go to ``out/<mapping>/``.

    Energy columns are the report's ``energy`` (docs/energy.md): joules per token of the system and of the wafer
    alone, and the system's average watts; ``defect_extra_hops`` the detour hops charged on a defective wafer's
    plan (docs/defects.md; None on a healthy wafer)."""
    rows = []
    for name in mappings:
        log(f"running {name} ...")
        row = dict.fromkeys(COLUMNS)
        row["mapping"] = name
        try:
            report = run(replace(spec, mapping=name), log=lambda m: None, record=out is not None).report
        except UserError as exc:
            row |= {"feasible": False, "reason": str(exc)}
            rows.append(row)
            continue
        if out is not None:
            from ..report.plots import write_plots

            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            write_plots(report, out / name, fmt)
        n = report["numerics"]
        row |= {
            "feasible": True, "total_cycles": report["total_cycles"], "seconds": report["seconds"],
            "tokens_per_s": report["tokens_per_s"], "mfu": report["mfu"],
            "fabric_bytes": report["bandwidth"]["fabric_bytes"], "streamed_bytes": report["bandwidth"]["memoryx_bytes"],
            "sram_peak_bytes_per_pe": report["sram_peak_bytes_per_pe"],
            **energy_columns(report),
            "max_abs_err_vs_reference": n.get("max_abs_err_vs_reference"),
            "top1_agreement_vs_reference": n.get("top1_agreement_vs_reference"),
            "max_abs_err_vs_transformers": n.get("max_abs_err_vs_transformers"),
            "top1_agreement": n.get("top1_agreement"),
            "reason": None if n.get("enabled") else f"numerics {n.get('reason')}",
        }
        if mapping_info(name).searches:
            chosen = sorted({d["chosen"] for d in report["mapping"]["params"]["decisions"]})
            row["reason"] = "auto chose " + ", ".join(chosen)
        rows.append(row)
    return rows


def energy_columns(report: dict) -> dict:
    """The row's energy and defect columns from one run's report."""
    e = report.get("energy") or {}
    return {"joules_per_token": e.get("joules_per_token"), "wafer_joules_per_token": e.get("wafer_joules_per_token"),
            "average_w": e.get("average_w"),
            "defect_extra_hops": (report.get("defects") or {}).get("extra_hops_charged")}


def _g(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    head = f"{'mapping':<16} {'cycles':>13} {'tokens/s':>12} {'MFU %':>7} {'fabric GB':>10} {'stream GB':>10} " \
           f"{'SRAM B/PE':>10} {'J/token':>9} {'wafer J/tok':>11} {'avg kW':>7} {'max|err|':>9}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r["feasible"]:
            lines.append(f"{r['mapping']:<16} {'infeasible':>13}  {r['reason']}")
            continue
        err = "n/a" if r["max_abs_err_vs_reference"] is None else f"{r['max_abs_err_vs_reference']:.2g}"
        lines.append(f"{r['mapping']:<16} {r['total_cycles']:>13,} {r['tokens_per_s']:>12,.0f} {r['mfu'] * 100:>7.2f} "
                     f"{r['fabric_bytes'] / 1e9:>10.3f} {r['streamed_bytes'] / 1e9:>10.3f} "
                     f"{r['sram_peak_bytes_per_pe']:>10,} {_g(r['joules_per_token'], '.3g'):>9} "
                     f"{_g(r['wafer_joules_per_token'], '.3g'):>11} "
                     f"{_g(None if r['average_w'] is None else r['average_w'] / 1e3, '.2f'):>7} {err:>9}  "
                     f"{r['reason'] or ''}")
    return "\n".join(lines)


def write_outputs(rows: list[dict], spec: RunSpec, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"spec": report_inputs(spec).fields, "rows": rows}, indent=1) + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return [out / "compare.json", out / "compare.csv", write_chart(rows, spec, out / "compare.png")]


def write_chart(rows: list[dict], spec: RunSpec, path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per mapping, each metric relative to its largest value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..report.plots import format_bytes

    ok = [r for r in rows if r["feasible"]]
    if not ok:
        fig, ax = plt.subplots(figsize=(8, 2.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mapping could run this model:\n" + "\n".join(f"{r['mapping']}: {r['reason'][:90]}"
                                                                         for r in rows),
                ha="center", va="center", fontsize=8)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    metrics = [("total_cycles", "time", lambda v: f"{v:,.0f} cyc"),
               ("tokens_per_s", "tokens/s", lambda v: f"{v:,.0f}"),
               ("fabric_bytes", "fabric bytes", format_bytes),
               ("streamed_bytes", "streamed bytes", format_bytes),
               ("sram_peak_bytes_per_pe", "SRAM peak/PE", lambda v: f"{v / 1024:.1f} KiB"),
               ("wafer_joules_per_token", "wafer J/token", lambda v: f"{v:.3g} J")]
    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / max(len(ok), 1)
    x = np.arange(len(metrics))
    top = {key: max((r[key] or 0) for r in ok) or 1 for key, _, _ in metrics}
    for idx, r in enumerate(ok):
        vals = [(r[key] or 0) / top[key] for key, _, _ in metrics]
        bars = ax.bar(x + (idx - (len(ok) - 1) / 2) * width, vals, width, label=r["mapping"])
        for bar, (key, _, fmt) in zip(bars, metrics, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, fmt(r[key] or 0), rotation=90,
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [label for _, label, _ in metrics])
    ax.set_ylabel("relative to the largest value of the metric")
    ax.set_ylim(0, 1.45)
    ax.legend(ncol=min(len(ok), 6), loc="upper left", fontsize=8)
    bad = [r["mapping"] for r in rows if not r["feasible"]]
    title = f"{spec.model} on {spec.wafer}, batch {spec.batch} x seq {spec.seq}, {spec.precision}: mappings compared"
    if bad:
        title += f"\ninfeasible: {', '.join(bad)} (see compare.csv for the reason)"
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
