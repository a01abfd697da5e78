"""Checks of the simulated logits against independent references on the same weights.

"Same weights" means the weights as the wafer stores them (rounded to the storage precision), so the
comparison measures the simulated computation, not the rounding of the checkpoint.
"""

from __future__ import annotations

import numpy as np

from .kernels import round_to


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


def compare_logits(logits, executor, weights, tokens, precision: str) -> dict:
    from .workloads.reference import reference_logits

    stored = weights.map_arrays(lambda a: round_to(a, precision))
    ref = reference_logits(stored, tokens)
    out = {
        "precision": precision,
        "compared_tokens": int(tokens.size),
        "logit_abs_max": float(np.max(np.abs(ref))),
        "max_abs_err_vs_reference": float(np.max(np.abs(logits.astype(np.float64) - ref))),
        "top1_agreement_vs_reference": top1_agreement(logits, ref),
    }
    try:
        from .workloads.hf_reference import transformers_logits

        hf = transformers_logits(stored, tokens)
    except ImportError as exc:
        out |= {"max_abs_err_vs_transformers": None, "top1_agreement": None, "transformers": f"unavailable: {exc}"}
        return out
    out |= {
        "max_abs_err_vs_transformers": float(np.max(np.abs(logits - hf))),
        "top1_agreement": top1_agreement(logits, hf),
        "transformers_vs_reference_max_abs_err": float(np.max(np.abs(hf.astype(np.float64) - ref))),
    }
    return out
