"""Per-action energies of a wafer: what each action the engine simulates costs, in picojoules, plus static power.

No per-action energy is published for any WSE (../shared/facts/hardware.md section 7: NOT FOUND), so each
constant is built by one documented method (docs/energy.md):

1. Start from the 45 nm, 0.9 V per-operation energies of Horowitz, "Computing's energy problem (and what we can
   do about it)", ISSCC 2014 (the table Accelergy's and most accelerator models' tables derive from): fp16 add
   0.4 pJ, fp16 mult 1.1 pJ, fp32 add 0.9 pJ, fp32 mult 3.7 pJ, an 8 KB SRAM 64-bit access 10 pJ, a simple
   in-order core's instruction overhead (fetch, decode, register file, pipeline) about 20 pJ per instruction.
2. Scale 45 nm -> 7 nm (WSE-2) by a factor ``PROCESS_SCALE_7NM = 0.2`` (5x), the order of the energy-per-operation
   reduction predicted by Stillmaker & Baas, "Scaling equations for the accurate prediction of CMOS device
   performance from 180 nm to 7 nm", Integration 58 (2017), at nominal voltage; rounded, an assumption, not a
   value read from their tables. 7 nm -> 5 nm (WSE-3): TSMC N5's "-30 % power at iso-speed" over N7 (x0.7);
   16 nm (WSE-1) -> 7 nm: N16 -> N10 -> N7, each "-40 % power" (x0.36), so WSE-1 is 7 nm / 0.36 = x2.8.
3. Wires: the fabric moves one 32-bit wavelet one PE pitch (sqrt(38,000 um^2) = 0.195 mm, HC34 core area, HW
   section 1b [S]) per hop: 32 bit x 0.195 mm x 0.15 pJ/bit/mm (a 7 nm semi-global wire, Dally's "moving data
   costs more than computing" scaling) = 0.94 pJ, plus about 0.5 pJ for the router's input queue and crossbar.
4. Static power: leakage about 10 % of the HC34 per-core peak of 30 mW (HW section 7 [S]): 3 mW per PE.
5. The system around the wafer (power supplies, pumps, fans, I/O): 23 kW system - 15 kW wafer = 8 kW
   (HW section 7 [S]/[D]).

Check (docs/energy.md, tests/test_energy.py): every WSE-2 PE doing 4 fp16 FMACs per cycle lands at about 11.4 kW
on the wafer (inside the 15 kW published figure) and about 19.4 kW for the system (inside 23 kW); a PE with its
FMACs and all eight link directions busy draws about 28 mW, below the HC34 30 mW per-core peak.
"""

from __future__ import annotations

from typing import NamedTuple

PROCESS_SCALE_7NM = 0.2  # 45 nm -> 7 nm energy per operation (method step 2)

# Horowitz ISSCC 2014, 45 nm 0.9 V, pJ (method step 1)
H45_FP16_ADD, H45_FP16_MULT = 0.4, 1.1
H45_FP32_ADD, H45_FP32_MULT = 0.9, 3.7
H45_SRAM_8KB_64BIT = 10.0  # per 64-bit access of an 8 KB bank (WSE-2's 48 KB is 8 banks of 6 KB, HW section 1b)
H45_INSTRUCTION_OVERHEAD = 20.0  # simple in-order core, per issued instruction (fetch, decode, RF, pipeline)

ENERGY_FIELDS = ("fmac_fp16_pj", "fmac_fp32_pj", "sram_read_pj_per_byte", "sram_write_pj_per_byte",
                 "wavelet_hop_pj", "turn_pj_per_wavelet", "pe_active_cycle_pj", "pe_idle_cycle_pj",
                 "static_w_per_pe", "memoryx_pj_per_byte", "interwafer_pj_per_byte", "system_overhead_w")


class ActionEnergies(NamedTuple):
    """A wafer's per-action energies (the WaferSpec fields of ``ENERGY_FIELDS``), units in the names."""

    fmac_fp16_pj: float  # one fp16/bf16 FMAC (also one elementwise op on the 16-bit datapath)
    fmac_fp32_pj: float
    sram_read_pj_per_byte: float
    sram_write_pj_per_byte: float
    wavelet_hop_pj: float  # one 32-bit wavelet crossing one PE-to-PE link (wire + router)
    turn_pj_per_wavelet: float  # extra router pass of a wavelet whose route turns from a row into a column
    pe_active_cycle_pj: float  # instruction issue, register file, pipeline and clock of a busy PE, per cycle
    pe_idle_cycle_pj: float  # clock tree and idle loop of a PE that is not computing, per cycle
    static_w_per_pe: float  # leakage, per PE of the wafer (used or not)
    memoryx_pj_per_byte: float  # MemoryX DRAM read + 100 GbE to the wafer, per weight byte
    interwafer_pj_per_byte: float  # 100 GbE NIC + switch + NIC, per activation byte between wafers
    system_overhead_w: float  # per CS system: power delivery, cooling, I/O (not the wafer)

    @classmethod
    def of(cls, wafer) -> ActionEnergies:
        return cls(*(getattr(wafer, f) for f in ENERGY_FIELDS))

    def fmac_pj(self, precision: str) -> float:
        return self.fmac_fp32_pj if precision == "fp32" else self.fmac_fp16_pj


def wse2_defaults() -> dict[str, float]:
    """The WSE-2 (7 nm) values by the method above (the WaferSpec defaults and presets/wse2.toml)."""
    s = PROCESS_SCALE_7NM
    sram = H45_SRAM_8KB_64BIT / 8 * s  # pJ per byte
    return {
        "fmac_fp16_pj": round((H45_FP16_ADD + H45_FP16_MULT) * s, 4),
        "fmac_fp32_pj": round((H45_FP32_ADD + H45_FP32_MULT) * s, 4),
        "sram_read_pj_per_byte": round(sram, 4),
        "sram_write_pj_per_byte": round(sram, 4),
        "wavelet_hop_pj": 1.44,  # 32 bit x 0.195 mm x 0.15 pJ/bit/mm + 0.5 pJ router (step 3)
        "turn_pj_per_wavelet": 0.5,  # one more router crossbar pass (step 3)
        "pe_active_cycle_pj": round(H45_INSTRUCTION_OVERHEAD * s, 4),
        "pe_idle_cycle_pj": 1.0,  # a quarter of the active overhead: the clock tree keeps toggling (assumption)
        "static_w_per_pe": 3e-3,  # step 4
        "memoryx_pj_per_byte": 200.0,  # DDR4 read ~15 pJ/bit + 100 GbE NIC/switch/optics ~10 pJ/bit = 25 pJ/bit
        "interwafer_pj_per_byte": 80.0,  # 100 GbE NIC + switch + NIC ~10 pJ/bit
        "system_overhead_w": 8000.0,  # 23 kW CS-2 system - 15 kW WSE-2 (step 5)
    }
