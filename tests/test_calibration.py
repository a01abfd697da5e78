"""Calibration against published wafer measurements: every case near its figure, the report files, the fit, the CLI.

Every case must pass (a hard assertion that prints the whole table when one does not); docs/validation.md has the
numbers and where the model is weak. The wafer is a frozen copy of the wse2 preset (tests/data/wse2-frozen.toml), so
``wse-sim calibrate --write`` refitting the preset cannot break these tests.
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from wse_sim.app import calibrate as cal
from wse_sim.app.calibrate import registry
from wse_sim.app.calibrate.validate import compared_with
from wse_sim.arch import load_wafer
from wse_sim.arch.wafer import preset_path
from wse_sim.cli import main
from wse_sim.mapping.gemv import tree_root, two_way_tree

FROZEN = Path(__file__).parent / "data" / "wse2-frozen.toml"  # wse_sim/arch/presets/wse2.toml as fitted
WSE2 = load_wafer(str(FROZEN))

@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    out = tmp_path_factory.mktemp("validation")
    return out, cal.validate(WSE2, out)


@pytest.mark.parametrize("name", [c.name for c in cal.cases() if c.name not in cal.KNOWN_MISSES])
def test_case_within_tolerance_of_published(validated, name):
    _, results = validated
    r = next(r for r in results if r.case.name == name)
    assert r.ok, f"{name}: simulated {r.simulated:.4g} vs published {r.case.published:.4g} {r.case.unit} " \
                 f"(ratio {r.ratio:.3f})\n{cal.format_results(results)}"


@pytest.mark.parametrize("name", sorted(cal.KNOWN_MISSES))
def test_known_miss_still_misses(validated, name):
    """A known miss (docs/validation.md) stays listed only while it misses: when a model change fixes it, this
    fails, and the case moves back to the cases that must pass."""
    _, results = validated
    r = next(r for r in results if r.case.name == name)
    assert not r.ok, f"{name} now passes (ratio {r.ratio:.3f}): remove it from KNOWN_MISSES"
    out, _ = validated
    assert "miss (known, see docs/validation.md)" in (out / "validation.md").read_text()


def test_prefill_cases_cover_c5_and_hold_out_600_and_the_trend():
    c5 = [c for c in cal.cases() if c.name.startswith("C5")]
    assert len(c5) == 4
    assert {c.name for c in c5 if c.fit} == {"C5 llama3-8b prefill 480x480", "C5 llama3-8b prefill 720x720"}


def test_report_files_exist_and_agree(validated):
    out, results = validated
    rows = list(csv.DictReader(open(out / "validation.csv")))
    assert [r["case"] for r in rows] == [r.case.name for r in results]
    assert list(rows[0]) == ["case", "published", "simulated", "ratio", "unit", "status"]
    assert [row["status"] for row in rows] == ["ok" if r.ok else "miss (known, see docs/validation.md)"
                                               if r.case.name in cal.KNOWN_MISSES else "MISS" for r in results]
    md = (out / "validation.md").read_text()
    for row, r in zip(rows, results, strict=True):
        assert float(row["simulated"]) == pytest.approx(r.simulated, rel=1e-3)
        assert float(row["ratio"]) == pytest.approx(r.ratio, abs=1e-3)
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row['case']} |"))
        assert f"| {row['simulated']} | {row['ratio']} | {row['unit']} |" in line
    png = (out / "validation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "validation.png" in md


def test_meshgemv_tree_matches_the_published_kernel():
    """P = 512, groups of 32: WaferLLM's root_2nd_phase = (group_num / 2) * g + g / 2 = 272; phase 1 has 16
    stages over 16 PE hops, phase 2 has 8 stages over 256 hops (two_tree_allreduce_y in its repository)."""
    levels = two_way_tree(512, 32)
    assert len(levels) == 2 and tree_root(512, 32) == (16 // 2) * 32 + 32 // 2
    for groups, (hops, stages) in zip(levels, [(16, 16), (256, 8)], strict=True):
        arms = [(abs(arm[0] - g.root), len(arm)) for g in groups for arm in g.arms]
        assert max(a for a, _ in arms) == hops and max(s for _, s in arms) == stages
    report = cal.gemm_report(WSE2, 1, 16384, 16384, "gemv-tree", "512x512", "16x16", "fp16", True, True)
    assert report["fabric_bytes"] > 0 and "two-way 32-ary tree" in report["notes"]


GEMV_CASES = ("C1-gemv-16k", "C1-gemv-32k", "C3-meshgemv-vs-allreduce")  # fast: one GEMV each


def _synthetic(beta: float, phase: float | None = None, names: tuple[str, ...] = GEMV_CASES[:2]):
    """Cases with 'published' values simulated at a known stage (and phase) overhead."""
    truth = replace(WSE2, stage_overhead_cycles=beta,
                    phase_overhead_cycles=WSE2.phase_overhead_cycles if phase is None else phase)
    return tuple(replace(c, published=c.simulate(truth)) for c in cal.select(",".join(names)))


def test_fit_recovers_a_known_stage_overhead():
    result = cal.fit(_synthetic(7.0), ["stage_overhead_cycles"], WSE2, start={"stage_overhead_cycles": 30.0})
    assert result.values["stage_overhead_cycles"] == pytest.approx(7.0, abs=0.25)
    assert result.cost < 1e-5 and result.wafer.stage_overhead_cycles == result.values["stage_overhead_cycles"]
    assert all(abs(r) < 3e-3 for r in result.residuals.values())


def test_fit_recovers_stage_and_phase_overheads_together():
    """Both unsourced parameters at once from the three GEMV figures: C1's two sizes alone cannot separate them,
    the 511-stage chain against the 24-stage tree does."""
    result = cal.fit(_synthetic(6.0, 120.0, GEMV_CASES), ["stage_overhead_cycles", "phase_overhead_cycles"], WSE2,
                     start={"stage_overhead_cycles": 20.0, "phase_overhead_cycles": 10.0})
    assert result.values["stage_overhead_cycles"] == pytest.approx(6.0, abs=0.3)
    assert result.values["phase_overhead_cycles"] == pytest.approx(120.0, abs=3.0)
    assert result.cost < 1e-5


def test_fit_keeps_parameters_physical():
    """A 'published' time below what 1-cycle hops allow pushes beta to its bound (alpha < beta), not below."""
    fast = tuple(replace(c, published=c.published / 3) for c in cal.cases() if c.fit and c.unit == "us")
    result = cal.fit(fast, ["stage_overhead_cycles"], WSE2)
    lo, _ = cal.param_bounds("stage_overhead_cycles", WSE2)
    assert lo <= result.values["stage_overhead_cycles"] <= lo + 0.05
    with pytest.raises(Exception, match="not a fittable"):
        cal.fit(fast, ["mesh_rows"], WSE2)


def test_calibrate_write_is_deterministic_on_a_copy(tmp_path, capsys):
    toml = tmp_path / "wse2.toml"
    shutil.copy(FROZEN, toml)
    before = toml.read_text()
    args = ["calibrate", "--wafer", str(FROZEN), "--write", "--toml", str(toml), "--date", "2025-01-02",
            "--cases", "C1-gemv-16k,C1-gemv-32k", "--params", "stage_overhead_cycles"]
    assert main(args) == 0
    first = toml.read_text()
    assert main(args) == 0
    assert toml.read_text() == first  # the same fit and date write the same bytes
    out = capsys.readouterr().out
    assert "stage_overhead_cycles" in out and "C1-gemv-16k" in out and "cost" in out
    changed = [(a, b) for a, b in zip(before.splitlines(), first.splitlines(), strict=True) if a != b]
    assert all(b.startswith("stage_overhead_cycles = ") for _, b in changed)  # only the fitted line may change
    line = next(ln for ln in first.splitlines() if ln.startswith("stage_overhead_cycles = "))
    assert "fitted by `wse-sim calibrate` on 2025-01-02 to C1-gemv-16k, C1-gemv-32k" in line
    fitted = load_wafer(str(toml)).stage_overhead_cycles
    expected = cal.fit(cal.select("C1-gemv-16k,C1-gemv-32k"), ["stage_overhead_cycles"], WSE2).values
    assert fitted == float(line.split("=")[1].split("#")[0]) == pytest.approx(expected["stage_overhead_cycles"],
                                                                             abs=0.05)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["calibrate", "--params", "mesh_rows"]) == 2
    assert main(["calibrate", "--cases", "nope"]) == 2
    assert main(["calibrate", "--toml", str(tmp_path / "x.toml")]) == 2  # --toml without --write
    assert main(["validate", "--cases", "nope", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("wse-sim: error:") == 4 and not (tmp_path / "v").exists()


def test_calibrate_write_needs_an_explicit_toml(tmp_path, capsys):
    copy = tmp_path / "w.toml"
    copy.write_text(FROZEN.read_text())
    for wafer in ("wse2", str(copy)):  # neither the installed preset nor the --wafer file is rewritten implicitly
        before = preset_path("wse2").read_text(), copy.read_text()
        assert main(["calibrate", "--wafer", wafer, "--write", "--cases", "nope"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "wse-sim: error: --write needs --toml FILE, the wafer TOML to rewrite (never an implicit " \
                      "preset file)"
        assert (preset_path("wse2").read_text(), copy.read_text()) == before


def test_validate_cli_writes_the_report(tmp_path, capsys):
    args = ["validate", "--wafer", str(FROZEN), "--out", str(tmp_path), "--cases", "C1-gemv-16k,C1-gemv-32k"]
    assert main(args) == 0
    assert "2 of 2 cases within 10%" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"validation.csv", "validation.md", "validation.png"}


def test_another_module_can_register_cases(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", [])
    case = cal.Case("X-constant", "a test figure", 2.0, "x", lambda wafer: 2.1)
    cal.register(case)
    assert cal.cases()[-1] is case and cal.run_cases([case], WSE2)[0].ok
    with pytest.raises(ValueError, match="already registered"):
        cal.register(case)
    with pytest.raises(ValueError, match="bound"):
        cal.Case("X-bad", "", 1.0, "x", lambda wafer: 1.0, bound="roughly")


def test_a_range_figure_passes_up_to_tolerance_beyond_either_end():
    """"2-3x": both ends and everything between pass, 10 % beyond an end still passes, more does not; the fit's
    residual is zero inside and the log distance to the nearer end outside."""
    case = cal.Case("X-range", "", 2.5, "x", lambda wafer: 1.0, bound="within", published_range=(2.0, 3.0))
    for simulated, ok in ((2.0, True), (3.0, True), (2.5, True), (1.8, True), (3.3, True), (1.79, False),
                          (3.31, False)):
        assert case.passes(simulated) is ok, simulated
    assert case.residual(2.0) == case.residual(2.99) == 0.0
    assert case.residual(1.5) == pytest.approx(math.log(1.5 / 2.0))
    assert case.residual(4.5) == pytest.approx(math.log(4.5 / 3.0))
    assert compared_with(case) == "in 2-3"
    with pytest.raises(ValueError, match="published_range"):
        cal.Case("X-bad", "", 2.5, "x", lambda wafer: 1.0, bound="within")  # a range needs its ends
    with pytest.raises(ValueError, match="published_range"):
        cal.Case("X-bad", "", 2.5, "x", lambda wafer: 1.0, published_range=(2.0, 3.0))  # ... and only a range
    with pytest.raises(ValueError, match="must hold"):
        cal.Case("X-bad", "", 3.5, "x", lambda wafer: 1.0, bound="within", published_range=(2.0, 3.0))
