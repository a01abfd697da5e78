"""Bad input and interrupted runs (issue 14 part 2): one-line errors, exit 2, nothing written."""

from dataclasses import fields

import pytest

from wse_sim.app.scenario import MEMORY_BASE_BYTES, make_grid, memory_estimate_bytes
from wse_sim.arch import load_wafer
from wse_sim.arch.wafer import WaferSpec
from wse_sim.cli import main
from wse_sim.errors import UserError

NUMERIC_FIELDS = [f.name for f in fields(WaferSpec) if f.name not in ("name", "description")]


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

