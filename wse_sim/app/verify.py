"""Checks of the simulated logits against independent references on the same weights.

"Same weights" means the weights as the wafer stores them (rounded to the storage precision), so the
comparison measures the simulated computation, not the rounding of the checkpoint.
"""

from __future__ import annotations

import numpy as np

from ..workloads.hf_reference import transformers_generate, transformers_logits
from ..workloads.reference import reference_logits


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


REFERENCE = "float64 numpy forward (wse_sim.workloads.reference)"
TRANSFORMERS = "transformers float32 forward (eager attention)"
NOT_REQUESTED = "not run (on request: --check-transformers)"


def compare_logits(logits, executor, weights, tokens, precision: str, last_only: bool = False,
                   check_transformers: bool = False) -> dict:
    """Errors of ``logits`` against the float64 reference, and against ``transformers`` if ``check_transformers``;
    ``last_only``: ``logits`` are the last position's only (a decode step after a cache of the earlier tokens).

    The float64 reference shares no code with the simulator's kernels; its agreement with ``transformers`` is
    tested (tests/test_weights.py, tests/test_verify.py), so the default check costs no torch import (about 3 s)
    and no second forward. ``checked_against`` names what was compared. ``executor``: the run's
    :class:`~wse_sim.sim.numerics.Numerics`, whose stored (rounded) weights are the ones compared on."""
    stored = executor.stored_weights(weights)
    ref = reference_logits(stored, tokens)
    if last_only:
        ref = ref[:, -1:]
    out = {
        "precision": precision,
        "compared_tokens": int(tokens.size),
        "checked_against": [REFERENCE],
        "logit_abs_max": float(np.max(np.abs(ref))),
        "max_abs_err_vs_reference": float(np.max(np.abs(logits.astype(np.float64) - ref))),
        "top1_agreement_vs_reference": top1_agreement(logits, ref),
    }
    if not check_transformers:
        return out | {"max_abs_err_vs_transformers": None, "top1_agreement": None, "transformers": NOT_REQUESTED}
    try:
        hf = transformers_logits(stored, tokens)
        if last_only:
            hf = hf[:, -1:]
    except ImportError as exc:  # not installed (an optional extra); installed but broken raises
        out |= {"max_abs_err_vs_transformers": None, "top1_agreement": None, "transformers": f"unavailable: {exc}"}
        return out
    out |= {
        "checked_against": [REFERENCE, TRANSFORMERS],
        "max_abs_err_vs_transformers": float(np.max(np.abs(logits - hf))),
        "top1_agreement": top1_agreement(logits, hf),
        "transformers_vs_reference_max_abs_err": float(np.max(np.abs(hf.astype(np.float64) - ref))),
    }
    return out


def compare_tokens(generated: np.ndarray, weights, prompt: np.ndarray, precision: str) -> dict:
    """Greedy tokens generated through the simulated path against ``transformers`` ``generate()`` on the same
    (storage-rounded) weights, token for token."""
    from ..kernels import round_to  # numba: not imported by runs without numerics

    stored = weights.map_arrays(lambda a: round_to(a, precision))
    out = {"precision": precision, "generated_tokens_compared": int(generated.size)}
    try:
        hf = transformers_generate(stored, prompt, generated.shape[1])[:, prompt.shape[1]:]
    except ImportError as exc:  # not installed (an optional extra); installed but broken raises
        return out | {"tokens_match_transformers": None, "transformers": f"unavailable: {exc}"}
    same = generated == hf
    first = np.argwhere(~same)
    return out | {
        "tokens_match_transformers": bool(same.all()),
        "token_agreement": float(same.mean()),
        "first_mismatch": None if not len(first) else {"sequence": int(first[0][0]), "step": int(first[0][1])},
        "transformers_tokens": hf.tolist(),
    }
