"""One placement for a whole request (issue 16): ``--phase prefill`` and the prefill of ``--phase generate`` give the
same TTFT for the same model, grid, mapping and weights residency; generate on two grids (``--prefill-grid``,
``--decode-grid``); ``--layer-subset`` for prefill; the options' errors, and sweeps over them."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from wse_sim.workloads import ModelConfig
from wse_sim.workloads.hf_reference import to_hf_config

from wse_sim.app import RunSpec, run
from wse_sim.app.sweep import run_sweep
from wse_sim.arch import get_wafer
from wse_sim.cli import main

TINY = get_wafer("tiny")  # 8 x 8 PEs
LLAMA = ModelConfig(name="tiny-llama", vocab_size=97, n_positions=64, d_model=72, n_layer=3, n_head=6, d_ff=130,
                    layer_norm_epsilon=1e-5, activation="silu", tie_word_embeddings=False, family="llama",
                    n_kv_head=2, rope_theta=500000.0, qkv_bias=False, hf_model_type="llama")
GPT = ModelConfig(name="tiny-gpt", vocab_size=97, n_positions=64, d_model=72, n_layer=2, n_head=6, d_ff=130)
QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    out = {}
    for cfg in (LLAMA, GPT):
        path = tmp_path_factory.mktemp(cfg.name)
        to_hf_config(cfg).to_json_file(path / "config.json")
        out[cfg.name] = str(path)
    return out


def prefill_and_generate(spec: RunSpec, prompt: int, gen: int, wafer=None) -> tuple[dict, dict]:
    """The reports of ``--phase prefill --seq P --gen-tokens G`` and ``--phase generate --prompt-len P --gen-tokens
    G`` of ``spec``."""
    pre = run(replace(spec, phase="prefill", seq=prompt, gen_tokens=gen), wafer=wafer, **QUIET).report
    gen_report = run(replace(spec, phase="generate", prompt_len=prompt, gen_tokens=gen), wafer=wafer, **QUIET).report
    return pre, gen_report


# (model, wafer SRAM override or None, grid, mapping, weights, layer subset): regions of one and of several stages,
# a model spilling over several regions, streamed weights (asked for, by the mapping, and auto's fallback).
CASES = [
    ("tiny-llama", None, None, "auto", None, None),
    ("tiny-llama", None, "4x4", "gemv-tree", "resident", None),
    ("tiny-llama", 20000, "4x4", "auto", "resident", None),  # little SRAM: the layers spill over several regions
    ("tiny-gpt", None, "8x4", "summa", None, None),
    ("tiny-gpt", None, None, "weight-streaming", None, None),
    ("tiny-llama", None, None, "auto", "streamed", 2),
    ("tiny-llama", 3000, "4x4", "auto", None, None),  # auto: resident weights do not fit, so both phases stream
]


@pytest.mark.parametrize(("model", "sram", "grid", "mapping", "weights", "subset"), CASES)
def test_prefill_phase_and_generate_prefill_time_alike(models, model, sram, grid, mapping, weights, subset):
    wafer = replace(TINY, sram_bytes_per_pe=sram) if sram else TINY
    spec = RunSpec(model=models[model], wafer="tiny", grid=grid, tiles="2x2", mapping=mapping, weights=weights,
                   layer_subset=subset, precision="fp32", numerics=False)
    pre, gen = prefill_and_generate(spec, prompt=10, gen=3, wafer=wafer)
    assert pre["prefill_cycles_scaled"] == gen["request"]["cycles"]["prefill"] > 0  # equal cycles, not close
    assert pre["ttft_s"] == gen["request"]["ttft_s"]
    assert pre["placement"]["prefill"] == gen["placement"]["prefill"]
    placed = pre["placement"]["prefill"]
    if sram == 20000:
        assert placed["weights"] == "resident" and placed["regions_used"] > 1, placed
    if sram == 3000:
        assert placed["weights"] == "streamed" and "resident weights do not fit" in placed["why"], placed
        assert pre["wafers"] is None and pre["bandwidth"]["memoryx_bytes"] > 0
    if mapping == "weight-streaming" or weights == "streamed":
        assert placed["weights"] == "streamed"


def test_prefill_phase_reserves_the_requests_cache(models):
    """A prefill is placed for the request it starts: without --gen-tokens, for its own prompt's cache."""
    spec = RunSpec(model=models["tiny-llama"], wafer="tiny", tiles="2x2", precision="fp32", numerics=False, seq=10)
    alone = run(replace(spec, phase="prefill"), **QUIET).report
    assert alone["placement"]["prefill"]["kv_cache_positions_reserved"] == 10
    first = run(replace(spec, phase="generate", prompt_len=10, gen_tokens=1), **QUIET).report
    assert alone["prefill_cycles_scaled"] == first["request"]["cycles"]["prefill"]


def test_generate_on_two_grids_is_its_passes(models):
    """Split grids: TTFT is the prefill grid's prefill, each decode step the decode grid's, and the request's
    figures follow from them in closed form; the greedy tokens stay transformers' tokens."""
    base = RunSpec(model=models["tiny-llama"], wafer="tiny", tiles="2x2", precision="fp32", phase="generate",
                   prompt_len=6, gen_tokens=4, weights="resident")
    split = run(replace(base, prefill_grid="8x8", decode_grid="4x4", numerics=True), **QUIET).report
    assert split["numerics"]["tokens_match_transformers"] is True
    req = split["request"]
    on_prefill = run(replace(base, grid="8x8", numerics=False), **QUIET).report["request"]
    on_decode = run(replace(base, grid="4x4", numerics=False), **QUIET).report["request"]
    assert on_prefill["ttft_s"] != on_decode["ttft_s"]  # the grids differ, so the split is seen
    assert req["ttft_s"] == on_prefill["ttft_s"]
    assert req["tpot_s_per_step"] == on_decode["tpot_s_per_step"]
    clock = split["wafer"]["clock_hz"]
    steps = req["tpot_s_per_step"]
    assert len(steps) == 3 and req["tpot_s"] == pytest.approx(np.mean(steps), rel=1e-12)
    assert req["e2e_latency_s"] == pytest.approx(req["ttft_s"] + sum(steps), rel=1e-12)
    assert req["cycles"]["total"] == req["cycles"]["prefill"] + req["cycles"]["decode"]
    assert req["e2e_latency_s"] == pytest.approx(req["cycles"]["total"] / clock, rel=1e-12)
    assert req["e2e_tokens_per_s_per_request"] == pytest.approx(4 / req["e2e_latency_s"], rel=1e-12)
    assert req["prefill_grid_pes"] == [8, 8] and req["decode_grid_pes"] == [4, 4]
    move = split["placement"]["kv_cache_move"]
    # 6 prompt positions x 3 layers x (K and V: 2 KV heads x 12) x 4 bytes
    assert move["bytes"] == 6 * 3 * 2 * 2 * 12 * 4 and move["charged"] is False and move["why"]
    assert split["placement"]["prefill"]["grid_pes"] == [8, 8]
    assert split["placement"]["decode"]["grid_pes"] == [4, 4]


def test_layer_subset_scales_a_prefill(models):
    """K of N layers simulated: TTFT = the pass + its layer part x (N / K - 1), the layer part running from the end
    of the embedding to the end of the last layer; the report says it was scaled."""
    spec = RunSpec(model=models["tiny-llama"], wafer="tiny", tiles="2x2", precision="fp32", numerics=False, seq=10,
                   layer_subset=1)
    out = run(spec, **QUIET)
    ops = out.result.ops
    embed_end = max(o.end_cycles for o in ops if o.block == "embed")
    layers_end = max(o.end_cycles for o in ops if o.block.startswith("layer"))
    assert {o.block for o in ops} == {"embed", "layer0", "head"}
    want = round(out.result.total_cycles + (layers_end - embed_end) * (3 / 1 - 1))
    assert out.report["prefill_cycles_scaled"] == want > out.report["prefill_cycles_simulated"]
    assert out.report["ttft_s"] == want / out.report["wafer"]["clock_hz"]
    assert out.report["layer_subset"]["scaled"] and "simulated 1 of 3 layers" in out.report["layer_subset"]["note"]
    assert out.report["placement"]["prefill"]["simulated_layers"] == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--prefill-grid", "66x"], "is not of the form ROWSxCOLS"),
    (["--decode-grid", "9x9"], "does not fit wafer tiny"),
    (["--decode-grid", "0x4"], "sizes must be positive"),
    (["--phase", "prefill", "--prefill-grid", "4x4"], "apply to --phase generate"),
    (["--mapping", "weight-streaming", "--weights", "resident"], "cannot keep them resident"),
    (["--mapping", "summa", "--weights", "streamed"], "keeps weights resident"),
    (["--weights", "streamed", "--wafers", "2"], "run on one wafer"),
])
def test_placement_options_give_clear_errors(models, tmp_path, capsys, argv, message):
    base = ["run", "--model", models["tiny-llama"], "--wafer", "tiny", "--tiles", "2x2", "--phase", "generate",
            "--prompt-len", "4", "--gen-tokens", "2", "--no-numerics", "--quiet", "--out", str(tmp_path / "o")]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sweep_over_split_grids_and_weights(models, tmp_path):
    toml = tmp_path / "sweep.toml"
    toml.write_text(f'models = ["{models["tiny-llama"]}"]\nwafers = ["tiny"]\nphase = "generate"\n'
                    'prompt_len = 6\ngen_tokens = 3\ntiles = "2x2"\nprecision = ["fp32"]\nnumerics = false\n'
                    'prefill_grid = ["8x8", "9x9"]\ndecode_grid = ["4x4"]\nweights = ["resident", "streamed"]\n')
    summary = run_sweep(toml, tmp_path / "out", n_workers=1, processes=False, progress=False)
    assert not summary.all_failed
    with (tmp_path / "out" / "sweep.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        if row["prefill_grid"] == "9x9":
            assert "does not fit wafer tiny" in row["error"]
            continue
        report = run(RunSpec(model=models["tiny-llama"], wafer="tiny", phase="generate", prompt_len=6, gen_tokens=3,
                             tiles="2x2", precision="fp32", numerics=False, prefill_grid="8x8", decode_grid="4x4",
                             weights=row["weights"]), **QUIET).report
        req = report["request"]
        assert not row["error"]
        assert float(row["ttft_s"]) == req["ttft_s"] and float(row["tpot_s"]) == req["tpot_s"]
        assert float(row["e2e_tokens_per_s_per_request"]) == req["e2e_tokens_per_s_per_request"]
        assert row["weights_placed"] == row["weights"]
    assert json.loads(json.dumps(rows))  # plain strings
