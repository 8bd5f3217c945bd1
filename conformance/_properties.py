"""The properties a HAEPO backend must satisfy, each one a check run under Hypothesis.

Every property has a stable name (``values``, ``gradient``, ``invariance.shift``...), the number
of its family (1-10, as numbered in docs/conformance.md) and a one-line meaning; docs/
conformance.md explains each one. A check raises :class:`ConformanceError` (an
``AssertionError``) when the backend disagrees with the specification; any other exception a
backend raises on valid input is a failure too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import array_api_compat
import numpy as np
from hypothesis import strategies as st

from . import _strategies as S
from ._boundary import LossFn, backend_grad, call_entry, has_entry, stats_dict, to_backend
from ._reference import (
    STAT_KEYS,
    ConformanceError,
    Tolerance,
    as_float64,
    assert_close,
    compare_outputs,
    grad_tolerance,
    reference_grad,
    reference_loss,
    tolerance,
)
from ._vectors import load_vectors

__all__ = ["PROPERTIES", "Context", "Property", "select_properties"]


@dataclasses.dataclass
class Context:
    """What a property needs to know besides the backend: the dtypes and device under test,
    and where the golden vectors are."""

    dtypes: tuple[str, ...]
    device: str | None = None
    vectors_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class Property:
    """One property of the suite.

    ``build(backend, ctx)`` returns ``(strategy, check)`` for Hypothesis properties; ``run``
    (for the golden vectors) checks everything at once and returns a note. ``applies`` returns
    a reason to skip, or None. ``max_examples(n)`` caps the example count for costly ones.
    """

    name: str
    number: int
    summary: str
    build: Callable[[Any, Context], tuple[st.SearchStrategy[Any], Callable[[Any], None]]] | None
    run: Callable[[Any, Context], str] | None = None
    applies: Callable[[Any, Context], str | None] = lambda backend, ctx: None
    max_examples: Callable[[int], int] = lambda n: n


# ---------------------------------------------------------------------------------------------
# Calling a backend (the NumPy boundary itself is in _boundary.py)


def _convert(backend: Any, x: np.ndarray | None, dtype: str | None, device: str | None) -> Any:
    return to_backend(backend, x, dtype, device)


def _backend_args(backend: Any, case: S.Case, device: str | None) -> dict[str, Any]:
    return {k: _convert(backend, v, case.dtype, device) for k, v in case.inputs().items()}


def call_loss(backend: Any, case: S.Case, device: str | None) -> tuple[Any, dict[str, Any]]:
    """``backend.haepo_loss`` on the case (in its dtype); returns (output, backend inputs)."""
    args = _backend_args(backend, case, device)
    return call_entry(backend, "haepo_loss", args, case.options), args


def output_numpy(backend: Any, out: Any) -> dict[str, Any]:
    """A backend's ``HAEPOOutput`` as a dict of float64 NumPy arrays."""
    return {
        "loss": as_float64(backend, out.loss),
        "weights": as_float64(backend, out.weights),
        "normalized_returns": as_float64(backend, out.normalized_returns),
        "log_likelihood": as_float64(backend, out.log_likelihood),
        "stats": {k: as_float64(backend, v) for k, v in stats_dict(out.stats).items()},
    }


def seen_inputs(backend: Any, case: S.Case, device: str | None) -> dict[str, np.ndarray]:
    """The inputs as the backend sees them (rounded to the dtype under test), in float64."""
    return {
        k: as_float64(backend, _convert(backend, v, case.dtype, device))
        for k, v in case.inputs().items()
    }


def has_grad(backend: Any) -> bool:
    return callable(getattr(backend, "grad", None))


def _needs_grad(backend: Any, ctx: Context) -> str | None:
    return None if has_grad(backend) else "the backend has no grad (autodiff primitive)"


def wrt_for(backend: Any, case: S.Case) -> tuple[str, ...]:
    return ("logp", "entropy") if case.entropy is not None else ("logp",)


def call_grad(
    backend: Any,
    case: S.Case,
    device: str | None,
    *,
    dtype: str | None = None,
    packed_inputs: Mapping[str, Any] | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """``backend.grad`` of ``haepo_loss`` on the case (or of ``haepo_loss_packed`` on the
    given packed inputs): the loss and float64 NumPy gradients."""
    packed = packed_inputs is not None
    return backend_grad(
        backend,
        "haepo_loss_packed" if packed else "haepo_loss",
        dict(packed_inputs) if packed else case.inputs(),
        case.options,
        wrt_for(backend, case),
        dtype or case.dtype,
        device,
    )


def _tol(case: S.Case, seen: Mapping[str, np.ndarray]) -> Tolerance:
    return tolerance(case.dtype, seen["logp"], case.mask, case.options["temperature"])


def _supports_float64(backend: Any) -> bool:
    return "float64" in tuple(backend.dtypes)


# ---------------------------------------------------------------------------------------------
# 1. values


def _values(backend: Any, ctx: Context):
    def check(case: S.Case) -> None:
        out, _ = call_loss(backend, case, ctx.device)
        seen = seen_inputs(backend, case, ctx.device)
        ref = reference_loss(seen, case.options)
        compare_outputs(
            output_numpy(backend, out), ref, _tol(case, seen), case.options, seen["returns"]
        )

    return S.cases(ctx.dtypes), check


# ---------------------------------------------------------------------------------------------
# 2. gradient


def _fd_check(backend: Any, case: S.Case, seed: int, device: str | None) -> None:
    """Central finite differences of ``backend.haepo_loss`` along a random direction, in
    float64, against ``backend.grad`` in float64."""
    case64 = case.replace(dtype="float64")
    loss, grads = call_grad(backend, case64, device)
    rng = np.random.default_rng(seed)
    valid = case.valid
    n_k = valid.sum(axis=1)
    v = np.where(valid, rng.standard_normal(case.logp.shape), 0.0)
    u = None
    if "entropy" in grads:
        u = np.where(valid, rng.standard_normal(case.logp.shape), 0.0)
    per_traj = np.abs(v).sum(axis=1)
    if case.options["length_normalize"]:
        per_traj = per_traj / n_k
    # Step chosen so that L_k / tau moves by about 1e-5: truncation error ~1e-10.
    h = 1e-5 * float(case.options["temperature"]) / max(1.0, float(per_traj.max()))

    def f(sign: float) -> float:
        moved = {"logp": np.where(valid, case.logp + sign * h * v, case.logp)}
        if u is not None:
            moved["entropy"] = np.where(valid, case.entropy + sign * h * u, case.entropy)
        out, _ = call_loss(backend, case64.replace(**moved), device)
        return float(as_float64(backend, out.loss))

    fd = (f(1.0) - f(-1.0)) / (2.0 * h)
    gl = np.where(valid, grads["logp"], 0.0)
    exact = float(np.sum(gl * v))
    spread = float(np.sum(np.abs(gl * v)))
    if u is not None:
        ge = np.where(valid, grads["entropy"], 0.0)
        exact += float(np.sum(ge * u))
        spread += float(np.sum(np.abs(ge * u)))
    x = np.where(valid, np.abs(case.logp), 0.0)
    # Rounding of x + h v (|x| up to 1e4) and of the loss itself, on top of the truncation.
    rounding = float(np.sum(np.abs(gl) * np.spacing(x + 1.0))) / h + 4e-16 * (1.0 + abs(loss)) / h
    atol = 1e-6 * (1.0 + spread) + 4.0 * rounding
    if not abs(fd - exact) <= atol:
        raise ConformanceError(
            f"gradient (central finite differences, float64): directional derivative along a "
            f"random direction (seed {seed}, step {h:.3g}) is {fd:.10g} by finite differences "
            f"of haepo_loss but {exact:.10g} from grad (|diff| {abs(fd - exact):.3g} "
            f"> {atol:.3g})"
        )


def _gradient(backend: Any, ctx: Context):
    fd = _supports_float64(backend)

    def check(example: tuple[S.Case, int]) -> None:
        case, seed = example
        seen = seen_inputs(backend, case, ctx.device)
        ref_out, ref_g = reference_grad(seen, case.options)
        tol = _tol(case, seen)
        loss, grads = call_grad(backend, case, ctx.device)
        assert_close(
            "grad loss",
            loss,
            ref_out.loss,
            rtol=tol.rtol,
            atol=tol.rtol + tol.weight_atol * float(np.sum(np.abs(ref_out.normalized_returns))),
            where="vs the reference loss",
        )
        n_steps = float(case.valid.sum())
        gtol = grad_tolerance(ref_out, tol, case.options)
        kl_part = (
            float(case.options["kl_coef"]) * 25.0 / n_steps if case.ref_logp is not None else 0.0
        )
        assert_close(
            "d loss / d logp",
            grads["logp"],
            ref_g["logp"],
            rtol=tol.rtol,
            atol=gtol + tol.rtol * kl_part,
            where="vs the closed form of the spec",
        )
        if "entropy" in grads:
            assert_close(
                "d loss / d entropy",
                grads["entropy"],
                ref_g["entropy"],
                rtol=tol.rtol,
                atol=tol.rtol / n_steps,
                where="vs the closed form of the spec",
            )
        if fd:
            _fd_check(backend, case, seed, ctx.device)

    return S.with_seed(S.cases(ctx.dtypes)), check


# ---------------------------------------------------------------------------------------------
# 3. invariances


def _compare_pair(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    tol: Tolerance,
    where: str,
    keys: tuple[str, ...] = ("loss", "weights", "normalized_returns", "log_likelihood"),
) -> None:
    for key in keys:
        scale = 1.0 + float(np.max(np.abs(np.nan_to_num(np.asarray(b[key]))), initial=0.0))
        assert_close(key, a[key], b[key], rtol=tol.rtol, atol=tol.weight_atol * scale, where=where)


def _compare_grads(
    backend: Any, ctx: Context, case: S.Case, tol: Tolerance, got: Mapping[str, Any],
    index: Any, where: str,
) -> None:  # fmt: skip
    """``got`` against the gradient of ``case`` itself, read at ``index`` (a permutation or
    the packed steps' positions), at the case's gradient tolerance."""
    _, g0 = call_grad(backend, case, ctx.device)
    ref_out = reference_loss(seen_inputs(backend, case, ctx.device), case.options)
    gtol = grad_tolerance(ref_out, tol, case.options)
    for k in g0:
        assert_close(f"d loss / d {k}", got[k], g0[k][index], rtol=tol.rtol, atol=gtol, where=where)


def _permutation(backend: Any, ctx: Context):
    def check(example: tuple[S.Case, np.ndarray]) -> None:
        case, perm = example
        permuted = case.replace(**{k: v[perm] for k, v in case.inputs().items()})
        base = output_numpy(backend, call_loss(backend, case, ctx.device)[0])
        moved = output_numpy(backend, call_loss(backend, permuted, ctx.device)[0])
        tol = _tol(case, seen_inputs(backend, case, ctx.device))
        expected = {k: (v[perm] if np.ndim(v) == 1 else v) for k, v in base.items() if k != "stats"}
        _compare_pair(moved, expected, tol, f"outputs of the permuted batch, perm={perm.tolist()}")
        for key in ("policy_loss", "entropy", "kl", "ess", "max_weight", "weighted_return"):
            _compare_pair(
                moved["stats"], base["stats"], tol, "stats of the permuted batch", keys=(key,)
            )
        if not has_grad(backend):
            return
        _, g1 = call_grad(backend, permuted, ctx.device)
        _compare_grads(backend, ctx, case, tol, g1, perm, "gradient of the permuted batch")

    return S.with_permutation(S.cases(ctx.dtypes)), check


def _shift(backend: Any, ctx: Context):
    def check(example: tuple[S.Case, np.ndarray]) -> None:
        case, shifts = example
        groups = case.groups()
        labels = np.unique(groups)
        per_traj = shifts[np.searchsorted(labels, groups)]
        valid = case.valid
        # Move L_k (or L_k / T_k under length_normalize) by the group's constant: on the first
        # valid step of each trajectory, or on every valid step when lengths are normalized.
        if case.options["length_normalize"]:
            delta = np.where(valid, per_traj[:, None], 0.0)
        else:
            first = np.argmax(valid, axis=1)
            delta = np.zeros(case.logp.shape)
            delta[np.arange(case.m), first] = per_traj
        moved = case.replace(
            logp=np.where(valid, case.logp + delta, case.logp),
            ref_logp=None,
            entropy=None,
            options={**case.options, "entropy_coef": 0.0, "kl_coef": 0.0},
        )
        base_case = case.replace(ref_logp=None, entropy=None, options=moved.options)
        a = output_numpy(backend, call_loss(backend, moved, ctx.device)[0])
        seen = seen_inputs(backend, moved, ctx.device)
        seen_base = seen_inputs(backend, base_case, ctx.device)
        tol = _tol(moved, seen)
        where = f"after adding {shifts.tolist()} to L of the groups {labels.tolist()}"
        # In a low-precision dtype, logp + shift is rounded (float16 spacing is 0.5 near
        # 1000): the backend saw a slightly different batch, not an exact shift. The
        # expectation is then the reference on what the backend saw; when the shift survived
        # the rounding exactly, the backend's own unshifted outputs are expected as well.
        expected = [output_numpy(None, reference_loss(seen, moved.options))]
        if np.array_equal(
            np.where(valid, seen["logp"], 0.0) - np.where(valid, seen_base["logp"], 0.0),
            np.where(valid, delta, 0.0),
        ):
            expected.append(output_numpy(backend, call_loss(backend, base_case, ctx.device)[0]))
        for b in expected:
            _compare_pair(a, b, tol, where, keys=("weights", "normalized_returns"))
            scale = 1.0 + float(np.sum(np.abs(b["normalized_returns"])))
            assert_close(
                "stats['policy_loss']",
                a["stats"]["policy_loss"],
                b["stats"]["policy_loss"],
                rtol=tol.rtol,
                atol=tol.weight_atol * scale,
                where=where,
            )

    return S.with_group_shifts(S.cases(ctx.dtypes, regularizers=False)), check


def _groups(backend: Any, ctx: Context):
    def check(case: S.Case) -> None:
        full = output_numpy(backend, call_loss(backend, case, ctx.device)[0])
        tol = _tol(case, seen_inputs(backend, case, ctx.device))
        groups = case.groups()
        labels = np.unique(groups)
        policies = []
        for label in labels:
            rows = np.flatnonzero(groups == label)
            sub = case.replace(**{k: v[rows] for k, v in case.inputs().items()})
            alone = output_numpy(backend, call_loss(backend, sub, ctx.device)[0])
            part = {k: v[rows] for k, v in full.items() if k != "stats" and np.ndim(v) == 1}
            _compare_pair(
                part,
                alone,
                tol,
                f"group {int(label)} inside the batch vs the same group alone",
                keys=("weights", "normalized_returns", "log_likelihood"),
            )
            policies.append(float(alone["stats"]["policy_loss"]))
        scale = 1.0 + float(np.sum(np.abs(full["normalized_returns"])))
        assert_close(
            "stats['policy_loss']",
            full["stats"]["policy_loss"],
            float(np.mean(policies)),
            rtol=tol.rtol,
            atol=tol.weight_atol * scale,
            where=f"batch of {len(labels)} groups vs the mean of each group alone",
        )

    return S.cases(ctx.dtypes, min_groups=2), check


FILLS = (0.0, float("nan"), float("inf"), float("-inf"), -1e30, 7.25)


def _padding(backend: Any, ctx: Context):
    def check(case: S.Case) -> None:
        # Two padding columns more, so every example has padding to fill.
        m = case.logp.shape[0]
        mask = np.concatenate([case.valid, np.zeros((m, 2), bool)], axis=1)

        def filled(fill: float) -> S.Case:
            def pad(x: np.ndarray | None) -> np.ndarray | None:
                if x is None:
                    return None
                wide = np.concatenate([x, np.zeros((m, 2))], axis=1)
                return np.where(mask, wide, fill)

            return case.replace(
                logp=pad(case.logp),
                mask=mask,
                entropy=pad(case.entropy),
                ref_logp=pad(case.ref_logp),
            )

        base_case = filled(0.0)
        base = output_numpy(backend, call_loss(backend, base_case, ctx.device)[0])
        g0 = call_grad(backend, base_case, ctx.device)[1] if has_grad(backend) else {}
        tol = _tol(base_case, seen_inputs(backend, base_case, ctx.device))
        for fill in FILLS[1:]:
            other = filled(fill)
            where = f"padding filled with {fill} instead of 0"
            got = output_numpy(backend, call_loss(backend, other, ctx.device)[0])
            _compare_pair(got, base, tol, where)
            _compare_pair(got["stats"], base["stats"], tol, where, keys=STAT_KEYS)
            g1 = call_grad(backend, other, ctx.device)[1] if g0 else {}
            for k in g0:
                assert_close(
                    f"d loss / d {k}",
                    g1[k],
                    g0[k],
                    rtol=tol.rtol,
                    atol=tol.rtol * (1.0 + float(np.max(np.abs(g0[k]), initial=0.0))),
                    where=where,
                )
                pad_grad = g1[k][~mask]
                if pad_grad.size and not np.all(pad_grad == 0.0):
                    raise ConformanceError(
                        f"d loss / d {k} ({where}): expected exactly 0 at padding, got "
                        f"{np.unique(pad_grad[pad_grad != 0])[:5]}"
                    )

    return S.cases(ctx.dtypes, max_t=8), check


def packed_inputs(case: S.Case, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The case as packed inputs (valid steps in a shuffled order) and the flat positions."""
    return case.packed(np.random.default_rng(seed).permutation(int(case.valid.sum())))


def _packed(backend: Any, ctx: Context):
    def check(example: tuple[S.Case, int]) -> None:
        case, seed = example
        packed, (rows, cols) = packed_inputs(case, seed)
        args = {k: _convert(backend, v, case.dtype, ctx.device) for k, v in packed.items()}
        out = call_entry(backend, "haepo_loss_packed", args, case.options)
        got = output_numpy(backend, out)
        base = output_numpy(backend, call_loss(backend, case, ctx.device)[0])
        tol = _tol(case, seen_inputs(backend, case, ctx.device))
        where = "haepo_loss_packed vs haepo_loss on the same steps"
        _compare_pair(got, base, tol, where)
        _compare_pair(got["stats"], base["stats"], tol, where, keys=STAT_KEYS)
        if not has_grad(backend):
            return
        _, gp = call_grad(backend, case, ctx.device, packed_inputs=packed)
        _compare_grads(
            backend, ctx, case, tol, gp, (rows, cols), "packed grad vs padded, step by step"
        )

    return S.with_seed(S.cases(ctx.dtypes)), check


def _needs_packed(backend: Any, ctx: Context) -> str | None:
    return None if has_entry(backend, "haepo_loss_packed") else "no haepo_loss_packed"


# ---------------------------------------------------------------------------------------------
# 4. variants


def variants_of(backend: Any, entry: str | None = None) -> dict[str, Any]:
    """``backend.variants()`` (optional), keeping those that implement ``entry``."""
    found = getattr(backend, "variants", None)
    out = dict(found()) if callable(found) else {}
    return {k: v for k, v in out.items() if entry is None or has_entry(v, entry)}


def _variants(backend: Any, ctx: Context):
    variants = variants_of(backend, "haepo_loss")

    def check(case: S.Case) -> None:
        base = output_numpy(backend, call_loss(backend, case, ctx.device)[0])
        seen = seen_inputs(backend, case, ctx.device)
        tol = _tol(case, seen)
        ref_out = reference_loss(seen, case.options)
        gtol = grad_tolerance(ref_out, tol, case.options)
        loss_atol = tol.rtol + tol.weight_atol * float(np.sum(np.abs(ref_out.normalized_returns)))
        g0 = call_grad(backend, case, ctx.device) if has_grad(backend) else None
        for name, variant in variants.items():
            where = f"variant {name!r} vs eager"
            got = output_numpy(variant, call_loss(variant, case, ctx.device)[0])
            _compare_pair(got, base, tol, where)
            _compare_pair(got["stats"], base["stats"], tol, where, keys=STAT_KEYS)
            if g0 is None or not has_grad(variant):
                continue
            loss1, g1 = call_grad(variant, case, ctx.device)
            assert_close("grad loss", loss1, g0[0], rtol=tol.rtol, atol=loss_atol, where=where)
            for k in g0[1]:
                assert_close(
                    f"d loss / d {k}", g1[k], g0[1][k], rtol=tol.rtol, atol=gtol, where=where
                )

    # Variants compile per shape: a few shapes keep the run short.
    return S.cases(ctx.dtypes, max_m=6, max_t=6), check


def _has_variants(backend: Any, ctx: Context) -> str | None:
    return None if variants_of(backend, "haepo_loss") else "no variant with haepo_loss"


# ---------------------------------------------------------------------------------------------
# 5. extremes


def _extremes(backend: Any, ctx: Context):
    def check(big: S.BigCase) -> None:
        case = big.build()
        out, _ = call_loss(backend, case, ctx.device)
        got = output_numpy(backend, out)
        for key in ("loss", "weights", "normalized_returns", "log_likelihood"):
            if not np.all(np.isfinite(got[key])):
                raise ConformanceError(
                    f"{key}: expected finite values, got "
                    f"{int(np.sum(~np.isfinite(got[key])))} NaN/inf"
                )
        for key in STAT_KEYS:
            if not np.all(np.isfinite(got["stats"][key])):
                raise ConformanceError(f"stats[{key!r}]: expected finite, got {got['stats'][key]}")
        w = got["weights"]
        tol = Tolerance(case.dtype)
        if np.any(w < 0) or np.any(w > 1 + tol.rtol):
            raise ConformanceError(f"weights: expected values in [0, 1], got {w.min()}..{w.max()}")
        assert_close(
            "sum of the weights",
            np.sum(w),
            1.0,
            rtol=0.0,
            atol=tol.rtol + 4 * tol.eps_compute * w.size,
        )
        grads = call_grad(backend, case, ctx.device)[1] if has_grad(backend) else {}
        for k, g in grads.items():
            if not np.all(np.isfinite(g)):
                raise ConformanceError(
                    f"d loss / d {k}: expected finite values, got "
                    f"{int(np.sum(~np.isfinite(g)))} NaN/inf"
                )
        seen = seen_inputs(backend, case, ctx.device)
        ref = reference_loss(seen, case.options)
        compare_outputs(got, ref, _tol(case, seen), case.options, seen["returns"])

    return S.big_cases(ctx.dtypes), check


# ---------------------------------------------------------------------------------------------
# 6. errors


def _bad_inputs(case: S.Case) -> dict[str, tuple[type, str, Callable[[], tuple[dict, dict]]]]:
    """Each kind of bad input: (expected exception type, argument the message must name,
    how to make the call's arrays and options from the case)."""
    inputs = case.inputs()
    opts = dict(case.options)
    m, t = case.logp.shape
    valid = case.valid

    def with_(**changes: Any) -> Callable[[], tuple[dict, dict]]:
        def make() -> tuple[dict, dict]:
            arrays = dict(inputs)
            options = dict(opts)
            for k, v in changes.items():
                if k in (
                    "kl_estimator",
                    "normalize_returns",
                    "temperature",
                    "entropy_coef",
                    "kl_coef",
                    "eps",
                ):
                    options[k] = v
                elif v is None:
                    arrays.pop(k, None)
                else:
                    arrays[k] = v
            return arrays, options

        return make

    nan_logp = case.logp.copy()
    r, c = np.argwhere(valid)[0]
    nan_logp[r, c] = np.nan
    empty = case.valid.copy()
    empty[0] = False
    inf_returns = np.asarray(case.returns, np.float64).copy()
    inf_returns[0] = np.inf
    return {
        "logp of rank 1": (ValueError, "logp", with_(logp=case.logp[0])),
        "integer logp": (TypeError, "logp", with_(logp=np.zeros((m, t), np.int64))),
        "returns of length M+1": (ValueError, "returns", with_(returns=np.zeros(m + 1))),
        "mask of the wrong shape": (ValueError, "mask", with_(mask=np.ones((m, t + 1), bool))),
        "NaN logp at a valid step": (ValueError, "logp", with_(logp=nan_logp)),
        "a trajectory with no valid step": (ValueError, "mask", with_(mask=empty)),
        "inf in returns": (ValueError, "returns", with_(returns=inf_returns)),
        "unknown kl_estimator": (ValueError, "kl_estimator", with_(kl_estimator="k4")),
        "unknown normalize_returns": (
            ValueError,
            "normalize_returns",
            with_(normalize_returns="minmax"),
        ),
        "temperature <= 0": (ValueError, "temperature", with_(temperature=0.0)),
        "negative entropy_coef": (ValueError, "entropy_coef", with_(entropy_coef=-0.1)),
        "entropy_coef > 0 without entropy": (
            ValueError,
            "entropy",
            with_(entropy_coef=0.1, entropy=None),
        ),
        "kl_coef > 0 without ref_logp": (ValueError, "ref_logp", with_(kl_coef=0.1, ref_logp=None)),
        "float group_ids": (TypeError, "group_ids", with_(group_ids=np.zeros(m))),
        "group_ids of length M+1": (
            ValueError,
            "group_ids",
            with_(group_ids=np.zeros(m + 1, np.int64)),
        ),
        "entropy of the wrong shape": (ValueError, "entropy", with_(entropy=np.zeros((m, t + 1)))),
    }


BAD_INPUTS = tuple(
    _bad_inputs(S.Case(logp=np.zeros((1, 1)), mask=None, returns=np.zeros(1))).keys()
)


def _errors(backend: Any, ctx: Context):
    def check(example: tuple[S.Case, str]) -> None:
        case, kind = example
        expected, argument, make = _bad_inputs(case)[kind]
        arrays, options = make()
        args = {k: _convert(backend, v, case.dtype, ctx.device) for k, v in arrays.items()}
        try:
            call_entry(backend, "haepo_loss", args, options)
        except expected as err:
            if argument not in str(err):
                raise ConformanceError(
                    f"{kind}: raised {type(err).__name__} as documented, but the message does "
                    f"not name the argument {argument!r}: {err}"
                ) from err
            return
        except Exception as err:
            raise ConformanceError(
                f"{kind}: expected {expected.__name__} naming {argument!r}, got "
                f"{type(err).__name__}: {err}"
            ) from err
        raise ConformanceError(
            f"{kind}: expected {expected.__name__} naming {argument!r}, "
            f"but the call returned normally"
        )

    return S.with_choice(S.cases(ctx.dtypes, max_m=4, max_t=4), BAD_INPUTS), check


# ---------------------------------------------------------------------------------------------
# 7. golden vectors


def _golden(backend: Any, ctx: Context) -> str:
    vectors = load_vectors(ctx.vectors_dir)
    if not vectors:
        return "SKIP: no golden vectors found"
    dtype = "float64" if _supports_float64(backend) else ctx.dtypes[0]
    done = skipped = 0
    for vec in vectors:
        entry = vec["function"]
        if not has_entry(backend, entry):
            skipped += 1
            continue
        where = f"golden vector {vec['name']!r} ({vec['path']})"
        inputs = {k: _convert(backend, v, dtype, ctx.device) for k, v in vec["inputs"].items()}
        got = output_numpy(backend, call_entry(backend, entry, inputs, vec["options"]))
        exp = vec["expected"]
        if dtype == "float64":
            rtol, atol = vec["tolerance"]["rtol"], vec["tolerance"]["atol"]
        else:
            t = tolerance(
                dtype,
                vec["inputs"]["logp"],
                vec["inputs"].get("mask"),
                vec["options"]["temperature"],
            )
            rtol, atol = t.rtol, t.weight_atol
        for key in ("loss", "weights", "normalized_returns", "log_likelihood"):
            if key in exp:
                assert_close(key, got[key], exp[key], rtol=rtol, atol=atol, where=where)
        for key, val in exp.get("stats", {}).items():
            assert_close(
                f"stats[{key!r}]", got["stats"][key], val, rtol=rtol, atol=atol, where=where
            )
        if "grad" in exp and has_grad(backend):
            wrt = [k for k in exp["grad"] if k in vec["inputs"]]
            _, grads = backend_grad(
                backend, entry, vec["inputs"], vec["options"], wrt, dtype, ctx.device
            )
            for k in wrt:
                assert_close(
                    f"d loss / d {k}", grads[k], exp["grad"][k], rtol=rtol, atol=atol, where=where
                )
        done += 1
    note = f"{done} golden vectors reproduced in {dtype}"
    return note + (f" ({skipped} skipped: entry point not implemented)" if skipped else "")


# ---------------------------------------------------------------------------------------------
# 8. namespace, dtype, device


def _namespace(backend: Any, ctx: Context):
    def same_place(name: str, x: Any, like: Any, ndim: int) -> None:
        try:
            ns = array_api_compat.array_namespace(x)
        except TypeError as err:
            raise ConformanceError(
                f"{name}: expected an array of the input's namespace, got {type(x).__name__}"
            ) from err
        want = array_api_compat.array_namespace(like)
        if ns is not want:
            raise ConformanceError(f"{name}: expected namespace {want.__name__}, got {ns.__name__}")
        if x.dtype != like.dtype:
            raise ConformanceError(f"{name}: expected dtype {like.dtype} (logp's), got {x.dtype}")
        if array_api_compat.device(x) != array_api_compat.device(like):
            raise ConformanceError(
                f"{name}: expected device {array_api_compat.device(like)}, "
                f"got {array_api_compat.device(x)}"
            )
        if x.ndim != ndim:
            raise ConformanceError(f"{name}: expected a {ndim}-d array, got shape {x.shape}")

    def check_out(out: Any, like: Any, m: int, label: str) -> None:
        same_place(f"{label}.loss", out.loss, like, 0)
        for key in ("weights", "normalized_returns", "log_likelihood"):
            arr = getattr(out, key)
            same_place(f"{label}.{key}", arr, like, 1)
            if tuple(arr.shape) != (m,):
                raise ConformanceError(f"{label}.{key}: expected shape ({m},), got {arr.shape}")
        stats = stats_dict(out.stats)
        missing = [k for k in STAT_KEYS if k not in stats]
        if missing:
            raise ConformanceError(f"{label}.stats: missing {missing}")
        for key in STAT_KEYS:
            same_place(f"{label}.stats[{key!r}]", stats[key], like, 0)

    def check(example: tuple[S.Case, int]) -> None:
        case, seed = example
        out, args = call_loss(backend, case, ctx.device)
        check_out(out, args["logp"], case.m, "haepo_loss")
        if has_entry(backend, "haepo_loss_packed"):
            packed, _ = packed_inputs(case, seed)
            pargs = {k: _convert(backend, v, case.dtype, ctx.device) for k, v in packed.items()}
            pout = call_entry(backend, "haepo_loss_packed", pargs, case.options)
            check_out(pout, pargs["logp"], case.m, "haepo_loss_packed")
        if has_grad(backend):
            wrt = wrt_for(backend, case)
            fn = LossFn(backend, "haepo_loss", case.options)
            value, grads = backend.grad(fn, args, wrt)
            same_place("grad value", value, args["logp"], 0)
            for k in wrt:
                if k not in grads:
                    raise ConformanceError(f"grad: asked for {wrt}, missing {k!r}")
                same_place(f"grad[{k!r}]", grads[k], args[k], 2)
                if tuple(grads[k].shape) != tuple(args[k].shape):
                    raise ConformanceError(
                        f"grad[{k!r}]: expected shape {tuple(args[k].shape)}, got "
                        f"{tuple(grads[k].shape)}"
                    )

    return S.with_seed(S.cases(ctx.dtypes)), check


# ---------------------------------------------------------------------------------------------

PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property(
            "values", 1, "loss, weights, R~, L and stats agree with the float64 reference", _values
        ),
        Property(
            "gradient",
            2,
            "grad equals the closed form and central finite differences (float64)",
            _gradient,
            applies=_needs_grad,
        ),
        Property(
            "invariance.permutation",
            3,
            "permuting trajectories permutes every output and gradient",
            _permutation,
        ),
        Property(
            "invariance.shift",
            3,
            "adding a constant to L inside a group leaves the "
            "weights unchanged (even +-800, beyond exp's range)",
            _shift,
        ),
        Property(
            "invariance.groups",
            3,
            "each group's weights and R~ are those of the group "
            "alone; the policy loss is the mean over groups",
            _groups,
        ),
        Property(
            "invariance.padding",
            3,
            "padding values (0, NaN, +-inf, garbage) change "
            "neither outputs nor gradients; padding gradient is 0",
            _padding,
        ),
        Property(
            "invariance.packed",
            3,
            "haepo_loss_packed == haepo_loss, gradients too",
            _packed,
            applies=_needs_packed,
        ),
        Property(
            "variants",
            4,
            "every backend.variants() entry (jit, compile, chunked...) equals eager",
            _variants,
            applies=_has_variants,
            max_examples=lambda n: max(1, min(n, 8)),
        ),
        Property(
            "extremes",
            5,
            "finite results for L down to -1e6, M up to 4096, T up to 8192",
            _extremes,
            max_examples=lambda n: max(1, min(n, 4)),
        ),
        Property(
            "errors",
            6,
            "bad input raises the documented ValueError/TypeError naming the argument",
            _errors,
        ),
        Property(
            "golden",
            7,
            "the golden vectors of conformance/vectors/ are reproduced",
            None,
            run=_golden,
        ),
        Property(
            "namespace", 8, "outputs stay in the input's namespace, dtype and device", _namespace
        ),
    )
}


def _extend(props: dict[str, Property]) -> dict[str, Property]:
    """Insert the second-order property after ``gradient`` and append the lean paths."""
    from ._lean import LEAN_PROPERTIES, second_order_applies, second_order_build

    out: dict[str, Property] = {}
    for name, prop in props.items():
        out[name] = prop
        if name == "gradient":
            out["gradient.second_order"] = Property(
                "gradient.second_order",
                2,
                "hvp equals float64 finite differences of grad, for the entry points the "
                "backend (or a variant) declares in second_order",
                second_order_build,
                applies=second_order_applies,
                max_examples=lambda n: max(1, min(n, 5)),
            )
    for name, number, summary, build, applies, cap in LEAN_PROPERTIES:
        out[name] = Property(name, number, summary, build, applies=applies, max_examples=cap)
    return out


PROPERTIES = _extend(PROPERTIES)


def select_properties(patterns: list[str] | None) -> list[Property]:
    """Properties whose name matches one of the glob ``patterns`` (all when None or empty)."""
    import fnmatch

    if not patterns:
        return list(PROPERTIES.values())
    chosen = [
        p
        for p in PROPERTIES.values()
        if any(fnmatch.fnmatchcase(p.name, pat) or pat == str(p.number) for pat in patterns)
    ]
    if not chosen:
        raise ValueError(
            f"property: expected a name or glob among {list(PROPERTIES)}, got {patterns}"
        )
    return chosen
