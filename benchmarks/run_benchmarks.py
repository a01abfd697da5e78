"""Speed benchmarks of wse-sim: prints plain tables (this is not a test; nothing is asserted).

  (a) timing-only forward of every preset (Cerebras-GPT, Llama family) on WSE-2, seq 2048, batch 1, fp16
      (goal: 13B < 10 s wall)
  (b) numerics forward of Cerebras-GPT-111M, seq 512, fp32: the simulator vs transformers' GPT2LMHeadModel on the
      same weights (goal: simulator <= 1.5x torch, issue 19)
  (c) numba GEMM vs numpy at 1024^3, from benchmarks/bench_gemm.py's run() when that file is present
  (d) the auto-mapper's search for Cerebras-GPT-13B on WSE-2, seq 2048, fp16 (goal: < 5 s), then building the plan
  (e) serving: timing-only decode steps (LLaMA3-8B on WSE-2 regions, LLaMA3-70B over 4 WSE-3 wafers) and a
      111M generate with numerics, wall time against what they simulate

Usage: python benchmarks/run_benchmarks.py [--only a,b,c,d,e]     (``make bench`` runs all five)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """Plain aligned text table; ``align`` is one of 'l'/'r' per column (default: first left, rest right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def machine() -> str:
    import numba
    import simpy

    import wse_sim  # noqa: F401 (first: it sets OMP_WAIT_POLICY=passive before torch loads libgomp, as the CLI does)

    parts = [f"python {platform.python_version()}", f"numpy {np.__version__}", f"numba {numba.__version__}",
             f"simpy {simpy.__version__}"]
    try:
        import torch
        import transformers

        parts += [f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
                  f"transformers {transformers.__version__}"]
    except ImportError:
        parts.append("torch/transformers not installed")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs; " + ", ".join(parts)


# ---- (a) timing-only forward of every preset -------------------------------------------------------------------

def bench_timing(seq: int = 2048, batch: int = 1, precision: str = "fp16", wafer: str = "wse2") -> None:
    from wse_sim.workloads import PRESETS

    from wse_sim.app import RunSpec, run

    print(f"(a) timing-only forward, weight streaming, {wafer}, batch {batch} x seq {seq}, {precision}, 8x8 tiles")
    rows = []
    for name, cfg in PRESETS.items():
        spec = RunSpec(model=name, wafer=wafer, seq=seq, batch=batch, precision=precision, numerics=False,
                       mapping="weight-streaming")
        t0 = time.perf_counter()
        res = run(spec, log=lambda m: None)
        report, engine_wall = res.report, res.sim_wall_s
        wall = time.perf_counter() - t0
        rows.append([name, f"{cfg.param_count() / 1e9:.3g}B", f"{wall:.2f}", f"{engine_wall:.2f}",
                     f"{wall - engine_wall:.2f}",
                     f"{report['seconds'] * 1e3:.3f}", f"{report['tokens_per_s']:,.0f}",
                     f"{report['mfu'] * 100:.1f}", f"{report['simulation']['tasks']:,}"])
        print(f"  done {name}: {wall:.2f} s", file=sys.stderr, flush=True)
    headers = ["model", "params", "wall s", "engine s", "other s", "simulated ms", "tokens/s", "MFU %", "tasks"]
    print(table(headers, rows))
    print("wall = whole pipeline.run(); engine = Engine.run() alone; other = wall - engine (lowering, planning, "
          "report building).")
    print("goal: cerebras-gpt-13b wall < 10 s\n")


# ---- (b) numerics: simulator vs transformers --------------------------------------------------------------------

def bench_numerics(model: str = "cerebras-gpt-111m", seq: int = 512, precision: str = "fp32",
                   repeats: int = 3) -> None:
    """Times the simulator's Engine with numerics (the compute the simulation does) against one torch forward.

    The pipeline's reference checks (float64 numpy and transformers) are left out of the simulator time: this
    builds the same objects pipeline.run() builds and times Engine.run() alone.
    """
    import torch
    from wse_sim.kernels import round_to
    from wse_sim.workloads import get_preset, lower_model, random_tokens, random_weights
    from wse_sim.workloads.hf_reference import _build_model, transformers_logits

    from wse_sim.app.scenario import RunSpec, make_grid, make_mapping
    from wse_sim.arch import load_wafer
    from wse_sim.sim import Engine
    from wse_sim.sim.numerics import Numerics

    print(f"(b) numerics forward, {model}, wse2, batch 1 x seq {seq}, {precision}; best of {repeats}")
    spec = RunSpec(model=model, wafer="wse2", seq=seq, batch=1, precision=precision, numerics=True)
    config = get_preset(model)
    wafer = load_wafer(spec.wafer)
    t0 = time.perf_counter()
    weights = random_weights(config, seed=0)
    t_weights = time.perf_counter() - t0
    tokens = random_tokens(config.vocab_size, 1, seq, seed=0)
    stored = weights.map_arrays(lambda a: round_to(a, precision))  # what the wafer stores (no-op for fp32)

    t0 = time.perf_counter()
    graph = lower_model(config, 1, seq, precision)
    plan = make_mapping(spec.mapping).plan(graph, wafer, make_grid(wafer, spec.grid, spec.tiles, spec.tile))
    t_plan = time.perf_counter() - t0

    # Warm-up run: numba compiles (or loads cached) kernels on first call.
    t0 = time.perf_counter()
    Engine(wafer, plan, numerics=Numerics(graph, weights, tokens)).run()
    t_first = time.perf_counter() - t0

    sim_times, setup_times, logits = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        executor = Numerics(graph, weights, tokens)
        setup_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        Engine(wafer, plan, numerics=executor).run()
        sim_times.append(time.perf_counter() - t0)
        logits = executor.output("head.lm_head").reshape(1, seq, config.vocab_size)
    t_timing_only = min(_timed(lambda: Engine(wafer, plan).run()) for _ in range(repeats))

    t0 = time.perf_counter()
    hf_model = _build_model(stored)
    t_build = time.perf_counter() - t0
    ids = torch.from_numpy(np.ascontiguousarray(tokens))
    torch_times, hf = [], None
    with torch.no_grad():
        hf_model(input_ids=ids)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            hf = hf_model(input_ids=ids).logits.numpy()
            torch_times.append(time.perf_counter() - t0)
    t_hf_total = _timed(lambda: transformers_logits(stored, tokens))

    sim, fwd = min(sim_times), min(torch_times)
    rows = [
        ["seeded random weights", f"{t_weights:.2f}"],
        ["lower + plan", f"{t_plan:.2f}"],
        ["simulator, timing only (Engine.run, no numerics)", f"{t_timing_only:.2f}"],
        ["simulator with numerics, first run (incl. numba warm-up)", f"{t_first:.2f}"],
        ["Numerics() setup: weights rounded into the tensor store", f"{min(setup_times):.2f}"],
        ["simulator with numerics (Engine.run)", f"{sim:.2f}"],
        ["torch: build GPT2LMHeadModel from the weights", f"{t_build:.2f}"],
        ["torch: GPT2LMHeadModel forward", f"{fwd:.2f}"],
        ["transformers_logits() (build + forward)", f"{t_hf_total:.2f}"],
    ]
    print(table(["step", "wall s"], rows))
    err = float(np.max(np.abs(logits - hf)))
    top1 = float(np.mean(np.argmax(logits, -1) == np.argmax(hf, -1)))
    print(f"simulator / torch forward = {sim / fwd:.2f}x (goal <= 1.5x, issue 19); "
          f"max |logit diff| {err:.3g}, top-1 agreement {top1 * 100:.2f} %\n")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- (c) GEMM kernel --------------------------------------------------------------------------------------------

def bench_kernels() -> None:
    print("(c) numba GEMM vs numpy (benchmarks/bench_gemm.py)")
    path = HERE / "bench_gemm.py"
    if not path.is_file():
        print("benchmarks/bench_gemm.py is not present: skipped\n")
        return
    spec = importlib.util.spec_from_file_location("bench_gemm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "run"):
        print("benchmarks/bench_gemm.py has no run(): skipped\n")
        return
    results = mod.run()
    if not results:
        print("bench_gemm.run() returned no rows\n")
        return
    keys = list(dict.fromkeys(k for r in results for k in r))
    # Known columns get readable units; anything else bench_gemm.py adds is printed as is.
    special = {"seconds": ("time us", lambda v: f"{v * 1e6:,.1f}"), "gflops": ("GFLOP/s", lambda v: f"{v:,.1f}"),
               "calls_per_s": ("calls/s", lambda v: f"{v:,.0f}"), "vs_numpy": ("vs numpy", lambda v: f"{v:.0%}")}

    def cell(key, v):
        if v == "" or v is None:
            return ""
        if key in special:
            return special[key][1](v)
        return f"{v:.4g}" if isinstance(v, float) else v

    headers = [special.get(k, (k,))[0] for k in keys]
    rows = [[cell(k, r.get(k, "")) for k in keys] for r in results]
    print(table(headers, rows, align="l" + "r" * 3 + "l" + "r" * (len(keys) - 5) if keys[:5] == [
        "case", "m", "k", "n", "impl"] else None) + "\n")


# ---- (d) auto-mapper search --------------------------------------------------------------------------------------

def bench_auto(model: str = "cerebras-gpt-13b", seq: int = 2048, precision: str = "fp16") -> None:
    from wse_sim.workloads import get_preset, lower_model

    from wse_sim.app.scenario import make_mapping
    from wse_sim.arch import load_wafer
    from wse_sim.mapping import TileGrid

    wafer = load_wafer("wse2")
    graph = lower_model(get_preset(model), 1, seq, precision)
    grid = TileGrid.make(wafer.mesh_rows, wafer.mesh_cols, 8, 8)
    auto = make_mapping("auto")
    print(f"(d) auto-mapper, {model} on wse2, seq {seq}, {precision}")
    rows, searches = [], []
    t_all = time.perf_counter()
    for shape in auto.grid_shapes(grid, fixed_tiles=False):
        t0 = time.perf_counter()
        s = auto.search(graph, wafer, TileGrid.make(grid.rows, grid.cols, *shape))
        searches.append(s)
        simulated = sum(c.simulated_cycles is not None for cands in s.memo.values() for c in cands)
        chosen = ", ".join(f"{k[1]}x{k[2]}: {c.mapping}" for k, c in s.chosen.items())
        rows.append([f"{shape[0]}x{shape[1]}", f"{time.perf_counter() - t0:.2f}", len(s.memo), simulated,
                     f"{s.total_cycles:,}", chosen])
    t_search = time.perf_counter() - t_all
    print(table(["tiles", "search s", "shapes", "simulated", "est. matmul cycles", "chosen (k x n: mapping)"], rows,
                "lrrrrl"))
    best = min(searches, key=lambda s: s.total_cycles)
    t0 = time.perf_counter()
    plan = auto.build(graph, wafer, best)
    t_build = time.perf_counter() - t0
    print(f"search over all tile grids: {t_search:.2f} s (goal < 5 s); building the {len(plan.ops)}-op plan on "
          f"{best.grid.shape[0]}x{best.grid.shape[1]} tiles: {t_build:.2f} s; resident weights "
          f"{plan.resident_bytes_per_pe:,} B/PE, SRAM peak {plan.sram_peak_bytes_per_pe:,} B/PE\n")


# ---- (e) serving --------------------------------------------------------------------------------------------------

SERVING_CASES = (
    ("llama3-8b decode, 540x540, 2 of 32 layers", {"model": "llama3-8b", "grid": "540x540", "phase": "decode",
                                                  "context": 4096, "layer_subset": 2}),
    ("llama3-8b decode, 420x420, 32 layers, 2 wafers", {"model": "llama3-8b", "grid": "420x420", "wafers": 2,
                                                        "phase": "decode", "context": 4096}),
    ("llama3-70b decode, wse3 x 4 wafers", {"model": "llama3-70b", "wafer": "wse3", "wafers": 4, "phase": "decode",
                                           "context": 4096}),
    ("111m generate 16 + 8 tokens, numerics", {"model": "cerebras-gpt-111m", "grid": "200x200", "phase": "generate",
                                              "prompt_len": 16, "gen_tokens": 8, "numerics": True}),
)


def bench_serving() -> None:
    from wse_sim.app import RunSpec, run

    print("(e) serving runs through pipeline.run(), fp16, 8x8 tiles per region, auto mapping")
    rows = []
    for label, kw in SERVING_CASES:
        spec = RunSpec(**{"numerics": False, **kw})
        t0 = time.perf_counter()
        r = run(spec, log=lambda m: None).report
        wall = time.perf_counter() - t0
        rows.append([label, f"{wall:.2f}", f"{r['simulation']['tasks']:,}", f"{r['tpot_s'] * 1e6:,.1f}",
                     f"{r['tokens_per_s_per_request']:,.0f}", r["wafers"]["count"]])
        print(f"  done {label}: {wall:.2f} s", file=sys.stderr, flush=True)
    print(table(["run", "wall s", "tasks (last pass)", "TPOT us", "tokens/s/request", "wafers"], rows))
    print("wall = whole pipeline.run() (auto's per-shape search, every pass, report; generate also the checks "
          "against transformers)\n")


# ---- (f) the figures of issue 19 -----------------------------------------------------------------------------------

ISSUE_19_BASELINE = {  # measured on landed main before the speed work (2 cores, median of 3), see the README
    "13b_auto_s": 11.5, "13b_ws_s": 11.1, "us_per_task": 16.0, "decode_token_s": 1.8, "demo_s": 20.6,
}


def _median_process(args: list[str], n: int = 3) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of ``n`` runs of the ``wse-sim`` command with ``args``."""
    import resource
    import statistics
    import subprocess

    exe = str(Path(sys.executable).with_name("wse-sim"))
    walls, cpus = [], []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([exe, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def _engine_us_per_task(plan, wafer, n: int = 3) -> float:
    import statistics

    from wse_sim.sim import Engine

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = Engine(wafer, plan).run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6 / r.tasks


def _simpy_us_per_event(events: int = 300_000) -> float:
    """Raw SimPy: processes that only wait on timeouts (the cheapest event SimPy has)."""
    import simpy

    env = simpy.Environment()

    def proc(k):
        for _ in range(events // 100):
            yield env.timeout(1 + k % 3)

    for k in range(100):
        env.process(proc(k))
    t0 = time.perf_counter()
    env.run()
    return (time.perf_counter() - t0) * 1e6 / events


def bench_issue19(out: str = "/tmp/wse-sim-bench19") -> None:
    """Each figure of issue 19's table, against the baseline measured on main before the work (ratio) and the
    goal. Whole-process figures run the ``wse-sim`` command (median of 3, wall and CPU seconds)."""
    import statistics

    from wse_sim.workloads import get_preset, lower_model

    from wse_sim.app import RunSpec, run
    from wse_sim.app.scenario import make_grid, make_mapping
    from wse_sim.arch import load_wafer
    from wse_sim.gc_pause import gc_paused

    base = ISSUE_19_BASELINE
    rows = []
    for label, mapping, key in (("auto", "auto", "13b_auto_s"), ("weight streaming", "weight-streaming", "13b_ws_s")):
        wall, cpu = _median_process(["run", "--model", "cerebras-gpt-13b", "--wafer", "wse2", "--seq", "2048",
                                     "--no-numerics", "--quiet", "--mapping", mapping, "--out", out])
        rows.append([f"13B seq 2048 timing only, whole process, {label}", f"{base[key]:.1f} s",
                     f"{wall:.2f} s wall ({cpu:.2f} s CPU)", f"{base[key] / wall:.2f}x", "< 2 s"])
        print(f"  done 13B {label}", file=sys.stderr, flush=True)

    wafer = load_wafer("wse2")
    graph = lower_model(get_preset("cerebras-gpt-13b"), 1, 2048, "fp16")
    with gc_paused():
        plan = make_mapping("weight-streaming").plan(graph, wafer, make_grid(wafer))
    us = _engine_us_per_task(plan, wafer)
    raw = _simpy_us_per_event()
    rows.append(["engine cost per task (13B weight streaming)", f"{base['us_per_task']:.0f} us",
                 f"{us:.1f} us ({us / raw:.1f} raw SimPy timeout events)", f"{base['us_per_task'] / us:.2f}x",
                 "<= 5 us"])
    del plan
    print("  done engine", file=sys.stderr, flush=True)

    def generate(n):
        spec = RunSpec(model="llama3-8b", grid="540x540", wafers=4, phase="generate", prompt_len=16, gen_tokens=n,
                       numerics=False)
        t0 = time.perf_counter()
        run(spec, log=lambda m: None)
        return time.perf_counter() - t0

    # 64 tokens apart: a run's fixed cost (lowering and placing the model on 4 wafers, about 4 s) varies by up to
    # +-0.9 s between runs on this machine, which swamped a difference of 4 tokens (and of 16).
    per_token = statistics.median((generate(66) - generate(2)) / 64 for _ in range(3))
    rows.append(["LLaMA3-8B generate (540x540, 4 wafers), per decode token", f"{base['decode_token_s']:.1f} s",
                 f"{per_token * 1e3:.0f} ms", f"{base['decode_token_s'] / per_token:.2f}x", "<= 50 ms"])
    print("  done generate", file=sys.stderr, flush=True)

    wall, cpu = _median_process(["run", "--model", "cerebras-gpt-111m", "--wafer", "wse2", "--seq", "512", "--batch",
                                 "1", "--precision", "fp16", "--quiet", "--out", out])
    rows.append(["`make demo` (warm), whole process", f"{base['demo_s']:.1f} s", f"{wall:.2f} s wall ({cpu:.2f} s CPU)",
                 f"{base['demo_s'] / wall:.2f}x", "< 10 s"])
    print("  done demo", file=sys.stderr, flush=True)

    graph = lower_model(get_preset("cerebras-gpt-111m"), 1, 512, "fp16")
    scaling = []
    for tiles in ("4x4", "8x8", "16x16"):
        with gc_paused():
            p = make_mapping("weight-streaming").plan(graph, wafer, make_grid(wafer, tiles=tiles))
        scaling.append(f"{tiles}: {sum(len(o.tasks) for o in p.ops):,} tasks {_engine_us_per_task(p, wafer, 1):.1f} us")
    rows.append(["run cost vs tiles (111M seq 512, weight streaming)", "13 -> 22 us per task", "; ".join(scaling),
                 "", "flat per task"])
    print(table(["figure", "before (main)", "now", "ratio", "goal"], rows))
    print("111M fp32 numerics against torch: section (b).\n")


SECTIONS = {"a": bench_timing, "b": bench_numerics, "c": bench_kernels, "d": bench_auto, "e": bench_serving,
            "f": bench_issue19}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated sections to run (a, b, c, d, e, f)")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {', '.join(bad)} (known: {', '.join(SECTIONS)})")
    print(f"machine: {machine()}\n")
    for s in chosen:
        load0 = os.getloadavg()[0]
        SECTIONS[s]()
        # Other processes on the machine skew wall times: say how busy it was.
        print(f"[load average (1 min) at start / end of ({s}): {load0:.2f} / {os.getloadavg()[0]:.2f}]\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
