"""Coefficients given as arrays can be differentiated through the core (meta-gradients,
temperature schedules learned by gradient), and are still validated when their value is known."""

from __future__ import annotations

import numpy as np
import pytest

import haepo_core as hc

LOGP = np.array([[-1.0, -2.0], [-0.5, -0.1], [-3.0, -1.0]])
RETURNS = np.array([1.0, 0.0, 2.0])


def _finite_difference(fn, x: float, h: float = 1e-6) -> float:
    return (fn(x + h) - fn(x - h)) / (2 * h)


def _numpy_loss(**kw) -> float:
    return float(hc.haepo_loss(LOGP, RETURNS, entropy=np.ones_like(LOGP), **kw).loss)


def test_jax_grad_with_respect_to_temperature_and_entropy_coef_matches_finite_differences():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    lp, r, ent = jnp.asarray(LOGP), jnp.asarray(RETURNS), jnp.ones_like(jnp.asarray(LOGP))

    def loss(temperature, entropy_coef):
        return hc.haepo_loss(
            lp, r, entropy=ent, temperature=temperature, entropy_coef=entropy_coef
        ).loss

    d_tau, d_coef = jax.grad(loss, argnums=(0, 1))(1.5, 0.1)
    assert float(d_tau) == pytest.approx(
        _finite_difference(lambda t: _numpy_loss(temperature=t, entropy_coef=0.1), 1.5), rel=1e-6
    )
    assert float(d_coef) == pytest.approx(-1.0)  # d/dλ of -λ·H with H = 1
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(1.5, 0.1)
    assert float(jitted[0]) == pytest.approx(float(d_tau), rel=1e-9)


def test_torch_backward_reaches_a_tensor_temperature_without_warnings(recwarn):
    torch = pytest.importorskip("torch")
    tau = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    out = hc.haepo_loss(torch.tensor(LOGP), torch.tensor(RETURNS), temperature=tau)
    out.loss.backward()
    expected = _finite_difference(
        lambda t: float(hc.haepo_loss(LOGP, RETURNS, temperature=t).loss), 1.5
    )
    assert float(tau.grad) == pytest.approx(expected, rel=1e-6)
    assert not [w for w in recwarn if "detach" in str(w.message)]


@pytest.mark.parametrize("lib", ["jax", "torch"])
def test_a_differentiated_coefficient_is_still_validated(lib):
    if lib == "jax":
        jax = pytest.importorskip("jax")
        grad = jax.grad(
            lambda t: (
                hc.haepo_loss(
                    jax.numpy.asarray(LOGP), jax.numpy.asarray(RETURNS), temperature=t
                ).loss
            )
        )
        with pytest.raises(ValueError, match=r"temperature: expected a value > 0, got -1.0"):
            grad(-1.0)
    else:
        torch = pytest.importorskip("torch")
        tau = torch.tensor(-1.0, requires_grad=True)
        with pytest.raises(ValueError, match=r"temperature: expected a value > 0"):
            hc.haepo_loss(torch.tensor(LOGP), torch.tensor(RETURNS), temperature=tau)
