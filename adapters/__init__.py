"""haepo_adapters: plug the HAEPO loss into existing training loops.

- ``haepo_adapters.cleanrl``: CleanRL-style rollout buffers (torch and JAX).
- ``haepo_adapters.trl``: ``HAEPOTrainer`` / ``HAEPOConfig`` for Hugging Face TRL.

Nothing here imports a framework until you import the submodule.
"""
