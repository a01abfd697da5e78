"""The wafer: a 2D mesh of PEs with private SRAM, neighbour links and a MemoryX weight stream.

Preset values live in ``presets/<name>.toml`` (package data), each with its unit and its source in
../shared/facts/hardware.md or calibration.md beside it; where the sources disagree or are silent, the comment
says so and why the value was chosen, or that ``wse-sim calibrate`` fitted it. A preset may name a ``base``
preset and override some of its keys, as user TOML files do.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from ..errors import UserError
from .energy import ENERGY_FIELDS, wse2_defaults

KIB = 1024
PRESET_DIR = Path(__file__).with_name("presets")
PRESET_ORDER = ("wse1", "wse2", "wse3", "tiny")  # listing order of `wse-sim wafers`; other files follow sorted
INT_FIELDS = ("mesh_rows", "mesh_cols", "wavelet_bytes", "reduce_fan_in", "spare_rows", "spare_cols",
              "retired_mesh_rows")
DEFECT_FIELDS = ("spare_rows", "spare_cols", "defect_density_per_mm2", "pe_area_mm2", "link_area_mm2",
                 "retired_mesh_rows")
# zero switches the cost off; every other number is positive
NON_NEGATIVE_FIELDS = ("phase_overhead_cycles", "dsd_op_overhead_cycles", "gemm_step_sw_cycles", *ENERGY_FIELDS,
                       "spare_rows", "spare_cols", "defect_density_per_mm2",
                       "link_area_mm2", "retired_mesh_rows")
_E = wse2_defaults()  # per-action energies, WSE-2 by the method of wse_sim.arch.energy (docs/energy.md)
# in the report's ``energy.parameters`` and ``defects``, not its ``wafer``
REPORT_EXCLUDED = frozenset(ENERGY_FIELDS) | frozenset(DEFECT_FIELDS)


def _is_number(value) -> bool:
    """A finite int or float (not a bool, inf or nan)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class WaferSpec:
    """One wafer. Units are in the field names; a cycle is one tick of ``clock_hz``.

    The fabric cost model's physical parameters: ``cycles_per_wavelet`` (a ``wavelet_bytes`` message crossing one
    link), ``hop_latency_cycles`` (router to router), ``turn_cycles`` (a route changing dimension),
    ``stage_overhead_cycles`` (software at a PE that receives, combines and re-sends: the PLMR model's beta),
    ``phase_overhead_cycles`` (starting one fabric operation: once per collective phase, whatever its length) and
    ``reduce_fan_in`` (members per group of a reduction tree). ``link_bytes_per_cycle`` derives from the first two.
    The PE's instruction costs: ``dsd_op_overhead_cycles`` (issuing one vector instruction, beyond its SIMD
    work) and ``gemm_step_sw_cycles`` (the software between two PE-level steps of a GEMM k-loop).
    """

    name: str
    mesh_rows: int  # usable PE rows (the program rectangle, not the marketing core count)
    mesh_cols: int
    clock_hz: float
    sram_bytes_per_pe: int
    fp16_fmac_per_pe_per_cycle: float  # also used for bf16
    fp32_fmac_per_pe_per_cycle: float
    hop_latency_cycles: float  # router-to-router latency per PE hop
    stage_overhead_cycles: float  # software cost at a PE that receives, combines and re-sends (PLMR beta)
    turn_cycles: float  # extra latency when a route turns from a row into a column
    phase_overhead_cycles: float  # starting one fabric operation (a collective phase, a PE-level GEMM step); >= 0
    memoryx_bytes_per_s: float  # MemoryX -> wafer weight-stream bandwidth
    memoryx_capacity_bytes: float
    description: str = ""
    wavelet_bytes: int = 4  # one fabric message (wavelet): 32 bits
    cycles_per_wavelet: float = 1.0  # per link, per direction
    reduce_fan_in: int = 32  # members per group at each level of a reduction tree (MeshGEMV's group size)
    interwafer_bytes_per_s: float = 150e9  # one wafer's system I/O to the next wafer of a multi-wafer pipeline
    interwafer_latency_s: float = 5e-6  # first byte out of one wafer to first byte into the next
    dsd_op_overhead_cycles: float = 0.0  # issue cost of one vector (DSD) instruction beyond its SIMD work; >= 0
    gemm_step_sw_cycles: float = 0.0  # serial PE software per PE-level GEMM step (task switches, DSR reloads); >= 0
    # ---- energy (wse_sim.arch.energy; docs/energy.md): picojoules per action, watts ----
    fmac_fp16_pj: float = _E["fmac_fp16_pj"]
    fmac_fp32_pj: float = _E["fmac_fp32_pj"]
    sram_read_pj_per_byte: float = _E["sram_read_pj_per_byte"]
    sram_write_pj_per_byte: float = _E["sram_write_pj_per_byte"]
    wavelet_hop_pj: float = _E["wavelet_hop_pj"]
    turn_pj_per_wavelet: float = _E["turn_pj_per_wavelet"]
    pe_active_cycle_pj: float = _E["pe_active_cycle_pj"]
    pe_idle_cycle_pj: float = _E["pe_idle_cycle_pj"]
    static_w_per_pe: float = _E["static_w_per_pe"]
    memoryx_pj_per_byte: float = _E["memoryx_pj_per_byte"]
    interwafer_pj_per_byte: float = _E["interwafer_pj_per_byte"]
    system_overhead_w: float = _E["system_overhead_w"]
    # ---- defects (wse_sim.arch.defects; docs/defects.md) ----
    spare_rows: int = 2  # physical PE rows beyond mesh_rows that replace retired rows
    spare_cols: int = 8  # spare PEs at the end of every physical row (a row shifts past a dead PE)
    defect_density_per_mm2: float = 0.001  # failed-core density; TSMC 5 nm ~0.001/mm^2 (Cerebras blog, HW §7 [P])
    pe_area_mm2: float = 0.038  # one PE (core + SRAM + router); HC34 ~38,000 um^2 (HW §1b [S])
    # area whose defect kills one PE-to-PE link (its wires and drivers): NOT FOUND for any WSE, so 0 (no failed
    # links drawn); a TOML override draws each link failing at defect_density x this (docs/defects.md)
    link_area_mm2: float = 0.0
    # usable rows lost to defects (set by wse_sim.arch.defects.usable_wafer, not a TOML parameter): their PEs are
    # still on the wafer and powered, so the energy's static and idle power count them (``powered_pes``)
    retired_mesh_rows: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("name", "description"):
                continue
            value = getattr(self, f.name)
            zero_ok = f.name in NON_NEGATIVE_FIELDS
            if not _is_number(value) or not (value >= 0 if zero_ok else value > 0):
                kind = "a non-negative" if zero_ok else "a positive"
                raise UserError(f"wafer {self.name!r}: {f.name} must be {kind} finite number, got {value!r}")
        for key in INT_FIELDS:
            if not isinstance(getattr(self, key), int):
                raise UserError(f"wafer {self.name!r}: {key} must be an integer, got {getattr(self, key)!r}")
        if self.reduce_fan_in < 2:
            raise UserError(f"wafer {self.name!r}: reduce_fan_in must be at least 2, got {self.reduce_fan_in}")

    @property
    def pes(self) -> int:
        return self.mesh_rows * self.mesh_cols

    @property
    def powered_pes(self) -> int:
        """PEs drawing static and idle power: the usable mesh plus the rows defects took out of it."""
        return (self.mesh_rows + self.retired_mesh_rows) * self.mesh_cols

    @property
    def link_bytes_per_cycle(self) -> float:
        """Bytes per cycle per link and direction: one wavelet every ``cycles_per_wavelet``."""
        return self.wavelet_bytes / self.cycles_per_wavelet

    @property
    def memoryx_bytes_per_cycle(self) -> float:
        return self.memoryx_bytes_per_s / self.clock_hz

    def fmac_per_pe_per_cycle(self, precision: str) -> float:
        """FMACs per PE per cycle for a storage precision (bf16 runs on the 16-bit datapath)."""
        return self.fp32_fmac_per_pe_per_cycle if precision == "fp32" else self.fp16_fmac_per_pe_per_cycle

    def peak_flops_per_cycle(self, precision: str, pes: int | None = None) -> float:
        """FLOPs per cycle of ``pes`` PEs (default: the whole mesh), every FMAC lane busy: 2 FLOPs per FMAC."""
        return 2.0 * self.fmac_per_pe_per_cycle(precision) * (pes or self.pes)

    def peak_flops_per_s(self, precision: str, pes: int | None = None) -> float:
        return self.peak_flops_per_cycle(precision, pes) * self.clock_hz

    def to_dict(self) -> dict:
        """The report's ``wafer``: every field but the energy ones (the report's ``energy.parameters``)."""
        out = {k: v for k, v in asdict(self).items() if k not in REPORT_EXCLUDED}
        return out | {"link_bytes_per_cycle": self.link_bytes_per_cycle}

    @property
    def defect_rate_per_pe(self) -> float:
        """Probability that a PE is dead: the published defect density times the PE's area."""
        return self.defect_density_per_mm2 * self.pe_area_mm2

    @property
    def link_defect_ratio(self) -> float:
        """A link's failure probability over a PE's: their areas' ratio (the same defect density kills both)."""
        return self.link_area_mm2 / self.pe_area_mm2

    def energy_dict(self) -> dict:
        return {k: getattr(self, k) for k in ENERGY_FIELDS}


FIELD_NAMES = frozenset(f.name for f in fields(WaferSpec)) - {"retired_mesh_rows"}  # TOML keys
LEGACY_KEYS = frozenset({"link_bytes_per_cycle"})  # accepted in TOML files, converted to cycles_per_wavelet


def _parse_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"wafer file {path}: malformed TOML ({exc})") from None


def apply_overrides(base: WaferSpec, data: dict, where: str) -> WaferSpec:
    """``base`` with the keys of ``data`` (TOML values) replaced; unknown keys are a :class:`UserError`."""
    data = dict(data)
    unknown = sorted(set(data) - FIELD_NAMES - LEGACY_KEYS)
    if unknown:
        known = ", ".join(sorted(FIELD_NAMES | LEGACY_KEYS))
        raise UserError(f"wafer file {where}: unknown key(s) {', '.join(unknown)} (known: {known})")
    if "link_bytes_per_cycle" in data:
        link = data.pop("link_bytes_per_cycle")
        if not _is_number(link) or not link > 0:
            raise UserError(f"wafer file {where}: link_bytes_per_cycle must be a positive finite number, got {link!r}")
        data["cycles_per_wavelet"] = data.get("wavelet_bytes", base.wavelet_bytes) / link
    return replace(base, **data)


def _load_presets() -> dict[str, WaferSpec]:
    """Every ``presets/*.toml``; a preset with ``base`` starts from that preset (resolved in any file order)."""
    raw = {p.stem: _parse_toml(p) for p in sorted(PRESET_DIR.glob("*.toml"))}
    out: dict[str, WaferSpec] = {}

    def resolve(name: str, seen: tuple[str, ...] = ()) -> WaferSpec:
        if name in out:
            return out[name]
        if name not in raw or name in seen:
            raise RuntimeError(f"wafer presets: base {name!r} is missing or circular ({' -> '.join(seen)})")
        data = dict(raw[name])
        base = data.pop("base", None)
        where = str(PRESET_DIR / f"{name}.toml")
        if base is None:
            missing = sorted(f.name for f in fields(WaferSpec) if f.name not in data and f.default is MISSING)
            if missing:
                raise RuntimeError(f"wafer preset {where} lacks {', '.join(missing)}")
            out[name] = WaferSpec(**data)
        else:
            out[name] = apply_overrides(resolve(base, (*seen, name)), {"name": name, **data}, where)
        return out[name]

    for name in raw:
        resolve(name)
    order = [n for n in PRESET_ORDER if n in out] + sorted(set(out) - set(PRESET_ORDER))
    return {n: out[n] for n in order}


PRESETS: dict[str, WaferSpec] = _load_presets()


def preset_path(name: str) -> Path:
    """The TOML file a preset is read from (what ``wse-sim calibrate --write`` rewrites)."""
    get_wafer(name)
    return PRESET_DIR / f"{name.lower()}.toml"


def get_wafer(name: str) -> WaferSpec:
    key = name.lower()
    if key not in PRESETS:
        raise UserError(f"unknown wafer {name!r} (presets: {', '.join(PRESETS)}; or a path to a .toml file)")
    return PRESETS[key]


def load_wafer(name_or_path: str) -> WaferSpec:
    """A preset name, or a TOML file whose keys override a preset (``base = "wse2"``, the default)."""
    path = Path(name_or_path)
    if not name_or_path.endswith(".toml"):
        return get_wafer(name_or_path)
    if not path.is_file():
        raise UserError(f"wafer file {path} does not exist")
    data = _parse_toml(path)
    base = get_wafer(str(data.pop("base", "wse2")))
    data.setdefault("name", path.stem)
    return apply_overrides(base, data, str(path))


def parse_grid(spec: str | None, wafer: WaferSpec) -> tuple[int, int]:
    """``"ROWSxCOLS"`` -> (rows, cols), a sub-rectangle of the wafer; None -> the whole usable mesh."""
    if spec is None:
        return wafer.mesh_rows, wafer.mesh_cols
    try:
        rows_s, cols_s = spec.lower().split("x")
        rows, cols = int(rows_s), int(cols_s)
    except ValueError:
        raise UserError(f"grid {spec!r} is not of the form ROWSxCOLS (e.g. 420x420)") from None
    if rows <= 0 or cols <= 0:
        raise UserError(f"grid {spec!r}: sizes must be positive")
    if rows > wafer.mesh_rows or cols > wafer.mesh_cols:
        raise UserError(
            f"grid {rows}x{cols} does not fit wafer {wafer.name} ({wafer.mesh_rows}x{wafer.mesh_cols} usable PEs)"
        )
    return rows, cols
