"""Training-cluster parameters: the SwarmX broadcast/reduce tree and MemoryX's optimizer rate.

One table per wafer preset in ``presets/cluster/clusters.toml`` (each value with its source or marked as an assumption);
wafers without a table (``tiny``, ``wse1``, user files) take ``wse2``'s. Kept out of :class:`WaferSpec` so that
inference reports, which print every wafer field, stay as they were.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace

from ..errors import UserError
from .wafer import PRESET_DIR


@dataclass(frozen=True)
class ClusterSpec:
    swarmx_fan_in: int  # systems (or lower nodes) summed by one SwarmX node
    swarmx_link_bytes_per_s: float  # per system, each way
    swarmx_level_latency_s: float  # one tree level, broadcast or reduce
    memoryx_optimizer_params_per_s: float  # AdamW updates per second inside MemoryX
    source: str = "wse2"

    def __post_init__(self) -> None:
        if not isinstance(self.swarmx_fan_in, int) or self.swarmx_fan_in < 2:
            raise UserError(f"swarmx_fan_in must be an integer >= 2, got {self.swarmx_fan_in!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "source" and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise UserError(f"cluster parameter {f.name} must be a positive number, got {v!r}")

    def levels(self, systems: int) -> int:
        """Tree levels between MemoryX and ``systems`` systems (0 for one system: no SwarmX)."""
        levels, reach = 0, 1
        while reach < systems:
            reach *= self.swarmx_fan_in
            levels += 1
        return levels

    def to_dict(self) -> dict:
        return asdict(self)


def load_cluster(wafer_name: str, overrides: dict | None = None) -> ClusterSpec:
    """The cluster table for ``wafer_name`` (``wse2``'s when it has none), with ``overrides`` applied."""
    tables = tomllib.loads((PRESET_DIR / "cluster" / "clusters.toml").read_text())
    key = wafer_name if wafer_name in tables else "wse2"
    spec = ClusterSpec(**tables[key], source=key)
    if overrides:
        unknown = set(overrides) - {f.name for f in fields(ClusterSpec)}
        if unknown:
            raise UserError(f"unknown cluster parameter(s): {', '.join(sorted(unknown))}")
        spec = replace(spec, **overrides)
    return spec
