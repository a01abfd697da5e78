"""The command line: outputs on success; one-line errors, exit 2, nothing written on bad input."""

import json

import pytest

from wse_sim.cli import main

TINY_CONFIG = {"model_type": "gpt2", "n_embd": 48, "n_layer": 2, "n_head": 3, "vocab_size": 101,
               "n_positions": 64, "activation_function": "gelu_new"}


@pytest.fixture
def config_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(TINY_CONFIG))
    return str(p)


def test_run_writes_report_and_plot(tmp_path, config_json, capsys):
    out = tmp_path / "out"
    rc = main(["run", "--model", config_json, "--wafer", "tiny", "--seq", "16", "--tile", "1x1", "--no-numerics",
               "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["mapping"]["tile_grid"] == [8, 8]  # 1x1 tiles on the 8x8 tiny wafer: a PE-level run
    for name in ("utilization.png", "timeline.png", "layers.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    for key in ("total_cycles", "seconds", "tokens_per_s", "layers", "bandwidth", "flops", "mfu",
                "sram_peak_bytes_per_pe", "utilization", "timeline", "numerics"):
        assert key in report
    assert report["timeline"]["lanes"] and set(report["utilization"]["link_busy_fraction"]) == set("NSEW")
    assert report["numerics"]["enabled"] is False and "no-numerics" in report["numerics"]["reason"]
    assert "total cycles" in capsys.readouterr().out


def test_plot_command_redraws_from_report_json(tmp_path, config_json, capsys):
    out = tmp_path / "out"
    assert main(["run", "--model", config_json, "--wafer", "tiny", "--seq", "16", "--tiles", "2x2", "--no-numerics",
                 "--out", str(out), "--quiet", "--format", "svg"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["energy.svg", "layers.svg", "ops.csv", "report.json",
                                                     "timeline.svg", "utilization.svg"]
    assert main(["plot", str(out / "report.json"), "--out", str(tmp_path / "again")]) == 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["energy.png", "layers.png", "timeline.png",
                                                                      "utilization.png"]
    assert main(["plot", str(tmp_path / "nope.json")]) == 2
    assert "nope.json not found" in capsys.readouterr().err
    assert main(["plot", str(out / "report.json"), "--format", "gif"]) == 2
    assert "'gif' is not one of png, svg" in capsys.readouterr().err


def test_list_commands(capsys):
    assert main(["models"]) == 0
    assert "cerebras-gpt-13b" in capsys.readouterr().out
    assert main(["wafers"]) == 0
    assert "wse3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "gpt-5"], "unknown model"),
        (["--wafer", "wse9"], "unknown wafer"),
        (["--seq", "4096"], "exceeds the context"),
        (["--mapping", "magic"], "unknown mapping"),
        (["--grid", "2000x10"], "does not fit"),
        (["--checkpoint", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
        (["--tokens", "1,2,x", "--seq", "3"], "--tokens"),
        (["--tokens", "1,2,3", "--seq", "4"], "3 tokens"),
        (["--model", "cerebras-gpt-1.3b", "--wafer", "tiny", "--precision", "fp32"], "bytes of SRAM per PE"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    rc = main(["run", *args, "--out", str(out), "--quiet", "--no-numerics"] if "--tokens" not in args
              else ["run", *args, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_malformed_toml(tmp_path, capsys):
    bad = tmp_path / "w.toml"
    bad.write_text("clock_hz = = 3")
    assert main(["run", "--wafer", str(bad), "--no-numerics", "--out", str(tmp_path / "o")]) == 2
    assert "malformed TOML" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-3", "two"])
def test_non_positive_sizes_rejected_by_argparse(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--seq", bad])
    assert exc.value.code == 2


def test_importing_the_cli_leaves_the_collector_as_it_found_it():
    """The command's imports run with the cyclic collector paused; importing it (here, in a fresh interpreter) must
    not leave the collector off for a library caller, nor turn it on for one that had it off."""
    import subprocess
    import sys

    code = ("import gc; was = {}; gc.disable() if not was else None; import wse_sim.cli; "
            "assert gc.isenabled() == was, gc.isenabled()")
    for was in (True, False):
        subprocess.run([sys.executable, "-P", "-c", code.format(was)], check=True)
