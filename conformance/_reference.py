"""The float64 reference (``haepo_core`` on NumPy), dtype-aware tolerances and the comparisons
every property uses.

Tolerances follow SciPy's ``xp_assert_close`` idea: they scale with the machine epsilon of the
dtype under test, ``rtol = 4 * sqrt(eps)`` for float32/float64; float16 and bfloat16 compute in
float32 and only round their inputs and outputs, so their error is a few output ulps
(``rtol = 8 * eps``, loose by design). On top of that, quantities that go through the softmax
get an absolute allowance for the conditioning of the problem: rounding ``L_k`` (a sum of up to
``T`` log-probs of size ``|logp|``) to the compute dtype moves ``L_k / tau`` by about
``eps_c * sum_t |logp_kt| / tau``, and the weights by as much, where ``eps_c`` is the epsilon of
the compute dtype (float32 for every dtype but float64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

import haepo_core

__all__ = [
    "EPS",
    "ConformanceError",
    "Tolerance",
    "as_float64",
    "assert_close",
    "reference_grad",
    "reference_loss",
    "tolerance",
]

#: Machine epsilon of each dtype name the suite knows.
EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}

#: The stats every backend reports: the fields of :class:`haepo_core.HAEPOStats`.
STAT_KEYS = haepo_core.HAEPOStats._fields


class ConformanceError(AssertionError):
    """A backend disagreed with the specification (what every failed check raises)."""


class Tolerance:
    """``rtol`` of the dtype under test plus the conditioning allowance of the softmax."""

    def __init__(self, dtype: str, cond: float = 0.0):
        if dtype not in EPS:
            raise ValueError(f"dtype: expected one of {sorted(EPS)}, got {dtype!r}")
        eps = EPS[dtype]
        self.dtype = dtype
        self.rtol = 4.0 * math.sqrt(eps) if dtype in ("float32", "float64") else 8.0 * eps
        self.eps_compute = EPS["float64"] if dtype == "float64" else EPS["float32"]
        #: absolute error allowed on a weight (and, relatively, on anything they multiply)
        self.weight_atol = self.rtol + 16.0 * self.eps_compute * cond

    def __repr__(self) -> str:
        return f"Tolerance({self.dtype}, rtol={self.rtol:.3g}, weight_atol={self.weight_atol:.3g})"


def tolerance(
    dtype: str, logp: Any = None, mask: Any = None, temperature: float = 1.0
) -> Tolerance:
    """The tolerance for a case: dtype epsilon plus the softmax conditioning of ``logp``."""
    cond = 0.0
    if logp is not None:
        x = np.asarray(logp, dtype=np.float64)
        valid = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
        x = np.where(valid, np.abs(np.where(valid, x, 0.0)), 0.0)
        cond = float(np.max(np.sum(x, axis=-1), initial=0.0)) / float(temperature)
    return Tolerance(dtype, cond)


def as_float64(backend: Any, x: Any) -> np.ndarray:
    """A backend array as float64 NumPy (bfloat16 and friends go through float32 first);
    ``backend`` is unused (the boundary is the suite's), kept for the call sites' clarity."""
    from ._boundary import to_numpy

    arr = np.asarray(to_numpy(x))
    if arr.dtype.kind in "biu":
        return arr
    return arr.astype(np.float64)


def reference_loss(
    inputs: Mapping[str, Any], options: Mapping[str, Any], packed: bool = False
) -> haepo_core.HAEPOOutput:
    """``haepo_core`` on float64 NumPy: the reference every backend is compared with."""
    args = {
        k: (np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
        for k, v in inputs.items()
        if v is not None
    }
    if packed:
        return haepo_core.haepo_loss_packed(
            args.pop("logp"), args.pop("segment_ids"), args.pop("returns"), **args, **options
        )
    return haepo_core.haepo_loss(
        args.pop("logp"), args.pop("returns"), args.pop("mask", None), **args, **options
    )


def reference_grad(
    inputs: Mapping[str, Any], options: Mapping[str, Any]
) -> tuple[haepo_core.HAEPOOutput, dict[str, np.ndarray]]:
    """Closed-form gradient (``haepo_core.haepo_grad``) on float64 NumPy, padded layout."""
    args = {
        k: (np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
        for k, v in inputs.items()
        if v is not None
    }
    return haepo_core.haepo_grad(
        args.pop("logp"), args.pop("returns"), args.pop("mask", None), **args, **options
    )


def _fmt(x: np.ndarray) -> str:
    return np.array2string(np.asarray(x), precision=10, threshold=40, separator=", ")


def assert_close(
    name: str, actual: Any, expected: Any, *, rtol: float, atol: float, where: str = ""
) -> None:
    """Raise :class:`ConformanceError` unless ``|actual - expected| <= atol + rtol * |expected|``
    elementwise, shapes equal, and non-finite values match exactly (NaN where NaN).
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    ctx = f" ({where})" if where else ""
    if a.shape != e.shape:
        raise ConformanceError(f"{name}{ctx}: expected shape {e.shape}, got {a.shape}")
    finite_e = np.isfinite(e)
    if not np.array_equal(np.isfinite(a), finite_e) or not np.array_equal(
        a[~finite_e], e[~finite_e], equal_nan=True
    ):
        raise ConformanceError(
            f"{name}{ctx}: non-finite values differ\n  got      {_fmt(a)}\n  expected {_fmt(e)}"
        )
    err = np.abs(a[finite_e] - e[finite_e])
    bound = atol + rtol * np.abs(e[finite_e])
    if err.size and np.any(err > bound):
        i = int(np.argmax(err - bound))
        raise ConformanceError(
            f"{name}{ctx}: max error {float(err.max()):.3g} exceeds the tolerance "
            f"(atol={atol:.3g}, rtol={rtol:.3g}; worst element {float(err[i]):.3g} > "
            f"{float(bound[i]):.3g})\n  got      {_fmt(a)}\n  expected {_fmt(e)}"
        )


def output_scale(out: haepo_core.HAEPOOutput, options: Mapping[str, Any]) -> float:
    """A magnitude for the scalar outputs: how large the terms adding up to the loss are."""
    r = np.abs(np.asarray(out.normalized_returns, np.float64))
    terms = [
        1.0,
        float(np.sum(r)),
        abs(float(options.get("entropy_coef", 0.0)) * float(out.stats["entropy"])),
        abs(float(options.get("kl_coef", 0.0)) * float(out.stats["kl"])),
    ]
    return float(sum(terms))


def compare_outputs(
    actual: Mapping[str, Any],
    expected: haepo_core.HAEPOOutput,
    tol: Tolerance,
    options: Mapping[str, Any],
    raw_returns: Any,
    *,
    where: str = "",
) -> None:
    """Compare a backend's outputs (already float64 NumPy, as a dict with the HAEPOOutput fields
    and ``stats``) with the reference, field by field."""
    rt = tol.rtol
    wa = tol.weight_atol
    r_norm = np.abs(np.asarray(expected.normalized_returns, np.float64))
    r_raw = np.abs(np.asarray(raw_returns, np.float64))
    g = max(float(expected.stats["num_groups"]), 1.0)
    scale = output_scale(expected, options)
    assert_close("weights", actual["weights"], expected.weights, rtol=rt, atol=wa, where=where)
    assert_close(
        "normalized_returns",
        actual["normalized_returns"],
        expected.normalized_returns,
        rtol=rt,
        atol=rt * (1.0 + float(np.max(r_norm, initial=0.0))),
        where=where,
    )
    ll_expected = np.asarray(expected.log_likelihood, np.float64)
    if tol.dtype == "float16":
        # L is returned in logp's dtype: below -65504 it is -inf in float16, as specified.
        with np.errstate(over="ignore"):
            ll_expected = ll_expected.astype(np.float16).astype(np.float64)
    ll = np.abs(np.nan_to_num(ll_expected, posinf=0.0, neginf=0.0))
    assert_close(
        "log_likelihood",
        actual["log_likelihood"],
        ll_expected,
        rtol=rt,
        atol=rt + tol.eps_compute * 4.0 * float(np.max(ll, initial=0.0)) + wa * 0.0,
        where=where,
    )
    policy_atol = rt * scale + wa * float(np.sum(r_norm)) / g
    assert_close("loss", actual["loss"], expected.loss, rtol=rt, atol=policy_atol, where=where)
    stats_atol = {
        "policy_loss": policy_atol,
        "entropy": rt,
        "kl": rt,
        "ess": wa * 4.0 * float(np.asarray(expected.weights).size),
        "ess_min": wa * 4.0 * float(np.asarray(expected.weights).size),
        "max_weight": wa,
        "weighted_return": rt + wa * float(np.sum(r_raw)),
        "num_groups": 0.0,
    }
    stats = actual["stats"]
    for key in STAT_KEYS:
        if key not in stats:
            raise ConformanceError(f"stats{'' if not where else f' ({where})'}: missing {key!r}")
        assert_close(
            f"stats[{key!r}]",
            stats[key],
            expected.stats[key],
            rtol=rt,
            atol=stats_atol[key],
            where=where,
        )


def grad_tolerance(expected_out: haepo_core.HAEPOOutput, tol: Tolerance, options: Mapping) -> float:
    """Absolute tolerance on ``d loss / d logp``: weight errors times the return spread."""
    r_norm = np.abs(np.asarray(expected_out.normalized_returns, np.float64))
    tau = float(options.get("temperature", 1.0))
    g = max(float(expected_out.stats["num_groups"]), 1.0)
    return tol.rtol + 2.0 * tol.weight_atol * (1.0 + float(np.max(r_norm, initial=0.0))) / (tau * g)
