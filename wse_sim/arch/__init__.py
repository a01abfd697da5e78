"""Hardware description: the wafer spec, its presets and TOML overrides."""

from .wafer import PRESETS, WaferSpec, get_wafer, load_wafer, parse_grid

__all__ = ["PRESETS", "WaferSpec", "get_wafer", "load_wafer", "parse_grid"]
