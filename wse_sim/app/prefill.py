"""``--phase prefill``: one forward pass over ``--seq`` tokens under the chosen mapping, with real numerics."""

from __future__ import annotations

import time

from ..errors import UserError
from ..gc_pause import gc_paused
from ..report.build import build_report
from ..sim import Engine
from ..sim.numerics import Numerics
from ..workloads import lower_model
from ..workloads.graph import BYTES_PER_ELEM
from .scenario import RunOutput, Scenario, input_tokens, make_mapping, model_weights, numerics_enabled, report_inputs
from .verify import compare_logits


def run_prefill(scn: Scenario, progress: bool, log, record: bool) -> RunOutput:
    """Plan and simulate the forward pass of ``scn``; check the logits when numerics are on."""
    spec, wafer, config = scn.spec, scn.wafer, scn.config
    if spec.layer_subset is not None:
        raise UserError("--layer-subset applies to decode and generate (serving placement)")
    if spec.wafers != 1:
        raise UserError("--wafers applies to decode and generate (resident weights, a layer pipeline); a prefill "
                        "with weight streaming runs on one wafer (--phase generate reports the prefill's TTFT "
                        "on N wafers)")
    graph = lower_model(config, spec.batch, spec.seq, spec.precision)
    mapping = make_mapping(spec.mapping, fixed_tiles=bool(spec.tiles or spec.tile))
    with gc_paused():  # hundreds of thousands of tasks, no cycles: see wse_sim.gc_pause
        plan = scn.with_defects(mapping.plan(graph, wafer, scn.grid))

    numerics_on, reason = numerics_enabled(spec, config)
    executor = tokens = weights = None
    if numerics_on:
        tokens = input_tokens(spec, config)
        weights = model_weights(spec, config, scn.weights, log)
        executor = Numerics(graph, weights, tokens)

    t0 = time.perf_counter()
    result = Engine(wafer, plan, numerics=executor, progress=progress, record=record).run()
    sim_wall = time.perf_counter() - t0

    logits = None
    numerics_report: dict = {"enabled": bool(numerics_on), "reason": reason}
    if executor is not None:
        logits = executor.output("head.lm_head").reshape(spec.batch, spec.seq, config.vocab_size)
        log("checking logits against the float64 reference and transformers ...")
        numerics_report.update(compare_logits(logits, executor, weights, tokens, spec.precision))
    seconds = result.total_cycles / wafer.clock_hz
    serving = {"phase": "prefill", "ttft_s": seconds, "tpot_s": None,
               "tokens_per_s_per_request": spec.seq / seconds if seconds else None,
               "kv_cache_bytes": graph.tokens * config.kv_cache_bytes_per_token(BYTES_PER_ELEM[spec.precision])}
    report = build_report(report_inputs(spec), config, wafer, graph, plan, result, numerics_report, serving)
    if scn.remap is not None:
        report["defects"] = scn.defects_report(plan)
    return RunOutput(report, logits, sim_wall, result, plan, wafer)
