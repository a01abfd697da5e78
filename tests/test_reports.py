"""Reports that say what the user asked (issue 14 part 3): a generate run's whole request, the tool version and
inputs, the JSON Schema, ops.csv and the TOML run config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wse_sim.cli import main

GPT = {"model_type": "gpt2", "n_embd": 72, "n_layer": 2, "n_head": 6, "vocab_size": 97, "n_positions": 64,
       "n_inner": 130, "activation_function": "gelu_new"}
TINY = ["--wafer", "tiny", "--precision", "fp32", "--quiet", "--no-numerics", "--grid", "4x4", "--tiles", "2x2"]
PHASES = {
    "prefill": ["--seq", "12", "--batch", "2"],
    "decode": ["--phase", "decode", "--context", "9"],
    "generate": ["--phase", "generate", "--prompt-len", "6", "--gen-tokens", "4", "--batch", "2"],
}


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("gpt")
    (folder / "config.json").write_text(json.dumps(GPT))
    return str(folder)


@pytest.fixture(scope="module")
def runs(gpt, tmp_path_factory) -> dict:
    """phase -> (output folder, report dict, printed summary) of one CLI run each."""
    out = {}
    for phase, argv in PHASES.items():
        folder = tmp_path_factory.mktemp(phase)
        assert main(["run", "--model", gpt, *TINY, *argv, "--out", str(folder)]) == 0
        out[phase] = folder, json.loads((folder / "report.json").read_text())
    return out


def test_generate_report_covers_the_whole_request(runs, capsys):
    report = runs["generate"][1]
    req, clock = report["request"], report["wafer"]["clock_hz"]
    steps = report["decode_step_cycles_scaled"]
    assert req["decode_steps"] == len(steps) == 3
    assert req["cycles"]["prefill"] == report["prefill_cycles_scaled"]
    assert req["cycles"]["decode"] == sum(steps)
    assert report["total_cycles"] == req["cycles"]["total"] == report["prefill_cycles_scaled"] + sum(steps)
    assert req["ttft_s"] == pytest.approx(report["ttft_s"])
    assert req["tpot_s_per_step"] == pytest.approx([c / clock for c in steps])
    assert req["tpot_s"] == pytest.approx(sum(req["tpot_s_per_step"]) / len(steps))
    assert report["seconds"] == req["e2e_latency_s"] == pytest.approx(req["ttft_s"] + sum(req["tpot_s_per_step"]))
    assert req["output_tokens"] == 2 * 4
    assert report["tokens_per_s"] == pytest.approx(req["output_tokens"] / req["e2e_latency_s"])
    assert sum(req["cycle_share"].values()) == pytest.approx(1.0)
    last = report["last_pass"]
    assert last["total_cycles"] == report["decode_step_cycles_simulated"][-1]
    assert "layers" in last["fields"] and last["pass"] == "the last decode step"


def test_generate_summary_says_prompt_and_request(gpt, tmp_path, capsys):
    assert main(["run", "--model", gpt, *TINY, *PHASES["generate"], "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert "seq 1" not in printed and "prompt 6 + 4 generated tokens" in printed
    assert f"{report['total_cycles']:,} cycles" in printed and "request total" in printed
    assert f"{report['last_pass']['total_cycles']:,} cycles (the last decode step" in printed


def test_prefill_and_decode_reports_have_no_request(runs):
    for phase in ("prefill", "decode"):
        report = runs[phase][1]
        assert "request" not in report and "last_pass" not in report


def test_version_flag_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"wse-sim {version('wse-sim')}")


def test_report_records_tool_and_every_input(runs):
    from dataclasses import fields
    from importlib.metadata import version

    from wse_sim.app import RunSpec
    from wse_sim.app.scenario import OMITTED_WHEN_UNSET

    for phase, (_, report) in runs.items():
        assert report["tool"]["name"] == "wse-sim" and report["tool"]["version"] == version("wse-sim")
        commit = report["tool"]["git_commit"]
        assert commit is None or len(commit) == 40
        assert set(report["inputs"]) == {f.name for f in fields(RunSpec)} - set(OMITTED_WHEN_UNSET)  # healthy wafer
        assert report["inputs"]["phase"] == phase
    assert runs["generate"][1]["inputs"]["gen_tokens"] == 4


def test_git_commit_is_none_outside_a_checkout(tmp_path, monkeypatch):
    from wse_sim.report import provenance

    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)
    provenance.git_commit.cache_clear()
    try:
        assert provenance.git_commit() is None
        assert provenance.version_line() == f"wse-sim {provenance.tool_version()}"
    finally:
        provenance.git_commit.cache_clear()


SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "report.schema.json"
JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value, name: str) -> bool:
    """JSON Schema's type test (integer includes 1.0; booleans are not numbers)."""
    if name in ("number", "integer") and isinstance(value, bool):
        return False
    if name == "number":
        return isinstance(value, int | float)
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, JSON_TYPES[name])


def schema_errors(value, schema: dict, path: str = "$") -> list[str]:
    """The subset of draft 2020-12 the report schema uses: type, enum, const, required, properties, items."""
    types = schema.get("type")
    if types is not None and not any(_is(value, t) for t in ([types] if isinstance(types, str) else types)):
        return [f"{path}: {type(value).__name__} is not {types}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if isinstance(value, dict):
        errors += [f"{path}: missing {k!r}" for k in schema.get("required", ()) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                errors += schema_errors(value[k], sub, f"{path}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def test_the_validator_catches_what_the_schema_forbids(runs):
    schema = json.loads(SCHEMA.read_text())
    report = runs["generate"][1]
    assert schema_errors({k: v for k, v in report.items() if k != "tool"}, schema) == ["$: missing 'tool'"]
    assert schema_errors(report | {"total_cycles": "many"}, schema) == ["$.total_cycles: str is not integer"]
    broken = report | {"request": report["request"] | {"tpot_s_per_step": [None]}}
    assert schema_errors(broken, schema) == ["$.request.tpot_s_per_step[0]: NoneType is not number"]


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_reports_follow_the_json_schema(runs, phase):
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema_errors(runs[phase][1], schema) == []


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_ops_csv_has_one_row_per_op_of_the_report(runs, phase):
    import csv

    from wse_sim.report.tables import OP_COLUMNS

    folder, report = runs[phase]
    rows = list(csv.DictReader((folder / "ops.csv").open()))
    ops = [(layer["name"], op) for layer in report["layers"] for op in layer["ops"]]
    assert len(rows) == len(ops)
    clock = report["wafer"]["clock_hz"]
    for row, (block, op) in zip(rows, ops, strict=True):
        assert (row["block"], row["op"], row["kind"]) == (block, op["name"], op["kind"])
        assert {c: int(row[c]) for c, _ in OP_COLUMNS} == {c: op[k] for c, k in OP_COLUMNS}
        assert float(row["latency_us"]) == pytest.approx(op["cycles"] / clock * 1e6, rel=1e-5)


def _toml(path: Path, values: dict) -> str:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return str(path)


def test_config_file_gives_the_same_report_as_the_flags(gpt, runs, tmp_path):
    """Every key of the file is a flag; the generate run from a file matches the one from flags."""
    keys = {"model": gpt, "wafer": "tiny", "precision": "fp32", "quiet": True, "numerics": False, "grid": "4x4",
            "tiles": "2x2", "phase": "generate", "prompt-len": 6, "gen_tokens": 4, "batch": 2,
            "out": str(tmp_path / "out")}
    assert main(["run", "--config", _toml(tmp_path / "run.toml", keys)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["inputs"] == runs["generate"][1]["inputs"]
    assert report["total_cycles"] == runs["generate"][1]["total_cycles"]


def test_command_line_flags_override_the_config_file(gpt, tmp_path):
    keys = {"model": gpt, "wafer": "tiny", "precision": "fp32", "quiet": True, "numerics": True, "grid": "4x4",
            "tiles": "2x2", "phase": "decode", "context": 9, "out": str(tmp_path / "ignored")}
    path = _toml(tmp_path / "run.toml", keys)
    assert main(["run", "--config", path, "--no-numerics", "--context", "5", "--out", str(tmp_path / "out")]) == 0
    inputs = json.loads((tmp_path / "out" / "report.json").read_text())["inputs"]
    assert (inputs["numerics"], inputs["context"], inputs["phase"]) == (False, 5, "decode")
    assert not (tmp_path / "ignored").exists()


@pytest.mark.parametrize(("values", "message"), [
    ({"sequence": 12}, "unknown key 'sequence'"),
    ({"seq": 0}, "seq: must be at least 1"),
    ({"quiet": "yes"}, "quiet must be true or false"),
    ({"phase": "train"}, "phase: invalid choice: 'train' (choose from 'prefill', 'decode', 'generate')"),
    ({"context": "x"}, "context: 'x' is not an integer"),
    ({"numerics": [True]}, "numerics must be true or false"),
    ({"out": ["a"]}, "out: ['a'] is not a single value"),
    ({"func": "x"}, "unknown key 'func'"),
    ({"grid": 4}, "grid must be a string"),
])
def test_config_file_errors_name_the_key(tmp_path, capsys, values, message):
    assert main(["run", "--config", _toml(tmp_path / "run.toml", values)]) == 2
    assert message in capsys.readouterr().err


README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_documents_the_python_api_and_its_config_example(tmp_path):
    import re
    import tomllib
    from dataclasses import fields

    from wse_sim.app import RunOutput, RunSpec
    from wse_sim.cli.run import config_values

    text = README.read_text()
    api = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{f.name}`" in api for f in fields(RunSpec))
    assert all(f"| `{f.name}` |" in api for f in fields(RunOutput))
    code = re.search(r"```python\n(.*?)```", api, re.S).group(1)
    compile(code, "README", "exec")
    assert "from wse_sim.app import RunSpec, run" in code
    toml = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "run.toml").write_text(toml)
    expected = {k.replace("-", "_"): v for k, v in tomllib.loads(toml).items()}
    assert config_values(str(tmp_path / "run.toml")) == expected


def test_plots_draw_the_last_pass_of_a_generate_run(runs):
    from wse_sim.report.build import last_pass_view

    report = runs["generate"][1]
    view = last_pass_view(report)
    for key in ("total_cycles", "seconds", "tokens_per_s"):
        assert view[key] == report["last_pass"][key]
    assert max(end for lane in view["timeline"]["lanes"] for end in lane["end_cycles"]) <= view["total_cycles"]
    assert last_pass_view(runs["prefill"][1]) is runs["prefill"][1]


def test_config_support_uses_no_hidden_parser_nor_argparse_internals(tmp_path):
    """The config is checked by parsing each value as its flag on a parser built for the purpose."""
    from wse_sim.cli import run as run_cli

    source = Path(run_cli.__file__).read_text()
    assert "_actions" not in source and not hasattr(run_cli, "RUN_PARSER")
    path = _toml(tmp_path / "run.toml", {"seq": 16, "prompt-len": 3, "numerics": False, "max-memory-gb": 2})
    assert run_cli.config_values(path) == {"seq": 16, "prompt_len": 3, "numerics": False, "max_memory_gb": 2.0}
    args = run_cli.with_config(["run", "--config", path, "--seq", "8"], path)
    assert (args.seq, args.prompt_len, args.numerics, args.command, args.func) == (8, 3, False, "run", run_cli.cmd_run)
