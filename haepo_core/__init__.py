"""haepo_core: the HAEPO objective written once against the Python array API.

HAEPO (History-Aggregated Exploratory Policy Optimization, arXiv 2508.18884) scores each
trajectory by the sum of its log-probs, takes a Plackett-Luce softmax of those sums inside each
group, weights the normalized returns by it, and adds an entropy bonus and a KL penalty to the
frozen previous policy. Works on NumPy, array-api-strict, PyTorch and JAX arrays; torch
autograd and ``jax.grad`` flow through it. Depends on ``array-api-compat`` alone.
"""

from ._backend import (
    ENTRY_POINT_GROUP,
    ArrayAPIBackend,
    Backend,
    list_backends,
    load_backend,
)
from ._grad import haepo_grad
from ._likelihood import trajectory_log_likelihood
from ._loss import HAEPOOutput, HAEPOStats, haepo_loss, haepo_loss_from_logits, haepo_loss_packed
from ._regularizers import entropy_from_logits, kl_estimate, kl_from_logits
from ._returns import normalize_returns
from ._validation import KL_ESTIMATORS, NORMALIZATIONS
from ._weights import effective_sample_size, plackett_luce_weights

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "KL_ESTIMATORS",
    "NORMALIZATIONS",
    "ArrayAPIBackend",
    "Backend",
    "HAEPOOutput",
    "HAEPOStats",
    "__version__",
    "effective_sample_size",
    "entropy_from_logits",
    "haepo_grad",
    "haepo_loss",
    "haepo_loss_from_logits",
    "haepo_loss_packed",
    "kl_estimate",
    "kl_from_logits",
    "list_backends",
    "load_backend",
    "normalize_returns",
    "plackett_luce_weights",
    "trajectory_log_likelihood",
]
