"""The defect study of docs/defects.md: tokens/s and TPOT of LLaMA3-8B decode and Cerebras-GPT-111M prefill on the
WSE-2 against the defect rate (none, the published density, 10x and 100x it), several seeds each.

Run: .venv/bin/python -P docs/defects_study.py   (writes docs/img/defects.png and docs/defects_study.json)
"""

from __future__ import annotations

import json
from pathlib import Path

from wse_sim.app import RunSpec, run

OUT = Path(__file__).parent
RATES = (None, "published", "10x", "100x")
SEEDS = (0, 1, 2)
CASES = {
    "LLaMA3-8B decode (context 512, 420x420 region, 2 of 32 layers scaled)":
        dict(model="llama3-8b", phase="decode", context=512, grid="420x420", layer_subset=2, numerics=False),
    "Cerebras-GPT-111M prefill (seq 512, whole wafer)":
        dict(model="cerebras-gpt-111m", seq=512, numerics=False),
}


def main() -> None:
    rows = []
    for name, kw in CASES.items():
        for rate in RATES:
            for seed in (SEEDS if rate else (None,)):
                r = run(RunSpec(wafer="wse2", precision="fp16", defects=rate, defect_seed=seed, **kw),
                        log=lambda _m: None).report
                d = r.get("defects") or {}
                rows.append({"case": name, "rate": rate or "none", "seed": seed, "rate_per_pe": d.get("rate_per_pe", 0),
                             "dead_pes": d.get("dead_pes", 0), "lost_rows": d.get("lost_rows", 0),
                             "extra_hops_charged": d.get("extra_hops_charged", 0),
                             "contended_transfers": d.get("contended_transfers", 0),
                             "total_cycles": r["total_cycles"], "tokens_per_s": r["tokens_per_s"],
                             "tpot_s": r.get("tpot_s"), "ttft_s": r.get("ttft_s"),
                             "joules_per_token": r["energy"]["joules_per_token"]})
                print(json.dumps(rows[-1]))
    (OUT / "defects_study.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows)


def speed(row: dict) -> float:
    """Tokens/s per request: 1 / TPOT for decode (scaled to the model's depth), the prefill's tokens/s otherwise."""
    return 1.0 / row["tpot_s"] if row["tpot_s"] else row["tokens_per_s"]


def plot(rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CASES), figsize=(13, 4.5))
    for ax, name in zip(axes, CASES, strict=True):
        mine = [r for r in rows if r["case"] == name]
        base = next(r for r in mine if r["rate"] == "none")
        xs = [max(r["rate_per_pe"], 1e-6) for r in mine]
        ys = [speed(r) / speed(base) for r in mine]
        ax.semilogx(xs, ys, "o", color="#2b8cbe")
        ax.axhline(1.0, color="#969696", lw=0.8)
        ax.set_xlabel("dead-PE rate per PE (1e-6 = none)")
        ax.set_ylabel("tokens/s (decode: 1 / TPOT) relative to healthy")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("WSE-2 with defects: throughput against the defect rate (published density 3.8e-5 per PE)")
    fig.tight_layout()
    (OUT / "img").mkdir(exist_ok=True)
    fig.savefig(OUT / "img" / "defects.png", dpi=110)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--plot"]:  # redraw from docs/defects_study.json
        plot(json.loads((OUT / "defects_study.json").read_text()))
    else:
        main()
