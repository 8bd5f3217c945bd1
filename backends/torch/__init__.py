"""haepo_backends.torch: the HAEPO objective in PyTorch, fast and memory-lean.

- :func:`haepo_loss`, :func:`haepo_loss_packed`: same names, keywords and outputs as
  ``haepo_core``; closed-form policy backward; ``torch.compile(fullgraph=True)``-clean.
- :func:`haepo_loss_from_logits`: chunked over tokens, never more than one float32
  ``[chunk, V]`` block alive, recomputed in backward.
- :func:`haepo_loss_from_hidden`: fused LM head (``hidden @ weight.T + bias``), logits never
  materialized for all tokens; gradients for hidden, weight and bias.
- ``process_group=`` on every loss: groups spread over data-parallel ranks.
- :data:`backend`: the ``haepo_core.Backend`` object (entry point ``torch``).
"""

from haepo_core import HAEPOOutput

from ._backend import TorchBackend, backend
from ._lean import default_chunk_size, haepo_loss_from_hidden, haepo_loss_from_logits
from ._loss import haepo_loss, haepo_loss_packed

__all__ = [
    "HAEPOOutput",
    "TorchBackend",
    "backend",
    "default_chunk_size",
    "haepo_loss",
    "haepo_loss_from_hidden",
    "haepo_loss_from_logits",
    "haepo_loss_packed",
]
