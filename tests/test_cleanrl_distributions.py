"""Categorical / diagonal-Gaussian entropy, KL and log-prob vs closed forms; the trajectory loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
from haepo_adapters.cleanrl import (
    StepTerms,
    categorical_terms,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    gaussian_terms,
    haepo_padded_loss,
    haepo_trajectory_loss,
    rollout_to_trajectories,
)

torch = pytest.importorskip("torch")
D = torch.distributions


def test_categorical_terms_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64)
    ref = torch.randn(7, 5, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 5, (7,), generator=g)
    t = categorical_terms(logits, actions, ref)
    p, q = D.Categorical(logits=logits), D.Categorical(logits=ref)
    torch.testing.assert_close(t.logp, p.log_prob(actions))
    torch.testing.assert_close(t.entropy, p.entropy())
    torch.testing.assert_close(t.kl, D.kl_divergence(p, q))
    # Hand-written closed form on one row, independent of torch.distributions.
    pr = np.exp(logits[0].numpy()) / np.exp(logits[0].numpy()).sum()
    qr = np.exp(ref[0].numpy()) / np.exp(ref[0].numpy()).sum()
    assert float(t.kl[0]) == pytest.approx(float((pr * np.log(pr / qr)).sum()), rel=1e-10)
    assert categorical_terms(logits, actions).kl is None


def test_categorical_kl_gradient_does_not_reach_the_reference():
    logits = torch.randn(4, 3, requires_grad=True)
    ref = torch.randn(4, 3, requires_grad=True)
    t = categorical_terms(logits, torch.tensor([0, 1, 2, 0]), ref)
    t.kl.sum().backward()
    assert ref.grad is None and logits.grad is not None


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_gaussian_terms_match_torch_normal_summed_over_action_dims(state_dependent_std):
    g = torch.Generator().manual_seed(1)
    n, d = 6, 3
    mean = torch.randn(n, d, generator=g, dtype=torch.float64)
    ref_mean = torch.randn(n, d, generator=g, dtype=torch.float64)
    shape = (n, d) if state_dependent_std else (d,)
    log_std = 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)
    ref_log_std = 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)
    actions = torch.randn(n, d, generator=g, dtype=torch.float64)
    t = gaussian_terms(mean, log_std, actions, ref_mean, ref_log_std)
    p = D.Normal(mean, log_std.exp().expand(n, d))
    q = D.Normal(ref_mean, ref_log_std.exp().expand(n, d))
    torch.testing.assert_close(t.logp, p.log_prob(actions).sum(-1))
    torch.testing.assert_close(t.entropy, p.entropy().sum(-1))
    torch.testing.assert_close(t.kl, D.kl_divergence(p, q).sum(-1))
    # 1-d closed forms by hand: H = log(sigma) + 0.5 (1 + log 2 pi); KL(N(1,1) || N(0,1)) = 0.5.
    assert float(gaussian_entropy(np.zeros((1, 1)))[0]) == pytest.approx(
        0.5 * (1 + math.log(2 * math.pi))
    )
    one = np.ones((1, 1))
    assert float(gaussian_kl(one, np.zeros(1), 0 * one, np.zeros(1))[0]) == pytest.approx(0.5)
    assert float(gaussian_kl(0 * one, np.log(2.0) * one, 0 * one, np.zeros((1, 1)))[0]) == (
        pytest.approx(-math.log(2.0) + 0.5 * 4.0 - 0.5)
    )


def test_gaussian_log_density_can_be_positive_and_kl_is_zero_at_the_reference():
    mean, log_std = torch.zeros(2, 1), torch.full((1,), -3.0)
    assert bool((gaussian_log_prob(mean, log_std, torch.zeros(2, 1)) > 0).all())
    assert torch.allclose(gaussian_kl(mean, log_std, mean, log_std), torch.zeros(2))


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: categorical_terms(torch.zeros(3, 2), torch.zeros(3)), TypeError, "actions: "),
        (
            lambda: categorical_terms(torch.zeros(3), torch.zeros(3, dtype=torch.long)),
            ValueError,
            r"logits: expected a 2-d array of shape \[N, A\]",
        ),
        (
            lambda: categorical_terms(
                torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long)
            ),
            TypeError,
            "logits: expected a real floating",
        ),
        (
            lambda: categorical_terms(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long)),
            ValueError,
            r"actions: expected shape \[N\]",
        ),
        (
            lambda: categorical_terms(torch.zeros(3, 2), torch.full((3,), 2)),
            ValueError,
            r"actions: expected values in 0..A-1 = 0..1",
        ),
        (
            lambda: categorical_terms(
                torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(3, 3)
            ),
            ValueError,
            r"ref_logits: expected shape \[N, A\]",
        ),
        (
            lambda: gaussian_log_prob(torch.zeros(3, 2), torch.zeros(3), torch.zeros(3, 2)),
            ValueError,
            r"log_std: expected shape \[N, D\]",
        ),
        (
            lambda: gaussian_log_prob(torch.zeros(3, 2), torch.zeros(2), torch.zeros(3, 1)),
            ValueError,
            r"actions: expected shape \[N, D\]",
        ),
        (
            lambda: gaussian_log_prob(torch.zeros(3), torch.zeros(2), torch.zeros(3)),
            ValueError,
            r"mean: expected a 2-d array",
        ),
        (lambda: gaussian_entropy(torch.zeros(2)), ValueError, "n: expected the number"),
        (lambda: gaussian_entropy(torch.zeros(2, 2, 2)), ValueError, "log_std: expected shape"),
        (
            lambda: gaussian_kl(
                torch.zeros(3, 2), torch.zeros(2), torch.zeros(4, 2), torch.zeros(2)
            ),
            ValueError,
            r"ref_mean: expected shape \[N, D\]",
        ),
        (
            lambda: gaussian_terms(
                torch.zeros(3, 2), torch.zeros(2), torch.zeros(3, 2), torch.zeros(3, 2)
            ),
            ValueError,
            "ref_mean, ref_log_std: expected both",
        ),
        (
            lambda: gaussian_log_prob(torch.zeros(3, 2), torch.zeros(2), np.zeros((3, 2))),
            TypeError,
            "different libraries",
        ),
    ],
)
def test_bad_policy_inputs_raise_naming_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()


def _batch():
    dones = np.array([[0, 0], [0, 1], [1, 0], [0, 0], [0, 1], [0, 0]])
    rewards = torch.tensor(np.random.default_rng(0).normal(size=(6, 2)))
    obs = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tr = rollout_to_trajectories(
        rewards,
        dones=dones,
        next_done=torch.tensor([1, 1]),
        obs=obs,
        actions=torch.randint(0, 4, (6, 2), generator=torch.Generator().manual_seed(3)),
    )
    return tr


def test_trajectory_loss_packed_padded_and_by_hand_agree():
    tr = _batch()
    w = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w.requires_grad_(True)
    ref_w = w.detach() + 0.1
    kw = dict(entropy_coef=0.05, kl_coef=0.2, temperature=2.0, length_normalize=True)
    obs, act = tr.steps["obs"], tr.steps["actions"]

    def terms():
        return categorical_terms(obs @ w, act, obs @ ref_w)

    packed = haepo_trajectory_loss(tr, terms(), **kw)
    (g1,) = torch.autograd.grad(packed.loss, w)
    padded = haepo_trajectory_loss(tr, terms(), layout="padded", **kw)
    (g2,) = torch.autograd.grad(padded.loss, w)
    m = tr.mask.shape[0]
    t = terms()
    pt = StepTerms(tr.pad(t.logp), tr.pad(t.entropy), tr.pad(t.kl, fill=float("nan")))
    fixed = haepo_padded_loss(pt, tr.returns, tr.mask, **kw)
    (g3,) = torch.autograd.grad(fixed.loss, w)
    torch.testing.assert_close(packed.loss, padded.loss)
    torch.testing.assert_close(packed.loss, fixed.loss)
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(g1, g3)
    # By hand: length-normalized softmax over L_k / T_k / tau, z-scored returns, token means.
    t = terms()
    seg = tr.segment_ids
    L = torch.zeros(m, dtype=torch.float64).index_add(0, seg, t.logp.detach())
    Lbar = L / tr.lengths
    wts = torch.softmax(Lbar / 2.0, 0)
    r = tr.returns
    rz = (r - r.mean()) / (r.std(unbiased=False) + 1e-8)
    want = -(wts * rz).sum() - 0.05 * t.entropy.mean() + 0.2 * t.kl.mean()
    torch.testing.assert_close(packed.loss.detach(), want.detach())
    assert float(packed.stats["kl"]) == pytest.approx(float(t.kl.detach().mean()))


def test_trajectory_loss_rejects_bad_input():
    tr = _batch()
    logp = torch.zeros(tr.num_steps)
    ok = StepTerms(logp, logp, None)
    with pytest.raises(ValueError, match=r"terms\.kl: expected the per-step KL"):
        haepo_trajectory_loss(tr, ok, kl_coef=0.1)
    with pytest.raises(ValueError, match=r"terms.logp: expected shape \[N\]"):
        haepo_trajectory_loss(tr, StepTerms(torch.zeros(3), logp, None))
    with pytest.raises(ValueError, match="layout: expected one of"):
        haepo_trajectory_loss(tr, ok, layout="ragged")
    with pytest.raises(TypeError, match="terms: expected StepTerms"):
        haepo_trajectory_loss(tr, (logp, logp, None))
    with pytest.raises(TypeError, match="traj: expected Trajectories"):
        haepo_trajectory_loss({"steps": {}}, ok)
    empty = rollout_to_trajectories(np.ones((2, 1)), dones=np.zeros((2, 1)))
    z = np.zeros(0)
    with pytest.raises(ValueError, match="traj: expected at least one completed trajectory"):
        haepo_trajectory_loss(empty, StepTerms(z, z, None))
    with pytest.raises(ValueError, match=r"terms.kl: expected shape \[M, T\]"):
        haepo_padded_loss(
            StepTerms(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2)),
            torch.zeros(2),
            torch.ones(2, 3, dtype=torch.bool),
        )
