"""Checks of the simulated logits against independent references on the same weights.

"Same weights" means the weights as the wafer stores them (rounded to the storage precision), so the
comparison measures the simulated computation, not the rounding of the checkpoint.
"""

from __future__ import annotations

import numpy as np

from ..workloads.blas import one_blas_thread
from ..workloads.hf_reference import transformers_generate, transformers_logits
from ..workloads.reference import final_hidden, logit_blocks


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
    :class:`~wse_sim.sim.numerics.Numerics`, whose stored (rounded) weights are the ones compared on. The
    reference's logits are compared a block of vocabulary columns at a time, as :func:`logit_blocks` makes them
    (the figures are maxima and argmaxes: the same as on the whole array)."""
    stored = executor.stored_weights(weights)
    hf = None
    if check_transformers:
        try:
            hf = transformers_logits(stored, tokens)
            if last_only:
                hf = hf[:, -1:]
        except ImportError as exc:  # not installed (an optional extra); installed but broken raises
            hf = f"unavailable: {exc}"
    against = {"reference": logits} if not isinstance(hf, np.ndarray) else {"reference": logits, "transformers": hf}
    with one_blas_thread():
        hidden = final_hidden(stored, tokens)
        stats = {name: _Agreement(x.shape[:-1]) for name, x in against.items()}
        for cols, ref in logit_blocks(stored, hidden):
            ref = ref[:, -1:] if last_only else ref
            for name, x in against.items():
                stats[name].add(x[..., cols], ref)
    ours = stats["reference"]
    out = {
        "precision": precision,
        "compared_tokens": int(tokens.size),
        "checked_against": [REFERENCE],
        "logit_abs_max": ours.ref_abs_max,
        "max_abs_err_vs_reference": ours.max_abs_err,
        "top1_agreement_vs_reference": ours.top1_agreement(logits),
    }
    if not check_transformers:
        return out | {"max_abs_err_vs_transformers": None, "top1_agreement": None, "transformers": NOT_REQUESTED}
    if not isinstance(hf, np.ndarray):
        return out | {"max_abs_err_vs_transformers": None, "top1_agreement": None, "transformers": hf}
    return out | {
        "checked_against": [REFERENCE, TRANSFORMERS],
        "max_abs_err_vs_transformers": float(np.max(np.abs(logits - hf))),
        "top1_agreement": top1_agreement(logits, hf),
        "transformers_vs_reference_max_abs_err": stats["transformers"].max_abs_err,
    }


class _Agreement:
    """Running figures of one array of logits against the reference's, fed a block of vocabulary columns at a time
    in order: ``max |ref|``, ``max |x - ref|`` (in float64) and the reference's argmax per position. NaN propagates
    and the first maximum wins, as numpy's ``max`` and ``argmax`` of the whole arrays give."""

    def __init__(self, positions: tuple[int, ...]):
        self.ref_abs_max = self.max_abs_err = -np.inf
        self.best = np.full(positions, -np.inf)
        self.arg = np.zeros(positions, dtype=np.int64)
        self.columns = 0  # vocabulary columns seen so far

    def add(self, x: np.ndarray, ref: np.ndarray) -> None:
        self.ref_abs_max = float(np.maximum(self.ref_abs_max, np.max(np.abs(ref))))
        self.max_abs_err = float(np.maximum(self.max_abs_err, np.max(np.abs(x.astype(np.float64) - ref))))
        arg = np.argmax(ref, axis=-1)
        top = np.take_along_axis(ref, arg[..., None], axis=-1)[..., 0]
        better = (top > self.best) | (np.isnan(top) & ~np.isnan(self.best))
        self.best = np.where(better, top, self.best)
        self.arg = np.where(better, arg + self.columns, self.arg)
        self.columns += ref.shape[-1]

    def top1_agreement(self, x: np.ndarray) -> float:
        """The share of positions whose argmax in ``x`` is the reference's."""
        return float(np.mean(np.argmax(x, axis=-1) == self.arg))


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
