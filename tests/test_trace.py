"""Chrome trace-event JSON: slices add up to the simulation's busy cycles; --trace-limit keeps N per resource."""

import json
from collections import defaultdict

import pytest
from test_plots import GPT2_CONFIG, tiny_run

from wse_sim.cli import main
from wse_sim.report.trace import write_trace


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return tiny_run(tmp_path_factory, grid="8x7", tiles="4x3")


def load(path):
    trace = json.loads(path.read_text())
    names = {(ev["pid"], ev.get("tid")): ev["args"]["name"] for ev in trace["traceEvents"]
             if ev["ph"] == "M" and ev["name"] in ("process_name", "thread_name")}
    slices = defaultdict(list)  # (process name, thread name) -> slices
    for ev in trace["traceEvents"]:
        if ev["ph"] == "X":
            slices[(names[(ev["pid"], None)], names[(ev["pid"], ev["tid"])])].append(ev)
    return trace, slices


def test_slices_add_up_to_busy_cycles(recorded, tmp_path):
    result, wafer = recorded.result, recorded.wafer
    write_trace(tmp_path / "trace.json", result, recorded.plan.grid, wafer.clock_hz)
    trace, slices = load(tmp_path / "trace.json")
    assert {p for p, _ in slices} == {"tiles", "links", "MemoryX"}
    assert sum(len(v) for v in slices.values()) == len(result.intervals) == trace["otherData"]["events_written"]
    op_names = {op.name for op in result.ops}
    for (process, thread), evs in slices.items():
        cycles = sum(ev["args"]["cycles"] for ev in evs)
        if process == "tiles":
            i, j = (int(v) for v in thread.strip("tile ()").split(","))
            assert cycles == result.tile_busy_cycles[i, j]
            assert sum(ev["args"]["flops"] for ev in evs) == 2 * result.tile_macs[i, j]
        elif process == "links":
            link = tuple(tuple(int(v) for v in end.strip("()").split(",")) for end in thread.split()[0].split("->"))
            assert cycles == result.link_busy_cycles[link]
        else:
            assert cycles == result.memoryx_busy_cycles
            assert sum(ev["args"]["bytes"] for ev in evs) == result.stream_bytes
        for ev in evs:
            assert ev["name"] in op_names
            assert ev["dur"] == pytest.approx(ev["args"]["cycles"] / wafer.clock_hz * 1e6)
            assert ev["ts"] == pytest.approx(ev["args"]["start_cycles"] / wafer.clock_hz * 1e6)


def test_trace_limit_keeps_the_first_n_per_resource_and_says_so(recorded, tmp_path):
    result = recorded.result
    write_trace(tmp_path / "full.json", result, recorded.plan.grid, recorded.wafer.clock_hz)
    write_trace(tmp_path / "cut.json", result, recorded.plan.grid, recorded.wafer.clock_hz, limit=3)
    _, full = load(tmp_path / "full.json")
    trace, cut = load(tmp_path / "cut.json")
    assert full.keys() == cut.keys()
    assert any(len(v) > 3 for v in full.values())
    for key, evs in full.items():
        first = sorted(evs, key=lambda ev: ev["args"]["start_cycles"])[:3]
        assert cut[key] == first
    meta = trace["otherData"]
    kept = sum(len(v) for v in cut.values())
    assert meta["trace_limit_per_resource"] == 3 and meta["events_written"] == kept
    assert meta["events_dropped"] == len(result.intervals) - kept > 0
    assert meta["resources_truncated"] == sum(len(v) > 3 for v in full.values())
    assert "first 3 slices per resource" in meta["note"]


def test_unrecorded_run_cannot_be_traced(tmp_path_factory, tmp_path):
    plain = tiny_run(tmp_path_factory, record=False, tiles="2x2")
    assert plain.report["timeline"] is None
    with pytest.raises(ValueError, match="record=True"):
        write_trace(tmp_path / "t.json", plain.result, plain.plan.grid, plain.wafer.clock_hz)


def test_cli_run_writes_trace(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(GPT2_CONFIG))
    out, trace_path = tmp_path / "out", tmp_path / "tr" / "trace.json"
    base = ["run", "--model", str(cfg), "--wafer", "tiny", "--mapping", "weight-streaming", "--seq", "16",
            "--tiles", "2x2", "--no-numerics", "--quiet", "--out", str(out)]
    assert main([*base, "--trace", str(trace_path), "--trace-limit", "2"]) == 0
    trace, slices = load(trace_path)
    assert all(len(v) <= 2 for v in slices.values()) and trace["otherData"]["trace_limit_per_resource"] == 2
    report = json.loads((out / "report.json").read_text())
    assert trace["otherData"]["model"] == report["model"]["name"]
    assert trace["otherData"]["total_cycles"] == report["total_cycles"]
    assert str(trace_path) in capsys.readouterr().out
    assert main([*base, "--trace-limit", "2"]) == 2
    assert "--trace-limit needs --trace" in capsys.readouterr().err
