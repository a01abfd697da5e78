"""The ``wse-sim`` command's drawing: figures split between processes, drawn in forked children started before the
simulation, redrawn in the parent when a child fails; the log-axis labels drawn without mathtext; and what a
timing-only command imports."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from wse_sim.report import plots
from wse_sim.report.figures import FIGURE_COST, figure_names, figure_parts

ALL = ["utilization", "timeline", "layers", "energy"]


def best_split_cost(names: list[str], parts: int) -> float:
    """The least possible cost of the costliest group, over every assignment of ``names`` to ``parts`` groups."""
    return min(max(sum(FIGURE_COST[n] for n, g in zip(names, groups, strict=True) if g == k) for k in range(parts))
               for groups in itertools.product(range(parts), repeat=len(names)))


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("names", [ALL, ["utilization", "layers"], ["utilization", "timeline", "layers"]])
def test_figure_parts_draw_every_figure_once_and_balance_the_cost(names, parts):
    groups = figure_parts(names, parts)
    assert sorted(n for g in groups for n in g) == sorted(names)
    assert len(groups) == min(parts, len(names)) and all(groups)
    assert all(g == sorted(g, key=names.index) for g in groups)  # each group in the figures' order
    costliest = max(sum(FIGURE_COST[n] for n in g) for g in groups)
    m = min(parts, len(names))
    assert costliest <= best_split_cost(names, m) * (4 / 3 - 1 / (3 * m)) + 1e-12  # Graham's bound for LPT


def test_figure_names_follow_the_report():
    assert figure_names({"timeline": None, "energy": None}) == ["utilization", "layers"]  # not recorded, no energy
    assert figure_names({"timeline": {"lanes": [1]}, "energy": {"joules": 1}}) == ALL


SUPERSCRIPT_DIGITS = dict(zip("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789", strict=True))


def label_value(label: str) -> float:
    """A plain log label read back: '10⁻³', '2×10¹²' or a plain number."""
    mantissa, _, power = label.rpartition("×") if "×" in label else ("1", "", label)
    if not power.startswith("10") or len(power) == 2:
        return float(label)
    return float(mantissa) * 10.0 ** int("".join(SUPERSCRIPT_DIGITS[c] for c in power[2:]))


@pytest.mark.parametrize(("lo", "hi"), [(1e-3, 1e9), (2e11, 7e12), (0.3, 4.0)])
def test_log_axis_labels_are_plain_text_naming_their_tick(lo, hi):
    fig, ax = plt.subplots()
    ax.plot([lo, hi], [lo, hi])
    plots.log_axes(ax)
    ax.set_xlim(lo, hi)
    fig.canvas.draw()
    labelled = 0
    for ticks in (ax.xaxis.get_major_ticks(), ax.xaxis.get_minor_ticks()):
        for tick in ticks:
            text, x = tick.label1.get_text(), tick.get_loc()
            if text and lo <= x <= hi:
                assert "$" not in text
                assert label_value(text) == pytest.approx(x, rel=1e-9)
                labelled += 1
    assert labelled >= 2  # matplotlib's choice of labelled ticks is kept: minor ones too over few decades
    plt.close(fig)


DRAWING = """
import os, signal, sys, time
from pathlib import Path
from wse_sim.cli import outputs

outputs.draw_in_child = True
parent, folder, mode = os.getpid(), Path(sys.argv[1]), sys.argv[2]

def prepare():
    (folder / f"prepared.{os.getpid()}").write_text("")

def draw(job, part, parts):
    if mode == "children-fail" and os.getpid() != parent:
        raise RuntimeError("a child's failure")
    if mode == "helper-fails" and part == 1:
        raise RuntimeError("the second drawing process's failure")
    if mode == "all-fail":
        raise ValueError("the real error")
    if mode == "interrupted":
        time.sleep(1.0)  # the parent is interrupted meanwhile
    path = folder / f"{job}.{part}.{parts}.{'parent' if os.getpid() == parent else 'child'}.{os.getpid()}"
    path.write_text("")
    return [path]

drawing = outputs.start_drawing(draw, prepare)
if mode == "cancelled":
    drawing.close()
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        print("no drawing process left:", sorted(p.name for p in folder.glob("fig.*")))
    sys.exit(0)
drawing.send("fig")
if mode == "interrupted":
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        drawing.wait()
    except KeyboardInterrupt:
        drawing.close()  # nothing left to collect: it already waited
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            drawn = sorted(p.name for p in folder.glob("fig.*"))
            time.sleep(1.5)  # past the drawing's end: had it gone on, its figures would be here now
            print("no drawing process left:", drawn, sorted(p.name for p in folder.glob("fig.*")))
    sys.exit(0)
try:
    print(sorted(p.name.rsplit(".", 1)[0] for p in drawing.wait()))
except ValueError as exc:
    print("raised:", exc)
drawing.close()
"""


def run_drawing(tmp_path, mode: str) -> str:
    done = subprocess.run([sys.executable, "-P", "-c", DRAWING, str(tmp_path), mode], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_parts_are_drawn_in_forked_processes(tmp_path):
    assert run_drawing(tmp_path, "ok") == str(["fig.0.2.child", "fig.1.2.child"])
    pids = {p.name.rsplit(".", 1)[1] for p in tmp_path.glob("fig.*")}
    assert len(pids) == 2  # two processes drew
    assert len(list(tmp_path.glob("prepared.*"))) == 1  # the first child prepared before the job arrived


@pytest.mark.parametrize("mode", ["children-fail", "helper-fails"])
def test_a_failed_child_is_drawn_again_in_the_parent(tmp_path, mode):
    assert run_drawing(tmp_path, mode) == str(["fig.0.1.parent"])


def test_an_interrupted_wait_stops_the_drawing_processes_and_waits_for_them(tmp_path):
    """Interrupted, the parent discards its staging folder next: every drawing process must have ended first
    (stopped: the draws, a second long, were interrupted before they wrote anything)."""
    assert run_drawing(tmp_path, "interrupted") == "no drawing process left: [] []"


def test_the_parent_raises_the_real_error(tmp_path):
    assert run_drawing(tmp_path, "all-fail") == "raised: the real error"


def test_a_drawing_closed_before_its_job_draws_nothing(tmp_path):
    assert run_drawing(tmp_path, "cancelled") == "no drawing process left: []"


TIMING_COMMAND = """
import sys
from wse_sim.cli import _main, outputs
outputs.draw_in_child = True  # as the wse-sim command sets it
code = _main(sys.argv[1:])
print("imported:", sorted(m for m in ("numba", "matplotlib", "wse_sim.kernels", "torch") if m in sys.modules))
sys.exit(code)
"""


def test_a_timing_only_command_imports_no_kernels_and_draws_in_children(tmp_path):
    """Without numerics the parent imports numba for the compiled event loop (wse_sim.sim.loop) only: not the
    numerics kernels, matplotlib (the drawing processes import it) or torch."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "n_embd": 48, "n_layer": 2, "n_head": 3, "vocab_size": 97,
                                  "n_positions": 40, "n_inner": 130}))
    out = tmp_path / "out"
    argv = ["run", "--model", str(config), "--wafer", "tiny", "--seq", "8", "--tiles", "2x2", "--no-numerics",
            "--out", str(out)]
    done = subprocess.run([sys.executable, "-P", "-c", TIMING_COMMAND, *argv], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "imported: ['numba']"
    wrote = next(n for n, line in enumerate(lines) if line.startswith("wrote "))
    assert any(line.startswith("  total cycles") for line in lines[:wrote])  # the summary comes first
    names = [f"{name}.png" for name in ALL]
    assert lines[wrote].endswith(", ".join(str(out / n) for n in names))  # in the figures' order
    for n in names:
        assert (out / n).read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob(".wse-sim-*"))
    assert np.isfinite(json.loads((out / "report.json").read_text())["total_cycles"])


def test_no_plots_writes_the_same_report_and_no_figure(tmp_path):
    """--no-plots: no drawing process, no matplotlib, no image; report.json as with the plots (but the wall
    times), and the summary and the written files still printed."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "n_embd": 48, "n_layer": 2, "n_head": 3, "vocab_size": 97,
                                  "n_positions": 40, "n_inner": 130}))
    argv = ["run", "--model", str(config), "--wafer", "tiny", "--seq", "8", "--tiles", "2x2", "--no-numerics"]
    reports = {}
    for flag in ("--plots", "--no-plots"):
        out = tmp_path / flag
        done = subprocess.run([sys.executable, "-P", "-c", TIMING_COMMAND, *argv, flag, "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        images = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
        if flag == "--no-plots":
            assert images == [] and "matplotlib" not in lines[-1]
            assert lines[-2] == f"wrote {out / 'report.json'}, {out / 'ops.csv'}"
        else:
            assert images == sorted(f"{name}.png" for name in ALL)
        report = json.loads((out / "report.json").read_text())
        report.pop("wall_s", None)
        report.pop("sim_wall_s", None)
        reports[flag] = report
    assert reports["--plots"] == reports["--no-plots"]


def pixels(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.mark.parametrize("source", ["decode-llama", "prefill-weight-streaming"])
def test_figures_drawn_on_axes_made_ahead_are_the_same_images(source, tmp_path):
    """prepare_figures() makes the empty figures and their ticks before the report arrives (the drawing child,
    while the parent simulates): the figures drawn on them are pixel for pixel those drawn from scratch, and each
    made-ahead figure is used once."""
    report = json.loads((Path(__file__).parent / "golden" / f"{source}.json").read_text())
    names = figure_names(report)
    fresh = plots.write_figures(report, tmp_path / "fresh", "png", names)
    plots.prepare_figures()
    try:
        ahead = plots.write_figures(report, tmp_path / "ahead", "png", names)
        left = {layout: len(figs) for layout, figs in plots._made_ahead.items() if figs}
    finally:
        for figs in plots._made_ahead.values():
            for fig, _ in figs:
                plt.close(fig)
        plots._made_ahead.clear()
    assert not left  # utilization, timeline+power, layers and energy+power: all used
    for a, b in zip(fresh, ahead, strict=True):
        assert np.array_equal(pixels(a), pixels(b)), a.name


def test_the_report_style_is_set_around_each_figure_only(tmp_path):
    """Text is drawn unhinted in the report figures (plots.STYLE), and the caller's settings are back after."""
    report = json.loads((Path(__file__).parent / "golden" / "decode-llama.json").read_text())
    before = dict(plt.rcParams)
    seen = []
    original = plots.FIGURES["utilization"]
    plots.FIGURES["utilization"] = lambda r: seen.append(plt.rcParams["text.hinting"]) or original(r)
    try:
        plots.write_figures(report, tmp_path, "png", ["utilization"])
    finally:
        plots.FIGURES["utilization"] = original
    assert seen == [plots.STYLE["text.hinting"]]
    assert dict(plt.rcParams) == before
