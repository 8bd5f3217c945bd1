"""Which TRL releases this adapter supports, checked at import and at trainer construction."""

from __future__ import annotations

import os
import warnings

from packaging.version import InvalidVersion, Version

__all__ = ["SUPPORTED_TRL", "check_trl_version"]

#: TRL releases the adapter is written and tested against: ``>=1.16.0,<1.17``. It subclasses
#: ``GRPOTrainer`` and overrides private methods (``_prepare_inputs``, ``_compute_loss``,
#: ``_generate_and_score_completions``, ``_calculate_rewards``) whose signatures TRL changes
#: between minor releases, so every other release is refused rather than silently mis-trained.
SUPPORTED_TRL = ">=1.16.0,<1.17"
_LOW, _HIGH = Version("1.16.0"), Version("1.17")

#: Set this environment variable to ``1`` to try an unsupported TRL release anyway (a warning is
#: issued instead of the error; you are on your own).
ALLOW_ENV = "HAEPO_TRL_ALLOW_UNSUPPORTED"


def check_trl_version(version: str | None = None) -> str:
    """Raise ``ImportError`` unless ``version`` (default: the installed TRL) is in 1.16.x.

    Args:
      version: a version string such as ``"1.16.0"``; ``None`` reads the installed ``trl``.

    Returns:
      The version checked.

    Raises:
      ImportError: TRL is missing, its version does not parse, or it is outside
        :data:`SUPPORTED_TRL` (unless ``HAEPO_TRL_ALLOW_UNSUPPORTED=1``).
    """
    if version is None:
        try:
            from importlib.metadata import version as _dist_version

            version = _dist_version("trl")
        except Exception as exc:  # PackageNotFoundError and broken installs alike
            raise ImportError(
                "haepo_adapters.trl needs TRL (trl" + SUPPORTED_TRL + "); install it with "
                "`pip install 'haepo[trl]'`"
            ) from exc
    if not isinstance(version, str):
        raise TypeError(f"version: expected a str such as '1.16.0', got {type(version).__name__}")
    try:
        parsed = Version(version)
    except InvalidVersion as exc:
        raise ImportError(f"trl version: expected a PEP 440 version, got {version!r}") from exc
    if not (_LOW <= parsed < _HIGH):
        message = (
            f"haepo_adapters.trl supports TRL {SUPPORTED_TRL} (1.16.x), found trl {version}. "
            "HAEPOTrainer overrides private GRPOTrainer methods that change between TRL minor "
            "releases; install a supported release with `pip install 'trl>=1.16,<1.17'`, or set "
            f"{ALLOW_ENV}=1 to try this one at your own risk."
        )
        if os.environ.get(ALLOW_ENV) == "1":
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        else:
            raise ImportError(message)
    return version
