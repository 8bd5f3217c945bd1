"""Properties of the lean paths (``haepo_loss_from_logits``, ``haepo_loss_from_hidden``) and of
second derivatives.

A lean path is what a fused-kernel author (a chunked or Triton loss) most needs checked: its
values against the core's ``haepo_loss_from_logits`` in float64 (for hidden states, on
``hidden @ weight.T + bias`` computed in float64), its gradients with respect to logits,
hidden states, weight and bias against float64 central finite differences, invariance to the
chunk size, masked vocabulary entries (-inf logits), NaN and garbage in padding, and both KL
forms (exact from reference logits or hidden states, estimated from reference log-probs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from hypothesis import strategies as st

import haepo_core

from . import _strategies as S
from ._boundary import backend_grad, backend_hvp, call_entry, has_entry, stats_dict, to_backend
from ._reference import (
    EPS,
    STAT_KEYS,
    ConformanceError,
    Tolerance,
    as_float64,
    assert_close,
    compare_outputs,
    grad_tolerance,
)

__all__ = ["LeanCase", "LEAN_PROPERTIES", "lean_cases"]

ENTRY = {"logits": "haepo_loss_from_logits", "hidden": "haepo_loss_from_hidden"}
#: The float inputs each path differentiates.
WRT = {"logits": ("logits",), "hidden": ("hidden", "weight", "bias")}
_FIELDS = (
    "logits",
    "hidden",
    "weight",
    "bias",
    "actions",
    "returns",
    "mask",
    "group_ids",
    "ref_logits",
    "ref_hidden",
    "ref_weight",
    "ref_bias",
    "ref_logp",
)


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class LeanCase:
    """One batch for a lean path: float64 NumPy inputs of ``haepo_loss_from_logits``
    (``path="logits"``) or ``haepo_loss_from_hidden`` (``path="hidden"``), keywords and the
    dtype under test. Padding steps (``mask`` False) may hold anything in every array."""

    path: str
    actions: np.ndarray
    returns: np.ndarray
    mask: np.ndarray | None = None
    group_ids: np.ndarray | None = None
    logits: np.ndarray | None = None
    hidden: np.ndarray | None = None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    ref_logits: np.ndarray | None = None
    ref_hidden: np.ndarray | None = None
    ref_weight: np.ndarray | None = None
    ref_bias: np.ndarray | None = None
    ref_logp: np.ndarray | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dtype: str = "float64"

    @property
    def entry(self) -> str:
        return ENTRY[self.path]

    @property
    def valid(self) -> np.ndarray:
        return np.ones(self.actions.shape, bool) if self.mask is None else self.mask

    @property
    def wrt(self) -> tuple[str, ...]:
        return tuple(k for k in WRT[self.path] if getattr(self, k) is not None)

    def inputs(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in _FIELDS if getattr(self, k) is not None}

    def replace(self, **changes: Any) -> LeanCase:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return S.case_repr(self, [f"path={self.path!r}", f"dtype={self.dtype!r}"], _FIELDS)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# ---------------------------------------------------------------------------------------------
# Strategies


@st.composite
def lean_cases(
    draw: st.DrawFn,
    path: str,
    dtype_names: tuple[str, ...],
    *,
    kl: str | None = None,
    masked_vocab: bool | None = None,
    fill: float | None = None,
) -> LeanCase:
    """A random lean-path batch. ``kl``: ``"none"``, ``"exact"`` (reference logits or hidden
    states) or ``"estimated"`` (reference log-probs); drawn when None. ``masked_vocab``: some
    logits are -inf (never all of a step's, never the action's; logits path only).
    ``fill``: what padding holds (drawn when None). Values come from a seeded RNG: a few
    Hypothesis choices (shapes from two buckets: compiled backends compile per shape) fix the
    structure."""
    m = draw(st.sampled_from([2, 3]))
    t, v, h = 3, 5, 4
    mask = draw(S.masks(m, t))
    group_ids = draw(S.group_layouts(m))
    returns = draw(S.returns_arrays(m, group_ids))
    opts = draw(S.options())
    kl = kl or draw(st.sampled_from(["none", "exact", "estimated"]))
    if kl == "none":
        opts["kl_coef"] = 0.0
    elif opts["kl_coef"] == 0.0:
        opts["kl_coef"] = draw(st.sampled_from([0.05, 0.3]))
    if path == "logits" and masked_vocab is None:
        masked_vocab = draw(st.booleans())
    fill = draw(S.padding_fills()) if fill is None else fill
    scale = draw(st.sampled_from([0.5, 2.0, 5.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    valid = np.ones((m, t), bool) if mask is None else mask
    actions = rng.integers(0, v, size=(m, t))
    # Padding may hold ids such as -100 (the ignore index of cross-entropy losses).
    actions = np.where(valid, actions, draw(st.sampled_from([0, -100, v + 3])))
    kw: dict[str, Any] = {}
    if path == "logits":
        logits = scale * rng.standard_normal((m, t, v))
        if masked_vocab:
            off = rng.random((m, t, v)) < 0.4
            off[np.arange(m)[:, None], np.arange(t)[None, :], np.clip(actions, 0, v - 1)] = False
            off[..., 0] &= ~off[..., 1:].all(axis=-1)  # never every entry of a step
            logits = np.where(off, -np.inf, logits)
        kw["logits"] = np.where(valid[..., None], logits, fill)
        if kl == "exact":
            ref = logits + 0.5 * rng.standard_normal((m, t, v))
            # -inf only where the policy is -inf too: a finite KL needs p = 0 wherever q = 0.
            kw["ref_logits"] = np.where(valid[..., None], ref, fill)
    else:
        hidden = rng.standard_normal((m, t, h))
        kw["hidden"] = np.where(valid[..., None], hidden, fill)
        kw["weight"] = (scale / np.sqrt(h)) * rng.standard_normal((v, h))
        if draw(st.booleans()):
            kw["bias"] = rng.standard_normal(v)
        if kl == "exact":
            kw["ref_hidden"] = np.where(
                valid[..., None], hidden + 0.3 * rng.standard_normal((m, t, h)), fill
            )
            if draw(st.booleans()):
                kw["ref_weight"] = kw["weight"] + 0.2 * rng.standard_normal((v, h))
                if draw(st.booleans()):
                    kw["ref_bias"] = rng.standard_normal(v)
    if kl == "estimated":
        # Log-probs of a nearby reference policy, as in training: within [-3, 3] of the
        # policy's own (a far-off one makes the k3 estimate, exp(r), overflow float16).
        # (padding rows zeroed first: the fill may be NaN, and NaN in a matmul warns)
        z = (
            kw["logits"]
            if path == "logits"
            else np.where(valid[..., None], kw["hidden"], 0.0) @ kw["weight"].T
        )
        own = _logp(z, actions, valid)
        kw["ref_logp"] = np.where(valid, own + rng.uniform(-3.0, 3.0, (m, t)), fill)
    return LeanCase(
        path=path,
        actions=actions.astype(np.int64),
        returns=returns,
        mask=mask,
        group_ids=group_ids,
        options=opts,
        dtype=draw(S.dtypes(dtype_names)),
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Reference, calls and tolerances


def _seen(backend: Any, case: LeanCase, device: str | None) -> dict[str, np.ndarray]:
    return {
        k: as_float64(backend, to_backend(backend, v, case.dtype, device))
        for k, v in case.inputs().items()
    }


def _logits_of(seen: Mapping[str, np.ndarray], valid: np.ndarray) -> tuple[Any, Any]:
    """Policy and reference logits in float64 from what the backend saw."""
    if "logits" in seen:
        return seen["logits"], seen.get("ref_logits")
    v3 = valid[..., None]
    hid = np.where(v3, seen["hidden"], 0.0)
    z = hid @ seen["weight"].T + (seen["bias"] if "bias" in seen else 0.0)
    ref = None
    if "ref_hidden" in seen:
        rh = np.where(v3, seen["ref_hidden"], 0.0)
        if "ref_weight" in seen:
            ref = rh @ seen["ref_weight"].T + (seen["ref_bias"] if "ref_bias" in seen else 0.0)
        else:
            ref = rh @ seen["weight"].T + (seen["bias"] if "bias" in seen else 0.0)
    return z, ref


def reference(case: LeanCase, seen: Mapping[str, np.ndarray]) -> haepo_core.HAEPOOutput:
    """The core's ``haepo_loss_from_logits`` in float64 on what the backend saw."""
    z, ref = _logits_of(seen, case.valid)
    kw: dict[str, Any] = {}
    if ref is not None:
        kw["ref_logits"] = ref
    if "ref_logp" in seen:
        kw["ref_logp"] = seen["ref_logp"]
    if case.group_ids is not None:
        kw["group_ids"] = case.group_ids
    return haepo_core.haepo_loss_from_logits(
        z, case.actions, seen["returns"], case.mask, **kw, **case.options
    )


def _logp(z: np.ndarray, actions: np.ndarray, valid: np.ndarray) -> np.ndarray:
    zz = np.where(valid[..., None], z, 0.0)
    with np.errstate(invalid="ignore"):
        top = np.max(zz, axis=-1, keepdims=True)
        lse = top[..., 0] + np.log(np.sum(np.exp(zz - top), axis=-1))
    a = np.clip(actions, 0, z.shape[-1] - 1)
    taken = np.take_along_axis(zz, a[..., None], axis=-1)[..., 0]
    return np.where(valid, taken - lse, 0.0)


def lean_tolerance(case: LeanCase, seen: Mapping[str, np.ndarray]) -> Tolerance:
    """The tolerance of the padded properties, with the conditioning of ``L`` from the
    log-probs; in float16/bfloat16 the hidden path's matmul rounds the logits, which moves
    each log-prob by about ``eps * max |z|``: that enters the conditioning too."""
    valid = case.valid
    z, _ = _logits_of(seen, valid)
    logp = _logp(z, case.actions, valid)
    per_step = np.abs(logp)
    if case.path == "hidden" and case.dtype in ("float16", "bfloat16"):
        zmax = np.max(np.where(np.isfinite(z), np.abs(z), 0.0), axis=-1)
        per_step = per_step + 2.0 * (EPS[case.dtype] / EPS["float32"]) * zmax
    cond = float(np.max(np.sum(np.where(valid, per_step, 0.0), axis=-1), initial=0.0))
    tol = Tolerance(case.dtype, cond / float(case.options["temperature"]))
    if case.path == "hidden" and case.dtype in ("float16", "bfloat16"):
        # Entropy and KL are means of per-step values computed from rounded logits.
        tol.rtol = max(tol.rtol, 4.0 * EPS[case.dtype] * (1.0 + float(np.max(np.abs(z)))))
    return tol


def _out_numpy(out: Any) -> dict[str, Any]:
    return {
        "loss": as_float64(None, out.loss),
        "weights": as_float64(None, out.weights),
        "normalized_returns": as_float64(None, out.normalized_returns),
        "log_likelihood": as_float64(None, out.log_likelihood),
        "stats": {k: as_float64(None, v) for k, v in stats_dict(out.stats).items()},
    }


def call(backend: Any, case: LeanCase, device: str | None, **extra: Any) -> dict[str, Any]:
    args = {k: to_backend(backend, v, case.dtype, device) for k, v in case.inputs().items()}
    return _out_numpy(call_entry(backend, case.entry, args, {**case.options, **extra}))


def grads(
    backend: Any, case: LeanCase, device: str | None, dtype: str | None = None, **extra: Any
) -> tuple[float, dict[str, np.ndarray]]:
    return backend_grad(
        backend,
        case.entry,
        case.inputs(),
        {**case.options, **extra},
        case.wrt,
        dtype or case.dtype,
        device,
    )


def _has_grad(backend: Any) -> bool:
    return callable(getattr(backend, "grad", None))


def _finite_mask(case: LeanCase, key: str) -> np.ndarray:
    """Where a gradient w.r.t. ``key`` may be non-zero: valid steps, finite logits."""
    x = getattr(case, key)
    if key in ("logits", "hidden"):
        ok = np.broadcast_to(case.valid[..., None], x.shape)
        return ok & np.isfinite(np.where(ok, x, 0.0))
    return np.ones(x.shape, bool)


def _compare_close(a: Mapping, b: Mapping, tol: Tolerance, where: str) -> None:
    for key in ("loss", "weights", "normalized_returns", "log_likelihood"):
        scale = 1.0 + float(np.max(np.abs(np.nan_to_num(np.asarray(b[key]))), initial=0.0))
        assert_close(key, a[key], b[key], rtol=tol.rtol, atol=tol.weight_atol * scale, where=where)
    for key in STAT_KEYS:
        scale = 1.0 + float(np.max(np.abs(np.nan_to_num(b["stats"][key])), initial=0.0))
        assert_close(
            f"stats[{key!r}]",
            a["stats"][key],
            b["stats"][key],
            rtol=tol.rtol,
            atol=tol.weight_atol * scale,
            where=where,
        )


def _compare_grads(
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    case: LeanCase,
    ref_out: Any,
    tol: Tolerance,
    where: str,
) -> None:
    """``got`` and ``want`` agree for every input differentiated (``case.wrt``)."""
    for k in case.wrt:
        assert_close(
            f"d loss / d {k}",
            got[k],
            want[k],
            rtol=tol.rtol,
            atol=_grad_atol(ref_out, tol, case, want[k]),
            where=where,
        )


def _grad_atol(ref_out: Any, tol: Tolerance, case: LeanCase, g: np.ndarray) -> float:
    return grad_tolerance(ref_out, tol, case.options) * (1.0 + float(np.max(np.abs(g))))


# ---------------------------------------------------------------------------------------------
# Checks


def check_values(backend: Any, case: LeanCase, device: str | None) -> None:
    """Outputs against the core from logits, in float64, on what the backend saw."""
    got = call(backend, case, device)
    seen = _seen(backend, case, device)
    ref = reference(case, seen)
    if case.dtype == "float16":
        # Outputs are in the inputs' dtype: beyond 65504 a float16 loss is inf, as specified.
        with np.errstate(over="ignore"):
            rounded = {k: np.float16(v).astype(np.float64) for k, v in ref.stats.items()}
            ref = ref._replace(loss=np.float16(ref.loss).astype(np.float64), stats=rounded)
    compare_outputs(
        got,
        ref,
        lean_tolerance(case, seen),
        case.options,
        seen["returns"],
        where=f"{case.entry} vs the core's haepo_loss_from_logits in float64",
    )


def explicit_ref_head(case: LeanCase) -> LeanCase:
    """Without ``ref_weight`` the reference head is the policy's, detached: finite
    differences that move the weight must not move the reference, so give a constant copy."""
    if case.path == "hidden" and case.ref_hidden is not None and case.ref_weight is None:
        bias = None if case.bias is None else case.bias.copy()
        return case.replace(ref_weight=case.weight.copy(), ref_bias=bias)
    return case


def check_fd(backend: Any, case: LeanCase, seed: int, device: str | None) -> None:
    """Central finite differences of the backend's loss in float64 along a random
    direction, against its ``grad`` in float64; gradients exactly 0 at padding and at
    masked (-inf) vocabulary entries."""
    case = explicit_ref_head(case)
    case64 = case.replace(dtype="float64")
    loss, g = grads(backend, case64, device)
    rng = np.random.default_rng(seed)
    free = {k: _finite_mask(case, k) for k in case.wrt}
    for k in case.wrt:
        bad = g[k][~free[k]]
        if bad.size and not np.all(bad == 0.0):
            raise ConformanceError(
                f"d loss / d {k}: expected exactly 0 at padding and at -inf logits, got "
                f"{np.unique(bad[bad != 0])[:5]}"
            )
    v = {k: np.where(free[k], rng.standard_normal(free[k].shape), 0.0) for k in case.wrt}
    # Step so that the log-likelihood of a trajectory moves by about 1e-5 * tau.
    if case.path == "logits":
        dz = np.max(np.abs(v["logits"]), axis=-1)
    else:
        valid3 = case.valid[..., None]
        hid = np.where(valid3, case.hidden, 0.0)
        d = v["hidden"] @ case.weight.T + hid @ v["weight"].T + v.get("bias", 0.0)
        dz = np.max(np.abs(d), axis=-1)
    per_traj = 2.0 * np.sum(np.where(case.valid, dz, 0.0), axis=-1)
    h = 1e-5 * float(case.options["temperature"]) / max(1.0, float(per_traj.max()))

    def f(sign: float) -> float:
        moved = {}
        for k in case.wrt:
            x = getattr(case, k)
            moved[k] = np.where(free[k], x + sign * h * v[k], x)
        out = call(backend, case64.replace(**moved), device)
        return float(out["loss"])

    fd = (f(1.0) - f(-1.0)) / (2.0 * h)
    exact = float(sum(np.sum(np.where(free[k], g[k], 0.0) * v[k]) for k in case.wrt))
    spread = float(sum(np.sum(np.abs(np.where(free[k], g[k], 0.0) * v[k])) for k in case.wrt))
    mags = sum(
        float(
            np.sum(
                np.abs(np.where(free[k], g[k], 0.0))
                * (1.0 + np.abs(np.where(free[k], getattr(case, k), 0.0)))
            )
        )
        for k in case.wrt
    )
    rounding = 4e-16 * (mags + 1.0 + abs(loss)) / h
    atol = 1e-6 * (1.0 + spread) + 4.0 * rounding
    if not abs(fd - exact) <= atol:
        raise ConformanceError(
            f"d loss / d {case.wrt} (central finite differences, float64, {case.entry}): the "
            f"directional derivative along a random direction (seed {seed}, step {h:.3g}) is "
            f"{fd:.10g} by finite differences but {exact:.10g} from grad (|diff| "
            f"{abs(fd - exact):.3g} > {atol:.3g})"
        )


def check_grad_dtype(backend: Any, case: LeanCase, device: str | None) -> None:
    """In the dtype under test, the gradient is close to the backend's float64 one (which
    ``check_fd`` ties to finite differences)."""
    if case.dtype == "float64":
        return
    loss, g = grads(backend, case, device)
    loss64, g64 = grads(backend, case, device, dtype="float64")
    seen = _seen(backend, case, device)
    tol = lean_tolerance(case, seen)
    ref_out = reference(case, seen)
    assert_close(
        "grad loss",
        loss,
        loss64,
        rtol=tol.rtol,
        atol=tol.rtol + tol.weight_atol * float(np.sum(np.abs(ref_out.normalized_returns))),
        where=f"{case.dtype} vs float64",
    )
    _compare_grads(g, g64, case, ref_out, tol, f"{case.dtype} vs float64")


def _lean_build(path: str, kind: str) -> Callable[[Any, Any], tuple[Any, Callable]]:
    entry = ENTRY[path]

    def build(backend: Any, ctx: Any) -> tuple[Any, Callable[[Any], None]]:
        dtypes = ctx.dtypes
        if kind == "values":
            return lean_cases(path, dtypes), lambda case: check_values(backend, case, ctx.device)
        if kind == "masked_vocab":

            def masked(case: LeanCase) -> None:
                check_values(backend, case, ctx.device)
                if _has_grad(backend):
                    check_fd(backend, case, 0, ctx.device)

            return lean_cases(path, dtypes, masked_vocab=True), masked
        if kind == "gradient":

            def gradient(example: tuple[LeanCase, int]) -> None:
                case, seed = example
                check_fd(backend, case, seed, ctx.device)
                check_grad_dtype(backend, case, ctx.device)

            return S.with_seed(lean_cases(path, dtypes)), gradient
        if kind == "kl":

            def kl(example: tuple[LeanCase, str, int]) -> None:
                case, _, seed = example
                check_values(backend, case, ctx.device)
                if _has_grad(backend):
                    check_fd(backend, case, seed, ctx.device)

            strategy = st.sampled_from(["exact", "estimated"]).flatmap(
                lambda mode: st.tuples(
                    lean_cases(path, dtypes, kl=mode), st.just(mode), st.integers(0, 2**32 - 1)
                )
            )
            return strategy, kl
        if kind == "chunks":
            return (
                st.tuples(lean_cases(path, dtypes), st.sampled_from([1, 2, 4, 5])),
                lambda ex: check_chunks(backend, ex[0], ex[1], ctx.device),
            )
        if kind == "padding":
            return lean_cases(path, dtypes, fill=0.0), lambda case: check_padding(
                backend, case, ctx.device
            )
        if kind == "variants":
            return lean_cases(path, dtypes), lambda case: check_variants(backend, case, ctx.device)
        raise ValueError(f"kind: unknown lean property kind {kind!r} for {entry}")

    return build


def check_chunks(backend: Any, case: LeanCase, chunk: int, device: str | None) -> None:
    """``chunk_size=chunk`` gives the outputs and gradients of the default chunking."""
    seen = _seen(backend, case, device)
    tol = lean_tolerance(case, seen)
    where = f"chunk_size={chunk} vs the default chunk size"
    _compare_close(
        call(backend, case, device, chunk_size=chunk), call(backend, case, device), tol, where
    )
    if not _has_grad(backend):
        return
    loss1, g1 = grads(backend, case, device, chunk_size=chunk)
    loss0, g0 = grads(backend, case, device)
    ref_out = reference(case, seen)
    assert_close("grad loss", loss1, loss0, rtol=tol.rtol, atol=tol.weight_atol, where=where)
    _compare_grads(g1, g0, case, ref_out, tol, where)


def check_padding(backend: Any, case: LeanCase, device: str | None) -> None:
    """NaN, +-inf and garbage in padding (logits or hidden rows, reference arrays, actions)
    change neither outputs nor gradients; the padding gradient is exactly 0."""
    valid = case.valid
    if valid.all():
        valid = valid.copy()
        valid[:, -1] = False
        valid[:, 0] = True
        case = case.replace(mask=valid)
    base = call(backend, case, device)
    g0 = grads(backend, case, device)[1] if _has_grad(backend) else {}
    seen = _seen(backend, case, device)
    tol = lean_tolerance(case, seen)
    ref_out = reference(case, seen)
    for fill in (float("nan"), float("inf"), float("-inf"), 1e30):
        changes: dict[str, Any] = {"actions": np.where(valid, case.actions, -100)}
        for k in ("logits", "hidden", "ref_logits", "ref_hidden"):
            x = getattr(case, k)
            if x is not None:
                changes[k] = np.where(valid[..., None], x, fill)
        if case.ref_logp is not None:
            changes["ref_logp"] = np.where(valid, case.ref_logp, fill)
        other = case.replace(**changes)
        where = f"padding filled with {fill} (actions -100) instead of 0"
        _compare_close(call(backend, other, device), base, tol, where)
        if not g0:
            continue
        _, g1 = grads(backend, other, device)
        _compare_grads(g1, g0, case, ref_out, tol, where)
        for k in case.wrt:
            if k in ("logits", "hidden"):
                pad = g1[k][~np.broadcast_to(valid[..., None], g1[k].shape)]
                if pad.size and not np.all(pad == 0.0):
                    raise ConformanceError(
                        f"d loss / d {k} ({where}): expected exactly 0 at padding, got "
                        f"{np.unique(pad[pad != 0])[:5]}"
                    )


def check_variants(backend: Any, case: LeanCase, device: str | None) -> None:
    """Each variant with this entry point gives the eager outputs, loss and gradients."""
    seen = _seen(backend, case, device)
    tol = lean_tolerance(case, seen)
    ref_out = reference(case, seen)
    base = call(backend, case, device)
    g0 = grads(backend, case, device) if _has_grad(backend) else None
    for name, variant in _variants(backend, case.entry).items():
        where = f"variant {name!r} vs eager ({case.entry})"
        _compare_close(call(variant, case, device), base, tol, where)
        if g0 is None or not _has_grad(variant):
            continue
        loss1, g1 = grads(variant, case, device)
        assert_close("grad loss", loss1, g0[0], rtol=tol.rtol, atol=tol.weight_atol, where=where)
        _compare_grads(g1, g0[1], case, ref_out, tol, where)


def _variants(backend: Any, entry: str) -> dict[str, Any]:
    found = getattr(backend, "variants", None)
    out = dict(found()) if callable(found) else {}
    return {k: v for k, v in out.items() if has_entry(v, entry)}


def _applies(path: str, kind: str) -> Callable[[Any, Any], str | None]:
    entry = ENTRY[path]

    def applies(backend: Any, ctx: Any) -> str | None:
        if not has_entry(backend, entry):
            return f"no {entry}"
        if kind in ("gradient",) and not _has_grad(backend):
            return "the backend has no grad (autodiff primitive)"
        if kind in ("gradient", "masked_vocab", "kl") and "float64" not in backend.dtypes:
            return "finite differences need float64"
        if kind == "chunks" and not getattr(backend, "chunked", False):
            return "backend.chunked is not set (no chunk_size keyword)"
        if kind == "variants" and not _variants(backend, entry):
            return f"no variant with {entry}"
        return None

    return applies


# ---------------------------------------------------------------------------------------------
# Second derivatives


def _second_order_entries(b: Any) -> tuple[str, ...]:
    if not callable(getattr(b, "hvp", None)) or not callable(getattr(b, "grad", None)):
        return ()
    return tuple(e for e in getattr(b, "second_order", ()) or () if has_entry(b, e))


def _with_variants(backend: Any) -> list[tuple[str, Any]]:
    found = getattr(backend, "variants", None)
    out = [(backend.name, backend)]
    if callable(found):
        out += [(getattr(v, "name", k), v) for k, v in dict(found()).items()]
    return out


def second_order_applies(backend: Any, ctx: Any) -> str | None:
    if not any(_second_order_entries(b) for _, b in _with_variants(backend)):
        return "neither the backend nor a variant declares second_order (with hvp)"
    if "float64" not in backend.dtypes:
        return "finite differences need float64"
    return None


def _padded_inputs(case: S.Case) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    return case.inputs(), ("logp", "entropy") if case.entropy is not None else ("logp",)


def _packed_from(case: S.Case) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    return case.packed()[0], ("logp", "entropy") if case.entropy is not None else ("logp",)


def check_second_order(
    backend: Any, example: tuple[S.Case, LeanCase, LeanCase, int], device: Any
) -> None:
    """For a declared entry point (of the backend or of a variant, one per example): ``hvp``
    against central finite differences of ``grad`` in float64, along a random direction.
    """
    case, lean, hidden, seed = example
    rng = np.random.default_rng(seed)
    pairs = [(n, b, e) for n, b in _with_variants(backend) for e in _second_order_entries(b)]
    # One (backend, entry point) pair per example, chosen by the drawn seed: each Hessian-
    # vector product costs a double backward and two gradients (and, jitted, compiles).
    name, b, entry = pairs[int(rng.integers(len(pairs)))]
    if entry == "haepo_loss":
        inputs, wrt = _padded_inputs(case)
        opts = case.options
        free = {k: np.broadcast_to(case.valid, case.logp.shape) for k in wrt}
    elif entry == "haepo_loss_packed":
        inputs, wrt = _packed_from(case)
        opts = case.options
        free = {k: np.ones(inputs[k].shape, bool) for k in wrt}
    else:
        lc = lean if entry == "haepo_loss_from_logits" else explicit_ref_head(hidden)
        inputs, wrt, opts = lc.inputs(), lc.wrt, lc.options
        free = {k: _finite_mask(lc, k) for k in wrt}
    _hvp_fd(b, name, entry, inputs, opts, wrt, free, rng, device)


def _hvp_fd(
    b: Any,
    name: str,
    entry: str,
    inputs: Mapping[str, np.ndarray],
    opts: Mapping[str, Any],
    wrt: tuple[str, ...],
    free: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    device: Any,
) -> None:
    vec = {k: np.where(free[k], rng.standard_normal(np.shape(inputs[k])), 0.0) for k in wrt}
    hv = backend_hvp(b, entry, inputs, opts, wrt, vec, "float64", device)
    tau = float(opts.get("temperature", 1.0))
    h = 1e-4 * tau / max(1.0, max(float(np.sum(np.abs(v))) for v in vec.values()))

    def g(sign: float) -> dict[str, np.ndarray]:
        moved = dict(inputs)
        for k in wrt:
            moved[k] = np.where(free[k], inputs[k] + sign * h * vec[k], inputs[k])
        return backend_grad(b, entry, moved, opts, wrt, "float64", device)[1]

    gp, gm = g(1.0), g(-1.0)
    for k in wrt:
        fd = np.where(free[k], (gp[k] - gm[k]) / (2.0 * h), 0.0)
        got = np.where(free[k], hv[k], 0.0)
        scale = float(np.max(np.abs(fd), initial=0.0))
        assert_close(
            f"Hessian-vector product d(grad . v) / d {k}",
            got,
            fd,
            rtol=1e-4,
            atol=1e-6 * (1.0 + scale) + 1e-9 / h,
            where=f"{name} {entry}: hvp vs central finite differences of grad (float64)",
        )


def second_order_build(backend: Any, ctx: Any) -> tuple[Any, Callable[[Any], None]]:
    strategy = st.tuples(
        S.cases(("float64",), max_m=3, max_t=5),
        lean_cases("logits", ("float64",), masked_vocab=False),
        lean_cases("hidden", ("float64",)),
        st.integers(0, 2**32 - 1),
    )
    return strategy, lambda ex: check_second_order(backend, ex, ctx.device)


# ---------------------------------------------------------------------------------------------

_SUMMARIES = {
    "values": "outputs equal the core's from-logits loss in float64",
    "gradient": "grad w.r.t. {wrt} equals float64 finite differences; low precision near it",
    "chunks": "chunk_size changes neither outputs nor gradients",
    "masked_vocab": "-inf logits (masked vocabulary): exact values, zero gradient there",
    "padding": "NaN/inf/garbage in padding (and actions -100) change nothing; zero gradient",
    "kl": "exact KL (reference {ref}) and estimated KL (ref_logp): values and gradients",
    "variants": "every variant with this path equals eager, loss and gradients",
}


def _lean_properties() -> list[tuple[str, int, str, Any, Any, Callable[[int], int]]]:
    out = []
    for number, path in ((9, "logits"), (10, "hidden")):
        kinds = ["values", "gradient", "chunks", "masked_vocab", "padding", "kl", "variants"]
        if path == "hidden":
            kinds.remove("masked_vocab")
        for kind in kinds:
            summary = _SUMMARIES[kind].format(
                wrt=", ".join(WRT[path]) if path == "hidden" else "logits",
                ref="logits" if path == "logits" else "hidden states",
            )
            cap = (lambda n: max(1, min(n, 8))) if kind == "variants" else (lambda n: n)
            out.append(
                (
                    f"{path}.{kind}",
                    number,
                    summary,
                    _lean_build(path, kind),
                    _applies(path, kind),
                    cap,
                )
            )
    return out


#: (name, number, summary, build, applies, max_examples) of each lean-path property.
LEAN_PROPERTIES = _lean_properties()
