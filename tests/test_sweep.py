"""Sweeps on Dask: every CSV row equals a direct run of the same point; failures are rows; re-runs resume."""

import csv
import json
import logging

import pytest
from matplotlib.lines import Line2D
from test_plots import GPT2_CONFIG

from wse_sim.app import RunSpec, run
from wse_sim.app.sweep import HEADLINE_COLUMNS, load_sweep, read_sweep_csv, run_sweep
from wse_sim.cli import main
from wse_sim.errors import UserError
from wse_sim.report.plots import sweep_figure


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GPT2_CONFIG))
    return str(path)


def write_toml(path, text):
    path.write_text(text)
    return path


def read_rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# Where each headline column comes from in report.json, written out here independently of wse_sim.app.sweep.
REPORT_KEYS = {
    "total_cycles": ("total_cycles",), "seconds": ("seconds",), "tokens_per_s": ("tokens_per_s",), "mfu": ("mfu",),
    "flops": ("flops",), "flops_per_s": ("flops_per_s",), "bound_cycles": ("roofline", "bound_cycles"),
    "memoryx_bytes": ("bandwidth", "memoryx_bytes"), "memoryx_busy_fraction": ("bandwidth", "memoryx_busy_fraction"),
    "fabric_bytes": ("bandwidth", "fabric_bytes"), "sram_peak_bytes_per_pe": ("sram_peak_bytes_per_pe",),
    "mean_busy_fraction": ("utilization", "mean_busy_fraction"), "parameters": ("model", "parameters"),
    "tasks": ("simulation", "tasks"), "max_abs_err_vs_reference": ("numerics", "max_abs_err_vs_reference"),
    "max_abs_err_vs_transformers": ("numerics", "max_abs_err_vs_transformers"),
    "ttft_s": ("ttft_s",), "tpot_s": ("tpot_s",), "kv_cache_bytes": ("kv_cache_bytes",),
    "e2e_tokens_per_s_per_request": ("request", "e2e_tokens_per_s_per_request"),
    **{k: ("energy", k) for k in ("joules", "joules_per_token", "average_w", "peak_w")},
}


def expected_row(point: dict) -> dict:
    """The row a point should get, from a direct run in this process (sim_wall_s left out: it is a wall time)."""
    try:
        report = run(RunSpec(**point), log=lambda _m: None).report
    except UserError as exc:
        return {"error": str(exc)}
    row = {}
    for column, keys in REPORT_KEYS.items():
        value = report
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        row[column] = "" if value is None else repr(value) if isinstance(value, float) else str(value)
    ops = [op for layer in report["layers"] for op in layer["ops"]]
    for cat in ("compute", "fabric", "stream"):
        row[f"{cat}_cycles"] = str(sum(op[f"{cat}_cycles"] for op in ops))
    rows, cols = report["mapping"]["grid_pes"]
    row["grid_pes"] = str(rows * cols)
    row["tile_grid"] = "x".join(str(n) for n in report["mapping"]["tile_grid"])
    row["weights_placed"] = report["placement"]["prefill"]["weights"]  # these sweeps are prefills on one grid
    assert set(row) == set(HEADLINE_COLUMNS) - {"sim_wall_s", "error"}  # every figure is checked
    return row | {"error": ""}


def point_of(row: dict, columns: list[str]) -> dict:
    types = {"seq": int, "batch": int, "seed": int, "numerics": lambda v: v == "true"}
    return {c: types.get(c, str)(row[c]) for c in columns}


def test_load_sweep_is_the_cartesian_product(tmp_path, cfg):
    toml = write_toml(tmp_path / "s.toml", f'models = ["{cfg}", "cerebras-gpt-111m"]\nwafers = ["tiny"]\n'
                                           'seq = [8, 16, 8]\nbatch = [1, 2]\nnumerics = false\ntiles = "2x2"\n')
    sweep = load_sweep(toml)
    assert sweep.columns == ["model", "wafer", "seq", "batch", "tiles", "numerics"]  # RunSpec field order
    assert load_sweep(write_toml(tmp_path / "w.toml", 'wafer = ["tiny"]\nwafers = [1, 2]\n')).points == [
        {"wafer": "tiny", "wafers": 1}, {"wafer": "tiny", "wafers": 2}]  # wafers of ints: the pipeline's wafers
    assert len(sweep.points) == 2 * 1 * 2 * 2  # the repeated seq 8 counts once
    assert {(p["model"], p["seq"], p["batch"]) for p in sweep.points} == {
        (m, s, b) for m in (cfg, "cerebras-gpt-111m") for s in (8, 16) for b in (1, 2)}
    assert all(p["numerics"] is False and p["tiles"] == "2x2" and p["wafer"] == "tiny" for p in sweep.points)


@pytest.mark.parametrize(("text", "needle"), [
    ("colour = [1]", "unknown key 'colour'"),
    ('seq = ["16"]', "'seq' wants int"),
    ("seq = [true]", "'seq' wants int"),
    ('context = ["128"]', "'context' wants int"),
    ("layer_subset = [1.5]", "'layer_subset' wants int"),
    ('wafers = [1]\nwafer = "tiny"\nwafers = ["tiny"]', "malformed TOML"),
    ('wafers = ["tiny", 2]', "'wafers' wants str"),
    ('phase = 3', "'phase' wants str"),
    ("numerics = 1", "'numerics' wants bool"),
    ("models = []", "empty list"),
    ('model = "a"\nmodels = ["b"]', "given twice"),
    ("seq = = 3", "malformed TOML"),
])
def test_load_sweep_rejects_bad_files(tmp_path, text, needle):
    with pytest.raises(UserError, match=needle):
        load_sweep(write_toml(tmp_path / "bad.toml", text))


def test_cli_sweep_rows_equal_direct_runs(tmp_path, cfg, capsys):
    """2-worker LocalCluster (process workers, the default path); seq 128 exceeds the tiny model's context."""
    toml = write_toml(tmp_path / "s.toml", f'models = ["{cfg}"]\nwafers = ["tiny"]\nmappings = ["weight-streaming"]\n'
                                           'grid = ["4x4", "8x8"]\nseq = [8, 16, 128]\nbatch = [1, 2]\n'
                                           'precision = ["fp16", "fp32"]\nnumerics = false\ntiles = "2x2"\n')
    out = tmp_path / "out"
    assert main(["sweep", str(toml), "--out", str(out), "--workers", "2", "--plot", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "24 points, 0 already done, 24 run, 8 of them failed" in printed
    rows, columns = read_sweep_csv(out / "sweep.csv")
    assert columns == ["model", "wafer", "mapping", "seq", "batch", "precision", "grid", "tiles", "numerics"]
    assert list(rows[0]) == [*columns, *HEADLINE_COLUMNS]
    assert sorted(tuple(point_of(r, columns).values()) for r in rows) == sorted(
        tuple(p.values()) for p in load_sweep(toml).points)
    for row in rows:
        want = expected_row(point_of(row, columns))
        assert {k: row[k] for k in want} == want
        assert ("exceeds the context" in row["error"]) == (row["seq"] == "128")
        assert (row["sim_wall_s"] != "" and float(row["sim_wall_s"]) > 0) == (not row["error"])
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_sweep_on_an_existing_scheduler_resumes(tmp_path, cfg):
    from distributed import LocalCluster

    toml = write_toml(tmp_path / "s.toml", f'models = ["{cfg}"]\nwafers = ["tiny"]\n'
                                           'mappings = ["weight-streaming"]\n'
                                           'seq = [8, 16, 128, 256]\nnumerics = false\ntiles = "2x2"\n')
    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        first = run_sweep(toml, out, scheduler=cluster.scheduler_address, progress=False)
        assert (first.points, first.skipped, first.ran, first.failed) == (4, 0, 4, 2)
        path = out / "sweep.csv"
        rows = read_rows(path)
        assert {r["error"] for r in rows if int(r["seq"]) > 64} == {
            expected_row({"model": cfg, "wafer": "tiny", "mapping": "weight-streaming", "seq": seq, "numerics": False,
                          "tiles": "2x2"})["error"] for seq in (128, 256)}
        # Simulate a kill: one finished row marked (to see that it is kept, not re-run), one row lost, and a
        # last line cut short mid-write.
        kept = next(r for r in rows if not r["error"])
        lost = next(r for r in rows if not r["error"] and r is not kept)
        kept["total_cycles"] = "-1"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r is not lost)
            f.write(",".join(list(lost.values())[:5]))
        second = run_sweep(toml, out, scheduler=cluster.scheduler_address, progress=False)
        assert (second.skipped, second.ran, second.failed) == (3, 1, 0)
        again = read_rows(path)
        assert len(again) == 4
        assert next(r for r in again if r["seq"] == kept["seq"] and r["mapping"] == kept["mapping"]) == kept
        redone = next(r for r in again if r["seq"] == lost["seq"] and r["mapping"] == lost["mapping"])
        assert {k: redone[k] for k in HEADLINE_COLUMNS if k != "sim_wall_s"} == {
            k: lost[k] for k in HEADLINE_COLUMNS if k != "sim_wall_s"}
        # --retry-errors runs the failed points again (they fail again, deterministically).
        third = run_sweep(toml, out, scheduler=cluster.scheduler_address, progress=False, retry_errors=True)
        assert (third.skipped, third.ran, third.failed) == (2, 2, 2)
        assert len(read_rows(path)) == 4


def test_sweep_figure_has_a_line_per_series(tmp_path):
    columns = ["mapping", "grid"]
    rows = [{"mapping": m, "grid": g, "grid_pes": str(n), "tokens_per_s": str(t), "mfu": str(t / 1e7), "error": ""}
            for m, scale in (("a", 1.0), ("b", 2.0))
            for g, n, t in (("4x4", 16, 1e5 * scale), ("8x8", 64, 3e5 * scale))]
    rows.append({"mapping": "c", "grid": "4x4", "grid_pes": "", "tokens_per_s": "", "mfu": "", "error": "boom"})
    fig = sweep_figure(rows, columns)
    for ax, col in zip(fig.axes, ("tokens_per_s", "mfu"), strict=True):
        lines = [ln for ln in ax.get_lines() if isinstance(ln, Line2D)]
        assert sorted(ln.get_label() for ln in lines) == ["mapping=a", "mapping=b"]  # the failed row is left out
        for ln in lines:
            m = ln.get_label().split("=")[1]
            want = sorted((float(r["grid_pes"]), float(r[col])) for r in rows if r["mapping"] == m)
            assert list(ln.get_xdata()) == pytest.approx([x for x, _ in want])
            assert list(ln.get_ydata()) == pytest.approx([y for _, y in want])
    assert fig.axes[0].get_xlabel() == "grid size (PEs)"


def test_cli_sweep_errors_are_one_line(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path)]) == 2
    assert "give a SWEEP.toml" in capsys.readouterr().err
    assert main(["sweep", "--plot", "--out", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 2
    assert "missing.toml not found" in capsys.readouterr().err


@pytest.fixture
def llama_cfg(tmp_path):
    from test_serving import LLAMA
    from wse_sim.workloads.hf_reference import to_hf_config

    path = tmp_path / "llama.json"
    to_hf_config(LLAMA).to_json_file(path)
    return str(path)


def test_serving_sweep_is_typed_and_has_serving_columns(tmp_path, llama_cfg):
    toml = write_toml(tmp_path / "s.toml", f'model = "{llama_cfg}"\nwafer = "tiny"\nphase = "generate"\n'
                                           'prompt_len = [4]\ngen_tokens = [2, 3]\nlayer_subset = [1]\nwafers = 1\n'
                                           'numerics = false\ntiles = "2x2"\n')
    sweep = load_sweep(toml)
    assert {(p["prompt_len"], p["gen_tokens"], p["layer_subset"], p["wafers"]) for p in sweep.points} == {
        (4, 2, 1, 1), (4, 3, 1, 1)}
    summary = run_sweep(toml, tmp_path / "out", n_workers=1, processes=False, progress=False)
    assert (summary.ran, summary.failed, summary.all_failed) == (2, 0, False)
    for row in read_rows(summary.csv_path):
        point = {k: v for k, v in sweep.points[0].items()} | {"gen_tokens": int(row["gen_tokens"])}
        report = run(RunSpec(**point), log=lambda _m: None).report
        assert row["error"] == ""
        assert row["ttft_s"] == repr(report["request"]["ttft_s"]) and row["tpot_s"] == repr(report["request"]["tpot_s"])
        assert row["kv_cache_bytes"] == str(report["kv_cache_bytes"])


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("models", "no-such-model", "unknown model 'no-such-model'"),
    ("wafers", "no-such-wafer", "no-such-wafer"),
    ("mappings", "no-such-mapping", "unknown mapping 'no-such-mapping'"),
])
def test_sweep_names_are_checked_before_the_cluster_starts(tmp_path, cfg, monkeypatch, key, value, needle):
    import wse_sim.app.sweep as sweep_module

    def no_cluster(*_a, **_k):
        raise AssertionError("the cluster was started")

    monkeypatch.setattr(sweep_module, "dask_client", no_cluster)
    base = {"models": f'"{cfg}"', "wafers": '"tiny"', "mappings": '"weight-streaming"'}
    base[key] = f'"{value}"'
    toml = write_toml(tmp_path / "s.toml", "".join(f"{k} = [{v}]\n" for k, v in base.items()) + "seq = [8]\n")
    with pytest.raises(UserError, match=needle):
        run_sweep(toml, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_sweep_every_point_failed_exits_2(tmp_path, cfg, capsys):
    toml = write_toml(tmp_path / "s.toml", f'models = ["{cfg}"]\nwafers = ["tiny"]\nseq = [128, 256]\n'
                                           'numerics = false\ntiles = "2x2"\n')
    out = tmp_path / "out"
    for _ in range(2):  # the second time every point is already done (with an error): still a failure
        assert main(["sweep", str(toml), "--out", str(out), "--workers", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"wse-sim: error: every point of the sweep failed (see the error column of " \
                              f"{out / 'sweep.csv'})"
    assert all("exceeds the context" in r["error"] for r in read_rows(out / "sweep.csv"))
