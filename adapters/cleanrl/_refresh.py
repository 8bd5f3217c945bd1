"""The refresh schedule of a frozen reference: every ``refresh_every`` updates (framework-free,
shared by the torch :class:`ReferencePolicy` and the JAX :class:`ReferenceParams`)."""

from __future__ import annotations

__all__ = ["RefreshSchedule"]


class RefreshSchedule:
    """Counts updates; :meth:`_due` says whether this one refreshes the reference."""

    def __init__(self, refresh_every: int = 1) -> None:
        if (
            isinstance(refresh_every, bool)
            or not isinstance(refresh_every, int)
            or (refresh_every < 1)
        ):
            raise ValueError(f"refresh_every: expected an int >= 1, got {refresh_every!r}")
        self.refresh_every = refresh_every
        self.updates = 0

    def _due(self) -> bool:
        """Count one update; True when the schedule refreshes the reference at it."""
        self.updates += 1
        return self.updates % self.refresh_every == 0
