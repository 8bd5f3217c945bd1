"""Deliberately broken backends: the proof that the suite catches wrong implementations.

Each mutant wraps a correct backend and breaks one thing, in its value *and* consistently in
its ``grad`` (the gradient of the broken objective, or the broken gradient of the right one),
the way a real implementation would be wrong. ``caught_by`` names the property that must fail
for it; tests/test_conformance_catches_mutants.py checks that it does, and that the correct
backends pass. The mutants of the padded/packed losses wrap NumPy by default; those of the
lean paths (from logits, from hidden) wrap the torch backend and break its loss in torch
operations, so autograd differentiates the broken objective itself.

Use one from the command line to see what a failure looks like::

    python -m haepo_conformance --backend haepo_conformance._mutants:detached_weights

| mutant              | bug                                                   | caught by          |
|---------------------|-------------------------------------------------------|--------------------|
| ignores_mask        | sums every step, padding included                     | invariance.padding |
| detached_weights    | treats the softmax weights as constants in backward   | gradient           |
| sample_std          | z-scores returns with the sample std (ddof = 1)       | values             |
| global_softmax      | one softmax over the whole batch, not per group       | invariance.groups  |
| no_logsumexp        | exp(L / tau) / sum exp(L / tau) without the max shift | extremes           |
| entropy_sign        | adds the entropy bonus instead of subtracting it      | values             |
| logits_entropy_sign | the same, in haepo_loss_from_logits                   | logits.values      |
| logits_kl_detached  | from logits: right KL value, no KL gradient           | logits.kl          |
| logits_chunk_bug    | from logits: the last partial chunk reads wrong rows  | logits.chunks      |
| hidden_no_bias_grad | from hidden: no gradient reaches the bias             | hidden.gradient    |
| silent_first_order  | declared second order, double backward is 0           | (*)                |

(*) ``gradient.second_order``
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

import haepo_core
from haepo_core import HAEPOOutput

from ._boundary import LossFn, call_entry, stats_dict, to_backend, to_numpy

__all__ = [
    "MUTANTS",
    "Mutant",
    "detached_weights",
    "entropy_sign",
    "global_softmax",
    "hidden_no_bias_grad",
    "logits_chunk_bug",
    "logits_entropy_sign",
    "logits_kl_detached",
    "ignores_mask",
    "no_logsumexp",
    "sample_std",
    "silent_first_order",
]


def _dtype_name(x: Any) -> str:
    return str(x.dtype).split(".")[-1]


def _groups(group_ids: Any, m: int) -> tuple[np.ndarray, int]:
    if group_ids is None:
        return np.zeros(m, np.int64), 1
    _, inv = np.unique(np.asarray(group_ids), return_inverse=True)
    inv = inv.reshape(m)
    return inv, int(inv.max()) + 1 if m else 0


def _policy_dl(
    w: np.ndarray,
    r_norm: np.ndarray,
    gidx: np.ndarray,
    num: int,
    tau: float,
    n_k: np.ndarray | None,
) -> np.ndarray:
    """Closed-form d J_PL / d L_k (divided by T_k under length normalization)."""
    r_bar = np.bincount(gidx, weights=w * r_norm, minlength=num)[gidx]
    d_l = -(w / tau) * (r_norm - r_bar) / num
    return d_l if n_k is None else d_l / n_k


class Mutant:
    """A correct backend with one bug. Subclasses override the pieces they break."""

    bug = ""
    caught_by = ""
    default_base = "numpy"

    def __init__(self, base: Any = None):
        self.base = base if base is not None else haepo_core.load_backend(self.default_base)
        self.name = f"{self.base.name}+{type(self).__name__}"
        self.xp = self.base.xp
        self.dtypes = tuple(self.base.dtypes)
        self.devices = tuple(getattr(self.base, "devices", ("cpu",)))
        self.chunked = bool(getattr(self.base, "chunked", False))
        self.library = getattr(self.base, "library", None) or self.base.xp.__name__.split(".")[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"

    # --- pass-through ------------------------------------------------------------------------
    def variants(self) -> Mapping[str, Any]:
        return {}

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        return self.base.haepo_loss(logp, returns, mask, **kw)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kw: Any
    ) -> HAEPOOutput:
        return self.base.haepo_loss_packed(logp, segment_ids, returns, **kw)

    def grad(self, fn: Any, args: Mapping[str, Any], wrt: Any) -> tuple[Any, dict]:
        """Autodiff bases differentiate the mutant's own (broken) loss; the closed-form NumPy
        base differentiates the correct one, so subclasses patch its result."""
        return self.base.grad(fn, args, wrt)

    # --- helpers -----------------------------------------------------------------------------
    def _np(self, x: Any) -> np.ndarray:
        return np.asarray(to_numpy(x))

    def _back(self, x: np.ndarray, like: Any) -> Any:
        return to_backend(self.base, np.asarray(x, np.float64), _dtype_name(like))

    def _base_grad(
        self,
        fn: Any,
        args: Mapping[str, Any],
        wrt: Any,
        options: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict]:
        """The base's gradient of the same entry point (other options if given)."""
        opts = dict(fn.options if options is None else options)
        return self.base.grad(LossFn(self.base, fn.entry, opts), args, wrt)

    def _valid_and_counts(self, fn: Any, args: Mapping[str, Any]) -> tuple[Any, np.ndarray]:
        """(validity mask [M, T] or the segment ids [N], steps per trajectory)."""
        m = int(args["returns"].shape[0])
        if fn.entry == "haepo_loss_packed":
            seg = self._np(args["segment_ids"])
            return seg, np.bincount(seg, minlength=m).astype(np.float64)
        shape = tuple(args["logp"].shape)
        mask = args.get("mask")
        valid = np.ones(shape, bool) if mask is None else self._np(mask) != 0
        return valid, valid.sum(axis=1).astype(np.float64)

    def _spread(self, fn: Any, per_traj: np.ndarray, where: Any) -> np.ndarray:
        """A per-trajectory quantity on every step it covers (packed or padded)."""
        if fn.entry == "haepo_loss_packed":
            return per_traj[where]
        return where * per_traj[:, None]


class IgnoresMask(Mutant):
    """Forgets the mask: padding steps are summed into L_k (and NaN padding poisons it)."""

    bug = "sums every step, padding included"
    caught_by = "invariance.padding"

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        return self.base.haepo_loss(logp, returns, None, **kw)

    def grad(self, fn: Any, args: Mapping[str, Any], wrt: Any) -> tuple[Any, dict]:
        return self._base_grad(fn, {k: v for k, v in args.items() if k != "mask"}, wrt)


class DetachedWeights(Mutant):
    """Right value, but backward treats the softmax weights as constants: the policy term
    contributes no gradient at all (only entropy and KL do)."""

    bug = "treats the softmax weights as constants in backward"
    caught_by = "gradient"

    def grad(self, fn: Any, args: Mapping[str, Any], wrt: Any) -> tuple[Any, dict]:
        loss, grads = self._base_grad(fn, args, wrt)
        opts = fn.options
        out = call_entry(self.base, fn.entry, args, opts)
        w = self._np(out.weights).astype(np.float64)
        r_norm = self._np(out.normalized_returns).astype(np.float64)
        gids = args.get("group_ids")
        gidx, num = _groups(None if gids is None else self._np(gids), w.shape[0])
        where, n_k = self._valid_and_counts(fn, args)
        d_l = _policy_dl(
            w,
            r_norm,
            gidx,
            num,
            float(opts.get("temperature", 1.0)),
            n_k if opts.get("length_normalize", False) else None,
        )
        if "logp" in grads:
            g = self._np(grads["logp"]).astype(np.float64) - self._spread(fn, d_l, where)
            grads = {**grads, "logp": self._back(g, args["logp"])}
        return loss, grads


def _ddof1(returns: np.ndarray, group_ids: Any, eps: float) -> np.ndarray:
    r = np.asarray(returns, np.float64)
    gidx, num = _groups(group_ids, r.shape[0])
    out = np.zeros_like(r)
    for g in range(num):
        sel = gidx == g
        if sel.sum() < 2 or np.all(r[sel] == r[sel][0]):
            continue  # equal returns (or one trajectory): 0, as the spec says
        out[sel] = (r[sel] - r[sel].mean()) / (r[sel].std(ddof=1) + eps)
    return out


def _well_formed(returns: np.ndarray, group_ids: Any) -> bool:
    """Whether returns/group_ids are valid (mutants only break valid calls)."""
    r = np.asarray(returns)
    if r.ndim != 1 or r.dtype.kind not in "fiu" or not np.all(np.isfinite(r)):
        return False
    if group_ids is None:
        return True
    g = np.asarray(group_ids)
    return g.ndim == 1 and g.shape == r.shape and g.dtype.kind in "iu"


def _raw_weighted_return(
    mutant: Mutant, out: HAEPOOutput, returns: Any, group_ids: Any
) -> HAEPOOutput:
    """Put back the statistics a mutant's input rewriting disturbed (weighted_return uses the
    raw returns, num_groups counts the real groups), so the mutant differs only by its bug."""
    r = mutant._np(returns).astype(np.float64)
    w = mutant._np(out.weights).astype(np.float64)
    _, num = _groups(None if group_ids is None else mutant._np(group_ids), r.shape[0])
    stats = stats_dict(out.stats)
    stats["weighted_return"] = mutant._back(np.asarray(np.sum(w * r) / num), out.loss)
    stats["num_groups"] = mutant._back(np.asarray(float(num)), out.loss)
    return out._replace(stats=stats)


class SampleStd(Mutant):
    """z-scores the returns with the sample std (ddof = 1) instead of the population std."""

    bug = "z-scores returns with the sample std (ddof = 1)"
    caught_by = "values"

    def _fix(self, returns: Any, group_ids: Any, kw: dict, like: Any) -> tuple[Any, dict]:
        if kw.get("normalize_returns", "zscore") != "zscore" or not _well_formed(
            self._np(returns), None if group_ids is None else self._np(group_ids)
        ):
            return returns, kw  # bad input: let the correct backend raise its error
        gids = None if group_ids is None else self._np(group_ids)
        r = _ddof1(self._np(returns), gids, float(kw.get("eps", 1e-8)))
        return self._back(r, like), {**kw, "normalize_returns": "none"}

    def _stats(self, out: HAEPOOutput, returns: Any, group_ids: Any) -> HAEPOOutput:
        return _raw_weighted_return(self, out, returns, group_ids)

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        fixed, kw2 = self._fix(returns, kw.get("group_ids"), kw, logp)
        out = self.base.haepo_loss(logp, fixed, mask, **kw2)
        return self._stats(out, returns, kw.get("group_ids"))

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kw: Any
    ) -> HAEPOOutput:
        fixed, kw2 = self._fix(returns, kw.get("group_ids"), kw, logp)
        out = self.base.haepo_loss_packed(logp, segment_ids, fixed, **kw2)
        return self._stats(out, returns, kw.get("group_ids"))

    def grad(self, fn: Any, args: Mapping[str, Any], wrt: Any) -> tuple[Any, dict]:
        gids = args.get("group_ids")
        fixed, opts = self._fix(args["returns"], gids, dict(fn.options), args["logp"])
        return self._base_grad(fn, {**args, "returns": fixed}, wrt, opts)


class GlobalSoftmax(Mutant):
    """Normalizes returns per group but takes one softmax over the whole batch."""

    bug = "one softmax over the whole batch, not per group"
    caught_by = "invariance.groups"

    @staticmethod
    def _global(returns: np.ndarray, group_ids: Any, kw: dict) -> tuple[np.ndarray, dict]:
        r = np.asarray(returns, np.float64)
        gids = None if group_ids is None else np.asarray(group_ids)
        r_norm = np.asarray(
            haepo_core.normalize_returns(
                r, gids, method=kw.get("normalize_returns", "zscore"), eps=kw.get("eps", 1e-8)
            )
        )
        _, num = _groups(gids, r.shape[0])
        kw = {k: v for k, v in kw.items() if k != "group_ids"}
        return r_norm / num, {**kw, "normalize_returns": "none"}

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        gids = kw.get("group_ids")
        gnp = None if gids is None else self._np(gids)
        if not _well_formed(self._np(returns), gnp):
            return self.base.haepo_loss(logp, returns, mask, **kw)
        r, kw2 = self._global(self._np(returns), gnp, kw)
        out = self.base.haepo_loss(logp, self._back(r, logp), mask, **kw2)
        return _raw_weighted_return(self, out, returns, gids)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kw: Any
    ) -> HAEPOOutput:
        gids = kw.get("group_ids")
        gnp = None if gids is None else self._np(gids)
        if not _well_formed(self._np(returns), gnp):
            return self.base.haepo_loss_packed(logp, segment_ids, returns, **kw)
        r, kw2 = self._global(self._np(returns), gnp, kw)
        out = self.base.haepo_loss_packed(logp, segment_ids, self._back(r, logp), **kw2)
        return _raw_weighted_return(self, out, returns, gids)

    def grad(self, fn: Any, args: Mapping[str, Any], wrt: Any) -> tuple[Any, dict]:
        gids = args.get("group_ids")
        gnp = None if gids is None else self._np(gids)
        returns = self._np(args["returns"])
        if not _well_formed(returns, gnp):
            return self._base_grad(fn, args, wrt)
        r, opts = self._global(returns, gnp, dict(fn.options))
        rest = {k: v for k, v in args.items() if k != "group_ids"}
        return self._base_grad(fn, {**rest, "returns": self._back(r, args["logp"])}, wrt, opts)


class NoLogSumExp(Mutant):
    """Weights as exp(L / tau) / sum exp(L / tau) with no max shift: fine for small L, NaN
    once exp() underflows (L / tau < -745 in float64, < -103 in float32) or overflows."""

    bug = "exp(L / tau) / sum exp(L / tau) without the max shift"
    caught_by = "extremes"

    def _naive(
        self, out: HAEPOOutput, group_ids: Any, kw: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        ll = self._np(out.log_likelihood)
        cdt = np.float64 if ll.dtype == np.float64 else np.float32
        gidx, num = _groups(group_ids, ll.shape[0])
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            e = np.exp(ll.astype(cdt) / cdt(kw.get("temperature", 1.0)))
            w = e / np.bincount(gidx, weights=e, minlength=num)[gidx].astype(cdt)
        r_norm = self._np(out.normalized_returns).astype(np.float64)
        return w.astype(np.float64), r_norm, gidx, num

    def _patch(self, out: HAEPOOutput, group_ids: Any, kw: Mapping[str, Any]) -> HAEPOOutput:
        w, r_norm, _, num = self._naive(out, group_ids, kw)
        with np.errstate(all="ignore"):
            policy = -float(np.sum(w * r_norm)) / num
        base_policy = float(self._np(stats_dict(out.stats)["policy_loss"]))
        loss = float(self._np(out.loss)) - base_policy + policy
        stats = stats_dict(out.stats)
        stats["policy_loss"] = self._back(np.asarray(policy), out.loss)
        return HAEPOOutput(
            self._back(np.asarray(loss), out.loss),
            self._back(w, out.weights),
            out.normalized_returns,
            out.log_likelihood,
            stats,
        )

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        out = self.base.haepo_loss(logp, returns, mask, **kw)
        gids = kw.get("group_ids")
        return self._patch(out, None if gids is None else self._np(gids), kw)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kw: Any
    ) -> HAEPOOutput:
        out = self.base.haepo_loss_packed(logp, segment_ids, returns, **kw)
        gids = kw.get("group_ids")
        return self._patch(out, None if gids is None else self._np(gids), kw)

    def grad(self, fn: Any, args: Mapping[str, Any], wrt: Any) -> tuple[Any, dict]:
        opts = fn.options
        loss, grads = self._base_grad(fn, args, wrt)
        out = call_entry(self.base, fn.entry, args, opts)
        gids = args.get("group_ids")
        w, r_norm, gidx, num = self._naive(out, None if gids is None else self._np(gids), opts)
        w0 = self._np(out.weights).astype(np.float64)
        tau = float(opts.get("temperature", 1.0))
        where, n_k = self._valid_and_counts(fn, args)
        ln = n_k if opts.get("length_normalize", False) else None
        with np.errstate(all="ignore"):
            change = _policy_dl(w, r_norm, gidx, num, tau, ln) - _policy_dl(
                w0, r_norm, gidx, num, tau, ln
            )
            policy = -float(np.sum(w * r_norm)) / num
            value = (
                float(self._np(loss))
                - float(self._np(stats_dict(out.stats)["policy_loss"]))
                + policy
            )
            if "logp" in grads:
                g = self._np(grads["logp"]).astype(np.float64) + self._spread(fn, change, where)
                grads = {**grads, "logp": self._back(g, args["logp"])}
        return self._back(np.asarray(value), args["logp"]), grads


class EntropySign(Mutant):
    """Adds the entropy bonus to the loss instead of subtracting it (so it minimizes
    entropy)."""

    bug = "adds the entropy bonus instead of subtracting it"
    caught_by = "values"

    def _flip(self, out: HAEPOOutput, kw: Mapping[str, Any]) -> HAEPOOutput:
        coef = float(kw.get("entropy_coef", 0.0))
        loss = self._np(out.loss).astype(np.float64) + 2.0 * coef * self._np(
            stats_dict(out.stats)["entropy"]
        ).astype(np.float64)
        return out._replace(loss=self._back(loss, out.loss))

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        return self._flip(self.base.haepo_loss(logp, returns, mask, **kw), kw)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kw: Any
    ) -> HAEPOOutput:
        return self._flip(self.base.haepo_loss_packed(logp, segment_ids, returns, **kw), kw)

    def grad(self, fn: Any, args: Mapping[str, Any], wrt: Any) -> tuple[Any, dict]:
        loss, grads = self._base_grad(fn, args, wrt)
        coef = float(fn.options.get("entropy_coef", 0.0))
        if args.get("entropy") is not None and coef:
            where, _ = self._valid_and_counts(fn, args)
            ent = self._np(args["entropy"]).astype(np.float64)
            if fn.entry != "haepo_loss_packed":
                ent = np.where(where, ent, 0.0)
            n = ent.size if fn.entry == "haepo_loss_packed" else where.sum()
            value = float(self._np(loss)) + 2.0 * coef * float(ent.sum() / n)
            loss = self._back(np.asarray(value), args["logp"])
        if "entropy" in grads:
            grads = {**grads, "entropy": self._back(-self._np(grads["entropy"]), args["entropy"])}
        return loss, grads


class _LeanMutant(Mutant):
    """A lean-path mutant: wraps the torch backend (any backend with the lean paths and an
    autodiff ``grad``), breaks its loss with the base's own differentiable operations."""

    default_base = "torch"

    def haepo_loss_from_logits(
        self, logits: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ) -> HAEPOOutput:
        return self.base.haepo_loss_from_logits(logits, actions, returns, mask, **kw)

    def haepo_loss_from_hidden(
        self, hidden: Any, weight: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ) -> HAEPOOutput:
        return self.base.haepo_loss_from_hidden(hidden, weight, actions, returns, mask, **kw)


class LogitsEntropySign(_LeanMutant):
    """From logits: adds the entropy bonus instead of subtracting it. The loss with and
    without the bonus differ by ``-coef * H`` (differentiable): it returns the other sign."""

    bug = "from logits: adds the entropy bonus instead of subtracting it"
    caught_by = "logits.values"

    def haepo_loss_from_logits(
        self, logits: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ) -> HAEPOOutput:
        out = self.base.haepo_loss_from_logits(logits, actions, returns, mask, **kw)
        if not kw.get("entropy_coef"):
            return out
        plain = self.base.haepo_loss_from_logits(
            logits, actions, returns, mask, **{**kw, "entropy_coef": 0.0}
        )
        return out._replace(loss=2 * plain.loss - out.loss)


class LogitsKLDetached(_LeanMutant):
    """From logits: the KL penalty's value is right but no gradient flows through it."""

    bug = "from logits: right KL value, no KL gradient"
    caught_by = "logits.kl"

    def haepo_loss_from_logits(
        self, logits: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ) -> HAEPOOutput:
        out = self.base.haepo_loss_from_logits(logits, actions, returns, mask, **kw)
        if not kw.get("kl_coef"):
            return out
        rest = {k: v for k, v in kw.items() if k not in ("ref_logits", "ref_logp")}
        plain = self.base.haepo_loss_from_logits(
            logits, actions, returns, mask, **{**rest, "kl_coef": 0.0}
        )
        return out._replace(loss=plain.loss + (out.loss - plain.loss).detach())


class LogitsChunkBug(_LeanMutant):
    """From logits with ``chunk_size``: the last, partial chunk of the flattened tokens reads
    the rows just before it (an offset bug of the overlapping last block)."""

    bug = "from logits: the last partial chunk reads wrong rows"
    caught_by = "logits.chunks"

    def haepo_loss_from_logits(
        self, logits: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ) -> HAEPOOutput:
        c = kw.get("chunk_size")
        m, t, v = (int(d) for d in logits.shape)
        n = m * t
        if c is not None and n % c and n > c:
            import torch

            start = (n // c) * c
            idx = torch.arange(n, device=logits.device)
            idx[start:] -= n - start
            logits = logits.reshape(n, v)[idx].reshape(m, t, v)
        return self.base.haepo_loss_from_logits(logits, actions, returns, mask, **kw)


class HiddenNoBiasGrad(_LeanMutant):
    """From hidden: the right value, but the LM-head bias gets no gradient."""

    bug = "from hidden: no gradient reaches the bias"
    caught_by = "hidden.gradient"

    def haepo_loss_from_hidden(
        self, hidden: Any, weight: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ) -> HAEPOOutput:
        if kw.get("bias") is not None:
            kw = {**kw, "bias": kw["bias"].detach()}
        return self.base.haepo_loss_from_hidden(hidden, weight, actions, returns, mask, **kw)


class SilentFirstOrder(_LeanMutant):
    """Declares exact second derivatives for ``haepo_loss``, but its custom backward detaches
    what it returns: the value and gradient are right, every second derivative is silently
    0 (the bug ``once_differentiable`` exists to turn into an error)."""

    bug = "custom backward detaches its result: second derivatives silently 0"
    caught_by = "gradient.second_order"
    second_order = ("haepo_loss",)

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        return haepo_core.haepo_loss(_detaching_identity(logp), returns, mask, **kw)

    def hvp(self, fn: Any, args: Mapping[str, Any], wrt: Any, vectors: Any) -> dict:
        return self.base.hvp(fn, args, wrt, vectors)


def _detaching_identity(x: Any) -> Any:
    import torch

    class _Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, y: Any) -> Any:
            return y.view_as(y)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return grad.detach()

    return _Identity.apply(x) if x.requires_grad else x


#: name -> mutant class (call it with a correct backend to wrap; numpy by default)
MUTANTS: dict[str, type[Mutant]] = {
    "ignores_mask": IgnoresMask,
    "detached_weights": DetachedWeights,
    "sample_std": SampleStd,
    "global_softmax": GlobalSoftmax,
    "no_logsumexp": NoLogSumExp,
    "entropy_sign": EntropySign,
    "logits_entropy_sign": LogitsEntropySign,
    "logits_kl_detached": LogitsKLDetached,
    "logits_chunk_bug": LogitsChunkBug,
    "hidden_no_bias_grad": HiddenNoBiasGrad,
    "silent_first_order": SilentFirstOrder,
}


# Zero-argument factories for ``--backend haepo_conformance._mutants:<name>`` (a class is
# one: ``load_backend`` calls it), each the mutant on its ``default_base``.
ignores_mask = IgnoresMask
detached_weights = DetachedWeights
sample_std = SampleStd
global_softmax = GlobalSoftmax
no_logsumexp = NoLogSumExp
entropy_sign = EntropySign
logits_entropy_sign = LogitsEntropySign
logits_kl_detached = LogitsKLDetached
logits_chunk_bug = LogitsChunkBug
hidden_no_bias_grad = HiddenNoBiasGrad
silent_first_order = SilentFirstOrder
