"""Second derivatives of every JAX entry point are exact: Hessian-vector products (``jvp`` of
``grad`` through the custom VJPs) equal autodiff of the core, and ``check_grads(order=2)``
agrees with float64 finite differences. Covers the closed-form policy term, the chunked
from-logits backward, the from-hidden 5-GEMM path (whose forward forms the gradient) and its
exact fallback, and mixed derivatives with respect to a coefficient."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import haepo_backends.jax as hj  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import haepo_core as hc  # noqa: E402

M, T, V, H = 6, 4, 7, 3
GROUPS = jnp.asarray([0, 0, 1, 1, 1, 2])


def _data(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mask = rng.random((M, T)) < 0.8
    mask[:, 0] = True
    d = dict(
        logp=-rng.random((M, T)) * 2,
        entropy=rng.random((M, T)),
        ref_logp=-rng.random((M, T)),
        logits=rng.normal(size=(M, T, V)),
        hidden=rng.normal(size=(M, T, H)),
        weight=rng.normal(size=(V, H)),
        bias=rng.normal(size=V),
        ref_hidden=rng.normal(size=(M, T, H)),
        ref_weight=rng.normal(size=(V, H)),
        returns=rng.normal(size=M),
    )
    d["ref_logits"] = d["logits"] + 0.5 * rng.normal(size=(M, T, V))
    a = {k: jnp.asarray(v) for k, v in d.items()}
    a["mask"] = jnp.asarray(mask)
    a["actions"] = jnp.asarray(rng.integers(0, V, (M, T)))
    return a


def _tangents(args, seed):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=x.shape)) for x in args)


def _hvp(f, args, tangents):
    """``H v`` for ``H`` the Hessian of ``f`` w.r.t. all of ``args``: forward over reverse."""
    return jax.jvp(jax.grad(f, argnums=tuple(range(len(args)))), args, tangents)[1]


def _assert_same_hvp(mine, core, args, seed=0):
    v = _tangents(args, seed)
    got, want = _hvp(mine, args, v), _hvp(core, args, v)
    for i, (x, y) in enumerate(zip(got, want)):
        assert np.all(np.isfinite(np.asarray(x))), i
        np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10, err_msg=f"argument {i}")


def _check_grads_order_2(f, args):
    """``check_grads`` against finite differences (it perturbs NumPy copies of ``args``)."""
    check_grads(lambda *x: f(*map(jnp.asarray, x)), args, order=2, modes=["rev"])


KW = dict(entropy_coef=0.1, kl_coef=0.2, temperature=1.3)


def test_padded_policy_entropy_and_kl_hessian_matches_core():
    a = _data(0)

    def loss(mod):
        return lambda lp, ent: (
            mod.haepo_loss(
                lp,
                a["returns"],
                a["mask"],
                group_ids=GROUPS,
                entropy=ent,
                ref_logp=a["ref_logp"],
                kl_estimator="k3",
                **KW,
            ).loss
        )

    args = (a["logp"], a["entropy"])
    _assert_same_hvp(loss(hj), loss(hc), args)
    _check_grads_order_2(loss(hj), args)


def test_packed_hessian_matches_core():
    a = _data(1)
    seg = jnp.repeat(jnp.arange(M), T)

    def loss(mod):
        return lambda lp: (
            mod.haepo_loss_packed(
                lp,
                seg,
                a["returns"],
                group_ids=GROUPS,
                ref_logp=a["ref_logp"].reshape(-1),
                kl_estimator="k2",
                kl_coef=0.3,
                length_normalize=True,
            ).loss
        )

    _assert_same_hvp(loss(hj), loss(hc), (a["logp"].reshape(-1),))


@pytest.mark.parametrize("kl", ["exact", "k1", None])
def test_from_logits_hessian_matches_core(kl):
    a = _data(2)
    ref = dict(ref_logits=a["ref_logits"]) if kl == "exact" else {}
    if kl == "k1":
        ref = dict(ref_logp=a["ref_logp"], kl_estimator=kl)
    kw = dict(KW, kl_coef=0.2 if kl else 0.0)

    def mine(z):
        return hj.haepo_loss_from_logits(
            z, a["actions"], a["returns"], a["mask"], group_ids=GROUPS, chunk_size=5, **ref, **kw
        ).loss

    def core(z):
        return hc.haepo_loss_from_logits(
            z, a["actions"], a["returns"], a["mask"], group_ids=GROUPS, **ref, **kw
        ).loss

    _assert_same_hvp(mine, core, (a["logits"],))
    _check_grads_order_2(mine, (a["logits"],))


def _hidden_losses(
    a, *, kl, entropy_coef=0.1, own_head=False, length_normalize=False, extra=None, chunk=5
):
    """(mine, core) losses of (hidden, weight, bias) for the from-hidden path."""
    kw = dict(KW, kl_coef=0.2 if kl else 0.0, length_normalize=length_normalize)
    kw["entropy_coef"] = entropy_coef
    if kl in ("k1", "k2", "k3"):
        kw["kl_estimator"] = kl

    def post(out):
        return out.loss if extra is None else out.loss + jnp.sum(extra * out.weights)

    def mine(h, w, b):
        ref = {}
        if kl == "exact":
            ref = dict(ref_hidden=a["ref_hidden"])
            if own_head:
                ref.update(ref_weight=a["ref_weight"], ref_bias=0.5 * a["bias"])
        elif kl:
            ref = dict(ref_logp=a["ref_logp"])
        return post(
            hj.haepo_loss_from_hidden(
                h,
                w,
                a["actions"],
                a["returns"],
                a["mask"],
                bias=b,
                group_ids=GROUPS,
                chunk_size=chunk,
                **ref,
                **kw,
            )
        )

    def core(h, w, b):
        ref = {}
        if kl == "exact":
            rw, rb = (a["ref_weight"], 0.5 * a["bias"]) if own_head else (w, b)
            ref = dict(ref_logits=jax.lax.stop_gradient(a["ref_hidden"] @ rw.T + rb))
        elif kl:
            ref = dict(ref_logp=a["ref_logp"])
        return post(
            hc.haepo_loss_from_logits(
                h @ w.T + b, a["actions"], a["returns"], a["mask"], group_ids=GROUPS, **ref, **kw
            )
        )

    return mine, core


@pytest.mark.parametrize(
    ("kl", "entropy_coef", "own_head", "length_normalize"),
    [
        (None, 0.0, False, False),  # the policy term alone
        (None, 0.1, False, False),  # + entropy
        ("exact", 0.1, False, False),  # + exact KL, reference on the shared head
        ("exact", 0.0, True, True),  # own reference head, length-normalized
        ("k3", 0.1, False, False),  # KL estimator from ref_logp
    ],
)
def test_from_hidden_hessian_matches_core(kl, entropy_coef, own_head, length_normalize):
    a = _data(3)
    mine, core = _hidden_losses(
        a, kl=kl, entropy_coef=entropy_coef, own_head=own_head, length_normalize=length_normalize
    )
    args = (a["hidden"], a["weight"], a["bias"])
    _assert_same_hvp(mine, core, args, seed=4)
    if kl != "exact" or own_head:
        # (A shared head makes the reference logits a constant copy of ``weight`` for autodiff
        # only: finite differences would move them too.)
        _check_grads_order_2(mine, args)


def test_from_hidden_exact_fallback_hessian_matches_core():
    # weights differentiated too: the backward takes the exact recomputation, not s * G.
    a = _data(5)
    extra = jnp.linspace(-1.0, 1.0, M)
    mine, core = _hidden_losses(a, kl="exact", extra=extra, chunk=4)
    _assert_same_hvp(mine, core, (a["hidden"], a["weight"], a["bias"]), seed=6)


def test_from_hidden_mixed_derivative_in_a_coefficient_matches_core():
    # d/d(entropy_coef) of d loss / d weight: the 5-GEMM forward must not detach the
    # coefficients it forms the gradient with.
    a = _data(7)

    def grad_w(mod, lam):
        def loss(w):
            if mod is hj:
                out = hj.haepo_loss_from_hidden(
                    a["hidden"],
                    w,
                    a["actions"],
                    a["returns"],
                    a["mask"],
                    group_ids=GROUPS,
                    entropy_coef=lam,
                    chunk_size=5,
                )
            else:
                out = hc.haepo_loss_from_logits(
                    a["hidden"] @ w.T,
                    a["actions"],
                    a["returns"],
                    a["mask"],
                    group_ids=GROUPS,
                    entropy_coef=lam,
                )
            return out.loss

        return jax.grad(loss)(a["weight"])

    lam = jnp.asarray(0.3)
    got = jax.jacfwd(lambda x: grad_w(hj, x))(lam)
    want = jax.jacfwd(lambda x: grad_w(hc, x))(lam)
    assert float(jnp.max(jnp.abs(want))) > 1e-3  # the mixed derivative is not trivially 0
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
