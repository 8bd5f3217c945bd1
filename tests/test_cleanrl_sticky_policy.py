"""The sticky categorical: mixture probabilities by hand, sampling, gradients, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from haepo_adapters.cleanrl import categorical_terms, sticky_logits

torch = pytest.importorskip("torch")


def _by_hand(logits: np.ndarray, g: np.ndarray, prev: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    rho = 1.0 / (1.0 + np.exp(-g))
    out = p.copy()
    for i, a in enumerate(prev):
        if a >= 0:
            out[i] = (1 - rho[i]) * p[i]
            out[i, a] += rho[i]
    return out


def test_sticky_probabilities_match_the_mixture_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(9, 4)) * 3
    g = rng.normal(size=9) * 4  # repeat probabilities from ~0.02 to ~0.98
    prev = np.array([0, 1, 2, 3, -1, 0, -1, 3, 2])
    lp = sticky_logits(logits, g, prev)
    np.testing.assert_allclose(np.exp(lp), _by_hand(logits, g, prev), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-12)


def test_no_previous_action_gives_the_plain_categorical():
    logits = torch.randn(5, 3, dtype=torch.float64)
    lp = sticky_logits(
        logits, torch.full((5,), 3.0, dtype=torch.float64), -torch.ones(5, dtype=torch.int64)
    )
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1))


def test_extreme_repeat_logits_stay_finite_and_exact():
    logits = torch.zeros(2, 3, dtype=torch.float64)
    g = torch.tensor([60.0, -60.0], dtype=torch.float64)
    lp = sticky_logits(logits, g, torch.tensor([2, 2]))
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(
        lp.exp(), torch.tensor([[0, 0, 1.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    )


def test_sampling_repeats_the_previous_action_at_the_rate_rho():
    # rho = 0.75 over a uniform base of 3 actions: P(repeat) = 0.75 + 0.25 / 3
    n = 20000
    lp = sticky_logits(
        torch.zeros(n, 3), torch.full((n,), float(np.log(3.0))), torch.ones(n, dtype=torch.int64)
    )
    torch.manual_seed(0)
    a = torch.distributions.Categorical(logits=lp).sample()
    assert float((a == 1).float().mean()) == pytest.approx(0.75 + 0.25 / 3, abs=0.015)


def test_gradients_match_finite_differences_in_float64():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    rep = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    prev = torch.tensor([0, 1, 2, -1, 1, 0])
    actions = torch.tensor([0, 2, 2, 1, 1, 1])
    ref = torch.randn(6, 3, dtype=torch.float64, generator=g)

    def f(lg: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        t = categorical_terms(sticky_logits(lg, r, prev), actions, ref)
        return t.logp.sum() + t.entropy.sum() + t.kl.sum()

    assert torch.autograd.gradcheck(f, (logits, rep))


def test_entropy_and_kl_of_the_mixture_are_exact():
    logits, g = np.log([[0.5, 0.3, 0.2]]), np.array([0.0])
    t = categorical_terms(
        sticky_logits(logits, g, np.array([2])), np.array([2]), np.log([[1 / 3] * 3])
    )
    p = np.array([0.25, 0.15, 0.6])
    assert float(t.logp[0]) == pytest.approx(np.log(0.6), rel=1e-6)
    assert float(t.entropy[0]) == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-6)
    assert float(t.kl[0]) == pytest.approx(float((p * np.log(3 * p)).sum()), rel=1e-6)


def test_works_on_array_api_strict_and_jax():
    expected = [[0.25, 0.75], [0.5, 0.5]]
    xs = pytest.importorskip("array_api_strict")
    lp = sticky_logits(xs.zeros((2, 2)), xs.zeros(2), xs.asarray([1, -1]))
    np.testing.assert_allclose(np.exp(np.asarray(lp)), expected, rtol=1e-6)
    jnp = pytest.importorskip("jax.numpy")
    lp = sticky_logits(jnp.zeros((2, 2)), jnp.zeros(2), jnp.array([1, -1]))
    np.testing.assert_allclose(np.exp(np.asarray(lp)), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("args", "err", "match"),
    [
        ((np.zeros(3), np.zeros(3), np.zeros(3, int)), ValueError, r"logits: expected a 2-d"),
        (
            (np.zeros((2, 3), int), np.zeros(2), np.zeros(2, int)),
            TypeError,
            r"logits: expected a real floating",
        ),
        (
            (np.zeros((2, 3)), np.zeros(3), np.zeros(2, int)),
            ValueError,
            r"repeat_logit: expected shape \[N\] = \(2,\)",
        ),
        (
            (np.zeros((2, 3)), np.zeros(2, int), np.zeros(2, int)),
            TypeError,
            r"repeat_logit: expected a real",
        ),
        (
            (np.zeros((2, 3)), np.zeros(2), np.zeros(2)),
            TypeError,
            r"prev_actions: expected an integer",
        ),
        (
            (np.zeros((2, 3)), np.zeros(2), np.zeros(3, int)),
            ValueError,
            r"prev_actions: expected shape",
        ),
        (
            (np.zeros((2, 3)), np.zeros(2), np.array([0, 3])),
            ValueError,
            r"prev_actions: expected values in -1\.\.A-1 = -1\.\.2",
        ),
    ],
)
def test_bad_input_raises_naming_the_argument(args, err, match):
    with pytest.raises(err, match=match):
        sticky_logits(*args)


def test_an_infinite_negative_repeat_logit_is_the_plain_categorical_with_finite_grads():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([-np.inf, 0.0, -np.inf, 2.0], dtype=torch.float64)
    lp = sticky_logits(logits, g, torch.tensor([1, 1, 2, 0]))
    torch.testing.assert_close(lp[[0, 2]], torch.log_softmax(logits, -1)[[0, 2]])
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(logits.grad).all()
