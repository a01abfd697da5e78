"""Llama-family numerics through the mappings, and the serving phases (decode, generate) against transformers."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from wse_sim.workloads import ModelConfig, lower_model
from wse_sim.workloads.hf_reference import save_hf_checkpoint, transformers_logits
from wse_sim.workloads.weights import random_weights

from wse_sim.app import RunSpec, run
from wse_sim.app.capacity import capacity
from wse_sim.arch import get_wafer
from wse_sim.errors import UserError
from wse_sim.mapping import TileGrid, get_mapping
from wse_sim.sim import Engine
from wse_sim.sim.numerics import Numerics

TINY = get_wafer("tiny")  # 8 x 8 PEs

# Odd sizes and grouped-query attention with 3 query heads per KV head; Qwen2 adds q/k/v biases.
LLAMA = ModelConfig(name="tiny-llama", vocab_size=97, n_positions=64, d_model=72, n_layer=2, n_head=6, d_ff=130,
                    layer_norm_epsilon=1e-5, activation="silu", tie_word_embeddings=False, family="llama",
                    n_kv_head=2, rope_theta=500000.0, qkv_bias=False, hf_model_type="llama")
QWEN = replace(LLAMA, name="tiny-qwen2", qkv_bias=True, hf_model_type="qwen2", layer_norm_epsilon=1e-6)
GPT = ModelConfig(name="tiny-gpt", vocab_size=97, n_positions=64, d_model=72, n_layer=2, n_head=6, d_ff=130)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for cfg in (LLAMA, QWEN, GPT):
        path = tmp_path_factory.mktemp(cfg.name)
        save_hf_checkpoint(random_weights(cfg, seed=3), path)
        out[cfg.name] = str(path)
    return out


@pytest.mark.parametrize("cfg", [LLAMA, QWEN], ids=lambda c: c.name)
@pytest.mark.parametrize("mapping", ["weight-streaming", "summa", "meshgemm", "systolic", "gemv-tree"])
def test_llama_prefill_numerics_match_transformers(cfg, mapping):
    weights = random_weights(cfg, seed=1)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 11))
    graph = lower_model(cfg, 2, 11, "fp32")
    grid = TileGrid.make(TINY.mesh_rows, TINY.mesh_cols, 3, 3)
    num = Numerics(graph, weights, ids)
    Engine(TINY, get_mapping(mapping).plan(graph, TINY, grid), numerics=num).run()
    out = num.output("head.lm_head").reshape(2, 11, cfg.vocab_size)
    hf = transformers_logits(weights, ids)
    assert np.abs(out - hf).max() <= 1e-3
    assert np.array_equal(out.argmax(-1), hf.argmax(-1))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt"])
def test_decode_through_the_serving_path_matches_transformers(checkpoints, name):
    spec = RunSpec(checkpoint=checkpoints[name], wafer="tiny", grid="4x4", tiles="2x2", precision="fp32",
                   phase="decode", context=9, numerics=True, check_transformers=True)
    report = run(spec, log=lambda *_: None).report
    n = report["numerics"]
    assert n["max_abs_err_vs_transformers"] <= 1e-3, n
    assert n["top1_agreement"] == 1.0
    assert report["phase"] == "decode" and report["tpot_s"] > 0
    assert report["tokens_per_s_per_request"] == pytest.approx(1 / report["tpot_s"])
    # KV cache: K and V (each n_kv_head * head_dim wide) of both layers for context + 1 positions, fp32
    cfg = {c.name: c for c in (LLAMA, QWEN, GPT)}[name]
    assert report["kv_cache_bytes"] == 10 * cfg.n_layer * 2 * cfg.n_kv_head * (cfg.d_model // cfg.n_head) * 4


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt"])
def test_generate_gives_transformers_greedy_tokens(checkpoints, name):
    spec = RunSpec(checkpoint=checkpoints[name], wafer="tiny", grid="4x4", tiles="2x2", precision="fp32",
                   phase="generate", prompt_len=6, gen_tokens=5, numerics=True, batch=2)
    report = run(spec, log=lambda *_: None).report
    n = report["numerics"]
    assert n["tokens_match_transformers"] is True, n
    assert np.array(report["generated_tokens"]).shape == (2, 5)
    assert report["generated_tokens"] == n["transformers_tokens"]
    assert len(report["decode_step_cycles_simulated"]) == 4
    assert report["ttft_s"] == report["prefill_cycles_scaled"] / TINY.clock_hz
    assert report["tpot_s"] == pytest.approx(np.mean(report["decode_step_cycles_scaled"]) / TINY.clock_hz)


def test_cycle_split_adds_up_and_layers_cross_regions():
    spec = RunSpec(model="cerebras-gpt-111m", wafer="wse2", grid="50x50", phase="decode", context=64,
                   numerics=False, precision="fp16")
    out = run(spec, log=lambda *_: None)
    report = out.report
    for layer in report["layers"]:
        for op in layer["ops"]:
            assert op["compute_cycles"] + op["fabric_cycles"] + op["stream_cycles"] == op["cycles"]
            assert op["fabric_latency_cycles"] + op["fabric_serialization_cycles"] == op["fabric_cycles"]
            assert op["fabric_latency_cycles"] >= 0 and op["fabric_serialization_cycles"] >= 0
    params = report["mapping"]["params"]
    assert sum(params["stages_per_region"]) == 11 and params["regions_used"] > 1
    crossings = [t for op in out.plan.ops for t in op.tasks if t.label.startswith("activations region")]
    assert len(crossings) == params["regions_used"] - 1
    assert all(t.hops >= 50 for t in crossings)  # at least one region's width of PE hops


def test_layer_subset_scales_the_layer_time():
    base = dict(model="llama3-8b", wafer="wse2", grid="540x540", phase="decode", context=1024, numerics=False)
    outs = {k: run(RunSpec(**base, layer_subset=k), log=lambda *_: None) for k in (1, 2)}
    one, two = outs[1].report, outs[2].report
    for k, out in outs.items():
        r = out.report
        # the layers run from the embedding's end to the last layer op's end (ops inside a layer may overlap)
        embed_end = max(op.end_cycles for op in out.result.ops if op.block == "embed")
        layers_end = max(op.end_cycles for op in out.result.ops if op.block.startswith("layer"))
        scaled = r["total_cycles"] + (layers_end - embed_end) * (32 / k - 1)
        assert r["decode_step_cycles_scaled"] == [round(scaled)]
        assert r["layer_subset"] == {"simulated_layers": k, "model_layers": 32, "scaled": True,
                                     "note": f"simulated {k} of 32 layers; layer cycles scaled by {32 / k:g}"}
    assert two["tpot_s"] == pytest.approx(one["tpot_s"], rel=0.05)
    assert one["model"]["parameters"] == 8_030_261_248


def test_kv_cache_overflow_names_the_longest_context_and_capacity_agrees(tmp_path):
    from wse_sim.workloads.hf_reference import to_hf_config

    wafer = replace(TINY, sram_bytes_per_pe=6000)
    to_hf_config(replace(LLAMA, n_positions=4096, n_layer=1)).to_json_file(tmp_path / "config.json")
    spec = RunSpec(model=str(tmp_path), wafer="tiny", grid="8x8", tiles="2x2", precision="fp32", phase="decode",
                   numerics=False, weights="resident")  # auto would stream the weights instead (tested below)
    cap = capacity(spec, wafer)
    longest = cap["placement"]["max_context_tokens"]
    assert cap["placement"]["limited_by"] == "SRAM" and 0 < longest < 4095
    assert cap["max_context_tokens"] >= longest  # the whole wafer's SRAM holds at least what the regions do
    run(replace(spec, context=longest), wafer=wafer, log=lambda *_: None)
    with pytest.raises(UserError, match="longest context that fits is") as exc:
        run(replace(spec, context=longest + 1), wafer=wafer, log=lambda *_: None)
    said = int(re.search(r"fits is ([\d,]+) tokens", str(exc.value)).group(1).replace(",", ""))
    assert said == longest


def test_serving_errors_are_clear():
    with pytest.raises(UserError, match="needs --context"):
        run(RunSpec(phase="decode", numerics=False), log=lambda *_: None)
    with pytest.raises(UserError, match="cannot keep them resident"):
        run(RunSpec(phase="decode", context=4, mapping="weight-streaming", weights="resident", numerics=False),
            log=lambda *_: None)
    with pytest.raises(UserError, match=r"resident weights .*--mapping must be auto or one of"):
        run(RunSpec(phase="generate", mapping="pipelined", numerics=False), log=lambda *_: None)
    with pytest.raises(UserError, match=r"--layer-subset must be between 1 and 10"):
        run(RunSpec(phase="decode", context=4, layer_subset=11, numerics=False), log=lambda *_: None)
    with pytest.raises(UserError, match=r"needs \d+ regions"):
        run(RunSpec(model="llama3-8b", phase="decode", context=4, grid="540x540", numerics=False, weights="resident"),
            log=lambda *_: None)


def test_decode_steps_reusing_a_simulated_step_time_like_fresh_ones():
    """Timing-only decode steps reuse the last step simulated afresh when only the attention ops' actions and notes
    change (issue 19): every step equals a fresh plan and simulation. Without a fixed cache reservation the SRAM
    kept for the cache changes with the context, and no step is reused."""
    from wse_sim.app.scenario import make_grid, resolve_model, simulated_cycles
    from wse_sim.app.serve import ServingRun
    from wse_sim.report.energy import op_counts

    spec = RunSpec(model="cerebras-gpt-111m", wafer="wse2", grid="50x50", phase="decode", context=1, numerics=False)
    config, _ = resolve_model(spec)
    wafer = get_wafer("wse2")
    region = make_grid(wafer, spec.grid, spec.tiles, spec.tile)

    def serving_run(cache_positions):
        return ServingRun(config, wafer, region, "auto", "fp16", 1, None, cache_positions, simulated_cycles)

    def timing(plan):
        return [replace(op, tasks=tuple(replace(t, actions=()) for t in op.tasks)) for op in plan.ops]

    for cache_positions, contexts, reuses in ((48, (20, 21, 33, 46), 3), (None, (20, 21), 0)):
        sr = serving_run(cache_positions)
        reused = 0
        for ctx in contexts:
            step = sr.run(sr.graph(1, "decode", ctx))
            fresh_run = serving_run(cache_positions)
            fresh = fresh_run.run(fresh_run.graph(1, "decode", ctx))
            reused += step.reused is not None
            assert step.result.total_cycles == fresh.result.total_cycles
            assert step.scaled_cycles == fresh.scaled_cycles and step.result.ops == fresh.result.ops
            assert timing(step.plan) == timing(fresh.plan) and step.plan.params == fresh.plan.params
            assert [c.values for c in op_counts(wafer, step.plan)] == [c.values for c in op_counts(wafer, fresh.plan)]
        assert reused == reuses


def test_recorded_decode_steps_reuse_a_recorded_step_and_its_intervals():
    """A recorded timing-only decode step (the last of a generate run, whose timeline the report draws) reuses a
    recorded reference step: its result, busy intervals included, equals a fresh recorded simulation's. A reference
    simulated without recording has no intervals to give, and a recorded step is then simulated afresh."""
    from wse_sim.app.scenario import make_grid, resolve_model, simulated_cycles
    from wse_sim.app.serve import ServingRun

    config, _ = resolve_model(RunSpec(model="cerebras-gpt-111m"))
    wafer = get_wafer("wse2")
    region = make_grid(wafer, "50x50")

    def serving_run():
        return ServingRun(config, wafer, region, "auto", "fp16", 1, None, 48, simulated_cycles)

    sr = serving_run()
    for ctx, record, reused in ((20, False, False), (21, True, False), (22, True, True), (23, False, True)):
        step = sr.run(sr.graph(1, "decode", ctx), record=record)
        assert (step.reused is not None) == reused
        fresh_run = serving_run()
        fresh = fresh_run.run(fresh_run.graph(1, "decode", ctx), record=record)
        assert step.result.total_cycles == fresh.result.total_cycles and step.result.ops == fresh.result.ops
        if record:
            assert step.result.intervals and step.result.intervals == fresh.result.intervals


def test_streamed_decode_steps_reusing_a_simulated_step_time_like_fresh_ones():
    """The same reuse with streamed weights (the weight-streaming layout's op plans compared as they are)."""
    from wse_sim.app.scenario import make_grid, resolve_model, simulated_cycles
    from wse_sim.app.serve import ServingRun

    config, _ = resolve_model(RunSpec(model="cerebras-gpt-111m"))
    wafer = get_wafer("wse2")
    region = make_grid(wafer, "50x50")

    def serving_run():
        return ServingRun(config, wafer, region, "auto", "fp16", 1, None, 48, simulated_cycles, weights="streamed")

    sr, reused = serving_run(), 0
    for ctx in (20, 21, 33, 46):
        step = sr.run(sr.graph(1, "decode", ctx))
        fresh_run = serving_run()
        fresh = fresh_run.run(fresh_run.graph(1, "decode", ctx))
        reused += step.reused is not None
        assert step.result.total_cycles == fresh.result.total_cycles and step.result.ops == fresh.result.ops
        assert [replace(op, tasks=tuple(replace(t, actions=()) for t in op.tasks)) for op in step.plan.ops] == \
            [replace(op, tasks=tuple(replace(t, actions=()) for t in op.tasks)) for op in fresh.plan.ops]
    assert reused >= 2


@pytest.mark.parametrize("cfg", [LLAMA, QWEN], ids=lambda c: c.name)
def test_shared_streamed_plans_time_like_each_ops_own_plan(cfg):
    """Timing-only streamed passes plan each op size once (``shared_plans``): every op's plan equals its own plan
    but for the numerics actions (tasks, SRAM, notes, mapping), and simulates to the same op timings."""
    from wse_sim.app.serve import _timing, shared_plans

    graph = lower_model(cfg, 2, 11, "fp16")
    grid = TileGrid.make(TINY.mesh_rows, TINY.mesh_cols, 3, 3)
    ops = list(graph.ops())
    fresh = [get_mapping("weight-streaming").layout(graph, TINY, grid).plan_op(op) for op in ops]
    shared = shared_plans(get_mapping("weight-streaming").layout(graph, TINY, grid), ops)
    assert len({id(p.tasks) for p in shared}) < len(shared)  # some ops share one plan's tasks
    for op, f, s in zip(ops, fresh, shared, strict=True):
        assert s.op == op and s.notes == f.notes and _timing(s) == _timing(f)
        assert not any(t.actions for t in s.tasks)
    a = Engine(TINY, replace(get_mapping("weight-streaming").plan(graph, TINY, grid), ops=tuple(fresh))).run()
    b = Engine(TINY, replace(get_mapping("weight-streaming").plan(graph, TINY, grid), ops=shared)).run()
    assert a.ops == b.ops and a.total_cycles == b.total_cycles
