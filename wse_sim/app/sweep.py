"""Sweeps: the cartesian product of run options from a TOML file, run on Dask, one CSV row per point.

List-valued keys are the sweep's axes (``models``, ``wafers``, ``mappings``, ``seq``, ``batch``, ``precision``,
or any other ``RunSpec`` field given as a list); scalars are fixed for every point. ``wafers`` of integers is
the RunSpec field (wafers in a pipeline), of strings the wafer names. Rows are appended to
``sweep.csv`` as points finish, so a killed sweep keeps its finished rows and a re-run skips them.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import logging
import os
import sys
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..arch import load_wafer
from ..errors import UserError
from ..mapping import mapping_info
from .files import read_toml
from .run import run
from .scenario import RunSpec, resolve_model

# TOML keys for the sweep axes named in the plural, and the RunSpec field each fills.
PLURAL_KEYS = {"models": "model", "wafers": "wafer", "mappings": "mapping"}
SPEC_FIELDS = {f.name: f for f in dataclasses.fields(RunSpec)}
# Headline figures per row, after the spec columns; ``error`` is empty for a point that ran.
HEADLINE_COLUMNS = (
    "total_cycles", "seconds", "tokens_per_s", "mfu", "flops", "flops_per_s", "bound_cycles", "compute_cycles",
    "fabric_cycles", "stream_cycles", "memoryx_bytes", "memoryx_busy_fraction", "fabric_bytes",
    "sram_peak_bytes_per_pe", "mean_busy_fraction", "parameters", "grid_pes", "tile_grid", "tasks",
    "max_abs_err_vs_reference", "max_abs_err_vs_transformers", "ttft_s", "tpot_s", "e2e_tokens_per_s_per_request",
    "weights_placed", "kv_cache_bytes", "joules", "joules_per_token", "average_w", "peak_w", "sim_wall_s", "error",
)
CSV_NAME = "sweep.csv"


@dataclass(frozen=True)
class Sweep:
    """The points of a sweep (RunSpec keyword dicts) and the spec columns every row starts with."""

    points: list[dict]
    columns: list[str]


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep TOML file; unknown keys, wrong types and empty lists are errors."""
    path = Path(path)
    raw = read_toml(path, "sweep file")
    values: dict[str, list] = {}
    for key, value in raw.items():
        items = value if isinstance(value, list) else [value]
        field = _field_of(key, items)
        if field not in SPEC_FIELDS:
            known = sorted({*PLURAL_KEYS, *SPEC_FIELDS} - set(PLURAL_KEYS.values()))
            raise UserError(f"{path}: unknown key {key!r} (known: {', '.join(known)})")
        if field in values:
            raise UserError(f"{path}: {field!r} is given twice")
        if not items:
            raise UserError(f"{path}: {key!r} is an empty list")
        want = field_type(field)
        values[field] = list(dict.fromkeys(_typed(item, want, f"{path}: {key!r}") for item in items))
    columns = [name for name in SPEC_FIELDS if name in values]
    points = [dict(zip(columns, combo, strict=True)) for combo in itertools.product(*(values[c] for c in columns))]
    return Sweep(points, columns)


def _field_of(key: str, items: list) -> str:
    """The RunSpec field a TOML key fills: ``wafers`` of integers is the field itself, else a plural axis."""
    if key in SPEC_FIELDS and items and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        return key
    return PLURAL_KEYS.get(key, key)


def field_type(name: str) -> type:
    """The type of RunSpec field ``name``, without its ``| None``."""
    hint = typing.get_type_hints(RunSpec)[name]
    if isinstance(hint, types.UnionType):
        (hint,) = (t for t in hint.__args__ if t is not type(None))
    return hint


def _typed(item, want: type, where: str):
    """``item`` as a ``want`` (an int for a float field), or a UserError; bool is not taken for int (nor 1 for
    true)."""
    if want is float and isinstance(item, int) and not isinstance(item, bool):
        return float(item)
    if not isinstance(item, want) or (want is int and isinstance(item, bool)):
        raise UserError(f"{where} wants {want.__name__} values, got {item!r}")
    return item


def check_names(sweep: Sweep) -> None:
    """Every model, wafer and mapping of ``sweep`` resolves (a UserError naming the first that does not), so a
    misspelt name fails before the cluster starts instead of in every row."""
    for field, check in (("model", lambda m: resolve_model(RunSpec(model=m))), ("wafer", load_wafer),
                         ("mapping", mapping_info)):
        for name in dict.fromkeys(p[field] for p in sweep.points if field in p):
            check(name)


def headline(report: dict, sim_wall_s: float) -> dict:
    """A row's figures, all read from the run's report."""
    layers = report["layers"]
    numerics = report["numerics"]
    rows, cols = report["mapping"]["grid_pes"]
    tr, tc = report["mapping"]["tile_grid"]
    return {
        "total_cycles": report["total_cycles"], "seconds": report["seconds"], "tokens_per_s": report["tokens_per_s"],
        "mfu": report["mfu"], "flops": report["flops"], "flops_per_s": report["flops_per_s"],
        "bound_cycles": report["roofline"]["bound_cycles"],
        **{k: sum(layer[k] for layer in layers) for k in ("compute_cycles", "fabric_cycles", "stream_cycles")},
        "memoryx_bytes": report["bandwidth"]["memoryx_bytes"],
        "memoryx_busy_fraction": report["bandwidth"]["memoryx_busy_fraction"],
        "fabric_bytes": report["bandwidth"]["fabric_bytes"],
        "sram_peak_bytes_per_pe": report["sram_peak_bytes_per_pe"],
        "mean_busy_fraction": report["utilization"]["mean_busy_fraction"],
        "parameters": report["model"]["parameters"], "grid_pes": rows * cols, "tile_grid": f"{tr}x{tc}",
        "tasks": report["simulation"]["tasks"],
        "max_abs_err_vs_reference": numerics.get("max_abs_err_vs_reference"),
        "max_abs_err_vs_transformers": numerics.get("max_abs_err_vs_transformers"),
        **serving_figures(report),
        **{k: (report.get("energy") or {}).get(k) for k in ("joules", "joules_per_token", "average_w", "peak_w")},
        "sim_wall_s": sim_wall_s,
    }


def serving_figures(report: dict) -> dict:
    """TTFT, TPOT and end-to-end tokens/s per request (a generate run's: of its whole request), where the weights
    were placed (resident, streamed) and KV-cache bytes; None where a phase has none."""
    request = report.get("request") or report
    placed = {p["weights"] for k, p in (report.get("placement") or {}).items() if k in ("prefill", "decode")}
    return {"ttft_s": request.get("ttft_s"), "tpot_s": request.get("tpot_s"),
            "e2e_tokens_per_s_per_request": request.get("e2e_tokens_per_s_per_request"),
            "weights_placed": "+".join(sorted(placed)) or None, "kv_cache_bytes": report.get("kv_cache_bytes")}


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def run_point(point: dict) -> dict:
    """Run one point (on a Dask worker); any failure becomes the row's ``error``."""
    try:
        out = run(RunSpec(**point), progress=False, log=lambda _msg: None)
    except Exception as exc:  # a failed point is a row, not a crash of the sweep
        return {"error": _one_line(exc)}
    return {**headline(out.report, out.sim_wall_s), "error": ""}


def fmt(value) -> str:
    """CSV text of a value: floats by repr (exact round trip), booleans lower-case, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _read_rows(path: Path, columns: list[str], retry_errors: bool) -> list[dict]:
    """Rows already in ``path``. Drops a line cut short by a kill (and, with ``retry_errors``, failed rows),
    rewriting the file without them."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return []
        if header != columns:
            raise UserError(f"{path} holds a different sweep (columns {', '.join(header)}); use another --out")
        lines = list(reader)
    rows = [dict(zip(columns, line, strict=True)) for line in lines if len(line) == len(columns)]
    keep = [r for r in rows if not (retry_errors and r["error"])]
    if len(keep) != len(lines):
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([r[c] for c in columns] for r in keep)
    return keep


@contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None, processes: bool = True):
    """A Dask client: connected to ``scheduler`` (tcp://HOST:PORT), else on a LocalCluster of ``n_workers``
    single-threaded workers (default: one per core)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise UserError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1, processes=processes,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


@dataclass(frozen=True)
class SweepSummary:
    csv_path: Path
    points: int
    skipped: int  # already in the CSV
    ran: int
    failed: int  # rows of this invocation with an error
    failed_before: int = 0  # skipped rows (from an earlier invocation) with an error

    @property
    def all_failed(self) -> bool:
        """Every point of the sweep has a row with an error."""
        return self.points > 0 and self.failed + self.failed_before == self.points


def run_sweep(toml_path: str | Path, out_dir: str | Path, scheduler: str | None = None, n_workers: int | None = None,
              processes: bool = True, progress: bool = True, retry_errors: bool = False) -> SweepSummary:
    """Run every point not yet in ``out_dir/sweep.csv`` on Dask, appending each row as it finishes."""
    sweep = load_sweep(toml_path)
    check_names(sweep)
    return run_points(sweep, HEADLINE_COLUMNS, run_point, "sweep points", out_dir, scheduler, n_workers, processes,
                      progress, retry_errors)


def run_points(sweep: Sweep, result_columns, runner, desc: str, out_dir: str | Path, scheduler: str | None,
               n_workers: int | None, processes: bool, progress: bool, retry_errors: bool) -> SweepSummary:
    """Run ``runner(point)`` on Dask for every point of ``sweep`` not yet in ``out_dir/sweep.csv`` (a point whose
    row holds an error too, with ``retry_errors``), appending each row (the point's values, then
    ``result_columns``) as it finishes; shared by run and train sweeps."""
    columns = [*sweep.columns, *result_columns]
    path = Path(out_dir) / CSV_NAME
    done = _read_rows(path, columns, retry_errors) if path.exists() else []

    def key(values: dict) -> tuple:
        return tuple(values[c] if isinstance(values[c], str) else fmt(values[c]) for c in sweep.columns)

    finished = {key(r) for r in done}
    todo = [p for p in sweep.points if key(p) not in finished]
    failed = 0
    if todo:
        from distributed import as_completed
        from tqdm import tqdm

        with dask_client(scheduler, n_workers, processes) as client:
            if not path.exists() or path.stat().st_size == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("w", newline="") as f:
                    csv.writer(f).writerow(columns)
            futures = client.map(runner, todo, pure=False)
            point_of = {fut.key: p for fut, p in zip(futures, todo, strict=True)}
            bar = tqdm(total=len(todo), desc=desc, unit="point", file=sys.stderr,
                       disable=not (progress and sys.stderr.isatty()))
            with path.open("a", newline="") as f, bar:
                writer = csv.writer(f)
                for fut in as_completed(futures):
                    try:
                        result = fut.result()
                    except Exception as exc:  # the worker died or the task was lost: still a row
                        result = {"error": _one_line(exc)}
                    failed += bool(result["error"])
                    row = {**point_of[fut.key], **result}
                    writer.writerow([fmt(row.get(c)) for c in columns])
                    f.flush()
                    bar.update(1)
    wanted = {key(p) for p in sweep.points}
    failed_before = sum(bool(r["error"]) for r in done if key(r) in wanted)
    return SweepSummary(path, len(sweep.points), len(sweep.points) - len(todo), len(todo), failed, failed_before)


def read_sweep_csv(path: str | Path) -> tuple[list[dict], list[str]]:
    """(rows, spec columns) of a sweep.csv."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found (run the sweep first)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if HEADLINE_COLUMNS[0] not in header:
            raise UserError(f"{path} is not a sweep.csv (no {HEADLINE_COLUMNS[0]} column)")
        rows = [r for r in reader if None not in r.values() and None not in r]
    return rows, header[:header.index(HEADLINE_COLUMNS[0])]


def plot_sweep(csv_path: str | Path, out_path: str | Path, x: str | None = None) -> Path:
    from ..report.plots import save, sweep_figure

    rows, spec_columns = read_sweep_csv(csv_path)
    try:
        fig = sweep_figure(rows, spec_columns, x)
    except ValueError as exc:
        raise UserError(f"cannot plot {csv_path}: {exc}") from None
    return save(fig, out_path)


__all__ = ["HEADLINE_COLUMNS", "Sweep", "SweepSummary", "check_names", "dask_client", "fmt", "headline", "load_sweep",
           "plot_sweep", "read_sweep_csv", "run_point", "run_points", "run_sweep"]
