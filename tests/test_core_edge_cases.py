"""Edge cases of the core entry points: each gives the exact value or a ValueError/TypeError
naming the argument, never NaN, inf or an obscure exception.

- every logit of a valid step is -inf: a ValueError naming the logits;
- M = 0 trajectories: a ValueError naming the argument that carries M;
- a tiny positive temperature (1e-39, below float32's smallest normal): the exact one-hot
  limit (finite loss, finite zero policy gradient, one weight 1 per group).
"""

from __future__ import annotations

import numpy as np
import pytest

import haepo_core
from haepo_core import haepo_loss, haepo_loss_from_logits, haepo_loss_packed

LOGP = np.log(np.array([[0.5, 0.4], [0.9, 0.8], [0.2, 0.3], [0.6, 0.2]], dtype=np.float32))
RETURNS = np.array([1.0, 0.0, 2.0, -1.0], dtype=np.float32)
GROUPS = np.array([0, 0, 1, 1])


def _logits(dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 2, 5)).astype(dtype)


def test_from_logits_rejects_a_valid_step_whose_logits_are_all_minus_inf():
    logits = _logits()
    logits[2, 1, :] = -np.inf
    with pytest.raises(ValueError, match=r"logits: .*all -inf .*\(2, 1\)"):
        haepo_loss_from_logits(logits, np.zeros((4, 2), dtype=np.int64), RETURNS)


def test_from_logits_accepts_all_minus_inf_logits_at_padding():
    logits = _logits()
    logits[2, 1, :] = -np.inf
    mask = np.ones((4, 2), dtype=bool)
    mask[2, 1] = False
    out = haepo_loss_from_logits(logits, np.zeros((4, 2), dtype=np.int64), RETURNS, mask)
    assert np.isfinite(out.loss)


def test_from_logits_rejects_all_minus_inf_reference_logits():
    logits = _logits()
    ref = _logits()
    ref[0, 0, :] = -np.inf
    with pytest.raises(ValueError, match=r"ref_logits: .*all -inf"):
        haepo_loss_from_logits(
            logits, np.zeros((4, 2), dtype=np.int64), RETURNS, ref_logits=ref, kl_coef=0.1
        )


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: haepo_loss(np.zeros((0, 3)), np.zeros(0)), "logp"),
        (
            lambda: haepo_loss_packed(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0)),
            "returns",
        ),
        (
            lambda: haepo_loss_from_logits(
                np.zeros((0, 3, 4)), np.zeros((0, 3), dtype=np.int64), np.zeros(0)
            ),
            "logits",
        ),
        (lambda: haepo_core.haepo_grad(np.zeros((0, 3)), np.zeros(0)), "logp"),
        (lambda: haepo_core.effective_sample_size(np.zeros(0)), "weights"),
    ],
)
def test_zero_trajectories_is_a_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected at least one trajectory"):
        call()


def _one_hot_limit(logp: np.ndarray) -> np.ndarray:
    total = logp.sum(axis=1)
    want = np.zeros(4)
    for g in (0, 1):
        idx = np.flatnonzero(GROUPS == g)
        want[idx[np.argmax(total[idx])]] = 1.0
    return want


def test_tiny_temperature_gives_the_one_hot_limit_in_numpy():
    out = haepo_loss(LOGP, RETURNS, group_ids=GROUPS, temperature=1e-39)
    np.testing.assert_array_equal(out.weights, _one_hot_limit(LOGP))
    assert np.isfinite(out.loss) and np.isfinite(list(out.stats.values())).all()
    r = out.normalized_returns
    # the policy term picks each group's most likely trajectory
    np.testing.assert_allclose(out.stats["policy_loss"], -(r * out.weights).sum() / 2)
    out_p = haepo_loss_packed(
        LOGP.reshape(-1), np.repeat(np.arange(4), 2), RETURNS, group_ids=GROUPS, temperature=1e-39
    )
    np.testing.assert_array_equal(out_p.weights, _one_hot_limit(LOGP))
    logits = _logits()
    out_l = haepo_loss_from_logits(
        logits, np.zeros((4, 2), dtype=np.int64), RETURNS, group_ids=GROUPS, temperature=1e-39
    )
    assert np.isfinite(out_l.loss) and out_l.weights.max() == 1.0
    assert sorted(out_l.weights.tolist()) == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("entry", ["padded", "packed", "logits"])
def test_tiny_temperature_gives_a_finite_zero_policy_gradient_under_torch_autograd(entry):
    torch = pytest.importorskip("torch")
    x = torch.tensor(LOGP).requires_grad_()
    r, gids = torch.tensor(RETURNS), torch.tensor(GROUPS)
    if entry == "padded":
        out = haepo_loss(x, r, group_ids=gids, temperature=1e-39)
    elif entry == "packed":
        seg = torch.arange(4).repeat_interleave(2)
        out = haepo_loss_packed(x.reshape(-1), seg, r, group_ids=gids, temperature=1e-39)
    else:
        x = torch.tensor(_logits()).requires_grad_()
        acts = torch.zeros(4, 2, dtype=torch.long)
        out = haepo_loss_from_logits(x, acts, r, group_ids=gids, temperature=1e-39)
    (g,) = torch.autograd.grad(out.loss, x)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all()
    assert torch.equal(g, torch.zeros_like(g))  # one-hot weights: no policy gradient
    assert sorted(out.weights.tolist()) == [0.0, 0.0, 1.0, 1.0]


def test_exact_kl_of_actions_masked_in_both_policies_is_silent_and_exact():
    """An action at -inf in both policies adds 0 to the KL, with no NaN and no NumPy warning."""
    logits = np.array([[0.3, -np.inf, 1.0], [-np.inf, 0.0, -np.inf]])
    ref = np.array([[0.0, -np.inf, 0.5], [-np.inf, 2.0, -np.inf]])
    with np.errstate(all="raise"):  # any invalid / divide / overflow would raise here
        kl = haepo_core.kl_from_logits(logits, ref)
        ent = haepo_core.entropy_from_logits(logits)
    p = np.exp(logits[0] - np.logaddexp(logits[0, 0], logits[0, 2]))
    q = np.exp(ref[0] - np.logaddexp(ref[0, 0], ref[0, 2]))
    want = sum(p[i] * np.log(p[i] / q[i]) for i in (0, 2))
    np.testing.assert_allclose(kl, [want, 0.0], rtol=1e-12)
    assert np.isfinite(ent).all()
    # where the reference alone masks an action the policy takes, the KL is +inf, as it must be
    inf = haepo_core.kl_from_logits(np.array([0.0, 0.0]), np.array([0.0, -np.inf]))
    assert inf == np.inf
