"""Mappings: operator -> tiles, blocks, transfers and SRAM, as a task DAG the engine runs."""

from . import auto, cannon, gemv, meshgemm, pipelined, summa, systolic, weight_streaming  # noqa: F401  (each registers its mapping)
from .plan import DEFAULT_TILES, ModelPlan, OpPlan, SramOverflowError, Task, TaskKind, TileGrid, split
from .registry import get_mapping, mapping_names, register

__all__ = [
    "DEFAULT_TILES",
    "ModelPlan",
    "OpPlan",
    "SramOverflowError",
    "Task",
    "TaskKind",
    "TileGrid",
    "get_mapping",
    "mapping_names",
    "register",
    "split",
]
