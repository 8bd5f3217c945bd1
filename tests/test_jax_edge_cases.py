"""Edge cases on every JAX entry point: no trajectories (M = 0) is a ValueError naming the
argument (eagerly and at trace time); a tiny positive temperature gives the exact one-hot
limit (finite, not all-zero weights, the loss of the best trajectory of each group); a valid
step whose logits are all ``-inf`` is a ValueError naming the argument eagerly, a NaN loss
under ``jit`` and a ``checkify`` error with ``traced_checks=True``."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import haepo_backends.jax as hj  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import checkify  # noqa: E402

M, T, V, H = 6, 4, 7, 3
GROUPS = np.array([0, 0, 1, 1, 1, 2])


def _inputs(m: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return dict(
        logp=jnp.asarray(-rng.random((m, T)).astype(f32) * 3),
        returns=jnp.asarray(rng.normal(size=m).astype(f32)),
        logits=jnp.asarray(rng.normal(size=(m, T, V)).astype(f32)),
        actions=jnp.asarray(rng.integers(0, V, (m, T)).astype(np.int32)),
        hidden=jnp.asarray(rng.normal(size=(m, T, H)).astype(f32)),
        weight=jnp.asarray(rng.normal(size=(V, H)).astype(f32)),
        group_ids=jnp.asarray(GROUPS[:m] if m <= M else np.arange(m) % 3),
    )


def _call(entry: str, d: dict, **kw):
    if entry == "haepo_loss":
        return hj.haepo_loss(d["logp"], d["returns"], group_ids=d["group_ids"], **kw)
    if entry == "haepo_loss_packed":
        m = d["returns"].shape[0]
        seg = jnp.repeat(jnp.arange(m, dtype=jnp.int32), T)
        return hj.haepo_loss_packed(
            d["logp"].reshape(-1), seg, d["returns"], group_ids=d["group_ids"], **kw
        )
    if entry == "haepo_loss_from_logits":
        return hj.haepo_loss_from_logits(
            d["logits"], d["actions"], d["returns"], group_ids=d["group_ids"], **kw
        )
    return hj.haepo_loss_from_hidden(
        d["hidden"], d["weight"], d["actions"], d["returns"], group_ids=d["group_ids"], **kw
    )


ENTRIES = ["haepo_loss", "haepo_loss_packed", "haepo_loss_from_logits", "haepo_loss_from_hidden"]
NAMED = {
    "haepo_loss": "logp",
    "haepo_loss_packed": "returns",
    "haepo_loss_from_logits": "logits",
    "haepo_loss_from_hidden": "hidden",
}


@pytest.mark.parametrize("entry", ENTRIES)
def test_no_trajectories_is_a_value_error_naming_the_argument(entry):
    d = _inputs(0)
    d["group_ids"] = jnp.zeros((0,), jnp.int32)
    if entry == "haepo_loss_packed":  # no steps either
        d["logp"] = jnp.zeros((0, T), jnp.float32)
    match = rf"{NAMED[entry]}: expected at least one trajectory \(M >= 1\).*got M = 0"
    with pytest.raises(ValueError, match=match):
        _call(entry, d)
    # The check reads shapes only, so it also fails at trace time under jit.
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda dd: _call(entry, dd).loss).lower(d)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("jit", [False, True])
def test_tiny_temperature_gives_the_exact_one_hot_limit(entry, jit):
    # 1e-39 is a float32 subnormal, which XLA flushes to zero: the loss must still be the
    # limit tau -> 0+, each group putting all its weight on its most likely trajectory.
    d = _inputs(M, seed=1)

    def loss(dd):
        return _call(entry, dd, temperature=1e-39)

    f = jax.jit(loss) if jit else loss
    out = f(d)
    ll = np.asarray(out.log_likelihood, np.float64)
    r_norm = np.asarray(out.normalized_returns, np.float64)
    want_w = np.zeros(M)
    for g in np.unique(GROUPS):
        members = np.flatnonzero(GROUPS == g)
        want_w[members[np.argmax(ll[members])]] = 1.0
    np.testing.assert_array_equal(np.asarray(out.weights), want_w)
    want_loss = -np.sum(want_w * r_norm) / len(np.unique(GROUPS))
    assert abs(want_loss) > 1e-3  # the limit is not trivially 0 on this data
    np.testing.assert_allclose(float(out.loss), want_loss, rtol=1e-6)
    assert float(out.stats["ess"]) == 1.0 and float(out.stats["max_weight"]) == 1.0
    grads = jax.grad(lambda dd: f(dd).loss, allow_int=True)(d)
    for name, g in grads.items():
        if jnp.issubdtype(g.dtype, jnp.floating):
            assert np.all(np.isfinite(np.asarray(g))), name


def _dead_step(ref: bool):
    d = _inputs(M, seed=2)
    logits = d["logits"].at[1, 2].set(-jnp.inf)  # a valid step with no possible action
    ref_logits = d["logits"] + 0.1
    if ref:
        logits, ref_logits = d["logits"], ref_logits.at[1, 2].set(-jnp.inf)
    return d, logits, ref_logits


@pytest.mark.parametrize("ref", [False, True])
def test_all_minus_inf_logits_at_a_valid_step_is_a_value_error_eagerly(ref):
    d, logits, ref_logits = _dead_step(ref)
    name = "ref_logits" if ref else "logits"
    with pytest.raises(ValueError, match=rf"{name}: expected at least one finite logit.*\(1, 2\)"):
        hj.haepo_loss_from_logits(
            logits, d["actions"], d["returns"], ref_logits=ref_logits, kl_coef=0.1
        )
    # The same step in padding is fine: padding never matters.
    mask = jnp.ones((M, T), bool).at[1, 2].set(False)
    out = hj.haepo_loss_from_logits(
        logits, d["actions"], d["returns"], mask, ref_logits=ref_logits, kl_coef=0.1
    )
    assert np.isfinite(float(out.loss))


def test_all_minus_inf_logits_under_jit_give_nan_or_a_checkify_error():
    d, logits, _ = _dead_step(False)

    def f(lg, traced_checks=False):
        return hj.haepo_loss_from_logits(
            lg, d["actions"], d["returns"], traced_checks=traced_checks
        ).loss

    assert np.isnan(float(jax.jit(f)(logits)))  # documented: no value checks under tracing
    checked = checkify.checkify(jax.jit(lambda lg: f(lg, traced_checks=True)))
    err, _ = checked(d["logits"])
    assert err.get() is None
    err, _ = checked(logits)
    assert "logits: expected at least one finite logit at every valid step, got 1" in err.get()
