"""Multi-wafer serving (``--wafers N``): layer-wise split, inter-wafer crossings, per-wafer report, numerics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wse_sim.workloads import ModelConfig
from wse_sim.workloads.hf_reference import save_hf_checkpoint
from wse_sim.workloads.weights import random_weights

from wse_sim.app import RunSpec, run
from wse_sim.arch import get_wafer
from wse_sim.arch.costs import interwafer_cycles
from wse_sim.cli import main
from wse_sim.errors import UserError
from wse_sim.mapping.serving import StageNeed, assign_wafers, pack, wafers_needed
from wse_sim.report.trace import trace_events

WSE2 = get_wafer("wse2")
# Eight layers whose fp32 weights (about 4.5 MB) overflow the 8 x 8-PE "tiny" wafer (3 MB of SRAM).
BIG = ModelConfig(name="tiny-llama-8l", vocab_size=97, n_positions=64, d_model=96, n_layer=8, n_head=6, d_ff=400,
                  layer_norm_epsilon=1e-5, activation="silu", tie_word_embeddings=False, family="llama",
                  n_kv_head=2, rope_theta=500000.0, qkv_bias=False, hf_model_type="llama")
SMALL = ModelConfig(name="tiny-gpt", vocab_size=97, n_positions=64, d_model=72, n_layer=4, n_head=6, d_ff=130)


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = {}
    for cfg in (BIG, SMALL):
        path = tmp_path_factory.mktemp(cfg.name)
        save_hf_checkpoint(random_weights(cfg, seed=5), path)
        out[cfg.name] = str(path)
    return out


needs_st = st.lists(st.builds(StageNeed, st.integers(0, 600), st.integers(0, 200), st.integers(0, 300)),
                    min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(needs=needs_st, regions=st.integers(1, 6), wafers=st.integers(1, 8))
def test_assignment_is_contiguous_fits_and_is_minimal(needs, regions, wafers):
    sram = 1000
    per = assign_wafers(needs, sram, regions, wafers)
    if per is None:
        # It cannot fit: a stage alone overflows, there are fewer stages than wafers, or even the tightest
        # packing needs more regions than the wafers hold.
        assert (any(n.total > sram for n in needs) or wafers > len(needs)
                or len(pack(needs, sram)) > regions * wafers or len(pack(needs, sram)) < wafers)
        return
    assert len(per) == wafers and all(per)
    stages = [s for wafer in per for group in wafer for s in group]
    assert stages == list(range(len(needs)))  # every stage once, in pipeline order
    for wafer in per:
        assert len(wafer) <= regions
        for group in wafer:
            total = group and sum((needs[s] for s in group), StageNeed()).total
            assert total <= sram
    least = wafers_needed(needs, sram, regions)
    assert least is not None and least <= wafers
    assert least == 1 or assign_wafers(needs, sram, regions, least - 1) is None


def test_even_split_by_stage_count_when_regions_allow():
    needs = [StageNeed(100) for _ in range(9)]
    per = assign_wafers(needs, 1000, 4, 3)
    assert [[s for g in w for s in g] for w in per] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_a_model_too_big_for_one_wafer_names_the_wafers_it_needs_and_runs_on_them(ckpt):
    base = RunSpec(checkpoint=ckpt[BIG.name], wafer="tiny", tiles="2x2", precision="fp32", phase="decode",
                   context=9, numerics=True, weights="resident", check_transformers=True)
    with pytest.raises(UserError, match=r"use --wafers 2 "):
        run(base, log=quiet)
    two = run(RunSpec(**{**base.__dict__, "wafers": 2}), log=quiet)
    three = run(RunSpec(**{**base.__dict__, "wafers": 3}), log=quiet)
    n = two.report["numerics"]
    assert n["max_abs_err_vs_transformers"] <= 1e-3 and n["top1_agreement"] == 1.0, n
    assert np.array_equal(two.logits, three.logits)  # placement moves time, never values
    w2, w3 = two.report["wafers"], three.report["wafers"]
    assert (w2["count"], w3["count"]) == (2, 3)
    # One more crossing of the same activation (the tiny wafer's regions touch its edges: no on-wafer hops)
    ser, lat = interwafer_cycles(get_wafer("tiny"), BIG.d_model * 4)
    assert w2["interwafer_critical_cycles"] == ser + lat
    assert w3["interwafer_critical_cycles"] == 2 * (ser + lat)
    assert three.report["total_cycles"] - two.report["total_cycles"] == pytest.approx(ser + lat, abs=2)


@pytest.fixture(scope="module")
def one_and_two(ckpt):
    spec = RunSpec(checkpoint=ckpt[SMALL.name], wafer="wse2", grid="100x100", precision="fp16", phase="decode",
                   context=20, numerics=False)
    return run(spec, log=quiet, record=True), run(RunSpec(**{**spec.__dict__, "wafers": 2}), log=quiet, record=True)


def test_crossing_costs_the_link_plus_the_hops_to_and_from_the_wafer_edges(one_and_two):
    one, two = one_and_two
    # Both place each wafer's stages in one region in the wafer's north-west corner: the token leaves wafer 0
    # across the 650 PE columns east of its region, and enters wafer 1's region at the west edge.
    ser, lat = interwafer_cycles(WSE2, SMALL.d_model * 2, hops=WSE2.mesh_cols - 100)
    assert two.report["total_cycles"] - one.report["total_cycles"] == ser + lat
    w = two.report["wafers"]
    assert w["interwafer_critical_cycles"] == ser + lat
    assert w["links"] == [{"link": [0, 1], "busy_cycles": ser, "busy_fraction": ser / two.report["total_cycles"]}]
    assert w["interwafer_bytes"] == SMALL.d_model * 2
    assert w["interwafer_share_of_time"] == pytest.approx((ser + lat) / two.report["total_cycles"])


def test_report_splits_time_per_wafer_and_op_splits_add_up(one_and_two):
    _, two = one_and_two
    r = two.report
    per = r["wafers"]["per_wafer"]
    assert [p["stages"] for p in per] == [[0, 2], [3, 4]]  # 4 layers + the head, split 3 / 2
    assert sum(p["cycles"] for p in per) == sum(op["cycles"] for layer in r["layers"] for op in layer["ops"])
    assert all(0 < p["busy_fraction"] < 1 for p in per)
    # One 100 x 100 region per wafer: the whole wafer's fraction is the region's diluted by the mesh
    for p in per:
        assert p["busy_fraction_of_wafer"] == pytest.approx(p["busy_fraction"] * 100 * 100 /
                                                             (WSE2.mesh_rows * WSE2.mesh_cols))
    for layer in r["layers"]:
        for op in layer["ops"]:
            assert (op["compute_cycles"] + op["fabric_cycles"] + op["stream_cycles"] + op["interwafer_cycles"]
                    == op["cycles"])
    crossing = [op for layer in r["layers"] for op in layer["ops"] if op["interwafer_cycles"]]
    assert [op["name"] for op in crossing] == ["layer3.ln_1"]
    assert crossing[0]["notes"].startswith("wafer 1, ")
    lanes = [lane["name"] for lane in r["timeline"]["lanes"]]
    assert "inter-wafer link 0->1" in lanes
    meta, slices, _ = trace_events(two.result, two.plan.grid, WSE2.clock_hz)
    assert any(m["args"].get("name") == "wafer 0 -> 1" for m in meta)
    assert sum(s["args"]["cycles"] for s in slices if s["cat"] == "interwafer") == r["wafers"]["links"][0][
        "busy_cycles"]


def test_layer_subset_scales_layers_but_not_the_crossings(ckpt):
    base = RunSpec(checkpoint=ckpt[SMALL.name], wafer="wse2", grid="100x100", precision="fp16", phase="decode",
                   context=20, numerics=False, layer_subset=2)
    one = run(base, log=quiet).report
    two = run(RunSpec(**{**base.__dict__, "wafers": 2}), log=quiet).report
    ser, lat = interwafer_cycles(WSE2, SMALL.d_model * 2, hops=WSE2.mesh_cols - 100)
    scaled = [r["decode_step_cycles_scaled"][0] for r in (one, two)]
    assert scaled[1] - scaled[0] == pytest.approx(ser + lat, abs=2)


def test_cli_wafers(ckpt, tmp_path, capsys):
    # a prefill is placed as generate places it: on two wafers too
    assert main(["run", "--checkpoint", ckpt[SMALL.name], "--wafers", "2", "--seq", "8", "--no-numerics",
                 "--out", str(tmp_path), "--quiet"]) == 0
    placed = json.loads((tmp_path / "report.json").read_text())["placement"]["prefill"]
    assert placed["weights"] == "resident" and placed["wafers"] == 2
    capsys.readouterr()
    main(["capacity", "--model", ckpt[BIG.name], "--wafer", "tiny", "--tiles", "2x2", "--precision", "fp32",
          "--wafers", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    placed = out["placement"]
    assert out["wafers"] == 2 and placed["max_context_tokens"] == BIG.n_positions - 1 and placed["regions_used"] == 2
    assert out["max_context_tokens"] == BIG.n_positions - 1
    main(["capacity", "--model", ckpt[BIG.name], "--wafer", "tiny", "--tiles", "2x2", "--precision", "fp32"])
    assert "2 wafers would hold them" in capsys.readouterr().out


def test_defects_on_a_pipeline_each_wafer_its_own_map(ckpt):
    """--wafers 2 with --defects: wafer w draws from seed + w (wafer 0 as a one-wafer run), the detours of both
    are charged, the numerics stay bit for bit those of the healthy pipeline; a defect map (one wafer's) is
    refused for two."""
    from wse_sim.arch import get_wafer
    from wse_sim.arch.defects import wafer_remap

    spec = RunSpec(checkpoint=ckpt[SMALL.name], wafer="wse2", grid="100x100", precision="fp32", phase="decode",
                   context=20, numerics=True, wafers=2)
    healthy = run(spec, log=quiet)
    sick = run(RunSpec(**{**spec.__dict__, "defects": "1e-3", "defect_seed": 4}), log=quiet)
    assert np.array_equal(healthy.logits, sick.logits)
    d = sick.report["defects"]
    w = get_wafer("wse2")
    assert d["per_wafer"] == [wafer_remap(w, "1e-3", 4, None).summary(), wafer_remap(w, "1e-3", 5, None).summary()]
    assert d["dead_pes"] == sum(x["dead_pes"] for x in d["per_wafer"]) and d["extra_hops_charged"] > 0
    assert sick.report["total_cycles"] > healthy.report["total_cycles"]
    with pytest.raises(UserError, match="one wafer"):
        run(RunSpec(**{**spec.__dict__, "defect_map": __file__}), log=quiet)
