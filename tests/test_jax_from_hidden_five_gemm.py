"""The 5-GEMM path of haepo_backends.jax.haepo_loss_from_hidden (``_fused_linear``
``token_stats_from_hidden_fast``): the loss gradient is formed in the differentiated forward and
the backward only rescales it when the incoming cotangent is the loss's own. Pinned to the
core's ``haepo_loss_from_logits`` on ``hidden @ weight.T + bias`` (values and gradients of
hidden, weight and bias), including the exact fallback when other outputs are differentiated."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from haepo_backends.jax import _fused_linear, haepo_loss_from_hidden  # noqa: E402

import haepo_core as hc  # noqa: E402

M, T, V, H = 6, 5, 11, 4
KW = dict(entropy_coef=0.1, kl_coef=0.2, temperature=1.3)


def _data(seed: int, dtype=np.float64) -> dict:
    rng = np.random.default_rng(seed)
    mask = rng.random((M, T)) < 0.8
    mask[:, 0] = True
    actions = rng.integers(0, V, (M, T))
    actions[~mask] = -100
    d = dict(
        hidden=rng.normal(size=(M, T, H)),
        weight=rng.normal(size=(V, H)),
        bias=rng.normal(size=V),
        ref_hidden=rng.normal(size=(M, T, H)),
        ref_weight=rng.normal(size=(V, H)),
        ref_bias=rng.normal(size=V),
        ref_logp=rng.normal(size=(M, T)) - 2,
        returns=rng.normal(size=M),
    )
    a = {k: jnp.asarray(v.astype(dtype)) for k, v in d.items()}
    a.update(
        actions=jnp.asarray(actions),
        mask=jnp.asarray(mask),
        group_ids=jnp.asarray([0, 0, 1, 1, 1, 2]),
    )
    return a


def _mine(a, h, w, b, *, exact_kl: bool, chunk: int, **kw):
    ref = (
        dict(ref_hidden=a["ref_hidden"], ref_weight=a["ref_weight"], ref_bias=a["ref_bias"])
        if exact_kl
        else dict(ref_logp=a["ref_logp"])
    )
    return haepo_loss_from_hidden(
        h,
        w,
        a["actions"],
        a["returns"],
        a["mask"],
        bias=b,
        group_ids=a["group_ids"],
        chunk_size=chunk,
        **ref,
        **kw,
    )


def _core(a, h, w, b, *, exact_kl: bool, **kw):
    mask = a["mask"]
    ref = (
        dict(ref_logits=a["ref_hidden"] @ a["ref_weight"].T + a["ref_bias"])
        if exact_kl
        else dict(ref_logp=a["ref_logp"])
    )
    return hc.haepo_loss_from_logits(
        h @ w.T + b,
        jnp.where(mask, a["actions"], 0),
        a["returns"],
        mask,
        group_ids=a["group_ids"],
        **ref,
        **kw,
    )


def _grads(f, a):
    return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(a["hidden"], a["weight"], a["bias"])


def _nan_exact_backward(monkeypatch):
    """Make the exact (4-GEMM) backward return NaN: a finite gradient proves the fast one ran."""
    real = _fused_linear._hidden_bwd

    def nan_bwd(chunk, res, cts):
        grads, *rest = real(chunk, res, cts)
        return (jax.tree_util.tree_map(lambda x: x * jnp.nan, grads), *rest)

    monkeypatch.setattr(_fused_linear, "_hidden_bwd", nan_bwd)


@pytest.mark.parametrize("exact_kl", [True, False])
@pytest.mark.parametrize("chunk", [4, 30])  # 4: overlapping last chunk; 30: one chunk
@pytest.mark.parametrize("length_normalize", [False, True])
def test_loss_gradient_takes_the_fast_path_and_matches_core(
    monkeypatch, exact_kl, chunk, length_normalize
):
    _nan_exact_backward(monkeypatch)
    a = _data(seed=chunk + 2 * exact_kl)
    kw = dict(KW, length_normalize=length_normalize, kl_estimator="k3")
    mine = lambda h, w, b: _mine(a, h, w, b, exact_kl=exact_kl, chunk=chunk, **kw).loss
    core = lambda h, w, b: _core(a, h, w, b, exact_kl=exact_kl, **kw).loss
    np.testing.assert_allclose(
        mine(a["hidden"], a["weight"], a["bias"]),
        core(a["hidden"], a["weight"], a["bias"]),
        rtol=1e-12,
    )
    for name, x, y in zip(("hidden", "weight", "bias"), _grads(mine, a), _grads(core, a)):
        assert np.all(np.isfinite(x)), name
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, err_msg=name)


def test_scaled_loss_cotangent_is_rescaled(monkeypatch):
    _nan_exact_backward(monkeypatch)  # 3 * loss: the cotangent is 3 g, still the fast path
    a = _data(seed=11)
    mine = lambda h, w, b: 3.0 * _mine(a, h, w, b, exact_kl=True, chunk=4, **KW).loss
    core = lambda h, w, b: 3.0 * _core(a, h, w, b, exact_kl=True, **KW).loss
    for x, y in zip(_grads(mine, a), _grads(core, a)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_float32_loss_gradient_takes_the_fast_path(monkeypatch):
    _nan_exact_backward(monkeypatch)  # the rounding tolerance must hold in float32 too
    a = _data(seed=12, dtype=np.float32)
    mine = lambda h, w, b: _mine(a, h, w, b, exact_kl=True, chunk=3, **KW).loss
    core = lambda h, w, b: _core(a, h, w, b, exact_kl=True, **KW).loss
    for x, y in zip(_grads(mine, a), _grads(core, a)):
        assert x.dtype == jnp.float32
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


def test_tiny_temperature_keeps_the_fast_path(monkeypatch):
    _nan_exact_backward(monkeypatch)  # 1e-39 is flushed to 0 in float32 by XLA
    a = _data(seed=14, dtype=np.float32)
    kw = dict(KW, temperature=1e-39)
    mine = lambda h, w, b: _mine(a, h, w, b, exact_kl=True, chunk=4, **kw).loss
    for x in _grads(mine, a):
        assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("output", ["weights", "log_likelihood"])
def test_other_outputs_differentiated_take_the_exact_path(output):
    # sum(c * weights) + loss: the cotangent is not a multiple of the loss's, so the backward
    # must recompute (the fast G would be wrong); weights/log_likelihood stay differentiable.
    a = _data(seed=13)
    c = jnp.linspace(-1.0, 2.0, M)

    def objective(out):
        return out.loss + jnp.sum(c * getattr(out, output))

    mine = lambda h, w, b: objective(_mine(a, h, w, b, exact_kl=True, chunk=4, **KW))
    core = lambda h, w, b: objective(_core(a, h, w, b, exact_kl=True, **KW))
    for x, y in zip(_grads(mine, a), _grads(core, a)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_proportionality_check():
    g = (jnp.array([1.0, -2.0, 0.0]), jnp.array([0.5, 0.5, 0.0]))
    s, ok = _fused_linear._proportional([2.5 * x for x in g], g, jnp.float64)
    assert bool(ok) and float(s) == pytest.approx(2.5)
    s, ok = _fused_linear._proportional([g[0] + jnp.array([0, 0, 1e-3]), g[1]], g, jnp.float64)
    assert not bool(ok)
    s, ok = _fused_linear._proportional([jnp.zeros(3), jnp.zeros(3)], g, jnp.float64)
    assert bool(ok) and float(s) == 0.0  # zero cotangent: zero gradient, no recompute


@pytest.mark.parametrize("chunk", [4, 30])
def test_shared_head_projects_policy_and_reference_in_one_gemm_and_matches_core(monkeypatch, chunk):
    """ref_hidden without ref_weight: the reference uses the (constant) current head, and each
    chunk projects policy and reference rows in one GEMM. Fast path, values and gradients."""
    _nan_exact_backward(monkeypatch)
    a = _data(seed=20 + chunk)
    shapes = []
    real_matmul = _fused_linear._matmul

    def spy(x, y, contract, cdt):
        if contract == (1, 1):  # a projection [rows, H] x [V, H]^T
            shapes.append(x.shape[0])
        return real_matmul(x, y, contract, cdt)

    monkeypatch.setattr(_fused_linear, "_matmul", spy)

    def mine(h, w, b):
        return haepo_loss_from_hidden(
            h,
            w,
            a["actions"],
            a["returns"],
            a["mask"],
            bias=b,
            ref_hidden=a["ref_hidden"],
            group_ids=a["group_ids"],
            chunk_size=chunk,
            **KW,
        ).loss

    def core(h, w, b):
        mask = a["mask"]
        ref = jax.lax.stop_gradient(a["ref_hidden"] @ w.T + b)
        return hc.haepo_loss_from_logits(
            h @ w.T + b,
            jnp.where(mask, a["actions"], 0),
            a["returns"],
            mask,
            group_ids=a["group_ids"],
            ref_logits=ref,
            **KW,
        ).loss

    np.testing.assert_allclose(
        mine(a["hidden"], a["weight"], a["bias"]),
        core(a["hidden"], a["weight"], a["bias"]),
        rtol=1e-12,
    )
    c = min(chunk, M * T)
    assert 2 * c in shapes, f"no fused 2c-row projection traced (saw {sorted(set(shapes))})"
    for name, x, y in zip(("hidden", "weight", "bias"), _grads(mine, a), _grads(core, a)):
        assert np.all(np.isfinite(x)), name
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, err_msg=name)
