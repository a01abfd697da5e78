"""One registry of mappings by name: ``--mapping NAME`` everywhere resolves here, and so does every question
about what a mapping can do (callers ask :func:`mapping_info`, never compare names)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..arch import WaferSpec
from ..errors import UserError
from ..workloads import WorkloadGraph
from .plan import ModelPlan, TileGrid


class Mapping(Protocol):
    """A mapping turns a lowered workload on a tile grid into a plan (one OpPlan per op)."""

    name: str

    def plan(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> ModelPlan: ...


@dataclass(frozen=True)
class MappingInfo:
    """What a registered mapping can do; ``options`` are the keyword arguments :func:`get_mapping` accepts."""

    name: str
    resident: bool = False  # every weight stays in PE SRAM (nothing streams from MemoryX)
    square_tiles: bool = False  # needs as many tile rows as tile columns
    gemv: bool = False  # built for M = 1 (decode); plans any M
    searches: bool = False  # picks other mappings per matmul (and tile grids) by simulating: needs the engine
    whole_model: bool = False  # plans whole models only, not a single matmul
    options: tuple[str, ...] = ()


_REGISTRY: dict[str, tuple[MappingInfo, Callable[..., Mapping]]] = {}


def register(name: str, **capabilities: bool):
    """Class decorator: register ``name`` with its capabilities; its options are its constructor's keywords."""
    def deco(factory):
        options = tuple(p for p in inspect.signature(factory).parameters if p != "self")
        _REGISTRY[name] = (MappingInfo(name, options=options, **capabilities), factory)
        return factory

    return deco


def mapping_names() -> list[str]:
    return sorted(_REGISTRY)


def mapping_info(name: str) -> MappingInfo:
    """The capabilities of mapping ``name`` (a UserError if none is registered under it)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown mapping {name!r} (known: {', '.join(mapping_names())})")
    return _REGISTRY[name][0]


def get_mapping(name: str, **options) -> Mapping:
    """Mapping ``name`` built with ``options`` (e.g. ``get_mapping("gemv-tree", fan_in=4)``)."""
    info = mapping_info(name)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise UserError(f"mapping {name!r} takes no option {', '.join(unknown)} "
                        f"(its options: {', '.join(info.options) or 'none'})")
    return _REGISTRY[name][1](**options)
