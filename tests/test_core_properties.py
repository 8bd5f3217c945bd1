"""Hypothesis properties of the HAEPO core, on every array library (the ``xp`` fixture):
permutation equivariance, shift invariance inside a group, independence of groups, padding
invariance (values and gradients, even with NaN/inf padding) and packed == padded.

Shapes are fixed per test (M = 6, T = 5) so JAX, which compiles each primitive per shape when
run eagerly, reuses its caches across examples.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import haepo_core as hc

M, T = 6, 5
RTOL, ATOL = 1e-9, 1e-12
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]


def given_per_library(**strategies):
    """``@given`` inside an ``xp``-parametrized test, with the example count set per library.

    Eager JAX dispatches each primitive separately (~50x slower per call than NumPy here), so
    it runs a quarter of the active profile's examples; every other library runs them all
    (``HAEPO_HYPOTHESIS_PROFILE=heavy`` raises both).
    """

    def decorate(test):
        def wrapper(xp):
            n = settings.default.max_examples
            if xp.__name__.startswith("jax"):
                n = max(5, n // 4)

            @settings(max_examples=n, suppress_health_check=HEALTH)
            @given(**strategies)
            def inner(**drawn):
                test(xp, **drawn)

            inner()

        wrapper.__name__ = test.__name__
        wrapper.__doc__ = test.__doc__
        return wrapper

    return decorate


def to_np(x) -> np.ndarray:
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "__array_namespace__") and array_api_compat.is_array_api_strict_namespace(
        x.__array_namespace__()
    ):
        return np.from_dlpack(x)
    return np.asarray(x)


def close(a, b, rtol: float = RTOL, atol: float = ATOL, msg: str = "") -> None:
    np.testing.assert_allclose(to_np(a), to_np(b), rtol=rtol, atol=atol, err_msg=msg)


def autodiff(xp, fn, *args):
    """``(output, [d loss / d arg])`` by torch.autograd or jax.grad; ``None`` without autodiff.

    ``fn(*args)`` returns a :class:`HAEPOOutput`; ``None`` args are passed through."""
    name = xp.__name__
    idx = [i for i, a in enumerate(args) if a is not None]
    if "torch" in name:
        import torch

        leaves = [args[i].detach().clone().requires_grad_(True) for i in idx]
        full = list(args)
        for i, leaf in zip(idx, leaves):
            full[i] = leaf
        out = fn(*full)
        grads = torch.autograd.grad(out.loss, leaves)
        return out, [g.numpy() for g in grads]
    if name.startswith("jax"):
        import jax

        def loss(leaves):
            full = list(args)
            for i, leaf in zip(idx, leaves):
                full[i] = leaf
            out = fn(*full)
            return out.loss, out

        (_, out), grads = jax.value_and_grad(loss, has_aux=True)([args[i] for i in idx])
        return out, [np.asarray(g) for g in grads]
    return None


@st.composite
def batches(draw, *, regularizers: bool = True):
    """A padded float64 batch (NumPy) and loss options."""
    logp = draw(hnp.arrays(np.float64, (M, T), elements=st.floats(-6.0, 1.0, width=64)))
    mask = draw(hnp.arrays(np.bool_, (M, T)))
    first = draw(hnp.arrays(np.int64, M, elements=st.integers(0, T - 1)))
    mask[np.arange(M), first] = True  # every trajectory keeps at least one valid step
    returns = draw(
        hnp.arrays(
            np.float64,
            M,
            elements=st.one_of(st.floats(-3.0, 3.0, width=64), st.sampled_from([0.0, 1.0])),
        )
    )
    group_ids = draw(st.one_of(st.none(), hnp.arrays(np.int64, M, elements=st.integers(0, 2))))
    opts = {
        "temperature": draw(st.sampled_from([0.5, 1.0, 3.0])),
        "normalize_returns": draw(st.sampled_from(hc.NORMALIZATIONS)),
        "length_normalize": draw(st.booleans()),
    }
    extra: dict[str, np.ndarray] = {}
    if regularizers and draw(st.booleans()):
        extra["entropy"] = draw(hnp.arrays(np.float64, (M, T), elements=st.floats(0.0, 3.0)))
        extra["ref_logp"] = draw(
            hnp.arrays(np.float64, (M, T), elements=st.floats(-6.0, 0.0, width=64))
        )
        opts["entropy_coef"] = 0.1
        opts["kl_coef"] = 0.2
        opts["kl_estimator"] = draw(st.sampled_from(hc.KL_ESTIMATORS))
    return logp, mask, returns, group_ids, extra, opts


def run(xp, logp, mask, returns, group_ids, extra, opts):
    conv = {k: xp.asarray(v) for k, v in extra.items()}
    gid = None if group_ids is None else xp.asarray(group_ids)
    return hc.haepo_loss(
        xp.asarray(logp), xp.asarray(returns), xp.asarray(mask), group_ids=gid, **conv, **opts
    )


def assert_same_output(a, b, perm=None, msg=""):
    p = slice(None) if perm is None else perm
    close(a.loss, b.loss, msg=f"{msg} loss")
    for field in ("weights", "normalized_returns", "log_likelihood"):
        close(to_np(getattr(a, field))[p], getattr(b, field), msg=f"{msg} {field}")
    for key in (
        "policy_loss",
        "entropy",
        "kl",
        "ess",
        "ess_min",
        "max_weight",
        "weighted_return",
        "num_groups",
    ):
        close(a.stats[key], b.stats[key], msg=f"{msg} stats[{key}]")


@given_per_library(case=batches(), perm=st.permutations(range(M)))
def test_permuting_trajectories_permutes_weights_returns_and_likelihoods(xp, case, perm):
    logp, mask, returns, group_ids, extra, opts = case
    perm = np.asarray(perm)
    base = run(xp, logp, mask, returns, group_ids, extra, opts)
    permuted = run(
        xp,
        logp[perm],
        mask[perm],
        returns[perm],
        None if group_ids is None else group_ids[perm],
        {k: v[perm] for k, v in extra.items()},
        opts,
    )
    assert_same_output(base, permuted, perm=perm, msg="permuted")


@given_per_library(
    case=batches(regularizers=False),
    shift=st.floats(-50.0, 50.0),
    group=st.integers(0, 2),
)
def test_weights_invariant_to_constant_shift_of_L_within_a_group(xp, case, shift, group):
    logp, mask, returns, group_ids, extra, opts = case
    opts["length_normalize"] = False  # the shift is applied to L_k itself
    gid = np.zeros(M, dtype=np.int64) if group_ids is None else group_ids
    shifted = logp.copy()
    rows = np.flatnonzero(gid == group)
    first_valid = np.argmax(mask, axis=1)
    shifted[rows, first_valid[rows]] += shift  # L_k + shift for every k of the group
    a = run(xp, logp, mask, returns, group_ids, extra, opts)
    b = run(xp, shifted, mask, returns, group_ids, extra, opts)
    # L changes by `shift` (up to rounding); the weights, R~ and the loss do not.
    close(
        to_np(b.log_likelihood)[rows] - to_np(a.log_likelihood)[rows],
        np.full(rows.size, shift),
        atol=1e-9,
    )
    close(a.weights, b.weights, rtol=1e-8, atol=1e-12, msg="weights")
    close(a.normalized_returns, b.normalized_returns, msg="normalized_returns")
    close(a.loss, b.loss, rtol=1e-8, atol=1e-12, msg="loss")
    # the building block agrees
    L = xp.asarray(to_np(a.log_likelihood))
    L_shift = xp.asarray(to_np(a.log_likelihood) + np.where(gid == group, shift, 0.0))
    gx = xp.asarray(gid)
    tau = opts["temperature"]
    close(
        hc.plackett_luce_weights(L, gx, temperature=tau),
        hc.plackett_luce_weights(L_shift, gx, temperature=tau),
        rtol=1e-8,
    )


@given_per_library(case=batches(), data=st.data())
def test_changing_one_group_leaves_other_groups_unchanged(xp, case, data):
    logp, mask, returns, _, extra, opts = case
    group_ids = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    changed = int(data.draw(st.integers(0, 2), label="changed group"))
    rows = group_ids == changed
    logp2, returns2 = logp.copy(), returns.copy()
    logp2[rows] = data.draw(
        hnp.arrays(np.float64, (int(rows.sum()), T), elements=st.floats(-6.0, 1.0)), label="logp"
    )
    returns2[rows] = data.draw(
        hnp.arrays(np.float64, int(rows.sum()), elements=st.floats(-3.0, 3.0)), label="returns"
    )
    a = run(xp, logp, mask, returns, group_ids, extra, opts)
    b = run(xp, logp2, mask, returns2, group_ids, extra, opts)
    keep = ~rows
    for field in ("weights", "normalized_returns", "log_likelihood"):
        close(to_np(getattr(a, field))[keep], to_np(getattr(b, field))[keep], msg=field)
    # Each group's contribution to the policy term is -(1/#groups) sum_k w_k R~_k.
    contrib = lambda o, g: (
        -float(np.sum((to_np(o.weights) * to_np(o.normalized_returns))[group_ids == g])) / 3
    )
    for g in set(range(3)) - {changed}:
        close(contrib(a, g), contrib(b, g))


def _poisoned(data, clean: np.ndarray, mask: np.ndarray, label: str) -> np.ndarray:
    junk = data.draw(
        hnp.arrays(
            np.float64,
            clean.shape,
            elements=st.one_of(
                st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308]),
                st.floats(allow_nan=True, allow_infinity=True),
            ),
        ),
        label=label,
    )
    return np.where(mask, clean, junk)


@given_per_library(case=batches(), data=st.data())
def test_padding_values_never_affect_value_or_gradient(xp, case, data):
    logp, mask, returns, group_ids, extra, opts = case
    clean_logp = np.where(mask, logp, 0.0)
    clean_extra = {k: np.where(mask, v, 0.0) for k, v in extra.items()}
    dirty_logp = _poisoned(data, logp, mask, "logp padding")
    dirty_extra = {k: _poisoned(data, v, mask, f"{k} padding") for k, v in extra.items()}
    gid = None if group_ids is None else xp.asarray(group_ids)

    def fn(lp, ent, extra_arrays):
        def f(lp_, ent_):
            kw = {"ref_logp": extra_arrays["ref_logp"]} if "ref_logp" in extra_arrays else {}
            return hc.haepo_loss(
                lp_,
                xp.asarray(returns),
                xp.asarray(mask),
                group_ids=gid,
                entropy=ent_,
                **kw,
                **opts,
            )

        return f

    results = []
    for lp, ext in ((clean_logp, clean_extra), (dirty_logp, dirty_extra)):
        arrays = {k: xp.asarray(v) for k, v in ext.items()}
        f = fn(lp, arrays.get("entropy"), arrays)
        res = autodiff(xp, f, xp.asarray(lp), arrays.get("entropy"))
        results.append(res if res is not None else (f(xp.asarray(lp), arrays.get("entropy")), None))
    (clean, g_clean), (dirty, g_dirty) = results
    # Padding is replaced before any arithmetic, so the results are bitwise identical.
    for field in ("loss", "weights", "normalized_returns", "log_likelihood"):
        np.testing.assert_array_equal(to_np(getattr(clean, field)), to_np(getattr(dirty, field)))
    for key, value in clean.stats.items():
        np.testing.assert_array_equal(to_np(value), to_np(dirty.stats[key]))
    if g_clean is not None:
        for gc, gd in zip(g_clean, g_dirty):
            assert np.all(np.isfinite(gd))
            np.testing.assert_array_equal(gc, gd)
            assert np.all(gd[~mask] == 0.0)


def _pack(mask: np.ndarray, order: np.ndarray):
    rows, cols = np.nonzero(mask)
    return rows[order], cols[order]


@given_per_library(case=batches(), data=st.data())
def test_packed_equals_padded_values_and_gradients(xp, case, data):
    logp, mask, returns, group_ids, extra, opts = case
    n = int(mask.sum())
    order = np.asarray(data.draw(st.permutations(range(n)), label="step order"))
    rows, cols = _pack(mask, order)
    gid = None if group_ids is None else xp.asarray(group_ids)
    ref_pad = {"ref_logp": xp.asarray(extra["ref_logp"])} if extra else {}
    ref_pack = {"ref_logp": xp.asarray(extra["ref_logp"][rows, cols])} if extra else {}
    ret = xp.asarray(returns)

    def padded(lp, ent):
        return hc.haepo_loss(
            lp, ret, xp.asarray(mask), group_ids=gid, entropy=ent, **ref_pad, **opts
        )

    def packed(lp, ent):
        return hc.haepo_loss_packed(
            lp, xp.asarray(rows), ret, group_ids=gid, entropy=ent, **ref_pack, **opts
        )

    ent_pad = xp.asarray(extra["entropy"]) if extra else None
    ent_pack = xp.asarray(extra["entropy"][rows, cols]) if extra else None
    a = autodiff(xp, padded, xp.asarray(logp), ent_pad)
    b = autodiff(xp, packed, xp.asarray(logp[rows, cols]), ent_pack)
    if a is None:
        a = (padded(xp.asarray(logp), ent_pad), None)
        b = (packed(xp.asarray(logp[rows, cols]), ent_pack), None)
    assert_same_output(a[0], b[0], msg="packed")
    if a[1] is not None:
        for g_pad, g_pack in zip(a[1], b[1]):
            close(g_pad[rows, cols], g_pack, msg="gradient")
            assert np.all(g_pad[~mask] == 0.0)


# --------------------------------------------------------------------------- gradients
def _closed_form(logp, mask, returns, group_ids, extra, opts):
    kw = dict(opts)
    if group_ids is not None:
        kw["group_ids"] = group_ids
    kw.update(extra)
    return hc.haepo_grad(logp, returns, mask, **kw)


@pytest.mark.parametrize("xp", ["torch", "jax"], indirect=True)
@given_per_library(case=batches())
def test_autodiff_gradient_equals_closed_form(xp, case):
    """torch.autograd and jax.grad straight through the core equal ``haepo_grad``."""
    logp, mask, returns, group_ids, extra, opts = case
    gid = None if group_ids is None else xp.asarray(group_ids)
    ref = {"ref_logp": xp.asarray(extra["ref_logp"])} if extra else {}

    def f(lp, ent):
        return hc.haepo_loss(
            lp, xp.asarray(returns), xp.asarray(mask), group_ids=gid, entropy=ent, **ref, **opts
        )

    ent = xp.asarray(extra["entropy"]) if extra else None
    out, grads = autodiff(xp, f, xp.asarray(logp), ent)
    ref_out, closed = _closed_form(logp, mask, returns, group_ids, extra, opts)
    close(out.loss, ref_out.loss)
    close(grads[0], closed["logp"], msg="d loss / d logp")
    if extra:
        close(grads[1], closed["entropy"], msg="d loss / d entropy")
    else:
        assert "entropy" not in closed


def _central_differences(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (f(up) - f(down)) / (2 * h)
    return g


@settings(max_examples=max(5, settings.default.max_examples // 2), suppress_health_check=HEALTH)
@given(case=batches())
def test_closed_form_gradient_equals_float64_central_finite_differences(case):
    """``haepo_grad`` (NumPy, float64) equals central finite differences of ``haepo_loss``,
    for ``logp`` (padding included: there both are 0) and ``entropy``."""
    logp, mask, returns, group_ids, extra, opts = case
    kw = dict(opts)
    if group_ids is not None:
        kw["group_ids"] = group_ids
    _, closed = _closed_form(logp, mask, returns, group_ids, extra, opts)

    def loss_of_logp(lp):
        return float(hc.haepo_loss(lp, returns, mask, **kw, **extra).loss)

    fd = _central_differences(loss_of_logp, logp)
    np.testing.assert_allclose(closed["logp"], fd, rtol=1e-6, atol=1e-8)
    assert np.all(fd[~mask] == 0.0)
    if extra:

        def loss_of_entropy(ent):
            return float(hc.haepo_loss(logp, returns, mask, **kw, **{**extra, "entropy": ent}).loss)

        fd_ent = _central_differences(loss_of_entropy, extra["entropy"])
        np.testing.assert_allclose(closed["entropy"], fd_ent, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("xp", ["torch", "jax"], indirect=True)
def test_returns_and_reference_are_constants_for_autodiff(xp):
    """R~ and the reference policy are stop-gradient constants: no gradient reaches them."""
    rng = np.random.default_rng(0)
    logp, ref = -rng.random((M, T)), -rng.random((M, T))
    returns = rng.normal(size=M)
    if xp.__name__.startswith("jax"):
        import jax

        def f(lp, r, rf):
            return hc.haepo_loss(lp, r, ref_logp=rf, kl_coef=0.5).loss

        g = jax.grad(f, argnums=(0, 1, 2))(xp.asarray(logp), xp.asarray(returns), xp.asarray(ref))
        assert np.any(np.asarray(g[0]) != 0)
        assert np.all(np.asarray(g[1]) == 0) and np.all(np.asarray(g[2]) == 0)
    else:
        import torch

        lp, r, rf = (torch.tensor(a, requires_grad=True) for a in (logp, returns, ref))
        hc.haepo_loss(lp, r, ref_logp=rf, kl_coef=0.5).loss.backward()
        assert lp.grad is not None and bool(torch.any(lp.grad != 0))
        assert r.grad is None and rf.grad is None
