"""Bad input and interrupted runs (issue 14 part 2): one-line errors, exit 2, nothing written."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from wse_sim.app.scenario import MEMORY_BASE_BYTES, make_grid, memory_estimate_bytes
from wse_sim.arch import load_wafer
from wse_sim.arch.wafer import FIELD_NAMES, WaferSpec
from wse_sim.cli import main
from wse_sim.errors import UserError

NUMERIC_FIELDS = [f.name for f in fields(WaferSpec) if f.name in FIELD_NAMES and f.name not in ("name", "description")]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("field", [*NUMERIC_FIELDS, "link_bytes_per_cycle"])
def test_wafer_toml_rejects_non_finite(tmp_path, field, value):
    f = tmp_path / "w.toml"
    f.write_text(f"{field} = {value}")
    with pytest.raises(UserError, match=f"{field} must be a .*finite number, got"):
        load_wafer(str(f))


def _run_fails(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    rc = main(["run", *args, "--out", str(out), "--quiet", "--no-numerics"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_tiles_larger_than_the_grid_refused(tmp_path, capsys):
    _run_fails(tmp_path, capsys, ["--wafer", "tiny", "--tiles", "9x4"], "tiles 9x4 is more than the grid 8x8")


def test_huge_mesh_refused_naming_the_estimate(tmp_path, capsys):
    f = tmp_path / "huge.toml"
    f.write_text('base = "tiny"\nmesh_rows = 1000000000\n')
    _run_fails(tmp_path, capsys, ["--wafer", str(f)], "estimated memory 96.2 GB")


def test_pe_level_whole_wafer_refused_then_allowed_by_the_limit(tmp_path, capsys, monkeypatch):
    _run_fails(tmp_path, capsys, ["--tile", "1x1"], "exceeds the limit of 8 GB")
    grid = make_grid(load_wafer("tiny"), tile="1x1")
    assert memory_estimate_bytes(grid) == MEMORY_BASE_BYTES + 40e3 * 64**1.5 + 12 * 64
    monkeypatch.setenv("WSE_SIM_MAX_MEMORY_GB", "0.1")
    with pytest.raises(UserError, match=r"estimated memory 0.2 GB .* exceeds the limit of 0.1 GB"):
        make_grid(load_wafer("tiny"), tile="1x1")
    monkeypatch.setenv("WSE_SIM_MAX_MEMORY_GB", "1e9")
    assert make_grid(load_wafer("wse2"), tile="4x4").tile_rows > 100  # allowed once the limit is raised


TINY_CONFIG = {"model_type": "gpt2", "n_embd": 48, "n_layer": 2, "n_head": 3, "vocab_size": 101,
               "n_positions": 64, "activation_function": "gelu_new"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A small run's model, wafer and sizes (the config lives outside each test's tmp_path)."""
    config = tmp_path_factory.mktemp("model") / "config.json"
    config.write_text(json.dumps(TINY_CONFIG))
    return ["--model", str(config), "--wafer", "tiny", "--seq", "4", "--tiles", "2x2"]


@pytest.mark.parametrize(
    ("option", "make", "needle"),
    [
        ("--out", lambda d: (d / "f").write_text("x") and d / "f", "is a file, not a folder"),
        ("--out", lambda d: d / "ro" / "sub", "is not writable"),
        ("--save-logits", lambda d: d / "missing" / "l.npy", "does not exist"),
        ("--trace", lambda d: d, "is a folder, not a file"),
    ],
)
def test_output_paths_checked_before_the_run(tiny_run, tmp_path, capsys, monkeypatch, option, make, needle):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    if needle == "is not writable" and os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("running as root: every folder is writable")
    monkeypatch.setattr("wse_sim.cli.run.run", lambda *a, **k: pytest.fail("simulated despite a bad path"))
    args = ["--out", str(tmp_path / "o")] if option != "--out" else []
    rc = main(["run", *tiny_run, "--no-numerics", "--quiet", *args, option, str(make(tmp_path))])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "ro" / "sub").exists()


@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_interrupted_while_writing_leaves_nothing_and_exits_130(tiny_run, tmp_path, capsys, monkeypatch, how):
    def interrupted(report, out_dir, fmt):
        (Path(out_dir) / "utilization.png").write_bytes(b"half")
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr("wse_sim.report.plots.write_plots", interrupted)
    out, trace = tmp_path / "a" / "o", tmp_path / "t.json"
    rc = main(["run", *tiny_run, "--no-numerics", "--quiet", "--out", str(out), "--trace", str(trace)])
    assert rc == 130
    assert capsys.readouterr().err.strip() == "wse-sim: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_run_outputs_land_complete(tiny_run, tmp_path, capsys):
    out, trace = tmp_path / "o", tmp_path / "t.json"
    assert main(["run", *tiny_run, "--no-numerics", "--quiet", "--out", str(out), "--trace", str(trace)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["energy.png", "layers.png", "ops.csv", "report.json",
                                                     "timeline.png", "utilization.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "t.json"]
    assert json.loads(trace.read_text())


def test_closed_pipe_is_quiet():
    """A reader that has gone (``wse-sim models | head -1``): the read end is closed before the command, still
    importing, writes anything, so its first write always meets the broken pipe."""
    cli = Path(sys.executable).with_name("wse-sim")
    proc = subprocess.Popen([str(cli), "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tokens", "1,2,3"], "3 tokens"),
        (["--prompt", "hello"], "--prompt needs --checkpoint"),
        (["--context", "3"], "--context applies to --phase decode"),
    ],
)
def test_inputs_ignored_in_silence_are_errors(tiny_run, tmp_path, capsys, args, needle):
    rc = main(["run", *tiny_run, "--no-numerics", "--quiet", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and not (tmp_path / "o").exists()


def test_tokens_take_batch_times_seq_ids(tiny_run):
    from wse_sim.workloads import load_hf_config

    from wse_sim.app.scenario import RunSpec, input_tokens

    spec = RunSpec(tokens="1,2,3,4,5,6,7,8", batch=2, seq=4)
    ids = input_tokens(spec, load_hf_config(Path(tiny_run[1])))
    assert ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_generate_uses_every_position(tiny_run, tmp_path):
    base = ["run", *tiny_run, "--no-numerics", "--quiet", "--phase", "generate", "--tiles", "1x1"]
    assert main([*base, "--prompt-len", "60", "--gen-tokens", "5", "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--prompt-len", "60", "--gen-tokens", "6", "--out", str(tmp_path / "b")]) == 2


def test_max_memory_flag_sets_the_limit(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WSE_SIM_MAX_MEMORY_GB", "1e9")
    _run_fails(tmp_path, capsys, ["--wafer", "tiny", "--tile", "1x1", "--max-memory-gb", "0.1"],
               "exceeds the limit of 0.1 GB")
    with pytest.raises(SystemExit):  # argparse: usage and exit 2
        main(["run", "--max-memory-gb", "0"])
    assert "must be a positive finite number" in capsys.readouterr().err
    out = tmp_path / "ok"
    monkeypatch.setenv("WSE_SIM_MAX_MEMORY_GB", "0.1")
    assert main(["run", *tiny_run, "--max-memory-gb", "1", "--out", str(out), "--quiet", "--no-numerics"]) == 0
    assert (out / "report.json").exists()


@pytest.fixture(scope="module")
def tokenizer_checkpoint(tmp_path_factory):
    """A tiny Llama checkpoint with a byte-level BPE tokenizer.json (as tests/test_weights.py makes them)."""
    import tokenizers
    from test_serving import LLAMA
    from test_weights import TEXTS
    from wse_sim.workloads.hf_reference import save_hf_checkpoint
    from wse_sim.workloads.weights import random_weights

    folder = tmp_path_factory.mktemp("ckpt")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 5, vocab_size=300, min_frequency=1, show_progress=False)
    save_hf_checkpoint(random_weights(replace(LLAMA, vocab_size=300), seed=3), folder)
    bpe.save(str(folder / "tokenizer.json"))
    return str(folder), bpe


def test_prompt_sets_seq_and_generate_prints_the_text(tokenizer_checkpoint, tmp_path, capsys):
    folder, bpe = tokenizer_checkpoint
    prompt = "the wafer routes wavelets"
    n = len(bpe.encode(prompt).ids)
    base = ["run", "--checkpoint", folder, "--prompt", prompt, "--wafer", "tiny", "--tiles", "2x2", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "prefill")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "prefill" / "report.json").read_text())["inputs"]["seq"] == n
    assert "generated text" not in capsys.readouterr().out
    assert main([*base, "--phase", "generate", "--gen-tokens", "3", "--out", str(tmp_path / "gen")]) == 0
    report = json.loads((tmp_path / "gen" / "report.json").read_text())
    assert (report["inputs"]["seq"], report["request"]["prompt_tokens"]) == (n, n)
    (generated,) = report["generated_tokens"]
    assert len(generated) == 3
    assert f"generated text: {bpe.decode(generated)!r}\n" in capsys.readouterr().out
    assert main([*base, "--seq", str(n + 1), "--out", str(tmp_path / "explicit")]) == 2  # an explicit --seq stays
    assert f"1x{n} tokens but 1x{n + 1} were needed" in capsys.readouterr().err


def test_memoryx_capacity_checked_for_streamed_weights_and_training_state(tmp_path, capsys):
    """A model streamed from MemoryX must fit it: weights at the storage precision (inference), plus AdamW's fp32
    master weights and moments (training, 12 B per parameter). 111M in bf16 needs 222 MB of weights and 1.55 GB
    with the optimizer state; a MemoryX of 1 GB holds the first and not the second."""
    from wse_sim.workloads import get_preset

    from wse_sim.mapping.weight_streaming import ADAMW_STATE_BYTES_PER_PARAM, memoryx_bytes

    config = get_preset("cerebras-gpt-111m")
    assert memoryx_bytes(config, "bf16") == 2 * config.param_count()
    assert memoryx_bytes(config, "bf16", ADAMW_STATE_BYTES_PER_PARAM) == 14 * config.param_count()
    small = tmp_path / "small-memoryx.toml"
    small.write_text('base = "wse2"\nmemoryx_capacity_bytes = 1e9\n')
    tiny = tmp_path / "tiny-memoryx.toml"
    tiny.write_text('base = "wse2"\nmemoryx_capacity_bytes = 1e8\n')
    run = ["run", "--model", "cerebras-gpt-111m", "--seq", "8", "--grid", "64x64", "--mapping", "weight-streaming",
           "--precision", "bf16", "--no-numerics", "--quiet", "--out", str(tmp_path / "r")]
    assert main([*run, "--wafer", str(tiny)]) == 2
    assert "weights need 0.222 GB of MemoryX but tiny-memoryx has 0.1 GB" in capsys.readouterr().err
    assert main([*run, "--wafer", str(small)]) == 0  # 1 GB holds the weights
    train = ["train", "--model", "cerebras-gpt-111m", "--batch", "1", "--seq", "8", "--grid", "64x64",
             "--precision", "bf16", "--out", str(tmp_path / "t")]
    assert main([*train, "--wafer", str(small)]) == 2
    assert "weights and AdamW state need 1.55 GB of MemoryX but small-memoryx has 1 GB" in capsys.readouterr().err
