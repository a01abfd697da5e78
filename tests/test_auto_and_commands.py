"""The auto-mapper and the mapping commands (`gemm`, `compare`), against direct runs of the same points."""

import csv
import json

import pytest
from wse_sim.workloads import lower_gemm

from wse_sim.app import RunSpec, run
from wse_sim.app.gemm import GemmSpec, run_gemm
from wse_sim.app.scenario import make_mapping
from wse_sim.arch import load_wafer
from wse_sim.cli import main
from wse_sim.errors import UserError
from wse_sim.mapping import TileGrid, get_mapping
from wse_sim.mapping.estimate import bound_cycles
from wse_sim.sim import Engine

EXPLICIT = ["weight-streaming", "summa", "cannon", "meshgemm", "systolic", "gemv-tree", "gemv-allreduce"]
TINY = {"model_type": "gpt2", "n_embd": 68, "n_layer": 2, "n_head": 17, "vocab_size": 97, "n_positions": 32,
        "activation_function": "gelu_new"}


@pytest.mark.parametrize("shape", [(64, 96, 80), (1, 512, 384), (37, 53, 211)])
def test_bound_is_below_simulation_and_auto_is_never_worse(shape):
    wafer = load_wafer("wse2")
    grid = TileGrid.make(64, 64, 4, 4)
    graph = lower_gemm(*shape, "fp16", bias=True)
    op = next(graph.ops())
    simulated = {}
    for name in EXPLICIT:
        plan = get_mapping(name).plan(graph, wafer, grid)
        cycles = Engine(wafer, plan).run().total_cycles
        assert bound_cycles(wafer, "fp16", plan.ops[0]) <= cycles, name  # the pruning bound is a lower bound
        simulated[name] = cycles
    auto = make_mapping("auto").plan(graph, wafer, grid, fixed_tiles=True)
    auto_cycles = Engine(wafer, auto).run().total_cycles
    assert auto_cycles == min(simulated.values())
    (decision,) = auto.params["decisions"]
    assert decision["shape_mkn"] == [op.m, op.k, op.n]
    assert simulated[decision["chosen"]] == auto_cycles
    for c in decision["candidates"]:  # every runner-up is either simulated (and no faster) or pruned by its bound
        if c["simulated_cycles"] is not None:
            assert c["simulated_cycles"] == simulated[c["mapping"]] >= auto_cycles
        else:
            assert c["bound_cycles"] >= auto_cycles


def test_auto_model_report_says_why(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    r = run(RunSpec(model=str(tmp_path / "config.json"), wafer="wse2", grid="64x64", seq=16, precision="fp32",
                    numerics=True, check_transformers=True), log=lambda m: None).report
    assert r["numerics"]["max_abs_err_vs_transformers"] <= 1e-3
    decisions = r["mapping"]["params"]["decisions"]
    d, v = TINY["n_embd"], TINY["vocab_size"]  # qkv, attention proj, fc, fc proj, LM head
    assert {tuple(d_["shape_mkn"]) for d_ in decisions} == {(16, d, 3 * d), (16, d, d), (16, d, 4 * d),
                                                             (16, 4 * d, d), (16, d, v)}
    for d in decisions:
        assert d["why"] and d["chosen"] in EXPLICIT
        assert len(d["candidates"]) >= 5


def test_gemm_command_report(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["gemm", "--m", "24", "--k", "40", "--n", "33", "--grid", "32x32", "--tiles", "4x4", "--wafer", "wse2",
                 "--mapping", "summa", "--precision", "fp32", "--numerics", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    wafer = load_wafer("wse2")
    assert r["mapping"] == "summa" and r["grid_pes"] == [32, 32]
    assert r["compute_cycles"] + r["fabric_cycles"] + r["stream_cycles"] == r["total_cycles"]
    assert r["seconds"] == pytest.approx(r["total_cycles"] / wafer.clock_hz)
    peak = 2 * wafer.fp32_fmac_per_pe_per_cycle * 32 * 32 * wafer.clock_hz
    assert r["compute_efficiency"] == pytest.approx(2 * 24 * 40 * 33 / r["seconds"] / peak)
    assert 0 < r["compute_efficiency"] <= 1
    assert r["numerics"]["max_abs_err_vs_float64"] < 1e-4
    assert r["fabric_bytes"] == 24 * 40 * 4 * 3 + 40 * 33 * 4 * 3  # SUMMA: A and B panels to TC-1 / TR-1 tiles
    assert "total cycles" in capsys.readouterr().out


def test_gemm_rejects_bad_input(capsys):
    assert main(["gemm", "--m", "4", "--k", "4", "--n", "4", "--grid", "8x8", "--tiles", "2x4", "--mapping",
                 "cannon"]) == 2
    assert "square tile grid" in capsys.readouterr().err
    assert main(["gemm", "--m", "4", "--k", "4", "--n", "4", "--mapping", "nope"]) == 2
    assert "unknown mapping" in capsys.readouterr().err


def test_gemm_numerics_seeded():
    a = run_gemm(GemmSpec(m=5, k=7, n=3, grid="8x8", tiles="2x2", mapping="meshgemm", precision="fp32",
                          numerics=True, seed=3))
    b = run_gemm(GemmSpec(m=5, k=7, n=3, grid="8x8", tiles="2x2", mapping="meshgemm", precision="fp32",
                          numerics=True, seed=3))
    assert a["numerics"] == b["numerics"] and a["numerics"]["max_abs_err_vs_float64"] < 1e-5


def test_compare_rows_match_direct_runs(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "cmp"
    mappings = ["weight-streaming", "summa", "cannon", "systolic"]
    assert main(["compare", "--model", str(cfg), "--wafer", "wse2", "--grid", "48x48", "--tiles", "3x4", "--seq",
                 "8", "--precision", "fp32", "--mappings", ",".join(mappings), "--out", str(out), "--quiet",
                 "--check-transformers"]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["mapping"] for r in rows] == mappings
    by = {r["mapping"]: r for r in rows}
    assert by["cannon"]["feasible"] is False and "square" in by["cannon"]["reason"]  # a row, not a crash
    for name in ("weight-streaming", "summa", "systolic"):
        direct = run(RunSpec(model=str(cfg), wafer="wse2", grid="48x48", tiles="3x4", seq=8, precision="fp32",
                             mapping=name), log=lambda m: None).report
        assert by[name]["total_cycles"] == direct["total_cycles"]
        assert by[name]["streamed_bytes"] == direct["bandwidth"]["memoryx_bytes"]
        assert by[name]["max_abs_err_vs_transformers"] <= 1e-3
        for key in ("joules_per_token", "wafer_joules_per_token", "average_w"):  # the run's own energy
            assert by[name][key] == direct["energy"][key] and by[name][key] > 0
        assert by[name]["defect_extra_hops"] is None  # a healthy wafer
    assert by["weight-streaming"]["streamed_bytes"] > 10 * by["summa"]["streamed_bytes"]  # resident weights
    with open(out / "compare.csv") as f:
        assert [r["mapping"] for r in csv.DictReader(f)] == mappings
    assert (out / "compare.png").stat().st_size > 10_000
    for name in ("weight-streaming", "summa", "systolic"):  # each feasible run's own report and plots
        assert json.loads((out / name / "report.json").read_text())["total_cycles"] == by[name]["total_cycles"]
        assert (out / name / "utilization.png").stat().st_size > 10_000
    assert not (out / "cannon").exists()
    assert "infeasible" in capsys.readouterr().out


def test_compare_on_a_defective_wafer_matches_direct_runs(tmp_path):
    """--defect-map works in compare: each row is the direct run on the same defective wafer (detours charged,
    so more cycles and more wafer joules per token than on the healthy wafer)."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    dead = tmp_path / "dead.txt"
    dead.write_text("# row col\n3 5\n20 1\n")
    common = ["--model", str(cfg), "--wafer", "wse2", "--grid", "48x48", "--tiles", "3x4", "--seq", "8",
              "--no-numerics", "--quiet"]
    assert main(["compare", *common, "--mappings", "summa,systolic", "--defect-map", str(dead),
                 "--out", str(tmp_path / "sick")]) == 0
    assert main(["compare", *common, "--mappings", "summa,systolic", "--out", str(tmp_path / "well")]) == 0
    sick, well = ({r["mapping"]: r for r in json.loads((tmp_path / d / "compare.json").read_text())["rows"]}
                  for d in ("sick", "well"))
    for name in ("summa", "systolic"):
        direct = run(RunSpec(model=str(cfg), wafer="wse2", grid="48x48", tiles="3x4", seq=8, mapping=name,
                             numerics=False, defect_map=str(dead)), log=lambda m: None).report
        assert sick[name]["total_cycles"] == direct["total_cycles"] > well[name]["total_cycles"]
        assert sick[name]["defect_extra_hops"] == direct["defects"]["extra_hops_charged"] > 0
        assert sick[name]["wafer_joules_per_token"] == direct["energy"]["wafer_joules_per_token"]
        assert sick[name]["wafer_joules_per_token"] > well[name]["wafer_joules_per_token"]


def test_resident_model_too_big_says_regions_and_wafers():
    with pytest.raises(UserError, match=r"needs 3 regions of 994x750 PEs .* use --wafers 3"):
        run(RunSpec(model="cerebras-gpt-13b", mapping="summa", seq=64, precision="fp32", numerics=False),
            log=lambda m: None)


def test_gemv_tree_fan_in_changes_the_tree_not_the_result():
    reports = {f: run_gemm(GemmSpec(m=1, k=300, n=200, grid="48x48", tiles="1x16", mapping="gemv-tree",
                                    precision="fp32", numerics=True, fan_in=f)) for f in (2, 16)}
    for r in reports.values():
        assert r["numerics"]["max_abs_err_vs_float64"] < 1e-4
    # fan-in 2 over 16 tiles: 4 levels of one stage each; fan-in 16: one level whose leader receives 15 vectors
    assert reports[2]["total_cycles"] != reports[16]["total_cycles"]
    assert reports[2]["fabric_bytes"] == reports[16]["fabric_bytes"]  # every partial still moves exactly once


def test_auto_without_a_simulator_says_how_to_get_one():
    graph = lower_gemm(8, 8, 8, "fp16")
    with pytest.raises(UserError, match="make_mapping"):
        get_mapping("auto").plan(graph, load_wafer("tiny"), TileGrid.make(8, 8, 2, 2))


def test_compare_bad_model_is_one_error(tmp_path, capsys):
    assert main(["compare", "--model", "nope", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "unknown model" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_compare_chart_when_nothing_fits(tmp_path):
    from wse_sim.app.compare import write_chart

    rows = [{"mapping": "summa", "feasible": False, "reason": "does not fit"}]
    assert write_chart(rows, RunSpec(), tmp_path / "c.png").stat().st_size > 1000
