"""The HAEPO objective from per-trajectory sums, written once over a few primitives.

Every entry point of every backend reduces its inputs to per-trajectory sums (``L_k``, the
valid-step counts, the entropy and KL sums) and calls :func:`objective`. What differs between
backends is a handful of primitives, collected in :class:`Primitives`:

- segment sum / max / min over rows that share a dense group index;
- cross-device reductions (sum: differentiable; max, min: constants), the identity here;
- the policy term ``plackett_luce_term(z, r_norm, index, num) -> (S, w)`` with
  ``w = softmax_g(z)`` and ``S = sum_k w_k r_norm_k`` (the local sum: the objective reduces it
  across devices), which a backend may give a closed-form backward;
- the KL-estimate sum ``kl_estimate_sum(x, ref, estimator)`` and ``stop_gradient``.

The defaults are plain array-API operations differentiated by the library's own autodiff, so
the core itself is one backend of its objective.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ._namespace import Array
from ._namespace import stop_gradient as _stop_gradient
from ._segments import segment_max as _segment_max
from ._segments import segment_min as _segment_min
from ._segments import segment_sum as _segment_sum

__all__ = [
    "HAEPOOutput",
    "HAEPOStats",
    "Options",
    "Primitives",
    "group_ess",
    "kl_steps",
    "normalize",
    "objective",
    "plackett_luce_forward",
    "scores",
]


class HAEPOStats(NamedTuple):
    """The detached 0-d diagnostics every HAEPO loss reports (a NamedTuple: a JAX pytree and
    ``torch.compile``-friendly). Reads like a mapping too: ``stats["ess"]``, ``keys()``,
    ``values()``, ``items()``, ``"ess" in stats``, ``dict(stats)``. Iterating it yields the
    values, as for any tuple: iterate ``keys()`` for the names.

    Attributes:
      policy_loss: ``J_PL``.
      entropy: token mean of the entropy (0 when none was given).
      kl: token mean of the KL (0 when none was given).
      ess: mean over groups of ``1 / sum_k w_k^2``.
      ess_min: the smallest group ESS.
      max_weight: the largest weight.
      weighted_return: mean over groups of ``sum_k w_k R_k`` (raw returns).
      num_groups: the number of non-empty groups.
    """

    policy_loss: Array
    entropy: Array
    kl: Array
    ess: Array
    ess_min: Array
    max_weight: Array
    weighted_return: Array
    num_groups: Array

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(key)
            return getattr(self, key)
        return tuple.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:  # type: ignore[override]
        return key in self._fields

    def keys(self) -> tuple[str, ...]:
        return self._fields

    def values(self) -> tuple[Array, ...]:
        return tuple(self)

    def items(self) -> Iterator[tuple[str, Array]]:
        return zip(self._fields, self)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self._fields else default

    def map(self, fn: Callable[[Array], Array]) -> HAEPOStats:
        """The same stats with ``fn`` applied to each value."""
        return HAEPOStats(*(fn(v) for v in self))


class HAEPOOutput(NamedTuple):
    """What every HAEPO loss returns (a NamedTuple, hence a JAX pytree and torch.compile-able).

    Attributes:
      loss: 0-d, the scalar to minimize, ``J_PL - entropy_coef * H + kl_coef * KL``.
      weights: ``[M]`` Plackett-Luce weights ``w_k`` (differentiable).
      normalized_returns: ``[M]`` ``R~_k`` (constants).
      log_likelihood: ``[M]`` ``L_k`` as fed to the softmax before the temperature (after
        length normalization when it is on).
      stats: :class:`HAEPOStats`, detached 0-d arrays (``stats["ess"]`` and friends).
    """

    loss: Array
    weights: Array
    normalized_returns: Array
    log_likelihood: Array
    stats: HAEPOStats


class Options(NamedTuple):
    """Validated loss options (see :func:`haepo_core.kit.make_options`). Strings and the bool
    are static; coefficients may be arrays (traced, or being differentiated)."""

    entropy_coef: Any
    kl_coef: Any
    kl_estimator: str
    normalize_returns: str
    temperature: Any
    length_normalize: bool
    eps: Any


def kl_steps(xp: Any, logp: Array, ref_logp: Array, estimator: str) -> Array:
    """Per-step KL estimate with ``r = ref_logp - logp``: k1 ``-r``, k2 ``r^2/2``, k3
    ``e^r - 1 - r`` (``expm1`` keeps small ``r`` accurate)."""
    r = ref_logp - logp
    if estimator == "k1":
        return -r
    if estimator == "k2":
        return 0.5 * r * r
    return xp.expm1(r) - r


class Primitives:
    """The operations :func:`objective` is written with; the defaults are array-API ops under
    the library's own autodiff, on one device. A backend subclasses this and overrides what it
    does better (a closed-form policy backward, native segment ops, cross-device collectives).

    Every method works on 1-d arrays of the compute dtype; ``index`` is a dense ``[M]`` group
    index in ``0..num-1`` (segments no trajectory uses stay empty and are ignored).
    """

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def stop_gradient(self, x: Array) -> Array:
        return _stop_gradient(x)

    def segment_sum(self, x: Array, index: Array, num: int) -> Array:
        """``[num]``, differentiable in ``x``."""
        return _segment_sum(x, index, num)

    def segment_max(self, x: Array, index: Array, num: int) -> Array:
        """``[num]``, ``-inf`` for an empty segment (used on constants only)."""
        return _segment_max(x, index, num)

    def segment_min(self, x: Array, index: Array, num: int) -> Array:
        """``[num]``, ``+inf`` for an empty segment (used on constants only)."""
        return _segment_min(x, index, num)

    def all_sum(self, x: Array) -> Array:
        """Sum over devices/ranks holding other trajectories (differentiable); identity here."""
        return x

    def all_max(self, x: Array) -> Array:
        """Elementwise max over devices (a constant); identity here."""
        return x

    def all_min(self, x: Array) -> Array:
        """Elementwise min over devices (a constant); identity here."""
        return x

    def plackett_luce_term(
        self, z: Array, r_norm: Array, index: Array, num: int
    ) -> tuple[Array, Array]:
        """``(S, w)``: ``w = softmax_g(z)`` inside each group (global over devices) and the
        local ``S = sum_k w_k r_norm_k``. ``r_norm`` is a constant. Plain autodiff here; a
        backend with a closed-form backward runs :func:`plackett_luce_forward` in its forward."""
        return plackett_luce_forward(self, z, r_norm, index, num)

    def kl_estimate_sum(self, x: Array, ref: Array, estimator: str) -> Array:
        """0-d ``sum_i kappa(ref_i - x_i)`` over the local steps; ``ref`` is a constant."""
        return self.xp.sum(kl_steps(self.xp, x, ref, estimator))


def plackett_luce_forward(
    P: Primitives, z: Array, r_norm: Array, index: Array, num: int
) -> tuple[Array, Array]:
    """The value of :meth:`Primitives.plackett_luce_term`: ``(S, w)`` with ``w = softmax_g(z)``
    (normalizers global over devices) and the local ``S = sum_k w_k r_norm_k``."""
    xp = P.xp
    # The max is a constant shift (value and gradient unchanged) that keeps exp() <= 1;
    # empty segments (-inf) shift by 0.
    peak = P.all_max(P.segment_max(P.stop_gradient(z), index, num))
    peak = xp.where(xp.isfinite(peak), peak, xp.zeros_like(peak))
    e = xp.exp(z - xp.take(peak, index, axis=0))
    total = P.all_sum(P.segment_sum(e, index, num))
    total = xp.where(total > 0, total, xp.ones_like(total))  # empty segments
    w = e / xp.take(total, index, axis=0)
    return xp.sum(w * r_norm), w


def scores(P: Primitives, L: Array, index: Array, num: int, temperature: Any) -> Array:
    """``z = (L - max_g L) / tau``: the softmax scores, shifted by each group's (detached) max
    *before* the division by the temperature. The shift changes neither the weights nor their
    gradient; dividing afterwards keeps every score <= 0 with a 0 at each group's best
    trajectory, so a tiny temperature (1e-39 in float32) gives the exact one-hot limit instead
    of ``-inf - (-inf) = NaN``. A temperature below the dtype's smallest normal number is
    raised to it: some libraries flush subnormals to 0 (XLA on CPU), and the one-hot limit is
    already reached there."""
    xp = P.xp
    peak = P.all_max(P.segment_max(P.stop_gradient(L), index, num))
    peak = xp.where(xp.isfinite(peak), peak, xp.zeros_like(peak))
    tiny = float(xp.finfo(L.dtype).smallest_normal)
    if isinstance(temperature, numbers.Real):
        temperature = max(float(temperature), tiny)
    else:  # an array (traced, or being differentiated: the clamp's gradient is 0 there)
        temperature = xp.where(temperature < tiny, xp.full_like(temperature, tiny), temperature)
    return (L - xp.take(peak, index, axis=0)) / temperature


def group_ess(P: Primitives, w: Array, index: Array, num: int) -> tuple[Array, Array]:
    """Per-segment ESS ``1 / sum_g w^2`` (0 for an empty segment) and the non-empty mask."""
    xp = P.xp
    sq = P.all_sum(P.segment_sum(w * w, index, num))
    present = sq > 0
    ess = xp.where(present, 1.0 / xp.where(present, sq, xp.ones_like(sq)), xp.zeros_like(sq))
    return ess, present


def normalize(P: Primitives, r: Array, index: Array, num: int, method: str, eps: Any) -> Array:
    """Per-group ``zscore`` / ``center`` / ``none`` of float returns ``r`` (population std,
    global over devices). A group whose returns are all equal gets exactly 0."""
    if method == "none":
        return r
    xp = P.xp
    count = P.all_sum(P.segment_sum(xp.ones_like(r), index, num))
    count = xp.where(count > 0, count, xp.ones_like(count))
    mean = xp.take(P.all_sum(P.segment_sum(r, index, num)) / count, index, axis=0)
    centered = r - mean
    # The mean of equal floats can differ from them in the last bit: test max == min instead
    # of trusting r - mean.
    hi = P.all_max(P.segment_max(r, index, num))
    lo = P.all_min(P.segment_min(r, index, num))
    flat = xp.take(hi == lo, index, axis=0)
    zero = xp.zeros_like(r)
    if method == "center":
        return xp.where(flat, zero, centered)
    var = P.all_sum(P.segment_sum(centered * centered, index, num)) / count
    std = xp.take(xp.sqrt(var), index, axis=0)
    return xp.where(flat, zero, centered / (std + eps))


def objective(
    P: Primitives,
    *,
    L: Array,
    n_k: Array,
    returns: Array,
    index: Array,
    num: int,
    ent_sum: Array | None,
    kl_sum: Array | None,
    n_steps: Array,
    opts: Options,
    out_dtype: Any,
) -> HAEPOOutput:
    """The HAEPO output from this device's per-trajectory sums.

    Args:
      P: the primitives.
      L: ``[M]`` ``sum_t logp`` per trajectory, compute dtype (float32/float64), differentiable.
      n_k: ``[M]`` valid steps per trajectory, compute dtype.
      returns: ``[M]`` raw returns (any real dtype).
      index, num: dense group index ``[M]`` and its number of segments.
      ent_sum, kl_sum: 0-d sums of the per-step entropy / KL over the local valid steps, or
        ``None`` (then that mean is 0).
      n_steps: 0-d number of local valid steps.
      opts: validated :class:`Options`.
      out_dtype: the dtype of every returned array.
    """
    xp = P.xp
    cdt = L.dtype
    L_eff = L / n_k if opts.length_normalize else L
    r = xp.astype(returns, cdt)
    r_norm = P.stop_gradient(normalize(P, r, index, num, opts.normalize_returns, opts.eps))
    counts = P.all_sum(P.segment_sum(xp.ones_like(r), index, num))
    n_groups = P.stop_gradient(xp.sum(xp.astype(counts > 0, cdt)))

    S, w = P.plackett_luce_term(scores(P, L_eff, index, num, opts.temperature), r_norm, index, num)
    policy = -P.all_sum(S) / n_groups

    n_total = P.all_sum(xp.astype(n_steps, cdt))
    zero = xp.zeros_like(n_total)
    entropy = zero if ent_sum is None else P.all_sum(ent_sum) / n_total
    kl = zero if kl_sum is None else P.all_sum(kl_sum) / n_total
    loss = policy - opts.entropy_coef * entropy + opts.kl_coef * kl

    wc = P.stop_gradient(w)
    ess, present = group_ess(P, wc, index, num)
    stats = HAEPOStats(
        policy_loss=policy,
        entropy=entropy,
        kl=kl,
        ess=xp.sum(ess) / n_groups,
        ess_min=xp.min(xp.where(present, ess, xp.full_like(ess, float("inf")))),
        max_weight=P.all_max(xp.max(wc)),
        weighted_return=P.all_sum(xp.sum(wc * r)) / n_groups,
        num_groups=n_groups,
    )
    return HAEPOOutput(
        loss=xp.astype(loss, out_dtype),
        weights=xp.astype(w, out_dtype),
        normalized_returns=xp.astype(r_norm, out_dtype),
        log_likelihood=xp.astype(L_eff, out_dtype),
        stats=stats.map(lambda v: xp.astype(P.stop_gradient(v), out_dtype)),
    )
