"""Deliberately broken backends: the proof that the suite catches wrong implementations.

Each mutant wraps a correct backend and breaks one thing, in its value *and* consistently in
its ``value_and_grad`` (the gradient of the broken objective, or the broken gradient of the
right one), the way a real implementation would be wrong. ``caught_by`` names the property
that must fail for it; tests/test_conformance_mutants.py checks that it does, and that the
correct backends pass.

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
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

import haepo_core
from haepo_core import HAEPOOutput

__all__ = [
    "MUTANTS",
    "Mutant",
    "detached_weights",
    "entropy_sign",
    "global_softmax",
    "ignores_mask",
    "no_logsumexp",
    "sample_std",
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

    def __init__(self, base: Any = None):
        self.base = base if base is not None else haepo_core.load_backend("numpy")
        self.name = f"{self.base.name}+{type(self).__name__}"
        self.xp = self.base.xp
        self.dtypes = tuple(self.base.dtypes)
        self.devices = tuple(self.base.devices)
        self.supports_packed = bool(self.base.supports_packed)
        self.differentiable = tuple(self.base.differentiable)
        self.library = getattr(self.base, "library", None) or self.base.xp.__name__.split(".")[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"

    # --- pass-through ------------------------------------------------------------------------
    def asarray(self, x: Any, *, dtype: str | None = None, device: str | None = None) -> Any:
        return self.base.asarray(x, dtype=dtype, device=device)

    def to_numpy(self, x: Any) -> Any:
        return self.base.to_numpy(x)

    def variants(self) -> Mapping[str, Any]:
        return {}

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        return self.base.haepo_loss(logp, returns, mask, **kw)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kw: Any
    ) -> HAEPOOutput:
        return self.base.haepo_loss_packed(logp, segment_ids, returns, **kw)

    def value_and_grad(self, inputs: Mapping[str, Any], **kw: Any) -> tuple[float, dict]:
        return self.base.value_and_grad(inputs, **kw)

    # --- helpers -----------------------------------------------------------------------------
    def _np(self, x: Any) -> np.ndarray:
        return np.asarray(self.base.to_numpy(x))

    def _back(self, x: np.ndarray, like: Any) -> Any:
        return self.base.asarray(np.asarray(x, np.float64), dtype=_dtype_name(like))

    def _loss_from_inputs(
        self, inputs: Mapping[str, Any], packed: bool, dtype: str, kw: Mapping[str, Any]
    ) -> HAEPOOutput:
        args = {
            k: self.base.asarray(
                np.asarray(v), dtype=dtype if np.asarray(v).dtype.kind == "f" else None
            )
            for k, v in inputs.items()
        }
        if packed:
            return self.haepo_loss_packed(
                args.pop("logp"), args.pop("segment_ids"), args.pop("returns"), **args, **kw
            )
        return self.haepo_loss(
            args.pop("logp"), args.pop("returns"), args.pop("mask", None), **args, **kw
        )

    @staticmethod
    def _split(kw: Mapping[str, Any]) -> tuple[dict, dict]:
        call = {k: kw[k] for k in ("wrt", "packed", "dtype", "device") if k in kw}
        return call, {k: v for k, v in kw.items() if k not in call}


class IgnoresMask(Mutant):
    """Forgets the mask: padding steps are summed into L_k (and NaN padding poisons it)."""

    bug = "sums every step, padding included"
    caught_by = "invariance.padding"

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        return self.base.haepo_loss(logp, returns, None, **kw)

    def value_and_grad(self, inputs: Mapping[str, Any], **kw: Any) -> tuple[float, dict]:
        return self.base.value_and_grad({k: v for k, v in inputs.items() if k != "mask"}, **kw)


class DetachedWeights(Mutant):
    """Right value, but backward treats the softmax weights as constants: the policy term
    contributes no gradient at all (only entropy and KL do)."""

    bug = "treats the softmax weights as constants in backward"
    caught_by = "gradient"

    def value_and_grad(self, inputs: Mapping[str, Any], **kw: Any) -> tuple[float, dict]:
        call, opts = self._split(kw)
        loss, grads = self.base.value_and_grad(inputs, **kw)
        packed = bool(call.get("packed", False))
        out = self._loss_from_inputs(inputs, packed, call.get("dtype", "float64"), opts)
        w, r_norm = (
            self._np(out.weights).astype(np.float64),
            self._np(out.normalized_returns).astype(np.float64),
        )
        m = w.shape[0]
        gidx, num = _groups(inputs.get("group_ids"), m)
        if packed:
            seg = np.asarray(inputs["segment_ids"])
            n_k = np.bincount(seg, minlength=m).astype(np.float64)
        else:
            valid = (
                np.ones(np.shape(inputs["logp"]), bool)
                if inputs.get("mask") is None
                else np.asarray(inputs["mask"]) != 0
            )
            n_k = valid.sum(axis=1).astype(np.float64)
        d_l = _policy_dl(
            w,
            r_norm,
            gidx,
            num,
            float(opts.get("temperature", 1.0)),
            n_k if opts.get("length_normalize", False) else None,
        )
        if "logp" in grads:
            g = np.asarray(grads["logp"], np.float64)
            g = g - (d_l[seg] if packed else valid * d_l[:, None])
            grads = {**grads, "logp": g.astype(np.asarray(grads["logp"]).dtype)}
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
    stats = dict(out.stats)
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

    def value_and_grad(self, inputs: Mapping[str, Any], **kw: Any) -> tuple[float, dict]:
        if kw.get("normalize_returns", "zscore") == "zscore" and _well_formed(
            np.asarray(inputs["returns"]), inputs.get("group_ids")
        ):
            r = _ddof1(
                np.asarray(inputs["returns"]), inputs.get("group_ids"), float(kw.get("eps", 1e-8))
            )
            inputs = {**inputs, "returns": r}
            kw = {**kw, "normalize_returns": "none"}
        return self.base.value_and_grad(inputs, **kw)


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

    def value_and_grad(self, inputs: Mapping[str, Any], **kw: Any) -> tuple[float, dict]:
        if not _well_formed(np.asarray(inputs["returns"]), inputs.get("group_ids")):
            return self.base.value_and_grad(inputs, **kw)
        call, opts = self._split(kw)
        r, opts = self._global(np.asarray(inputs["returns"]), inputs.get("group_ids"), opts)
        inputs = {k: v for k, v in inputs.items() if k != "group_ids"}
        return self.base.value_and_grad({**inputs, "returns": r}, **call, **opts)


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
        base_policy = float(self._np(out.stats["policy_loss"]))
        loss = float(self._np(out.loss)) - base_policy + policy
        stats = dict(out.stats)
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

    def value_and_grad(self, inputs: Mapping[str, Any], **kw: Any) -> tuple[float, dict]:
        call, opts = self._split(kw)
        loss, grads = self.base.value_and_grad(inputs, **kw)
        packed = bool(call.get("packed", False))
        out = self.base.haepo_loss_packed if packed else None
        args = {
            k: self.base.asarray(
                np.asarray(v),
                dtype=call.get("dtype", "float64") if np.asarray(v).dtype.kind == "f" else None,
            )
            for k, v in inputs.items()
        }
        if packed:
            out = self.base.haepo_loss_packed(
                args.pop("logp"), args.pop("segment_ids"), args.pop("returns"), **args, **opts
            )
        else:
            out = self.base.haepo_loss(
                args.pop("logp"), args.pop("returns"), args.pop("mask", None), **args, **opts
            )
        w, r_norm, gidx, num = self._naive(out, inputs.get("group_ids"), opts)
        w0 = self._np(out.weights).astype(np.float64)
        tau = float(opts.get("temperature", 1.0))
        m = w.shape[0]
        if packed:
            seg = np.asarray(inputs["segment_ids"])
            n_k = np.bincount(seg, minlength=m).astype(np.float64)
        else:
            valid = (
                np.ones(np.shape(inputs["logp"]), bool)
                if inputs.get("mask") is None
                else np.asarray(inputs["mask"]) != 0
            )
            n_k = valid.sum(axis=1).astype(np.float64)
        ln = n_k if opts.get("length_normalize", False) else None
        with np.errstate(all="ignore"):
            change = _policy_dl(w, r_norm, gidx, num, tau, ln) - _policy_dl(
                w0, r_norm, gidx, num, tau, ln
            )
            policy = -float(np.sum(w * r_norm)) / num
            loss = float(loss) - float(self._np(out.stats["policy_loss"])) + policy
            if "logp" in grads:
                g = np.asarray(grads["logp"], np.float64)
                g = g + (change[seg] if packed else valid * change[:, None])
                grads = {**grads, "logp": g.astype(np.asarray(grads["logp"]).dtype)}
        return loss, grads


class EntropySign(Mutant):
    """Adds the entropy bonus to the loss instead of subtracting it (so it minimizes
    entropy)."""

    bug = "adds the entropy bonus instead of subtracting it"
    caught_by = "values"

    def _flip(self, out: HAEPOOutput, kw: Mapping[str, Any]) -> HAEPOOutput:
        coef = float(kw.get("entropy_coef", 0.0))
        loss = self._np(out.loss).astype(np.float64) + 2.0 * coef * self._np(
            out.stats["entropy"]
        ).astype(np.float64)
        return out._replace(loss=self._back(loss, out.loss))

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        return self._flip(self.base.haepo_loss(logp, returns, mask, **kw), kw)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kw: Any
    ) -> HAEPOOutput:
        return self._flip(self.base.haepo_loss_packed(logp, segment_ids, returns, **kw), kw)

    def value_and_grad(self, inputs: Mapping[str, Any], **kw: Any) -> tuple[float, dict]:
        call, opts = self._split(kw)
        loss, grads = self.base.value_and_grad(inputs, **kw)
        coef = float(opts.get("entropy_coef", 0.0))
        if inputs.get("entropy") is not None and coef:
            valid = (
                np.ones(np.shape(inputs["logp"]), bool)
                if call.get("packed") or inputs.get("mask") is None
                else np.asarray(inputs["mask"]) != 0
            )
            ent = np.where(valid, np.asarray(inputs["entropy"], np.float64), 0.0)
            loss = float(loss) + 2.0 * coef * float(ent.sum() / valid.sum())
        if "entropy" in grads:
            grads = {**grads, "entropy": -np.asarray(grads["entropy"])}
        return loss, grads


#: name -> mutant class (call it with a correct backend to wrap; numpy by default)
MUTANTS: dict[str, type[Mutant]] = {
    "ignores_mask": IgnoresMask,
    "detached_weights": DetachedWeights,
    "sample_std": SampleStd,
    "global_softmax": GlobalSoftmax,
    "no_logsumexp": NoLogSumExp,
    "entropy_sign": EntropySign,
}


def ignores_mask() -> Mutant:
    """The numpy backend with :class:`IgnoresMask` (for ``--backend module:object``)."""
    return IgnoresMask()


def detached_weights() -> Mutant:
    return DetachedWeights()


def sample_std() -> Mutant:
    return SampleStd()


def global_softmax() -> Mutant:
    return GlobalSoftmax()


def no_logsumexp() -> Mutant:
    return NoLogSumExp()


def entropy_sign() -> Mutant:
    return EntropySign()
