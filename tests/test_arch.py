"""Wafer presets, TOML overrides and grid parsing."""

import math

import pytest

from wse_sim.arch import get_wafer, load_wafer, parse_grid
from wse_sim.arch.costs import compute_cycles, serialization_cycles, stream_cycles, transfer_cycles
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
        ('clock_hz = "fast"', "clock_hz must be a positive"),
        ("phase_overhead_cycles = -1.0", "phase_overhead_cycles must be a non-negative"),
        ('phase_overhead_cycles = "x"', "phase_overhead_cycles must be a non-negative"),
        ('base = "wse9"', "unknown wafer"),
    ],
)
def test_bad_toml_is_a_user_error(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=match):
        load_wafer(str(f))


def test_phase_overhead_may_be_zero(tmp_path):
    f = tmp_path / "nophase.toml"
    f.write_text("phase_overhead_cycles = 0.0")
    assert load_wafer(str(f)).phase_overhead_cycles == 0.0


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


def test_transfer_latency_adds_hops_stages_and_turns(tmp_path):
    w = get_wafer("wse2")
    ser, lat = transfer_cycles(w, bytes_per_lane=40, hops=10)
    assert (ser, lat) == (10, 10 * w.hop_latency_cycles)  # 40 B / 4 B per cycle; 10 hops
    _, lat_staged = transfer_cycles(w, 40, 10, stages=3, turns=1)
    assert lat_staged - lat == math.ceil(3 * w.stage_overhead_cycles) + w.turn_cycles  # stages rounded up together
    f = tmp_path / "w.toml"
    f.write_text('base = "wse2"\nturn_cycles = 7\nstage_overhead_cycles = 1.5\n')
    w2 = load_wafer(str(f))
    assert transfer_cycles(w2, 40, 10, stages=2, turns=1)[1] == 10 * w.hop_latency_cycles + 3 + 7


def test_routes_turn_once_when_they_change_dimension():
    from wse_sim.mapping import TileGrid
    from wse_sim.mapping.collectives import Message, route

    g = TileGrid.make(8, 8, 4, 4)
    straight = route(g, [Message((1, 0), (1, 3), 5, 7, 10), Message((0, 2), (3, 2), 5, 7, 10)])
    assert straight.turns == 0 and straight.hops == 6 and straight.nbytes == 20
    bent = route(g, [Message((0, 0), (2, 3), 5, 7, 10)])
    assert bent.turns == 1 and bent.hops == 4 + 6
    # XY routing: along row 0 to column 3 (3 links, row lanes), then down column 3 (2 links, column lanes)
    assert len(bent.links) == 5 and bent.bytes_per_lane == 7


def test_presets_come_from_commented_toml_files():
    """Every value in a preset file carries a comment (its unit and source), inline or in the block above it."""
    from wse_sim.arch.wafer import PRESET_DIR, PRESETS

    assert list(PRESETS) == ["wse1", "wse2", "wse3", "tiny"]
    for path in sorted(PRESET_DIR.glob("*.toml")):
        lines = path.read_text().splitlines()
        for k, line in enumerate(lines):
            if "=" in line and not line.startswith("#") and line.split("=")[0].strip() not in ("name", "description",
                                                                                               "base"):
                assert "#" in line or lines[k - 1].startswith("#"), f"{path.name}: {line!r} has no comment"
    w2, w3, tiny = get_wafer("wse2"), get_wafer("wse3"), get_wafer("tiny")
    assert tiny.mesh_rows == 8 and tiny.stage_overhead_cycles == w2.stage_overhead_cycles  # base = "wse2"
    # one NoC: wse3 inherits wse2's hop latency with the beta and phase fitted together with it (wse3.toml)
    assert w3.hop_latency_cycles == w2.hop_latency_cycles and w3.stage_overhead_cycles == w2.stage_overhead_cycles
    assert w3.phase_overhead_cycles == w2.phase_overhead_cycles and w3.turn_cycles == w2.turn_cycles == 20.0
    assert w3.interwafer_bytes_per_s == pytest.approx(1.3 * w2.interwafer_bytes_per_s)  # CS-3: +30 % I/O
    assert w2.interwafer_bytes_per_s == 150e9 and 0 < w2.interwafer_latency_s < 1e-3
    assert w2.reduce_fan_in == 32 and isinstance(w2.reduce_fan_in, int)
    assert w2.link_bytes_per_cycle == w2.wavelet_bytes / w2.cycles_per_wavelet == 4
    assert w2.to_dict()["link_bytes_per_cycle"] == 4  # reports keep the derived field


def test_link_bytes_per_cycle_still_works_in_override_files(tmp_path):
    f = tmp_path / "slow_links.toml"
    f.write_text('base = "wse2"\nlink_bytes_per_cycle = 2.0\n')
    w = load_wafer(str(f))
    assert w.cycles_per_wavelet == 2.0 and w.link_bytes_per_cycle == 2.0
    assert serialization_cycles(w, 10) == 6  # 3 wavelets of 4 bytes, 2 cycles each
    f.write_text('base = "wse2"\nreduce_fan_in = 1\n')
    with pytest.raises(UserError, match="reduce_fan_in must be at least 2"):
        load_wafer(str(f))
    f.write_text('base = "wse2"\nreduce_fan_in = 2.5\n')
    with pytest.raises(UserError, match="reduce_fan_in must be an integer"):
        load_wafer(str(f))


def test_interwafer_cycles():
    """Serialization = bytes at the link's bandwidth; latency = the link's plus the on-wafer hops."""
    from wse_sim.arch.costs import interwafer_cycles

    w = get_wafer("wse2")
    assert interwafer_cycles(w, 0) == (0, pytest.approx(w.interwafer_latency_s * w.clock_hz, abs=1))
    ser, lat = interwafer_cycles(w, 150e6, hops=300)
    assert ser == pytest.approx(150e6 / w.interwafer_bytes_per_s * w.clock_hz, abs=1)
    assert lat - interwafer_cycles(w, 0)[1] == 300 * w.hop_latency_cycles
