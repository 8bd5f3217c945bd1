r"""The argument text shared by the entry points' docstrings, written once.

In the manner of scipy's ``doccer``: a docstring line that holds nothing but ``%(name)s`` is
replaced by the snippet ``DOCS[name]``, every line of it indented like the placeholder;
:func:`fill_doc` does it when the function is defined, so ``help()``, the rendered docs and the
doctests see the full text. Snippets are written unindented, continuation lines indented by
two spaces (the Google style of the Args sections).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DOCS", "fill_doc"]

F = TypeVar("F", bound=Callable[..., object])


def _s(text: str) -> str:
    """A snippet written as an indented block: dedented, without its first and last newline."""
    return textwrap.dedent(text).strip("\n")


_COEFFICIENTS = _s(
    r"""
        entropy_coef: ``lambda >= 0``.
        kl_coef: ``beta >= 0``.
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default, unbiased and >= 0).
        normalize_returns: ``"zscore"`` (default, population std), ``"center"`` or ``"none"``.
        temperature: ``tau > 0``; larger values flatten the weights.
        """
)

_GROUPS_AND_STEPS = _s(
    r"""
        group_ids: ``[M]`` integer group labels (any values); ``None`` = one group of all ``M``.
        entropy: ``[{steps}]`` per-step policy entropy (required when ``entropy_coef > 0``).
        ref_logp: ``[{steps}]`` per-step log-probs under the frozen reference policy (a constant;
          required when ``kl_coef > 0``).
        """
)

DOCS: dict[str, str] = {
    # The objective of every entry point (docs/spec.md).
    "math": _s(
        r"""
        .. math::

            L_k &= \sum_t m_{k,t} \log\pi_\theta(a_{k,t} \mid s_{k,t})
                \quad(\div T_k \text{ if length\_normalize}) \\
            w_k &= \operatorname{softmax}_{j \in g(k)}(L_j / \tau)_k \\
            J_{PL} &= -\frac{1}{\#\text{groups}} \sum_g \sum_{k \in g} w_k \tilde R_k \\
            \text{loss} &= J_{PL} - \lambda\, \overline{H} + \beta\, \overline{KL}
        """
    ),
    # haepo_loss_from_logits: the per-step terms of a categorical policy.
    "logits_math": _s(
        r"""
        .. math::

            \log\pi_{k,t} &= \operatorname{log\_softmax}(z_{k,t})[a_{k,t}], \quad
            H_{k,t} = -\textstyle\sum_a \pi(a)\log\pi(a), \\
            KL_{k,t} &= \textstyle\sum_a \pi(a)\,(\log\pi(a) - \log\pi_{ref}(a))
            \ \text{(from ref\_logits) or } k_{1,2,3}(\text{ref\_logp} - \log\pi),
        """
    ),
    # haepo_loss: the padded layout.
    "padded": _s(
        r"""
        logp: ``[M, T]`` floating log-probs (log-densities for continuous actions) of the actions
          taken; padding may hold anything, NaN and inf included.
        returns: ``[M]`` real returns ``R_k`` (integers allowed).
        mask: ``[M, T]`` bool (or 0/1) validity mask; ``None`` = all steps valid. Each trajectory
          needs at least one valid step.
        """
    )
    + "\n"
    + _GROUPS_AND_STEPS.format(steps="M, T"),
    # haepo_loss_packed: the packed layout.
    "packed": _s(
        r"""
        logp: ``[N]`` floating log-probs of every step of every trajectory.
        segment_ids: ``[N]`` integer trajectory index of each step, in ``0..M-1``; every
          trajectory needs at least one step.
        returns: ``[M]`` real returns.
        """
    )
    + "\n"
    + _GROUPS_AND_STEPS.format(steps="N"),
    # haepo_loss_from_logits / _from_hidden: what follows the logits (or hidden states).
    "actions": _s(
        r"""
        actions: ``[M, T]`` integer actions taken (padding may hold anything, e.g. -100).
        returns: ``[M]`` real returns; mask: ``[M, T]`` validity mask; group_ids: ``[M]`` group
          labels: as in :func:`haepo_loss`.
        """
    ),
    "ref_logits": _s(
        r"""
        ref_logits: ``[M, T, V]`` reference logits (a constant) for the exact KL, or
        ref_logp: ``[M, T]`` reference log-probs for ``kl_estimator`` (give at most one).
        """
    ),
    "hidden": _s(
        r"""
        hidden: ``[M, T, H]`` floating hidden states (the matmul runs in their dtype; reductions
          in float32 at least).
        weight: ``[V, H]`` LM-head weight; bias: ``[V]`` or ``None``. Both must have ``hidden``'s
          dtype (a TypeError naming them otherwise: the projection runs in that dtype, and a
          silent promotion would change the memory and speed chosen).
        """
    ),
    "ref_hidden": _s(
        r"""
        ref_hidden: ``[M, T, H]`` reference hidden states for the exact KL (constants), projected
          by the reference head:
        ref_weight: ``[V, H]`` (a constant); ``None`` = the policy's ``weight`` and ``bias`` (as
          constants; a given ``ref_bias`` replaces the bias).
        ref_bias: ``[V]`` or ``None``; a ``ref_weight`` of its own has no bias unless ``ref_bias``
          is given. Or
        ref_logp: ``[M, T]`` reference log-probs for ``kl_estimator`` (not with ``ref_hidden``).
        """
    ),
    # The loss options every entry point takes.
    "coefficients": _COEFFICIENTS,
    "options": _COEFFICIENTS
    + "\n"
    + _s(
        r"""

        length_normalize: divide each ``L_k`` by its number of valid steps before the softmax
          (beyond the paper; guards against weight collapse on long horizons).
        eps: ``> 0``, guards the std of the returns only.
        """
    ),
    # The torch backend's own keywords.
    "process_group": _s(
        r"""
        process_group: a ``torch.distributed`` group over which groups are spread (``group_ids``
          are then global labels): the softmax normalizers, return statistics and token counts are
          reduced across its ranks; every rank returns the global loss and receives
          ``world_size x`` its slice of the gradient (the DDP/FSDP averaging convention). ``None`` =
          single process.
        """
    ),
    "torch_chunks": _s(
        r"""
        chunk_size: rows per chunk; ``None`` picks :func:`default_chunk_size` for the device
          (about 12 MiB blocks on CPU, 128 MiB on CUDA).
        kernel: who computes each chunk's statistics and logits gradient: ``"torch"`` (torch
          ops), ``"triton"`` (the Triton kernels of ``_triton.py``; a ValueError when triton
          is not importable or the tensors are not on CUDA, unless ``TRITON_INTERPRET=1``), or
          ``"auto"`` (default: Triton for CUDA tensors when triton is importable, else torch).
        """
    ),
    # The JAX backend's own keywords.
    "jax_keywords": _s(
        r"""
        num_groups: static number of group segments. The number of distinct labels is
          data-dependent, so under ``jit``/``vmap`` pass it to get ``G`` segments (labels must be
          ``0..num_groups-1``; unused ids are fine). Without it, eager calls count the labels and
          traced calls use ``M`` segments (any labels, O(M log M)). Required with ``axis_name``.
        axis_name: a ``shard_map``/``pmap`` axis name. Trajectories of one group may then live on
          different devices (``group_ids`` are global ids): normalizers, return statistics and
          token counts are reduced with ``lax.psum``/``pmax``, so ``loss`` and ``stats`` are the
          global ones and the gradient of each device's rows is its slice of the single-device
          gradient (under ``shard_map`` with its default ``check_vma=True``). ``weights``,
          ``normalized_returns`` and ``log_likelihood`` are this device's rows.
        traced_checks: also emit the value checks as ``jax.experimental.checkify`` checks when
          the inputs are traced (wrap the caller in ``checkify.checkify``). Eager calls always
          run the value checks and raise ``ValueError``.
        """
    ),
}


def fill_doc(fn: F) -> F:
    """``fn`` with each ``%(name)s`` line of its docstring replaced by ``DOCS[name]``."""
    if fn.__doc__:  # None under python -OO
        lines = []
        for line in fn.__doc__.split("\n"):
            key = line.strip()
            if key.startswith("%(") and key.endswith(")s"):
                indent = line[: len(line) - len(line.lstrip())]
                lines += [indent + s if s else s for s in DOCS[key[2:-2]].split("\n")]
            else:
                lines.append(line)
        fn.__doc__ = "\n".join(lines)
    return fn
