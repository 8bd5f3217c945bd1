"""haepo_backends.jax.haepo_loss / haepo_loss_packed against the core (values, stats, grads),
eagerly and under jit, with traced coefficients, vmap, dtypes and padding garbage."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from haepo_backends.jax import haepo_loss, haepo_loss_packed  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import haepo_core as hc  # noqa: E402

STAT_KEYS = (
    "policy_loss",
    "entropy",
    "kl",
    "ess",
    "ess_min",
    "max_weight",
    "weighted_return",
    "num_groups",
)


def _problem(seed=0, m=12, t=7, n_groups=4, garbage=True):
    rng = np.random.default_rng(seed)
    logp = rng.normal(size=(m, t)) - 2.0
    mask = rng.random((m, t)) < 0.75
    mask[:, 0] = True
    returns = rng.normal(size=m)
    group_ids = rng.integers(0, n_groups, m) * 7 + 3  # arbitrary (non-dense) labels
    entropy = rng.random((m, t))
    ref_logp = logp + 0.2 * rng.normal(size=(m, t))
    if garbage:  # padding may hold anything: it must reach neither value nor gradient
        logp[~mask] = np.nan
        entropy[~mask] = np.inf
        ref_logp[~mask] = -np.inf
    return dict(
        logp=logp,
        returns=returns,
        mask=mask,
        group_ids=group_ids,
        entropy=entropy,
        ref_logp=ref_logp,
    )


def _j(d):
    return {k: (None if v is None else jnp.asarray(v)) for k, v in d.items()}


CASES = [
    dict(),
    dict(entropy_coef=0.1, kl_coef=0.2, temperature=1.7),
    dict(kl_coef=0.3, kl_estimator="k1", normalize_returns="center"),
    dict(kl_coef=0.3, kl_estimator="k2", normalize_returns="none", length_normalize=True),
    dict(entropy_coef=0.05, length_normalize=True, temperature=0.5),
]


def _assert_output(out, ref, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(out.loss), ref.loss, rtol=rtol, atol=atol)
    for name in ("weights", "normalized_returns", "log_likelihood"):
        np.testing.assert_allclose(
            np.asarray(getattr(out, name)), getattr(ref, name), rtol=rtol, atol=atol, err_msg=name
        )
    assert out.stats.keys() == hc.HAEPOStats._fields == STAT_KEYS
    for k in STAT_KEYS:
        np.testing.assert_allclose(
            np.asarray(out.stats[k]), ref.stats[k], rtol=rtol, atol=atol, err_msg=k
        )


MODES = [("eager", c) for c in range(len(CASES))] + [("jit", 1), ("jit", 3), ("jit_num_groups", 1)]


@pytest.mark.parametrize(("mode", "case_index"), MODES)
def test_padded_matches_core_value_stats_and_closed_form_grad(mode, case_index):
    case = CASES[case_index]
    p = _problem()
    ref, ref_grads = hc.haepo_grad(
        np.where(p["mask"], p["logp"], 0.0),
        p["returns"],
        p["mask"],
        group_ids=p["group_ids"],
        entropy=np.where(p["mask"], p["entropy"], 0.0),
        ref_logp=np.where(p["mask"], p["ref_logp"], 0.0),
        **case,
    )
    a = _j(p)
    kw = dict(case)
    if mode == "jit_num_groups":
        _, dense = np.unique(p["group_ids"], return_inverse=True)
        a["group_ids"] = jnp.asarray(dense)
        kw["num_groups"] = int(dense.max()) + 1

    def f(logp, entropy, rest):
        out = haepo_loss(
            logp,
            rest["returns"],
            rest["mask"],
            group_ids=rest["group_ids"],
            entropy=entropy,
            ref_logp=rest["ref_logp"],
            **kw,
        )
        return out.loss, out

    vg = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)
    if mode != "eager":
        vg = jax.jit(vg)
    (_, out), (g_logp, g_ent) = vg(a["logp"], a["entropy"], a)
    _assert_output(out, ref)
    np.testing.assert_allclose(np.asarray(g_logp), ref_grads["logp"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g_ent), ref_grads["entropy"], rtol=1e-9, atol=1e-12)
    # Padding: exactly zero gradient despite NaN/inf there.
    assert np.all(np.asarray(g_logp)[~p["mask"]] == 0.0)


def test_closed_form_vjp_matches_numerical_gradient():
    p = _problem(seed=1, garbage=False)
    a = _j(p)

    def f(logp, temperature):
        return haepo_loss(
            logp, a["returns"], a["mask"], group_ids=a["group_ids"], temperature=temperature
        ).loss

    check_grads(
        lambda x, t: f(jnp.asarray(x), jnp.asarray(t)),
        (a["logp"], 1.3),
        order=1,
        modes=["rev"],
        eps=1e-6,
    )


def test_gradient_through_weights_output_matches_autodiff_of_core():
    # The custom VJP also handles cotangents reaching ``weights`` (not only the loss).
    p = _problem(seed=2, garbage=False)
    a = _j(p)
    c = jnp.asarray(np.random.default_rng(5).normal(size=p["returns"].shape))

    def mine(x):
        out = haepo_loss(x, a["returns"], a["mask"], group_ids=a["group_ids"], temperature=0.7)
        return out.loss + jnp.sum(out.weights * c) + jnp.sum(out.log_likelihood**2) * 1e-3

    def core(x):
        out = hc.haepo_loss(x, a["returns"], a["mask"], group_ids=a["group_ids"], temperature=0.7)
        return out.loss + jnp.sum(out.weights * c) + jnp.sum(out.log_likelihood**2) * 1e-3

    np.testing.assert_allclose(
        jax.grad(mine)(a["logp"]), jax.grad(core)(a["logp"]), rtol=1e-10, atol=1e-13
    )


def test_traced_coefficients_under_jit_and_their_gradients():
    p = _problem(seed=3)
    a = _j(p)
    args = dict(group_ids=a["group_ids"], entropy=a["entropy"], ref_logp=a["ref_logp"])

    @jax.jit
    def mine(ec, kc, tau):
        return haepo_loss(
            a["logp"], a["returns"], a["mask"], entropy_coef=ec, kl_coef=kc, temperature=tau, **args
        ).loss

    def core(ec, kc, tau):
        clean = {
            k: jnp.where(a["mask"], v, 0.0)
            for k, v in (
                ("logp", a["logp"]),
                ("entropy", a["entropy"]),
                ("ref_logp", a["ref_logp"]),
            )
        }
        return hc.haepo_loss(
            clean["logp"],
            a["returns"],
            a["mask"],
            group_ids=a["group_ids"],
            entropy=clean["entropy"],
            ref_logp=clean["ref_logp"],
            entropy_coef=ec,
            kl_coef=kc,
            temperature=tau,
        ).loss

    coefs = (jnp.asarray(0.1), jnp.asarray(0.3), jnp.asarray(1.4))
    np.testing.assert_allclose(mine(*coefs), core(*coefs), rtol=1e-12)
    g_mine = jax.grad(mine, argnums=(0, 1, 2))(*coefs)
    # jit: the core's eager option checks cannot read a grad tracer's value.
    g_core = jax.jit(jax.grad(core, argnums=(0, 1, 2)))(*coefs)
    np.testing.assert_allclose(np.array(g_mine), np.array(g_core), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("num_groups", [None, 3])
def test_vmap_over_independent_problems_equals_a_loop(num_groups):
    b, m, t = 3, 9, 5
    rng = np.random.default_rng(4)
    logp = jnp.asarray(rng.normal(size=(b, m, t)) - 1)
    mask = jnp.asarray(rng.random((b, m, t)) < 0.8).at[:, :, 0].set(True)
    returns = jnp.asarray(rng.normal(size=(b, m)))
    gids = jnp.asarray(np.stack([rng.permutation(np.repeat(np.arange(3), 3)) for _ in range(b)]))

    def one(lp, r, mk, g):
        return haepo_loss(
            lp, r, mk, group_ids=g, num_groups=num_groups, kl_coef=0.1, ref_logp=lp * 1.1
        )

    batched = jax.vmap(one)(logp, returns, mask, gids)
    grads = jax.vmap(jax.grad(lambda *x: one(*x).loss))(logp, returns, mask, gids)
    for i in range(b):
        ref = hc.haepo_loss(
            np.asarray(logp[i]),
            np.asarray(returns[i]),
            np.asarray(mask[i]),
            group_ids=np.asarray(gids[i]),
            kl_coef=0.1,
            ref_logp=np.asarray(logp[i]) * 1.1,
        )
        np.testing.assert_allclose(batched.loss[i], ref.loss, rtol=1e-10)
        np.testing.assert_allclose(batched.weights[i], ref.weights, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(batched.stats["num_groups"][i], 3.0)
        g_ref = jax.grad(lambda x, i=i: one(x, returns[i], mask[i], gids[i]).loss)(logp[i])
        np.testing.assert_allclose(grads[i], g_ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_packed_matches_core_packed_and_padded(mode):
    p = _problem(seed=5, garbage=False)
    mask = p["mask"]
    seg = np.nonzero(mask)[0]
    perm = np.random.default_rng(0).permutation(seg.size)  # steps need not be ordered
    logp, seg, ent, ref = (
        p["logp"][mask][perm],
        seg[perm],
        p["entropy"][mask][perm],
        p["ref_logp"][mask][perm],
    )
    kw = dict(entropy_coef=0.1, kl_coef=0.2, temperature=1.2)
    core = hc.haepo_loss_packed(
        logp, seg, p["returns"], group_ids=p["group_ids"], entropy=ent, ref_logp=ref, **kw
    )

    def f(x):
        out = haepo_loss_packed(
            x,
            jnp.asarray(seg),
            jnp.asarray(p["returns"]),
            group_ids=jnp.asarray(p["group_ids"]),
            entropy=jnp.asarray(ent),
            ref_logp=jnp.asarray(ref),
            **kw,
        )
        return out.loss, out

    vg = jax.value_and_grad(f, has_aux=True)
    if mode == "jit":
        vg = jax.jit(vg)
    (_, out), g = vg(jnp.asarray(logp))
    _assert_output(out, core)
    _, g_pad = hc.haepo_grad(
        np.where(mask, p["logp"], 0.0),
        p["returns"],
        mask,
        group_ids=p["group_ids"],
        entropy=np.where(mask, p["entropy"], 0),
        ref_logp=np.where(mask, p["ref_logp"], 0),
        **kw,
    )
    np.testing.assert_allclose(np.asarray(g), g_pad["logp"][mask][perm], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float32_and_float64_compute_and_output_dtypes(dtype):
    p = _problem(seed=6)
    a = {k: jnp.asarray(v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in p.items()}
    out = haepo_loss(
        a["logp"],
        a["returns"],
        a["mask"],
        group_ids=a["group_ids"],
        entropy=a["entropy"],
        ref_logp=a["ref_logp"],
        entropy_coef=0.1,
        kl_coef=0.1,
    )
    assert out.loss.dtype == jnp.dtype(dtype) and out.weights.dtype == jnp.dtype(dtype)
    assert all(v.dtype == jnp.dtype(dtype) for v in out.stats.values())
    ref = hc.haepo_loss(
        np.where(p["mask"], p["logp"], 0).astype(dtype),
        p["returns"].astype(dtype),
        p["mask"],
        group_ids=p["group_ids"],
        entropy=np.where(p["mask"], p["entropy"], 0).astype(dtype),
        ref_logp=np.where(p["mask"], p["ref_logp"], 0).astype(dtype),
        entropy_coef=0.1,
        kl_coef=0.1,
    )
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.asarray(out.loss), ref.loss, rtol=tol, atol=tol)


def test_bfloat16_inputs_accumulate_in_float32():
    # 4096 steps of -0.01: a bfloat16 running sum stalls far from -40.96; float32 does not.
    m, t = 4, 4096
    logp = jnp.full((m, t), -0.01, dtype=jnp.bfloat16)
    returns = jnp.asarray([1.0, 0.0, 2.0, 3.0], dtype=jnp.bfloat16)
    out = haepo_loss(logp, returns)
    assert out.loss.dtype == jnp.bfloat16 and out.log_likelihood.dtype == jnp.bfloat16
    exact = float(jnp.bfloat16(-0.01)) * t  # the float32 sum of the bfloat16 inputs
    np.testing.assert_allclose(np.asarray(out.log_likelihood, np.float32), exact, rtol=1e-2)
    g = jax.grad(lambda x: haepo_loss(x, returns).loss)(logp)
    assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
    ref = hc.haepo_grad(np.asarray(logp, np.float32), np.asarray(returns, np.float32))[1]
    np.testing.assert_allclose(np.asarray(g, np.float32), ref["logp"], rtol=2e-2, atol=1e-6)


def test_extreme_log_likelihoods_stay_finite_and_equal_returns_give_zero():
    m, t = 6, 3
    logp = jnp.asarray(np.linspace(-1e6 / t, 0, m * t).reshape(m, t))
    returns = jnp.asarray([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    gids = jnp.asarray([0, 0, 0, 1, 1, 1])
    out = haepo_loss(logp, returns, group_ids=gids)
    g = jax.grad(lambda x: haepo_loss(x, returns, group_ids=gids).loss)(logp)
    assert np.isfinite(float(out.loss)) and np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(out.normalized_returns)[3:] == 0.0)  # equal returns: R~ = 0
    assert np.all(np.asarray(g)[3:] == 0.0)
