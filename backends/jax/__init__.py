"""haepo_backends.jax: the HAEPO objective for JAX/XLA training loops.

Same names, keywords and outputs as ``haepo_core``, plus the static ``num_groups``,
``axis_name`` (groups sharded across devices under ``shard_map``/``pmap``), ``chunk_size`` and
``traced_checks`` keywords. Pure functions: wrap them in ``jax.jit``, ``jax.vmap``,
``jax.grad`` freely. See docs/jax.md.

- :func:`haepo_loss`, :func:`haepo_loss_packed`: from per-step log-probs (closed-form VJP).
- :func:`haepo_loss_from_logits`: from ``[M, T, V]`` logits, chunked over tokens.
- :func:`haepo_loss_from_hidden`: from hidden states and the LM head, never holding the
  ``[M*T, V]`` logits.
- :data:`backend`: the :class:`haepo_core.Backend` object (entry point ``jax``).
"""

from haepo_core import HAEPOOutput

from ._backend import JaxBackend, backend
from ._lean import haepo_loss_from_hidden, haepo_loss_from_logits
from ._loss import haepo_loss, haepo_loss_packed

__all__ = [
    "HAEPOOutput",
    "JaxBackend",
    "backend",
    "haepo_loss",
    "haepo_loss_from_hidden",
    "haepo_loss_from_logits",
    "haepo_loss_packed",
]
