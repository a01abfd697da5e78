"""The README gallery's record: what each committed picture shows, so a test can tell when they drift.

``make gallery`` draws the demo's figures and the example sweep's plot into ``docs/img/``, then runs
``python -m wse_sim.report.gallery`` to write ``docs/img/gallery.json``: the demo's run and summary rows, the sweep's
rows (the figures sweep.png plots), and a SHA-256 of every gallery image. Tests compare that record with the
images, with the README's printed demo output, and with fresh runs of the same demo and sweep.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

from .build import summary_rows

IMAGES = ("utilization.png", "timeline.png", "layers.png", "sweep.png")
RECORD_NAME = "gallery.json"
# Headline figures of a run kept per sweep row and for the demo (timing results; numerics errors are not).
FIGURES = ("total_cycles", "seconds", "tokens_per_s", "mfu")


def demo_record(report: dict) -> dict:
    """The demo run as RunSpec fields, its headline figures and the summary rows it printed."""
    run = report["run"]
    spec = {"model": report["model"]["name"], "wafer": report["wafer"]["name"],
            "mapping": report["inputs"]["mapping"], "seq": run["seq"], "batch": run["batch"],
            "precision": run["precision"]}
    return {"spec": spec, **{k: report[k] for k in FIGURES},
            "mean_busy_fraction": report["utilization"]["mean_busy_fraction"],
            "summary": dict(summary_rows(report))}


def _number(text: str) -> float | int | None:
    """A CSV cell as a number: int if integral text, float otherwise, None if empty."""
    if text == "":
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


def sweep_record(sweep_csv: Path) -> list[dict]:
    """Per sweep.csv row: its spec cells (CSV text, as the sweep wrote them: the columns before the first
    headline figure), headline figures, and error; sorted by spec (the CSV is in completion order)."""
    with sweep_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        spec_columns = reader.fieldnames[:reader.fieldnames.index(FIGURES[0])]
        rows = sorted(reader, key=lambda r: [r[c] for c in spec_columns])
    return [{"spec": {c: r[c] for c in spec_columns}, **{k: _number(r[k]) for k in FIGURES}, "error": r["error"]}
            for r in rows]


def image_digests(img_dir: Path) -> dict[str, str]:
    """SHA-256 of each gallery image, tying the pictures to the record written with them."""
    return {name: hashlib.sha256((img_dir / name).read_bytes()).hexdigest() for name in IMAGES}


def gallery_record(report: dict, sweep_csv: Path, sweep_file: str, img_dir: Path) -> dict:
    return {"demo": demo_record(report), "sweep": {"file": sweep_file, "rows": sweep_record(sweep_csv)},
            "images": image_digests(img_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wse_sim.report.gallery", description=__doc__.split("\n")[0])
    parser.add_argument("--report", required=True, help="the demo's report.json")
    parser.add_argument("--sweep-csv", required=True, help="sweep.csv of the gallery sweep")
    parser.add_argument("--sweep-file", required=True, help="the sweep TOML it ran (recorded, for re-runs)")
    parser.add_argument("--img-dir", required=True, help="folder holding the gallery images; the record goes there")
    args = parser.parse_args(argv)
    img_dir = Path(args.img_dir)
    report = json.loads(Path(args.report).read_text())
    record = gallery_record(report, Path(args.sweep_csv), args.sweep_file, img_dir)
    path = img_dir / RECORD_NAME
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
