"""Golden runs: the reports of a fixed set of CLI runs, byte for byte, against committed copies.

They pin the simulator's results across refactors and speed work: a change that alters any figure (cycles,
bytes, utilization, the numerics against the float64 reference) fails here and must be explained, then the
copies regenerated with ``WSE_SIM_UPDATE_GOLDEN=1 python -P -m pytest tests/test_golden.py``. Fields that are
not results of the simulation are left out of the comparison: wall-clock times, and the transformers check
(torch's CPU kernels may sum in another order on another processor; it has its own tests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wse_sim.cli import main

GOLDEN = Path(__file__).parent / "golden"
GPT = {"model_type": "gpt2", "n_embd": 72, "n_layer": 2, "n_head": 6, "vocab_size": 97, "n_positions": 64,
       "n_inner": 130, "activation_function": "gelu_new"}
LLAMA = {"model_type": "llama", "hidden_size": 72, "num_hidden_layers": 3, "num_attention_heads": 6,
         "num_key_value_heads": 2, "intermediate_size": 130, "vocab_size": 97, "max_position_embeddings": 64,
         "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False}
RUN = ["--wafer", "tiny", "--precision", "fp32", "--quiet"]
SMALL = ["--wafer", "wse2", "--grid", "48x48", "--tiles", "4x4"]

# name -> (subcommand argv before --out, with {gpt}/{llama} for the config files; the report file written)
CASES = {
    **{f"prefill-{m}": (["run", "--model", "{gpt}", "--mapping", m, "--seq", "12", "--batch", "2", "--tiles", "2x2",
                         "--numerics", *RUN], "report.json")
       for m in ("weight-streaming", "summa", "cannon", "meshgemm", "systolic", "gemv-tree", "gemv-allreduce",
                 "auto")},
    "prefill-pipelined": (["run", "--model", "{gpt}", "--mapping", "pipelined", "--seq", "12", "--grid", "8x8",
                           "--tiles", "2x2", "--numerics", *RUN], "report.json"),
    "prefill-111m-auto": (["run", "--model", "cerebras-gpt-111m", "--seq", "128", "--no-numerics", "--wafer", "wse2",
                           "--quiet"], "report.json"),
    "prefill-111m-streamed": (["run", "--model", "cerebras-gpt-111m", "--seq", "128", "--mapping", "weight-streaming",
                               "--no-numerics", "--wafer", "wse2", "--quiet"], "report.json"),
    "train-111m-streamed": (["train", "--model", "cerebras-gpt-111m", "--seq", "128", "--batch", "2", "--micro-batch",
                             "1", "--no-numerics", "--wafer", "wse2", "--grid", "200x200", "--quiet"], "report.json"),
    "generate-13b-subset": (["run", "--model", "cerebras-gpt-13b", "--phase", "generate", "--prompt-len", "256",
                             "--gen-tokens", "2", "--grid", "600x600", "--layer-subset", "2", "--wafers", "3",
                             "--no-numerics", "--wafer", "wse2", "--quiet"], "report.json"),
    "decode-llama": (["run", "--model", "{llama}", "--phase", "decode", "--context", "9", "--grid", "4x4",
                      "--tiles", "2x2", "--numerics", *RUN], "report.json"),
    "generate-llama": (["run", "--model", "{llama}", "--phase", "generate", "--prompt-len", "6", "--gen-tokens", "3",
                        "--grid", "4x4", "--tiles", "2x2", "--numerics", *RUN], "report.json"),
    "decode-llama3-8b-2wafers": (["run", "--model", "llama3-8b", "--phase", "decode", "--context", "512",
                                  "--grid", "360x360", "--wafers", "2", "--layer-subset", "4", "--no-numerics",
                                  "--wafer", "wse2", "--quiet"], "report.json"),
    "gemm-meshgemm": (["gemm", "--m", "24", "--k", "40", "--n", "33", "--mapping", "meshgemm", "--numerics", *SMALL],
                      "report.json"),
    "gemv-tree": (["gemm", "--m", "1", "--k", "256", "--n", "96", "--mapping", "gemv-tree", *SMALL], "report.json"),
    "compare-gpt": (["compare", "--model", "{gpt}", "--mappings", "summa,systolic,weight-streaming", "--seq", "16",
                     "--no-numerics", *SMALL, "--quiet"], "compare.json"),
}
VOLATILE = {"wall_s", "sim_wall_s", "simulation_wall_s", "max_abs_err_vs_transformers", "top1_agreement",
            "transformers_vs_reference_max_abs_err", "transformers", "tool"}  # tool: version and git commit


def _normalise(value):
    """The report without volatile fields, and without paths of the temporary folder."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("golden-configs")
    out = {}
    for name, cfg in (("gpt", GPT), ("llama", LLAMA)):
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps(cfg))
        out[name] = str(folder / name)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_report(name, configs, tmp_path):
    argv, report_name = CASES[name]
    argv = [a.format(**configs) for a in argv]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    text = json.dumps(_normalise(json.loads((out / report_name).read_text())), indent=1, sort_keys=True)
    text = text.replace(configs["gpt"], "{gpt}").replace(configs["llama"], "{llama}") + "\n"
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("WSE_SIM_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.is_file(), f"no golden copy {golden.name}: run once with WSE_SIM_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{name}: the report differs from tests/golden/{golden.name}"
