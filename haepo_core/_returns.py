"""Return normalization inside each group (population std, ddof = 0)."""

from __future__ import annotations

import array_api_compat

from ._namespace import Array, compute_dtype, get_namespace
from ._objective import Primitives, normalize
from ._segments import group_index
from ._validation import NORMALIZATIONS, check_finite, check_ids, check_returns

__all__ = ["normalize_returns"]


def normalize_returns(
    returns: Array,
    group_ids: Array | None = None,
    *,
    method: str = "zscore",
    eps: float = 1e-8,
) -> Array:
    r"""Normalize returns within each group.

    .. math::

        \tilde R_k = \frac{R_k - \bar R_g}{\sigma_g + \epsilon}\ (\texttt{"zscore"}),\quad
        R_k - \bar R_g\ (\texttt{"center"}),\quad R_k\ (\texttt{"none"})

    where :math:`\bar R_g` and :math:`\sigma_g` are the mean and the *population* standard
    deviation (ddof = 0) of the returns of the group of ``k``. A group whose returns are all
    equal (a single-trajectory group included) gets exactly 0 under ``zscore`` and ``center``.

    Args:
      returns: ``[M]`` real returns (integers are promoted to float32).
      group_ids: ``[M]`` integer group labels; ``None`` puts all ``M`` in one group.
      method: ``"zscore"`` (default), ``"center"`` or ``"none"``.
      eps: ``> 0``, guards the std only.

    Returns:
      ``[M]`` floating array (float64 stays float64, otherwise float32 or the input dtype).

    Example:
      >>> import numpy as np
      >>> from haepo_core import normalize_returns
      >>> np.round(normalize_returns(np.array([1.0, 3.0, 5.0, 5.0]), np.array([0, 0, 1, 1])), 6)
      array([-1.,  1.,  0.,  0.])
    """
    xp = get_namespace(returns=returns, group_ids=group_ids)
    m = returns.shape[0] if returns.ndim == 1 else -1
    check_returns(xp, "returns", returns, m)
    if group_ids is not None:
        check_ids(xp, "group_ids", group_ids, m, "[M]")
    if method not in NORMALIZATIONS:
        raise ValueError(
            f"method: expected one of {', '.join(map(repr, NORMALIZATIONS))}, got {method!r}"
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps: expected a number > 0, got {eps!r}")
    check_finite(xp, "returns", returns, None)
    floating = xp.isdtype(returns.dtype, "real floating")
    # float16/bfloat16 are normalized in float32 (mean and std are reductions), then cast back.
    r = xp.astype(returns, compute_dtype(xp, returns.dtype) if floating else xp.float32)
    gidx, num = group_index(xp, group_ids, m, array_api_compat.device(returns))
    out = normalize(Primitives(xp), r, gidx, num, method, float(eps))
    return xp.astype(out, returns.dtype) if floating else out
