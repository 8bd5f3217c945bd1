"""A training run's outputs: the moving average of its returns, its CSVs and its curve (PNG).

Every CleanRL-style script of the project (HAEPO and PPO, torch and JAX) ends the same way:
episode returns and per-update diagnostics go to ``metrics.csv`` and ``updates.csv``, and the
return curve, with the entropy and ESS of each update under it, to ``curve.png``. Written once
here, so that the five scripts and the benchmarks compute the moving average one way.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["moving_average", "plot_training_curve", "write_run"]


def _window(window: object) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise TypeError(f"window: expected an int >= 1, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window: expected an int >= 1, got {window!r}")
    return int(window)


def _returns(name: str, x: object) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence [E], got shape {arr.shape}")
    return arr


def moving_average(returns: Sequence[float] | np.ndarray, window: int = 20) -> np.ndarray:
    r"""Trailing mean of the last ``window`` returns, ``[E]`` (fewer at the start).

    .. math::

        \mathrm{MA}_e = \frac{1}{e - \max(e - w, 0)} \sum_{j = \max(e - w, 0) + 1}^{e} G_j,
        \qquad e = 1, \dots, E

    Entries ``e < window`` average the ``e`` returns so far: they are not full windows, and
    "best" and "steps to threshold" figures should skip them (``ma[window - 1:]``).

    Args:
      returns: ``[E]`` episode returns, in the order the episodes ended.
      window: ``int >= 1``, episodes per window (20, as the project reports: MA20).

    Returns:
      ``[E]`` float64 NumPy moving averages (empty for no episodes).

    Raises:
      TypeError: ``window`` not an int.
      ValueError: ``window < 1``, or ``returns`` not 1-D.

    Example:
      >>> from haepo_adapters.cleanrl import moving_average
      >>> moving_average([1.0, 3.0, 5.0, 7.0], window=2).tolist()
      [1.0, 2.0, 4.0, 6.0]
    """
    k = _window(window)
    x = _returns("returns", returns)
    c = np.cumsum(np.insert(x, 0, 0.0))
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(n - k, 0)
    return (c[n] - c[lo]) / (n - lo)


def plot_training_curve(
    path: str | Path,
    steps: Sequence[float] | np.ndarray,
    returns: Sequence[float] | np.ndarray,
    *,
    window: int = 20,
    title: str = "",
    updates: Sequence[Mapping[str, float]] | None = None,
) -> None:
    """Write the return curve to ``path`` (PNG), with entropy and ESS panels under it.

    The top panel shows every episode's return at the env step it ended, and the
    ``window``-episode :func:`moving_average`. When ``updates`` carry ``"ess"`` (HAEPO's
    per-update diagnostics: ``"global_step"``, ``"entropy"``, ``"ess"``, ``"episodes"``), two
    panels under it show the policy entropy and the effective sample size against the
    episodes of each update: the collapse diagnostics. Without them (PPO) only the top panel
    is drawn. Needs matplotlib (the ``cleanrl`` extra).

    Args:
      path: the PNG to write.
      steps: ``[E]`` env step at which each episode ended.
      returns: ``[E]`` episode returns.
      window: ``int >= 1``, episodes of the moving average.
      title: the figure's title.
      updates: per-update rows, or ``None``.

    Raises:
      TypeError: ``window`` not an int.
      ValueError: ``window < 1``, ``steps``/``returns`` not 1-D or of different lengths, or an
        update row with ``"ess"`` that lacks ``"global_step"``, ``"entropy"`` or
        ``"episodes"``.
    """
    k = _window(window)
    x_ep, y_ep = _returns("steps", steps), _returns("returns", returns)
    if x_ep.shape != y_ep.shape:
        raise ValueError(
            f"steps, returns: expected the same length [E], got {x_ep.shape[0]} and {y_ep.shape[0]}"
        )
    ups = [u for u in (updates or []) if "ess" in u]
    for i, u in enumerate(ups):
        missing = [key for key in ("global_step", "entropy", "episodes") if key not in u]
        if missing:
            raise ValueError(f"updates: row {i} has 'ess' but lacks {missing}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 3 if ups else 1
    fig, axes = plt.subplots(
        rows,
        1,
        figsize=(6, 3.5 + 2 * (rows - 1)),
        dpi=100,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [2] + [1] * (rows - 1)},
    )
    ax = axes[0, 0]
    ax.plot(x_ep, y_ep, ".", ms=2, alpha=0.3, label="episode return")
    ax.plot(x_ep, moving_average(y_ep, k), lw=2, label=f"{k}-episode moving average")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    if ups:
        x = [u["global_step"] for u in ups]
        axes[1, 0].plot(x, [u["entropy"] for u in ups], lw=1.2, color="C2")
        axes[1, 0].set_ylabel("entropy")
        axes[2, 0].plot(x, [u["ess"] for u in ups], lw=1.2, color="C3", label="ESS")
        axes[2, 0].plot(x, [u["episodes"] for u in ups], lw=0.8, color="grey", label="episodes")
        axes[2, 0].set_ylabel("ESS")
        axes[2, 0].legend(loc="upper left", fontsize=8)
    for a in axes[:, 0]:
        a.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("env steps")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_run(
    out_dir: str | Path,
    episodes: Sequence[tuple[float, float, float]],
    updates: Sequence[Mapping[str, float]],
    *,
    window: int = 20,
    plot: bool = True,
    title: str = "",
) -> tuple[np.ndarray, float]:
    """Write a run's ``metrics.csv``, ``updates.csv`` and (``plot``) ``curve.png``.

    ``metrics.csv`` has one row per episode (``kind, global_step, episodic_return,
    episodic_length``), ``updates.csv`` one per update, with the union of the rows' keys as
    columns (sorted; a key a row lacks is left empty). The curve is
    :func:`plot_training_curve`, drawn when there is at least one episode.

    Args:
      out_dir: an existing folder.
      episodes: ``[E]`` of ``(global step, return, length)``, in the order they ended.
      updates: per-update rows of scalars.
      window: ``int >= 1``, episodes of the moving average.
      plot: write ``curve.png`` too.
      title: the curve's title.

    Returns:
      ``(episodes [E, 3] float64, final moving average)``; the final moving average is the
      mean of the last ``window`` returns, NaN when there were no episodes.

    Raises:
      TypeError: ``window`` not an int.
      ValueError: ``window < 1``, ``out_dir`` not a folder, or an episode that is not a
        ``(step, return, length)`` triple.

    Example:
      >>> import tempfile
      >>> from haepo_adapters.cleanrl import write_run
      >>> with tempfile.TemporaryDirectory() as d:
      ...     ep, final = write_run(d, [(10, 1.0, 10), (25, 3.0, 15)], [{"loss": 0.5}],
      ...                           window=20, plot=False)
      >>> ep.shape, final
      ((2, 3), 2.0)
    """
    k = _window(window)
    out = Path(out_dir)
    if not out.is_dir():
        raise ValueError(f"out_dir: expected an existing folder, got {str(out)!r}")
    try:
        ep = np.asarray(episodes, dtype=np.float64).reshape(-1, 3) if len(episodes) else None
        bad = ep is not None and ep.shape[0] != len(episodes)
    except ValueError:  # ragged (entries of different lengths), or not a multiple of 3
        bad = True
    if bad:
        raise ValueError(
            "episodes: expected (global step, return, length) triples [E, 3], got entries of "
            f"lengths {sorted({len(e) for e in episodes})}"
        )
    if ep is None:
        ep = np.zeros((0, 3), dtype=np.float64)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "global_step", "episodic_return", "episodic_length"])
        for s, r, n in episodes:
            w.writerow(["episode", s, r, n])
    keys = sorted({key for row in updates for key in row})
    with open(out / "updates.csv", "w", newline="") as f:
        dw = csv.DictWriter(f, fieldnames=keys)
        dw.writeheader()
        dw.writerows(updates)
    final = float(np.mean(ep[-k:, 1])) if len(ep) else math.nan
    if plot and len(ep):
        plot_training_curve(
            out / "curve.png", ep[:, 0], ep[:, 1], window=k, title=title, updates=updates
        )
    return ep, final
