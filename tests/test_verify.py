"""The numerics checks of a run (wse_sim.app.verify): the float64 numpy reference they use by default, checked here
against transformers run in float64 on the same weights; what a run reports it compared; deferred checks; and
the ``wse-sim`` command drawing its plots in a child process while the checks run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from wse_sim.kernels import round_to
from wse_sim.workloads import blas
from wse_sim.workloads.config import ModelConfig
from wse_sim.workloads.hf_reference import transformers_logits
from wse_sim.workloads.reference import final_hidden, logit_blocks, reference_logits
from wse_sim.workloads.tokens import random_tokens
from wse_sim.workloads.weights import random_weights

from wse_sim.app import RunSpec, run
from wse_sim.app.verify import NOT_REQUESTED, REFERENCE, TRANSFORMERS, _Agreement, top1_agreement

GPT = {"vocab_size": 97, "n_positions": 40, "d_model": 48, "n_layer": 2, "n_head": 3, "d_ff": 130}
LLAMA = ModelConfig(name="tiny-llama", vocab_size=97, n_positions=40, d_model=48, n_layer=2, n_head=6, n_kv_head=2,
                    d_ff=100, rope_theta=500000.0, layer_norm_epsilon=1e-5, activation="silu",
                    tie_word_embeddings=False, qkv_bias=False, hf_model_type="llama", family="llama")
GPT2 = {"gelu": ModelConfig(name="tiny-gelu", activation="gelu", **GPT),  # exact GELU: scipy's erf
        "gelu_new": ModelConfig(name="tiny-gelu-new", activation="gelu_new", **GPT)}
# Two float64 forward passes of the same weights that differ only in summation order agree to about 1e-15 of
# the logits' size; float32 (transformers' default) is about 1e-7 off. The bound sits between them, far from both.
FLOAT64_AGREEMENT = 1e-11
# transformers' Llama rotary embedding computes its angles in float32 whatever the model's dtype
# (``inv_freq`` and ``freqs`` are ``.float()``), so a float64 Llama agrees only to float32 angles: measured 4e-8.
LLAMA_ROTARY_FLOAT32 = 1e-6


def stored_logits(config: ModelConfig):
    """(numpy float64 reference, transformers float64, transformers float32) logits of fp16-stored weights."""
    weights = random_weights(config, seed=4).map_arrays(lambda a: round_to(a, "fp16"))  # as the wafer stores them
    ids = random_tokens(config.vocab_size, batch=2, seq=33, seed=5)
    ref, hf64 = reference_logits(weights, ids), transformers_logits(weights, ids, dtype="float64")
    assert hf64.dtype == np.float64 and ref.dtype == np.float64
    return ref, hf64, transformers_logits(weights, ids).astype(np.float64)


@pytest.mark.parametrize("activation", sorted(GPT2))
def test_numpy_reference_agrees_with_transformers_in_float64(activation):
    ref, hf64, hf32 = stored_logits(GPT2[activation])
    err64 = np.max(np.abs(hf64 - ref))
    print(f"{activation}: max |transformers float64 - numpy float64| = {err64:.3g} (logits up to "
          f"{np.abs(ref).max():.3g})")
    assert err64 <= FLOAT64_AGREEMENT * max(1.0, np.abs(ref).max())
    assert np.array_equal(hf64.argmax(-1), ref.argmax(-1))
    assert np.max(np.abs(hf32 - ref)) > 100 * err64  # the bound tells float64 from float32: float32 would fail it


def test_numpy_llama_reference_agrees_with_transformers_in_float64():
    ref, hf64, _ = stored_logits(LLAMA)
    err64 = np.max(np.abs(hf64 - ref))
    print(f"llama: max |transformers float64 - numpy float64| = {err64:.3g}")
    assert err64 <= LLAMA_ROTARY_FLOAT32 * max(1.0, np.abs(ref).max())
    assert np.array_equal(hf64.argmax(-1), ref.argmax(-1))


TINY_RUN = {"wafer": "tiny", "grid": "4x4", "tiles": "2x2", "seq": 9, "batch": 2, "precision": "fp16",
            "numerics": True, "seed": 7}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("verify") / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_embd": 48, "n_layer": 2, "n_head": 3, "vocab_size": 97,
                                "n_positions": 40, "n_inner": 130, "activation_function": "gelu_new"}))
    return str(path)


def test_a_run_checks_against_the_float64_reference_alone_unless_asked(tiny_model):
    out = run(RunSpec(model=tiny_model, **TINY_RUN), log=lambda _m: None)
    n = out.report["numerics"]
    assert n["checked_against"] == [REFERENCE]
    assert n["max_abs_err_vs_transformers"] is None and n["transformers"] == NOT_REQUESTED
    # the reported figures are the logits' against the reference recomputed here on the stored weights
    cfg = out.report["model"]
    weights = random_weights(ModelConfig(name="t", vocab_size=97, n_positions=40, d_model=48, n_layer=2, n_head=3,
                                         d_ff=130, activation="gelu_new"), seed=7)
    assert cfg["parameters"] == weights.config.param_count()
    ref = reference_logits(weights.map_arrays(lambda a: round_to(a, "fp16")), random_tokens(97, 2, 9, seed=7))
    assert n["max_abs_err_vs_reference"] == float(np.max(np.abs(out.logits.astype(np.float64) - ref)))
    assert n["top1_agreement_vs_reference"] == float(np.mean(out.logits.argmax(-1) == ref.argmax(-1)))

    asked = run(RunSpec(model=tiny_model, check_transformers=True, **TINY_RUN), log=lambda _m: None)
    m = asked.report["numerics"]
    assert m["checked_against"] == [REFERENCE, TRANSFORMERS]
    assert m["max_abs_err_vs_transformers"] <= 1e-2 and m["transformers_vs_reference_max_abs_err"] <= 1e-5
    assert m["max_abs_err_vs_reference"] == n["max_abs_err_vs_reference"]
    assert "check_transformers" not in out.report["inputs"]  # unset: the report's inputs are as before
    assert asked.report["inputs"]["check_transformers"] is True


def test_deferred_checks_fill_the_same_report(tiny_model):
    spec = RunSpec(model=tiny_model, **TINY_RUN)
    direct = run(spec, log=lambda _m: None)
    deferred = run(spec, log=lambda _m: None, defer_checks=True)
    assert direct.pending_checks is None
    assert "max_abs_err_vs_reference" not in deferred.report["numerics"]
    deferred.pending_checks()
    assert deferred.report["numerics"] == direct.report["numerics"]


COMMAND = """
import sys
from wse_sim.cli import _main, outputs
outputs.draw_in_child = True  # as the wse-sim command sets it
code = _main(sys.argv[1:])
print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


def test_the_command_draws_plots_in_a_child_while_checking(tiny_model, tmp_path):
    out = tmp_path / "out"
    argv = ["run", "--model", tiny_model, *(f"--{k}={v}" for k, v in TINY_RUN.items() if k != "numerics"),
            "--numerics", "--out", str(out), "--quiet"]
    done = subprocess.run([sys.executable, "-P", "-c", COMMAND, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stdout  # the default check needs neither torch nor transformers
    assert "checked against" in done.stdout and REFERENCE in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["numerics"]["checked_against"] == [REFERENCE]
    direct = run(RunSpec(model=tiny_model, **TINY_RUN), log=lambda _m: None).report
    assert report["numerics"] == direct["numerics"]
    for name in ("utilization", "timeline", "layers", "energy"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    assert not list(out.glob(".wse-sim-*"))  # the staging folder was moved into place


def test_blockwise_figures_are_the_whole_arrays():
    """The check's figures, gathered a block of vocabulary columns at a time, equal numpy's on the whole arrays,
    with ties (the first maximum wins), NaN (propagates; argmax takes the first) and rows of -inf."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((2, 5, 23))
    ref[0, 1, [4, 17]] = 9.0  # a tie across blocks
    ref[1, 2, 11] = np.nan
    ref[1, 3] = -np.inf
    x = (ref + rng.standard_normal(ref.shape) * 1e-3).astype(np.float32)
    x[1, 3] = 0.0
    for block in (1, 4, 7, 23):
        agreement = _Agreement(ref.shape[:-1])
        for v0 in range(0, ref.shape[-1], block):
            agreement.add(x[..., v0:v0 + block], ref[..., v0:v0 + block])
        assert np.array_equal(agreement.arg, np.argmax(ref, axis=-1))
        assert np.isnan(agreement.ref_abs_max) and np.isnan(agreement.max_abs_err)
        assert agreement.top1_agreement(x) == top1_agreement(x, ref)
    finite = np.nan_to_num(ref, nan=0.5, neginf=-3.0)
    x = np.nan_to_num(x, nan=0.25)
    agreement = _Agreement(ref.shape[:-1])
    for v0 in range(0, ref.shape[-1], 6):
        agreement.add(x[..., v0:v0 + 6], finite[..., v0:v0 + 6])
    assert agreement.ref_abs_max == float(np.max(np.abs(finite)))
    assert agreement.max_abs_err == float(np.max(np.abs(x.astype(np.float64) - finite)))


@pytest.mark.parametrize("block", [5, 32, 4096])
def test_logit_blocks_are_the_head_product(block):
    """The reference's logits a block of vocabulary rows at a time are ``hidden @ head.T`` of the whole head
    (float64 sums in another blocking may differ in the last bits only)."""
    weights = random_weights(GPT2["gelu_new"], seed=4)
    ids = random_tokens(97, batch=2, seq=11, seed=5)
    hidden = final_hidden(weights, ids)
    parts = list(logit_blocks(weights, hidden, block))
    assert [c.start for c, _ in parts] == list(range(0, 97, block))
    whole = hidden @ weights.wte.astype(np.float64).T
    np.testing.assert_allclose(np.concatenate([p for _, p in parts], axis=-1), whole, rtol=0, atol=1e-13)
    assert reference_logits(weights, ids).shape == whole.shape


def test_one_blas_thread_sets_and_restores_the_thread_count():
    found = blas._openblas()
    if found is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS this module finds")
    _, get_threads = found
    before = int(get_threads())
    with blas.one_blas_thread():
        assert int(get_threads()) == 1
        a = np.arange(64.0).reshape(8, 8)
        assert np.array_equal(a @ a, np.einsum("ij,jk->ik", a, a))
    assert int(get_threads()) == before
