"""The wafer: a 2D mesh of PEs with private SRAM, neighbour links and a MemoryX weight stream.

Preset values come from ../shared/facts/hardware.md; each is cited beside it. Where the sources disagree or are
silent, the value is a named field with its reasoning here, never a silent constant.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..errors import UserError

KIB = 1024


@dataclass(frozen=True)
class WaferSpec:
    """One wafer. Units are in the field names; a cycle is one tick of ``clock_hz``."""

    name: str
    mesh_rows: int  # usable PE rows (the program rectangle, not the marketing core count)
    mesh_cols: int
    clock_hz: float
    sram_bytes_per_pe: int
    fp16_fmac_per_pe_per_cycle: float  # also used for bf16
    fp32_fmac_per_pe_per_cycle: float
    link_bytes_per_cycle: float  # per link, per direction
    hop_latency_cycles: float  # router-to-router latency per PE hop
    stage_overhead_cycles: float  # software cost at a PE that receives, combines and re-sends (PLMR beta)
    turn_cycles: float  # extra latency when a route turns from a row into a column
    memoryx_bytes_per_s: float  # MemoryX -> wafer weight-stream bandwidth
    memoryx_capacity_bytes: float
    description: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("name", "description"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise UserError(f"wafer {self.name!r}: {f.name} must be a positive number, got {value!r}")
        if not isinstance(self.mesh_rows, int) or not isinstance(self.mesh_cols, int):
            raise UserError(f"wafer {self.name!r}: mesh_rows and mesh_cols must be integers")

    @property
    def pes(self) -> int:
        return self.mesh_rows * self.mesh_cols

    @property
    def memoryx_bytes_per_cycle(self) -> float:
        return self.memoryx_bytes_per_s / self.clock_hz

    def fmac_per_pe_per_cycle(self, precision: str) -> float:
        """FMACs per PE per cycle for a storage precision (bf16 runs on the 16-bit datapath)."""
        return self.fp32_fmac_per_pe_per_cycle if precision == "fp32" else self.fp16_fmac_per_pe_per_cycle

    def peak_flops_per_s(self, precision: str, pes: int | None = None) -> float:
        return 2.0 * self.fmac_per_pe_per_cycle(precision) * (pes or self.pes) * self.clock_hz

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Presets. Sources: ../shared/facts/hardware.md (section numbers below refer to it).
# ---------------------------------------------------------------------------------------------------------------

# Clock. hardware.md §1 and gap 1: WaferLLM (OSDI'25 §7 and its launch scripts) use 1.1 GHz for WSE-2/WSE-3;
# Cerebras SDK benchmark scripts convert cycles at 0.85 GHz. Unresolved, so it is a field: the presets take
# WaferLLM's 1.1 GHz because the published wafer measurements we calibrate against (calibration.md) use it.
# Override with `clock_hz = 850e6` in a wafer TOML for the SDK's convention.
CLOCK_HZ_WAFERLLM = 1.1e9

# Link: a 32-bit wavelet per link per cycle (SDK "A Conceptual View"; WaferLLM §7) -> 4 bytes/cycle/direction.
LINK_BYTES_PER_CYCLE = 4.0

# Hop latency: 2 cycles per hop (simprint multicast log, hardware.md §2a; calibration.md C4: simulator and
# silicon agree on 2 cycles/hop). The SC20 "single cycle per hop" quote is secondary.
HOP_LATENCY_CYCLES = 2.0

# Routing-stage overhead: the PLMR model's beta (hardware.md §2a, WaferLLM §3.1): each PE on a path that must
# receive, combine (add) and re-send a message - a stage of a chain or tree reduction - costs beta on top of the
# per-hop alpha, with alpha < beta. No source gives a number, so this is an uncalibrated default (2 x alpha) that
# issue 6's calibration fits; pure multicast forwarding in routers has no stage cost.
STAGE_OVERHEAD_CYCLES = 4.0

# A turn in a route (row -> column) costs extra latency: ~20 cycles on WSE-3 silicon in one group's
# characterisation (calibration.md C4, a candidate, not a vendor figure). Used for every preset until calibrated.
TURN_CYCLES = 20.0

# MemoryX -> CS-2 ingress: 12 x 100 GbE = 1.2 Tb/s = 150 GB/s (hardware.md §1 and §3, [S]/[P]).
MEMORYX_BYTES_PER_S_CS2 = 150e9
# CS-3 "enhances the ingress/egress bandwidth by 30%" (hardware.md §1 [P: docs.cerebras.ai]).
MEMORYX_BYTES_PER_S_CS3 = 1.3 * MEMORYX_BYTES_PER_S_CS2
# MemoryX capacity "can scale from 4TB to 2.4PB" (hardware.md §3 [P]); presets take the smallest configuration.
MEMORYX_CAPACITY_BYTES_MIN = 4e12

PRESETS: dict[str, WaferSpec] = {
    "wse1": WaferSpec(
        name="wse1",
        # No SDK program rectangle is published for WSE-1; ~400k cores (hardware.md §1 [S]) on the same die
        # area: we take a 633 x 633 square (400,689 PEs) as a documented stand-in.
        mesh_rows=633,
        mesh_cols=633,
        clock_hz=CLOCK_HZ_WAFERLLM,  # WSE-1 clock NOT FOUND (hardware.md §1); same convention as WSE-2.
        sram_bytes_per_pe=48 * KIB,  # 48 KB/core (hardware.md §1 [S: Tweakers; Rocki SC20])
        fp16_fmac_per_pe_per_cycle=4.0,  # assumed as WSE-2 (no WSE-1 figure found)
        fp32_fmac_per_pe_per_cycle=1.0,
        link_bytes_per_cycle=LINK_BYTES_PER_CYCLE,
        hop_latency_cycles=HOP_LATENCY_CYCLES,
        stage_overhead_cycles=STAGE_OVERHEAD_CYCLES,
        turn_cycles=TURN_CYCLES,
        memoryx_bytes_per_s=MEMORYX_BYTES_PER_S_CS2,  # 12 x 100 GbE on CS-1 too (hardware.md §1 [S])
        memoryx_capacity_bytes=MEMORYX_CAPACITY_BYTES_MIN,
        description="Cerebras WSE-1 (CS-1), 16 nm; mesh size is a stand-in (see source comments)",
    ),
    "wse2": WaferSpec(
        name="wse2",
        # Usable program rectangle on a CS-2: 750 x 994 (csl-examples single-tile-matvec, hardware.md §1a [P]):
        # 750 columns (width) x 994 rows (height).
        mesh_rows=994,
        mesh_cols=750,
        clock_hz=CLOCK_HZ_WAFERLLM,
        sram_bytes_per_pe=48 * KIB,  # "each core contains 48KB of SRAM" (WaferLLM §7 [P]); 49,152 B (C4)
        # 4-wide fp16 FMAC: 3.4M FPUs / 850k cores, and 7.5 PF dense fp16 per CS-2 (hardware.md §1b [D]).
        fp16_fmac_per_pe_per_cycle=4.0,
        # "fetch two 32-bit operands ... perform a multiply-accumulate" per cycle (WaferLLM §7 [P]).
        fp32_fmac_per_pe_per_cycle=1.0,
        link_bytes_per_cycle=LINK_BYTES_PER_CYCLE,
        hop_latency_cycles=HOP_LATENCY_CYCLES,
        stage_overhead_cycles=STAGE_OVERHEAD_CYCLES,
        turn_cycles=TURN_CYCLES,
        memoryx_bytes_per_s=MEMORYX_BYTES_PER_S_CS2,
        memoryx_capacity_bytes=MEMORYX_CAPACITY_BYTES_MIN,
        description="Cerebras WSE-2 (CS-2), 7 nm, 750 x 994 usable PEs",
    ),
    "wse3": WaferSpec(
        name="wse3",
        # Full fabric 762 x 1172; usable rectangle by the memcpy rule (width-7, height-2) = 755 x 1170
        # (hardware.md §1a [P]/[D]).
        mesh_rows=1170,
        mesh_cols=755,
        clock_hz=CLOCK_HZ_WAFERLLM,  # WaferLLM WSE-3 scripts use 1.1 GHz (hardware.md §1 [P])
        sram_bytes_per_pe=48 * KIB,  # "900K processing cores, each providing 48KB" (ALCF guide [P])
        # WSE-3 SIMD is 2x WSE-2's (simd_64 vs simd_32 in WaferLLM kernels; "16-bit unit operates on 8 data")
        # (hardware.md §1b [D]/[S]). C4 measures ~2.92 fp16 FMA/cycle on silicon: a known optimism.
        fp16_fmac_per_pe_per_cycle=8.0,
        fp32_fmac_per_pe_per_cycle=1.0,  # C4 measures 0.5/cycle on WSE-3 silicon; kept at WSE-2's value
        link_bytes_per_cycle=LINK_BYTES_PER_CYCLE,
        hop_latency_cycles=HOP_LATENCY_CYCLES,  # C4: 2 cycles/hop on WSE-3 silicon
        stage_overhead_cycles=STAGE_OVERHEAD_CYCLES,
        turn_cycles=TURN_CYCLES,
        memoryx_bytes_per_s=MEMORYX_BYTES_PER_S_CS3,
        memoryx_capacity_bytes=1.5e12,  # smallest WSE-3 external-memory option, 1.5 TB (hardware.md §3 [S])
        description="Cerebras WSE-3 (CS-3), 5 nm, 755 x 1170 usable PEs",
    ),
    # A small wafer for tests and PE-level runs: WSE-2 PEs, an 8 x 8 mesh.
    "tiny": WaferSpec(
        name="tiny",
        mesh_rows=8,
        mesh_cols=8,
        clock_hz=CLOCK_HZ_WAFERLLM,
        sram_bytes_per_pe=48 * KIB,
        fp16_fmac_per_pe_per_cycle=4.0,
        fp32_fmac_per_pe_per_cycle=1.0,
        link_bytes_per_cycle=LINK_BYTES_PER_CYCLE,
        hop_latency_cycles=HOP_LATENCY_CYCLES,
        stage_overhead_cycles=STAGE_OVERHEAD_CYCLES,
        turn_cycles=TURN_CYCLES,
        memoryx_bytes_per_s=MEMORYX_BYTES_PER_S_CS2,
        memoryx_capacity_bytes=MEMORYX_CAPACITY_BYTES_MIN,
        description="8 x 8 mesh of WSE-2 PEs, for tests",
    ),
}


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
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"wafer file {path}: malformed TOML ({exc})") from None
    base = get_wafer(str(data.pop("base", "wse2")))
    known = {f.name for f in fields(WaferSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"wafer file {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    data.setdefault("name", path.stem)
    return replace(base, **data)


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
