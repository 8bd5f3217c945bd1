"""Train HAEPO through RL Baselines3 Zoo: ``python -m haepo_adapters.sb3.zoo --algo haepo ...``.

Registers :class:`~haepo_adapters.sb3.HAEPO` in ``rl_zoo3.utils.ALGOS`` as ``"haepo"`` and
runs the zoo's own train entry point (``rl_zoo3.train.train``) with every zoo flag. Without
``--conf-file`` it reads the hyperparameters shipped with this package
(:func:`haepo_adapters.sb3.hyperparams_path`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import HAEPO, hyperparams_path

__all__ = ["main", "register"]


def register(name: str = "haepo") -> None:
    """Add HAEPO to RL Zoo's algorithms under ``name`` (idempotent)."""
    from rl_zoo3 import utils

    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    utils.ALGOS[name] = HAEPO


def main(argv: Sequence[str] | None = None) -> None:
    """RL Zoo's ``train`` with HAEPO registered; ``argv`` defaults to ``sys.argv[1:]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    register()
    if (
        "--conf-file" not in args
        and "-conf" not in args
        and not any(a.startswith("--conf-file=") for a in args)
    ):
        args += ["--conf-file", str(hyperparams_path())]
    from rl_zoo3.train import train

    old = sys.argv
    sys.argv = [old[0] if old else "haepo-zoo", *args]
    try:
        train()
    finally:
        sys.argv = old


if __name__ == "__main__":
    main()
