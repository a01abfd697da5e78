"""Plots drawn from report data: per-tile utilization over the mesh and per-layer cycles by category."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

CATEGORY_COLORS = {"compute": "#2b8cbe", "fabric": "#fdae61", "stream": "#d7191c"}


def utilization_figure(report: dict):
    m = report["mapping"]
    busy = np.array(report["utilization"]["tile_busy_fraction"])
    fig, (ax_map, ax_bar) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [1, 1.6]})

    # Heatmap in PE coordinates: each tile drawn at its true extent (tiles need not be equal).
    x_edges, y_edges = np.array(m["tile_col_edges"]), np.array(m["tile_row_edges"])
    mesh = ax_map.pcolormesh(x_edges, y_edges, busy, cmap="viridis", vmin=0, vmax=max(busy.max(), 1e-9),
                             edgecolors="white", linewidth=0.3)
    ax_map.set_xlim(0, x_edges[-1])
    ax_map.set_ylim(y_edges[-1], 0)
    ax_map.set_aspect("equal")
    ax_map.set_xlabel("PE column")
    ax_map.set_ylabel("PE row")
    ax_map.set_title(f"Tile compute busy fraction (mean {busy.mean() * 100:.2f} %)")
    fig.colorbar(mesh, ax=ax_map, label="busy fraction of total cycles", shrink=0.8)

    layers = report["layers"]
    names = [layer["name"] for layer in layers]
    x = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    clock = report["wafer"]["clock_hz"]
    for cat, color in CATEGORY_COLORS.items():
        vals = np.array([layer[f"{cat}_cycles"] for layer in layers], dtype=float) / clock * 1e6
        label = "exposed weight stream" if cat == "stream" else cat
        ax_bar.bar(x, vals, bottom=bottom, color=color, label=label)
        bottom += vals
    ax_bar.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax_bar.set_ylabel("time (µs)")
    ax_bar.set_title("Per-layer time by critical-path category")
    ax_bar.legend(loc="upper right")
    ax_bar.grid(axis="y", alpha=0.3)

    run = report["run"]
    fig.suptitle(f"{report['model']['name']} on {report['wafer']['name']} ({report['mapping']['name']}), "
                 f"batch {run['batch']} x seq {run['seq']}, {run['precision']}: "
                 f"{report['seconds'] * 1e3:.4g} ms, {report['tokens_per_s']:,.0f} tokens/s")
    fig.tight_layout()
    return fig


def write_utilization_plot(report: dict, path: str | Path) -> Path:
    path = Path(path)
    fig = utilization_figure(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
