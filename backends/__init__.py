"""haepo_backends: optimized HAEPO implementations.

Import the one you need; nothing here imports a framework:

- ``haepo_backends.torch``: PyTorch (CPU and CUDA), closed-form backward, chunked from-logits
  and fused-linear from-hidden paths, distributed groups.
- ``haepo_backends.jax``: JAX/XLA, ``custom_vjp``, chunked paths, groups sharded across devices.
"""
