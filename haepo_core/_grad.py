"""The closed-form gradient of the HAEPO loss (what every backend's autodiff must reproduce)."""

from __future__ import annotations

from typing import Any

import array_api_compat

from ._loss import HAEPOOutput, haepo_loss
from ._namespace import Array, compute_dtype, get_namespace
from ._segments import group_index, segment_sum

__all__ = ["haepo_grad"]


def haepo_grad(
    logp: Array,
    returns: Array,
    mask: Array | None = None,
    **kwargs: Any,
) -> tuple[HAEPOOutput, dict[str, Array]]:
    r"""The loss and its gradient in closed form, without autodiff (works on NumPy too).

    .. math::

        \frac{\partial \text{loss}}{\partial \text{logp}_{k,t}} = m_{k,t}\Big[
            -\frac{w_k}{\tau\,\#\text{groups}}\,\frac{\tilde R_k - \bar R_g}{c_k}
            + \frac{\beta}{N}\,\kappa'(r_{k,t})\Big],
        \qquad
        \frac{\partial \text{loss}}{\partial \text{entropy}_{k,t}} = -\frac{\lambda\, m_{k,t}}{N}

    where :math:`\bar R_g = \sum_{j \in g} w_j \tilde R_j`, :math:`c_k = T_k` under
    ``length_normalize`` (else 1), ``N`` the number of valid steps, :math:`r = \log\pi_{ref} -
    \log\pi` and :math:`\kappa'` the derivative of the estimator with respect to ``logp``:
    ``k1``: 1, ``k2``: :math:`-r`, ``k3``: :math:`1 - e^r`.

    Args:
      logp, returns, mask and keywords: exactly as :func:`haepo_loss`.

    Returns:
      ``(output, grads)``: the :class:`HAEPOOutput` and a dict with ``"logp"`` (``[M, T]``) and,
      when ``entropy`` was given, ``"entropy"`` (``[M, T]``), in ``logp``'s dtype.

    Example:
      >>> import numpy as np
      >>> from haepo_core import haepo_grad
      >>> out, g = haepo_grad(np.log(np.array([[0.5], [0.25]])), np.array([1.0, 0.0]))
      >>> np.round(g["logp"][:, 0], 4)
      array([-0.4444,  0.4444])
    """
    out = haepo_loss(logp, returns, mask, **kwargs)
    xp = get_namespace(logp=logp)
    m, t = logp.shape
    cdt = compute_dtype(xp, logp.dtype)
    dev = array_api_compat.device(logp)
    valid = (
        xp.ones((m, t), dtype=xp.bool, device=dev)
        if mask is None
        else (mask if mask.dtype == xp.bool else mask != 0)
    )
    vf = xp.astype(valid, cdt)
    n_k = xp.sum(vf, axis=1)
    n_steps = xp.sum(n_k)
    tau = kwargs.get("temperature", 1.0)

    gidx, num = group_index(xp, kwargs.get("group_ids"), m, dev)
    w = xp.astype(out.weights, cdt)
    r_norm = xp.astype(out.normalized_returns, cdt)
    r_bar = xp.take(segment_sum(w * r_norm, gidx, num), gidx, axis=0)
    n_groups = xp.sum(xp.astype(segment_sum(xp.ones_like(w), gidx, num) > 0, cdt))
    d_l = -(w / tau) * (r_norm - r_bar) / n_groups
    if kwargs.get("length_normalize", False):
        d_l = d_l / n_k
    d_logp = vf * d_l[:, None]

    ref_logp = kwargs.get("ref_logp")
    kl_coef = kwargs.get("kl_coef", 0.0)
    if ref_logp is not None:
        x = xp.where(valid, xp.astype(logp, cdt), xp.zeros((), dtype=cdt, device=dev))
        ref = xp.where(valid, xp.astype(ref_logp, cdt), xp.zeros((), dtype=cdt, device=dev))
        r = ref - x
        est = kwargs.get("kl_estimator", "k3")
        dk = {"k1": xp.ones_like(r), "k2": -r, "k3": -xp.expm1(r)}[est]
        d_logp = d_logp + kl_coef * vf * dk / n_steps
    grads = {"logp": xp.astype(d_logp, logp.dtype)}
    if kwargs.get("entropy") is not None:
        grads["entropy"] = xp.astype(-kwargs.get("entropy_coef", 0.0) * vf / n_steps, logp.dtype)
    return out, grads
