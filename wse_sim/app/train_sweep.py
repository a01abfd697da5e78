"""Sweeps and comparisons of training steps: ``wse-sim sweep`` on a TOML with ``command = "train"`` and
``wse-sim compare --train``.

A train sweep's axes are :class:`~.train.TrainSpec` fields (``systems``, ``micro_batch``, ``precision``,
``batch``, ``seq``, ``wafers``, ``models``, ``recipes``...; ``systems`` is one system count per point); each point
is one ``run_train`` and one CSV row of its figures (:data:`TRAIN_COLUMNS`), written, resumed and plotted like
an inference sweep (:mod:`.sweep`). A comparison runs one step under each mapping and system count: training
plans weight streaming only (the dataflow Cerebras trains with), so other mappings are rows with that reason.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import types
import typing
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from .files import read_toml
from .sweep import Sweep, SweepSummary, _one_line, _typed, run_points
from .train import TrainSpec, run_train

COMMAND_KEY = "command"
PLURAL_KEYS = {"models": "model", "wafers": "wafer", "recipes": "recipe"}
# TrainSpec fields a sweep may set (scalars; ``systems`` one count per point)
SWEEP_FIELDS = ("model", "recipe", "wafer", "grid", "tiles", "systems", "batch", "micro_batch", "seq", "precision",
                "max_pass_batch", "numerics", "seed", "lr", "train_tokens", "defects", "defect_seed", "defect_map")
# total_cycles first, as an inference sweep's, so `wse-sim sweep --plot` reads either CSV
TRAIN_COLUMNS = (
    "total_cycles", "step_seconds", "tokens_per_s", "samples_per_s", "mfu", "per_system_batch", "accumulation_steps",
    "sequences_per_pass", "forward_cycles", "backward_cycles", "swarmx_exposed_s", "optimizer_exposed_s", "bound_s",
    "memoryx_weight_bytes", "time_to_train_s", "loss", "joules", "joules_per_token", "average_w", "parameters",
    "grid_pes", "sim_wall_s", "error",
)


def is_train_sweep(toml_path: str | Path) -> bool:
    """Whether a sweep file sweeps training steps (``command = "train"``)."""
    command = read_toml(Path(toml_path), "sweep file").get(COMMAND_KEY, "run")
    if command not in ("run", "train"):
        raise UserError(f"{toml_path}: {COMMAND_KEY!r} is 'run' or 'train', got {command!r}")
    return command == "train"


def _field_type(name: str) -> type:
    if name == "systems":
        return int
    hint = typing.get_type_hints(TrainSpec)[name]
    if isinstance(hint, types.UnionType):
        (hint,) = (t for t in hint.__args__ if t is not type(None))
    return hint


def load_train_sweep(path: str | Path) -> Sweep:
    """The points (TrainSpec keyword dicts) of a train sweep file; unknown keys, wrong types, empty lists fail."""
    path = Path(path)
    values: dict[str, list] = {}
    for key, value in read_toml(path, "sweep file").items():
        if key == COMMAND_KEY:
            continue
        items = value if isinstance(value, list) else [value]
        field = PLURAL_KEYS.get(key, key)
        if field not in SWEEP_FIELDS:
            raise UserError(f"{path}: unknown key {key!r} for a train sweep (known: "
                            f"{', '.join(sorted({*PLURAL_KEYS, *SWEEP_FIELDS} - set(PLURAL_KEYS.values())))})")
        if field in values or not items:
            raise UserError(f"{path}: {key!r} is given twice or empty")
        values[field] = list(dict.fromkeys(_typed(i, _field_type(field), f"{path}: {key!r}") for i in items))
    columns = [f for f in SWEEP_FIELDS if f in values]
    points = [dict(zip(columns, combo, strict=True)) for combo in itertools.product(*(values[c] for c in columns))]
    return Sweep(points, columns)


def train_spec(point: dict) -> TrainSpec:
    kw = dict(point)
    if "systems" in kw:
        kw["systems"] = (kw["systems"],)
    return TrainSpec(**kw)


def train_headline(report: dict) -> dict:
    """A train row's figures, all read from the step's report."""
    ph, energy = report["phases_cycles"], report.get("energy") or {}
    return {
        "total_cycles": report["step_cycles"], "step_seconds": report["step_seconds"],
        "tokens_per_s": report["tokens_per_s"], "samples_per_s": report["samples_per_s"], "mfu": report["mfu"],
        "per_system_batch": report["per_system_batch"], "accumulation_steps": report["accumulation_steps"],
        "sequences_per_pass": report["activation_memory"]["sequences_per_pass"],
        "forward_cycles": ph["forward"], "backward_cycles": ph["backward"],
        "swarmx_exposed_s": report["swarmx"]["exposed_s"],
        "optimizer_exposed_s": report["memoryx"]["optimizer_exposed_s"],
        "bound_s": report["bound_s"], "memoryx_weight_bytes": report["memoryx"]["weight_stream_bytes_per_system"],
        "time_to_train_s": report.get("time_to_train_s"), "loss": report.get("loss"),
        "joules": energy.get("joules"), "joules_per_token": energy.get("joules_per_token"),
        "average_w": energy.get("average_w"), "parameters": report["params"], "grid_pes": report["grid_pes"],
        "sim_wall_s": report["simulation_wall_s"],
    }


def run_train_point(point: dict) -> dict:
    """One train point (on a Dask worker); a failure is the row's ``error``."""
    try:
        return {**train_headline(run_train(train_spec(point))), "error": ""}
    except Exception as exc:  # a failed point is a row, not a crash of the sweep
        return {"error": _one_line(exc)}


def run_train_sweep(toml_path: str | Path, out_dir: str | Path, scheduler: str | None = None,
                    n_workers: int | None = None, processes: bool = True, progress: bool = True,
                    retry_errors: bool = False) -> SweepSummary:
    """Run every train point not yet in ``out_dir/sweep.csv`` on Dask, appending each row as it finishes."""
    sweep = load_train_sweep(toml_path)
    for point in sweep.points:  # misspelt models, wafers, recipes fail before the cluster starts
        train_spec(point)
    return run_points(sweep, TRAIN_COLUMNS, run_train_point, "train sweep points", out_dir, scheduler, n_workers,
                      processes, progress, retry_errors)


# ---- compare ------------------------------------------------------------------------------------------------------
COMPARE_COLUMNS = ("mapping", "systems", "feasible", "step_seconds", "tokens_per_s", "mfu", "speedup", "efficiency",
                   "joules_per_token", "reason")
TRAIN_MAPPING = "weight-streaming"


def compare_train(spec: TrainSpec, mappings: list[str], log=print) -> list[dict]:
    """One row per mapping and system count of ``spec.systems`` (the step under each)."""
    rows = []
    for name in mappings:
        if name != TRAIN_MAPPING:
            rows.append(dict.fromkeys(COMPARE_COLUMNS) | {
                "mapping": name, "feasible": False,
                "reason": "training plans weight streaming only (activations resident, weights streamed in and "
                          "gradients out: the dataflow Cerebras trains with)"})
            continue
        log(f"running a train step under {name} on {', '.join(map(str, spec.systems or ('the recipe',)))} "
            "system(s) ...")
        try:
            report = run_train(replace(spec, numerics=spec.numerics if spec.numerics is not None else False))
        except UserError as exc:
            rows.append(dict.fromkeys(COMPARE_COLUMNS) | {"mapping": name, "feasible": False, "reason": str(exc)})
            continue
        tokens = report["run"]["batch"] * report["run"]["seq"]
        scaling = report.get("scaling") or [{"systems": report["systems"], "step_seconds": report["step_seconds"],
                                             "speedup": 1.0, "efficiency": 1.0,
                                             "joules_per_token": report["energy"]["joules_per_token"]}]
        for s in scaling:
            rows.append({"mapping": name, "systems": s["systems"], "feasible": True,
                         "step_seconds": s["step_seconds"], "tokens_per_s": tokens / s["step_seconds"],
                         "mfu": report["mfu"] * report["step_seconds"] * report["systems"]
                         / (s["step_seconds"] * s["systems"]),
                         "speedup": s["speedup"], "efficiency": s["efficiency"],
                         "joules_per_token": s["joules_per_token"], "reason": None})
    return rows


def format_train_table(rows: list[dict]) -> str:
    head = f"{'mapping':<16} {'systems':>7} {'step s':>10} {'tokens/s':>12} {'MFU %':>7} {'speed-up':>8} " \
           f"{'J/token':>9}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r["feasible"]:
            lines.append(f"{r['mapping']:<16} {'infeasible':>7}  {r['reason']}")
            continue
        lines.append(f"{r['mapping']:<16} {r['systems']:>7} {r['step_seconds']:>10.4g} {r['tokens_per_s']:>12,.0f} "
                     f"{100 * r['mfu']:>7.2f} {r['speedup']:>8.2f} {r['joules_per_token']:>9.3g}")
    return "\n".join(lines)


def write_train_compare(rows: list[dict], spec: TrainSpec, out: Path) -> list[Path]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "tokens"}
    (out / "compare.json").write_text(json.dumps({"command": "train", "spec": fields, "rows": rows}, indent=1,
                                                 default=str) + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COMPARE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return [out / "compare.json", out / "compare.csv"]
