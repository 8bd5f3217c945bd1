"""The torch side: a frozen copy of the previous policy, refreshed on a schedule."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._refresh import RefreshSchedule

__all__ = ["ReferencePolicy"]


class ReferencePolicy(RefreshSchedule):
    """Frozen reference policy for the KL term: a copy of the policy, refreshed on a schedule.

    HAEPO penalizes ``KL(pi_theta || pi_ref)`` with ``pi_ref`` the *previous* policy. Keep one
    ``ReferencePolicy`` beside the agent, compute reference outputs with it under
    :func:`torch.no_grad` (it is in eval mode and its parameters do not require grad), and call
    :meth:`step` once after each update: every ``refresh_every`` updates (default 1, i.e. every
    update) it copies the agent's current weights, so during update ``u`` the reference is the
    policy at the start of that update.

    Args:
      module: the policy (an ``nn.Module``); deep-copied once.
      refresh_every: ``>= 1`` updates between refreshes.

    Example:
      >>> import torch
      >>> from haepo_adapters.cleanrl import ReferencePolicy
      >>> agent = torch.nn.Linear(4, 2)
      >>> ref = ReferencePolicy(agent)
      >>> with torch.no_grad():
      ...     _ = agent.weight.add_(1.0)
      >>> bool(torch.equal(ref.module.weight, agent.weight)), ref.step(), \\
      ...     bool(torch.equal(ref.module.weight, agent.weight))
      (False, True, True)
    """

    def __init__(self, module: nn.Module, refresh_every: int = 1) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        super().__init__(refresh_every)
        self._source = module
        self.module = copy.deepcopy(module)
        self.module.eval()
        self.module.requires_grad_(False)

    def refresh(self) -> None:
        """Copy the agent's current weights into the reference now."""
        self.module.load_state_dict(self._source.state_dict())

    def step(self) -> bool:
        """Count one update; refresh when the schedule says so. Returns whether it refreshed."""
        if self._due():
            self.refresh()
            return True
        return False

    @torch.no_grad()
    def __call__(self, *args: object, **kwargs: object) -> object:
        """The reference's forward pass, without gradient."""
        return self.module(*args, **kwargs)
