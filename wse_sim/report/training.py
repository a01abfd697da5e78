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
    fig = step_timeline_figure(report)
    path = out / f"phases.{fmt}"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written


STEP_COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "weights in": "#8172B3", "gradients out": "#C44E52",
               "swarmx": "#55A868", "optimizer": "#937860"}


def step_lanes(report: dict) -> dict[str, list[tuple[float, float, str]]]:
    """One system's step as lanes of ``(start_s, duration_s, kind)`` bars, from the report alone: the wafer runs
    each pass's forward then backward (``pass_order``), then the exposed SwarmX and optimizer time; MemoryX's link
    carries each phase's weights in and each backward's gradients out (busy time, drawn from the phase's start);
    SwarmX reduces each pass's gradients during its backward (more than one system); AdamW runs in MemoryX as the
    last backward's gradients arrive, its exposed part after it. The link is full-duplex: the weights in and the
    gradients out are separate lanes, each direction at ``link_bytes_per_s``."""
    clock_s = report["step_seconds"] / report["step_cycles"]
    mx, sx, ph = report["memoryx"], report["swarmx"], report["phases_cycles"]
    link = mx["link_bytes_per_s"]
    lanes: dict[str, list] = {"wafer": [], "MemoryX -> wafer": [], "wafer -> MemoryX": [], "SwarmX": [],
                              "MemoryX AdamW": []}
    t = 0.0
    for seqs in report["pass_order"]:
        p = report["passes"][str(seqs)]
        fwd, bwd = p["forward_cycles"] * clock_s, p["backward_cycles"] * clock_s
        lanes["wafer"] += [(t, fwd, "forward"), (t + fwd, bwd, "backward")]
        lanes["MemoryX -> wafer"] += [(t, min(fwd, p["forward_stream_bytes"] / link), "weights in"),
                                      (t + fwd, min(bwd, p["backward_stream_bytes"] / link), "weights in")]
        lanes["wafer -> MemoryX"].append((t + fwd, min(bwd, p["wgrad_stream_bytes"] / link), "gradients out"))
        if report["systems"] > 1:
            per_pass = sx["reduce_bytes_per_system"] / len(report["pass_order"])
            lanes["SwarmX"].append((t + fwd, min(bwd, per_pass / report["cluster"]["swarmx_link_bytes_per_s"]),
                                    "swarmx"))
        t += fwd + bwd
    swarmx_s, opt_s = ph["swarmx_reduce"] * clock_s, ph["optimizer"] * clock_s
    if swarmx_s:
        lanes["wafer"].append((t, swarmx_s, "swarmx"))
        lanes["SwarmX"].append((t, swarmx_s, "swarmx"))
    hidden = mx["optimizer_total_s"] - mx["optimizer_exposed_s"]
    lanes["MemoryX AdamW"].append((t + swarmx_s - hidden, mx["optimizer_total_s"], "optimizer"))
    lanes["wafer"].append((t + swarmx_s, opt_s, "optimizer"))
    return lanes


def step_timeline_figure(report: dict):
    """The step's timeline (:func:`step_lanes`), one lane per resource, with each phase's seconds in the legend."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    lanes = step_lanes(report)
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(lanes) + 1.6))
    for y, bars in enumerate(lanes.values()):
        for kind in STEP_COLORS:
            xs = [(start, width) for start, width, k in bars if k == kind and width > 0]
            if xs:
                ax.broken_barh(xs, (y - 0.35, 0.7), facecolors=STEP_COLORS[kind], edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(lanes)), list(lanes))
    ax.invert_yaxis()
    ax.set_xlim(0, report["step_seconds"])
    ax.set_xlabel("seconds into the step (one system)")
    ph, clock_s = report["phases_cycles"], report["step_seconds"] / report["step_cycles"]
    label = {"forward": f"forward {ph['forward'] * clock_s:.3g} s",
             "backward": f"backward {ph['backward'] * clock_s:.3g} s",
             "weights in": "weights in (ingress busy)", "gradients out": "gradients out (egress busy)",
             "swarmx": f"SwarmX (exposed {ph['swarmx_reduce'] * clock_s:.3g} s)",
             "optimizer": f"AdamW (exposed {ph['optimizer'] * clock_s:.3g} s)"}
    ax.legend(handles=[Patch(color=c, label=label[k]) for k, c in STEP_COLORS.items()], fontsize=7, ncol=3,
              loc="upper center", bbox_to_anchor=(0.5, -0.22))
    passes = len(report["pass_order"])
    ax.set_title(f"{report['model']} on {report['systems']} system(s): one optimizer step of "
                 f"{report['accumulation_steps']} micro-batch(es) in {passes} pass(es), {report['step_seconds']:.4g} s"
                 "\nMemoryX link (full-duplex) and SwarmX: busy time of each phase, drawn from its start", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig
