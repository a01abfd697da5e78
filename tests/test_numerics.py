"""Real numerics through the mapping, checked against transformers and the float64 reference."""

import json

import numpy as np
import pytest
import torch

from wse_sim.app import RunSpec, run
from wse_sim.cli import main


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


@pytest.mark.parametrize(
    ("batch", "seq", "grid", "tiles", "activation"),
    [
        (1, 16, None, "8x8", "gelu"),  # 1x1 tiles: a PE-level run on the tiny wafer
        (2, 13, "7x5", "3x2", "gelu_new"),  # tile rows straddle the two sequences; uneven tiles
        (1, 29, None, "5x7", "gelu"),  # more tile columns than heads (3): idle attention columns
        (1, 5, None, "8x8", "gelu"),  # fewer tokens than tile rows: empty tile rows
    ],
)
def test_fp32_logits_match_transformers(tiny_checkpoint, batch, seq, grid, tiles, activation):
    ckpt = tiny_checkpoint(activation=activation)
    spec = RunSpec(checkpoint=str(ckpt.path), wafer="tiny", seq=seq, batch=batch, precision="fp32", grid=grid,
                   tiles=tiles, numerics=True, seed=3, check_transformers=True)
    res = run(spec, log=lambda m: None)
    report, logits = res.report, res.logits
    from wse_sim.workloads.tokens import random_tokens

    ids = random_tokens(101, batch, seq, seed=3)
    expected = hf_logits(ckpt.model, ids)  # the model transformers built and saved, not our loader's
    assert logits.shape == expected.shape
    assert np.max(np.abs(logits - expected)) < 1e-4
    n = report["numerics"]
    assert n["max_abs_err_vs_transformers"] < 1e-4
    assert n["max_abs_err_vs_reference"] < 1e-4
    assert n["top1_agreement"] == 1.0
    assert len(n["checked_against"]) == 2 and n["transformers_vs_reference_max_abs_err"] < 1e-4  # both ran


def test_bin_checkpoint_and_saved_logits(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint(safe_serialization=False)
    npy = tmp_path / "logits.npy"
    rc = main(["run", "--checkpoint", str(ckpt.path), "--wafer", "tiny", "--seq", "8", "--tokens",
               "5,6,7,8,9,10,11,100", "--precision", "fp32", "--out", str(tmp_path / "o"), "--save-logits",
               str(npy), "--quiet"])
    assert rc == 0
    saved = np.load(npy)
    expected = hf_logits(ckpt.model, np.array([[5, 6, 7, 8, 9, 10, 11, 100]]))
    assert np.max(np.abs(saved - expected)) < 1e-4


def test_reports_with_numerics_are_byte_identical(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint()
    texts = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        assert main(["run", "--checkpoint", str(ckpt.path), "--wafer", "tiny", "--seq", "12", "--out", str(out),
                     "--quiet"]) == 0
        texts.append((out / "report.json").read_text())
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["numerics"]["enabled"] is True


def run_111m(precision: str) -> dict:
    spec = RunSpec(model="cerebras-gpt-111m", wafer="wse2", seq=128, precision=precision, numerics=True,
                   check_transformers=True)
    report = run(spec, log=lambda m: None).report
    print(f"111M {precision}:", report["numerics"])
    return report


@pytest.mark.slow
def test_111m_fp32_within_1e3_of_transformers():
    """The issue's target: fp32 storage, 111M config, seq >= 128: max |logit error| <= 1e-3."""
    report = run_111m("fp32")
    n = report["numerics"]
    assert n["max_abs_err_vs_transformers"] <= 1e-3
    assert n["max_abs_err_vs_reference"] <= 1e-3
    assert report["total_cycles"] >= report["roofline"]["bound_cycles"]


@pytest.mark.slow
def test_111m_fp16_top1():
    assert run_111m("fp16")["numerics"]["top1_agreement"] >= 0.99


@pytest.mark.slow
def test_111m_bf16_no_worse_than_transformers_own_bf16():
    """bf16 keeps 8 mantissa bits: on random weights (near-tie logits) even transformers' own bf16 model
    misses the fp32 top-1 on a few % of tokens. The simulated bf16 run must be as close to fp32 as that."""
    from wse_sim.kernels import round_to
    from wse_sim.workloads import get_preset
    from wse_sim.workloads.hf_reference import _build_model, transformers_logits
    from wse_sim.workloads.tokens import random_tokens
    from wse_sim.workloads.weights import random_weights

    report = run_111m("bf16")
    cfg = get_preset("cerebras-gpt-111m")
    weights = random_weights(cfg, 0).map_arrays(lambda a: round_to(a, "bf16"))
    ids = random_tokens(cfg.vocab_size, 1, 128, 0)
    fp32 = transformers_logits(weights, ids)
    model = _build_model(weights)
    with torch.no_grad():
        hf_bf16 = model.to(torch.bfloat16)(torch.from_numpy(ids)).logits.float().numpy()
    hf_top1 = float(np.mean(hf_bf16.argmax(-1) == fp32.argmax(-1)))
    hf_err = float(np.max(np.abs(hf_bf16 - fp32)))
    n = report["numerics"]
    print(f"111M bf16: sim top1 {n['top1_agreement']:.4f} err {n['max_abs_err_vs_transformers']:.4g}; "
          f"transformers bf16 top1 {hf_top1:.4f} err {hf_err:.4g}")
    assert n["top1_agreement"] >= hf_top1 - 0.03
    assert n["max_abs_err_vs_transformers"] <= 1.5 * hf_err
