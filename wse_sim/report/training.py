"""Plots of a ``wse-sim train`` report: the scaling table against linear speed-up, and the step's phases."""

from __future__ import annotations

from pathlib import Path


def write_training_plots(report: dict, out: Path, fmt: str = "png") -> list[Path]:
    """``scaling.<fmt>`` (when the report has a scaling table) and ``phases.<fmt>``; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = report.get("scaling") or []
    if rows:
        fig, ax = plt.subplots(figsize=(5, 4))
        n = [r["systems"] for r in rows]
        base = n[0]
        ax.plot(n, [x / base for x in n], "k--", label="linear")
        ax.plot(n, [r["speedup"] for r in rows], "o-", label="simulated")
        for r in rows:
            ax.annotate(f"{100 * r['efficiency']:.0f} %", (r["systems"], r["speedup"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("systems")
        ax.set_ylabel(f"speed-up over {base} system(s)")
        ax.set_title(f"{report['model']}: batch {report['run']['batch']} x {report['run']['seq']}, one step")
        ax.legend()
        fig.tight_layout()
        path = out / f"scaling.{fmt}"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    phases = report["phases_cycles"]
    fig, ax = plt.subplots(figsize=(7, 2.4))
    left = 0.0
    clock_s = report["step_seconds"] / report["step_cycles"]
    for name in ("forward", "backward", "swarmx_reduce", "optimizer"):
        width = phases[name] * clock_s
        ax.barh(0, width, left=left, label=f"{name} {width:.3g} s")
        left += width
    ax.set_yticks([])
    ax.set_xlabel("seconds (one system; micro-batches back to back)")
    ax.set_title(f"{report['model']} on {report['systems']} system(s): one optimizer step")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.55))
    path = out / f"phases.{fmt}"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written
