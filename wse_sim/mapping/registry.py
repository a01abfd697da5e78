"""One registry of mappings by name: ``--mapping NAME`` everywhere resolves here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..arch import WaferSpec
from ..errors import UserError
from ..workloads import WorkloadGraph
from .plan import ModelPlan, TileGrid


class Mapping(Protocol):
    """A mapping turns a lowered workload on a tile grid into a plan (one OpPlan per op)."""

    name: str

    def plan(self, graph: WorkloadGraph, wafer: WaferSpec, grid: TileGrid) -> ModelPlan: ...


_REGISTRY: dict[str, Callable[[], Mapping]] = {}


def register(name: str):
    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def mapping_names() -> list[str]:
    return sorted(_REGISTRY)


def get_mapping(name: str) -> Mapping:
    if name not in _REGISTRY:
        raise UserError(f"unknown mapping {name!r} (known: {', '.join(mapping_names())})")
    return _REGISTRY[name]()
