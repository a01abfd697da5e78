"""``--phase prefill`` under the ``pipelined`` mapping: one forward pass over ``--seq`` tokens, each layer on its own
band of PE rows, with real numerics. Every other prefill is the first pass of a request and is placed as
``generate`` places it (:func:`wse_sim.app.serve.run_serving`)."""

from __future__ import annotations

import time

from ..errors import UserError
from ..gc_pause import gc_paused
from ..report.build import build_report
from ..sim import Engine
from ..workloads import lower_model
from ..workloads.graph import BYTES_PER_ELEM
from .scenario import RunOutput, Scenario, input_tokens, make_mapping, model_weights, numerics_enabled, report_inputs
from .verify import compare_logits


def run_prefill(scn: Scenario, progress: bool, log, record: bool, defer_checks: bool = False) -> RunOutput:
    """Plan and simulate the pipelined forward pass of ``scn``; check the logits when numerics are on (or leave
    the check to the caller, ``defer_checks``: ``RunOutput.pending_checks``)."""
    spec, wafer, config = scn.spec, scn.wafer, scn.config
    for flag, value in (("--layer-subset", spec.layer_subset), ("--gen-tokens", spec.gen_tokens),
                        ("--weights streamed", spec.weights == "streamed" or None)):
        if value is not None:
            raise UserError(f"{flag} does not apply to --mapping pipelined (its own placement: every layer on a "
                            "band of PE rows, weights resident)")
    if spec.wafers != 1:
        raise UserError("--mapping pipelined runs on one wafer (--wafers applies to the resident placement in "
                        "regions)")
    graph = lower_model(config, spec.batch, spec.seq, spec.precision)
    mapping = make_mapping(spec.mapping, fixed_tiles=bool(spec.tiles or spec.tile))
    with gc_paused():  # hundreds of thousands of tasks, no cycles: see wse_sim.gc_pause
        plan = scn.with_defects(mapping.plan(graph, wafer, scn.grid))

    numerics_on, reason = numerics_enabled(spec, config)
    executor = tokens = weights = None
    if numerics_on:
        tokens = input_tokens(spec, config)
        weights = model_weights(spec, config, scn.weights, log)
        from ..sim.numerics import Numerics  # the kernels (numba): imported only when numerics run

        executor = Numerics(graph, weights, tokens, adopt_weights=scn.weights is None)  # made for this run

    t0 = time.perf_counter()
    result = Engine(wafer, plan, numerics=executor, progress=progress, record=record).run()
    sim_wall = time.perf_counter() - t0

    logits = check = None
    numerics_report: dict = {"enabled": bool(numerics_on), "reason": reason}
    if executor is not None:
        logits = executor.output("head.lm_head").reshape(spec.batch, spec.seq, config.vocab_size)
        hf = bool(spec.check_transformers)

        def check() -> None:
            log(f"checking logits against the float64 reference{' and transformers' * hf} ...")
            numerics_report.update(compare_logits(logits, executor, weights, tokens, spec.precision,
                                                  check_transformers=hf))
        if not defer_checks:
            check()
            check = None
    seconds = result.total_cycles / wafer.clock_hz
    serving = {"phase": "prefill", "ttft_s": seconds, "tpot_s": None,
               "tokens_per_s_per_request": spec.seq / seconds if seconds else None,
               "kv_cache_bytes": graph.tokens * config.kv_cache_bytes_per_token(BYTES_PER_ELEM[spec.precision]),
               "placement": {"prefill": {
                   "weights": "resident", "why": f"--mapping {spec.mapping} keeps weights resident",
                   "grid_pes": [scn.grid.rows, scn.grid.cols], "wafers": 1, "simulated_layers": config.n_layer,
                   "model_layers": config.n_layer,
                   "how": "pipelined: every layer on its own band of the grid's PE rows, sequences as micro-batches"}}}
    report = build_report(report_inputs(spec), config, wafer, graph, plan, result, numerics_report, serving)
    if scn.remap is not None:
        report["defects"] = scn.defects_report(plan)
    return RunOutput(report, logits, sim_wall, result, plan, wafer, pending_checks=check)
