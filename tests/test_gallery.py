"""The README gallery and listings against what the code produces now.

``make gallery`` writes docs/img/gallery.json beside the images: the demo's run, figures and printed summary, the
example sweep's rows, and a digest of each image. These tests fail when the images, the record, the README and the
code's output disagree; the fix is to run ``make gallery`` and commit docs/img/ (and the README's demo output).
"""

import json
import re
from pathlib import Path

import pytest

from wse_sim.app import RunSpec, run
from wse_sim.app.sweep import fmt, load_sweep, run_point
from wse_sim.cli import main
from wse_sim.report import gallery

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
README = (ROOT / "README.md").read_text()
RECORD = json.loads((IMG / gallery.RECORD_NAME).read_text())
STALE = "stale gallery: run `make gallery` and commit docs/img/ (and the README's demo output)"


def test_committed_images_are_the_ones_the_record_describes():
    assert gallery.image_digests(IMG) == RECORD["images"], STALE


def fenced_blocks_after(marker: str) -> list[str]:
    """The fenced blocks' contents after the line holding ``marker`` in the README, in order."""
    return re.findall(r"```[^\n]*\n(.*?)```", README[README.index(marker):], flags=re.DOTALL)


def readme_demo_rows() -> dict[str, str]:
    """The summary rows of the demo output printed in the README (the block after the command): '  label  value'."""
    output = fenced_blocks_after("`make demo` runs")[1]
    return dict(re.split(r" {2,}", line.strip(), maxsplit=1) for line in output.splitlines()
                if line.startswith("  ") and re.search(r"\S {2,}\S", line))


def test_readme_demo_output_is_the_recorded_demo():
    printed = readme_demo_rows()
    recorded = RECORD["demo"]["summary"]
    assert {k: printed.get(k) for k in recorded} == recorded, STALE


@pytest.mark.parametrize("command", ["models", "wafers"])
def test_readme_listings_are_the_cli_output(command, capsys):
    assert main([command]) == 0
    assert f"$ wse-sim {command}\n{capsys.readouterr().out}" in README


def test_readme_mapping_table_names_every_mapping(capsys):
    assert main(["mappings"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    table = README[README.index("| name | weights | matmul dataflow |"):].split("\n\n", 1)[0]
    in_table = set(re.findall(r"^\| `([\w-]+)` \|", table, flags=re.MULTILINE))
    assert in_table == listed


def sweep_points() -> list[dict]:
    return load_sweep(ROOT / RECORD["sweep"]["file"]).points


def spec_key(cells: dict) -> str:
    """A sweep point's identity: its spec columns as CSV text, in a canonical order."""
    return json.dumps({k: v if isinstance(v, str) else fmt(v) for k, v in cells.items()}, sort_keys=True)


def test_recorded_sweep_covers_the_sweep_file():
    recorded = sorted(spec_key(r["spec"]) for r in RECORD["sweep"]["rows"])
    assert recorded == sorted(spec_key(p) for p in sweep_points()), STALE


def assert_rows_rerun(rows: list[dict]) -> None:
    """Run each recorded sweep row's point again and compare its figures (or that it still fails)."""
    points = {spec_key(p): p for p in sweep_points()}
    for row in rows:
        fresh = run_point(points[spec_key(row["spec"])])
        if row["error"]:
            assert fresh["error"] == row["error"], STALE
            continue
        assert {k: fresh[k] for k in gallery.FIGURES} == pytest.approx(
            {k: row[k] for k in gallery.FIGURES}, rel=1e-12), f"{row['spec']}: {STALE}"


def test_sweep_extremes_are_what_the_code_gives_now():
    """The rows with the lowest and highest tokens/s (what sweep.png's conclusion rests on), run again."""
    ok = [r for r in RECORD["sweep"]["rows"] if not r["error"]]
    assert_rows_rerun([min(ok, key=lambda r: r["tokens_per_s"]), max(ok, key=lambda r: r["tokens_per_s"])])


@pytest.mark.slow
def test_every_sweep_row_is_what_the_code_gives_now():
    assert_rows_rerun(RECORD["sweep"]["rows"])


def test_recorded_demo_is_what_the_code_gives_now():
    """The demo again, timing only (numerics do not change the cycles): the same figures and summary rows."""
    recorded = RECORD["demo"]
    out = run(RunSpec(**recorded["spec"], numerics=False), log=lambda _m: None, progress=False)
    fresh = gallery.demo_record(out.report)
    for key in ("spec", *gallery.FIGURES, "mean_busy_fraction"):
        assert fresh[key] == recorded[key], f"{key}: {STALE}"
    shared = recorded["summary"].keys() & fresh["summary"].keys()  # numerics rows differ when they are off
    assert {"total cycles", "MFU", "tile busy (mean)", "cycles split"} <= shared
    assert {k: fresh["summary"][k] for k in shared} == {k: recorded["summary"][k] for k in shared}, STALE
