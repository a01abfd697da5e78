"""Wafer presets, TOML overrides and grid parsing."""

import pytest

from wse_sim.arch import get_wafer, load_wafer, parse_grid
from wse_sim.arch.costs import compute_cycles, serialization_cycles, stream_cycles
from wse_sim.errors import UserError


def test_wse2_preset_matches_hardware_facts():
    w = get_wafer("wse2")
    # hardware.md §1a: usable program rectangle 750 (width) x 994 (height); §1: 48 KB SRAM per PE.
    assert (w.mesh_cols, w.mesh_rows) == (750, 994)
    assert w.pes == 745_500
    assert w.sram_bytes_per_pe == 49_152
    assert w.link_bytes_per_cycle == 4  # one 32-bit wavelet per cycle
    assert w.memoryx_bytes_per_cycle == pytest.approx(150e9 / w.clock_hz)


def test_toml_overrides_a_preset(tmp_path):
    f = tmp_path / "slow.toml"
    f.write_text('base = "wse2"\nclock_hz = 850e6\nmesh_rows = 100\n')
    w = load_wafer(str(f))
    assert w.clock_hz == 850e6 and w.mesh_rows == 100 and w.mesh_cols == 750 and w.name == "slow"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("clock_hz = ", "malformed TOML"),
        ("bogus = 3", "unknown key"),
        ("mesh_rows = -4", "mesh_rows must be a positive"),
        ('base = "wse9"', "unknown wafer"),
    ],
)
def test_bad_toml_is_a_user_error(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=match):
        load_wafer(str(f))


def test_unknown_wafer_and_missing_file():
    with pytest.raises(UserError, match="unknown wafer"):
        load_wafer("wse7")
    with pytest.raises(UserError, match="does not exist"):
        load_wafer("/nonexistent/w.toml")


def test_parse_grid():
    w = get_wafer("wse2")
    assert parse_grid(None, w) == (994, 750)
    assert parse_grid("420x420", w) == (420, 420)
    for bad in ("420", "0x4", "999x999", "axb"):
        with pytest.raises(UserError):
            parse_grid(bad, w)


def test_cost_formulas():
    w = get_wafer("wse2")
    assert compute_cycles(w, "fp16", 400) == 100  # 4 fp16 FMAC per cycle
    assert compute_cycles(w, "fp32", 400) == 400
    assert serialization_cycles(w, 10) == 3  # 4 bytes per cycle, rounded up
    assert stream_cycles(w, 150e9) == pytest.approx(w.clock_hz, rel=1e-9)
