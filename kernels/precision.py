"""Storage-precision rounding: values are kept in float32 arrays but made exactly representable in fp16/bf16.

The simulator stores tensors at the wafer's storage precision while doing arithmetic in fp32, so every store
goes through :func:`round_to`. Rounding is round-to-nearest-even, as on the hardware and in torch. Both
16-bit paths were checked bit for bit on all 2**32 float32 patterns (fp16 against numpy's float16 cast,
bf16 against torch's bfloat16 cast); the tests re-check a 1-in-4099 sweep.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..precision import BYTES_PER_ELEM, PRECISIONS  # noqa: F401  (defined there, numba-free)


def require_f32(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as an ndarray after checking it is float32 (a silent cast would hide precision bugs)."""
    arr = np.asarray(x)
    if arr.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {arr.dtype}")
    return arr


@njit(cache=True)
def _bf16_bits_rne(u: np.ndarray) -> None:
    """In place on float32 bit patterns: round to the nearest bf16 (ties to even) and zero the low 16 bits."""
    for i in range(u.shape[0]):
        b = u[i]
        if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
            # NaN: keep sign and high payload bits, force quiet so clearing the low half cannot make it inf.
            u[i] = (b | np.uint32(0x00400000)) & np.uint32(0xFFFF0000)
        else:
            # Overflow past the largest finite bf16 carries into the exponent and lands exactly on inf.
            lsb = (b >> np.uint32(16)) & np.uint32(1)
            u[i] = (b + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)


@njit(cache=True)
def _fp16_rne(x: np.ndarray) -> None:
    """In place on float32 values: round to the nearest IEEE half (ties to even), overflow to ±inf.

    Normal halves keep 10 of float32's 23 fraction bits, so those are rounded on the bit pattern like bf16.
    Below 2**-14 halves are subnormal with a fixed quantum of 2**-24, which is exactly the ulp of 0.5:
    ``(|x| + 0.5) - 0.5`` rounds to it with the FPU's own RNE. (Several times faster than a float16 cast.)
    """
    u = x.view(np.uint32)
    for i in range(x.shape[0]):
        b = u[i]
        mag = b & np.uint32(0x7FFFFFFF)
        if mag >= np.uint32(0x7F800000):
            if mag > np.uint32(0x7F800000):  # NaN: quiet, payload cut to the half's 10 fraction bits
                u[i] = (b | np.uint32(0x00400000)) & np.uint32(0xFFFFE000)
        elif mag < np.uint32(0x38800000):
            v = abs(x[i])
            x[i] = np.float32(math.copysign((v + np.float32(0.5)) - np.float32(0.5), x[i]))
        else:
            r = (mag + np.uint32(0xFFF) + ((mag >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
            if r > np.uint32(0x477FE000):  # beyond 65504, the largest half
                r = np.uint32(0x7F800000)
            u[i] = (b & np.uint32(0x80000000)) | r


@njit(cache=True)
def _f64_to_f32_round_to_odd(x: np.ndarray, out: np.ndarray) -> None:
    """float64 -> float32 with round-to-odd (truncate, then set the lsb if inexact).

    Rounding to odd first keeps a later RNE to bf16 (8 significant bits, far fewer than float32's 24)
    equal to a single correct RNE from float64: it avoids the double-rounding error of going via RNE float32.
    """
    u = out.view(np.uint32)
    for i in range(x.shape[0]):
        v = x[i]
        f = np.float32(v)
        out[i] = f
        if v != v or np.float64(f) == v:
            continue
        b = u[i]
        if abs(np.float64(f)) > abs(v):  # RNE went away from zero (maybe to inf): step back to truncation
            b -= np.uint32(1)
        u[i] = b | np.uint32(1)


def round_to(x: np.ndarray, precision: str) -> np.ndarray:
    """Round ``x`` to the storage ``precision`` (RNE) and return it as a new C-contiguous float32 array.

    Accepts any real dtype; float64 input is rounded once, straight to the target (no double rounding).
    fp16 overflows to ±inf and keeps subnormals; NaN stays NaN and inf stays inf in both 16-bit formats.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    arr = np.asarray(x)
    if arr.dtype != np.float32 and arr.dtype != np.float64:
        arr = arr.astype(np.float64)  # exact for float16 and for integers below 2**53
    if precision == "fp32":
        return np.array(arr, dtype=np.float32, order="C", copy=True)
    if precision == "fp16":
        if arr.dtype == np.float64:  # numpy converts float64 -> half directly (one RNE)
            with np.errstate(over="ignore"):  # overflow to ±inf is the specified result
                return np.ascontiguousarray(arr.astype(np.float16).astype(np.float32))
        out = np.array(arr, dtype=np.float32, order="C", copy=True)
        _fp16_rne(out.reshape(-1))
        return out
    if arr.dtype == np.float64:
        flat = np.ascontiguousarray(arr).reshape(-1)
        out = np.empty(flat.shape[0], dtype=np.float32)
        _f64_to_f32_round_to_odd(flat, out)
    else:
        out = np.array(arr, dtype=np.float32, order="C", copy=True).reshape(-1)
    _bf16_bits_rne(out.view(np.uint32))
    return out.reshape(arr.shape)


@njit(cache=True)
def _round_rows(x: np.ndarray, row: np.ndarray, bf16: bool) -> None:
    """Round each row of the 2-D float32 ``x`` (any strides) in place through the contiguous buffer ``row``,
    with the same 1-D kernels :func:`round_to` uses."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            row[j] = x[i, j]
        if bf16:
            _bf16_bits_rne(row.view(np.uint32))
        else:
            _fp16_rne(row)
        for j in range(x.shape[1]):
            x[i, j] = row[j]


def round_in_place(x: np.ndarray, precision: str) -> None:
    """Round the writeable float32 array ``x`` to ``precision`` in place: the values ``round_to(x, precision)``
    returns, without a new array (a block of a larger stored tensor is rounded where it lies)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    x = require_f32(x, "round_in_place: x")
    if precision == "fp32" or x.size == 0:
        return
    if x.flags.c_contiguous:
        flat = x.reshape(-1)
        if precision == "fp16":
            _fp16_rne(flat)
        else:
            _bf16_bits_rne(flat.view(np.uint32))
    elif x.ndim == 2:
        _round_rows(x, np.empty(x.shape[1], np.float32), precision == "bf16")
    else:
        x[...] = round_to(x, precision)
