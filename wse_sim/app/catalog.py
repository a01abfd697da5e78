"""What can be chosen: the model, wafer and mapping presets, for listings and for checking names up front."""

from __future__ import annotations

import sys

from ..arch import PRESETS as WAFER_PRESETS
from ..arch import WaferSpec, load_wafer
from ..arch.wafer import preset_path
from ..mapping import get_mapping, mapping_names
from ..workloads import PRESETS as MODEL_PRESETS
from ..workloads import ModelConfig
from .scenario import RunSpec, resolve_model

__all__ = ["MODEL_PRESETS", "WAFER_PRESETS", "check_names", "load_wafer", "mapping_docs", "mapping_names",
           "preset_path"]


def mapping_docs() -> list[tuple[str, str]]:
    """(name, first line of the mapping module's docstring) for every registered mapping."""
    out = []
    for name in mapping_names():
        doc = (sys.modules[type(get_mapping(name)).__module__].__doc__ or "").strip().splitlines()[0]
        out.append((name, doc))
    return out


def check_names(spec: RunSpec) -> tuple[ModelConfig, WaferSpec]:
    """The model and wafer of ``spec``, loaded: a bad name is one user error before any work starts."""
    config, _ = resolve_model(spec)
    return config, load_wafer(spec.wafer)
