"""Edge cases of every torch entry point: the exact value or a clear ValueError/TypeError
naming the argument (never NaN, never an error from deep inside torch).

- every logit of a valid step is -inf (from_logits): a ValueError naming ``logits``;
- M = 0: a ValueError naming the argument that carries M;
- a tiny positive temperature (1e-39 in float32): the exact one-hot limit, a finite loss and
  a finite (zero) policy gradient, as in the core;
- from_hidden with float32 ``hidden`` and a float64 ``weight``: a TypeError naming both (the
  projection runs in ``hidden``'s dtype; a silent promotion would change memory and speed).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from haepo_backends.torch import (  # noqa: E402
    haepo_loss,
    haepo_loss_from_hidden,
    haepo_loss_from_logits,
    haepo_loss_packed,
)

import haepo_core  # noqa: E402

LOGP = torch.log(torch.tensor([[0.5, 0.4], [0.9, 0.8], [0.2, 0.3], [0.6, 0.2]]))
RETURNS = torch.tensor([1.0, 0.0, 2.0, -1.0])
GROUPS = torch.tensor([0, 0, 1, 1])
ACTS = torch.zeros(4, 2, dtype=torch.long)


def _logits() -> torch.Tensor:
    return torch.randn(4, 2, 5, generator=torch.Generator().manual_seed(0))


def _head() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 2, 3, generator=g), torch.randn(5, 3, generator=g)


def test_from_logits_rejects_a_valid_step_whose_logits_are_all_minus_inf():
    logits = _logits()
    logits[1, 0] = -float("inf")
    with pytest.raises(ValueError, match=r"logits: .*all -inf .*\(1, 0\)"):
        haepo_loss_from_logits(logits, ACTS, RETURNS)
    mask = torch.ones(4, 2, dtype=torch.bool)
    mask[1, 0] = False
    out = haepo_loss_from_logits(logits.requires_grad_(), ACTS, RETURNS, mask)
    (g,) = torch.autograd.grad(out.loss, logits)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all()


def test_from_logits_rejects_all_minus_inf_reference_logits():
    ref = _logits()
    ref[3, 1] = -float("inf")
    with pytest.raises(ValueError, match=r"ref_logits: .*all -inf"):
        haepo_loss_from_logits(_logits(), ACTS, RETURNS, ref_logits=ref, kl_coef=0.1)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: haepo_loss(torch.zeros(0, 3), torch.zeros(0)), "logp"),
        (
            lambda: haepo_loss_packed(
                torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0)
            ),
            "returns",
        ),
        (
            lambda: haepo_loss_from_logits(
                torch.zeros(0, 3, 4), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0)
            ),
            "logits",
        ),
        (
            lambda: haepo_loss_from_hidden(
                torch.zeros(0, 3, 4),
                torch.zeros(6, 4),
                torch.zeros(0, 3, dtype=torch.long),
                torch.zeros(0),
            ),
            "hidden",
        ),
    ],
)
def test_zero_trajectories_is_a_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected at least one trajectory"):
        call()


def _assert_one_hot_limit(out, x: torch.Tensor) -> None:
    (g,) = torch.autograd.grad(out.loss, x)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all()
    assert torch.equal(g, torch.zeros_like(g))  # one-hot weights: no policy gradient
    assert sorted(out.weights.tolist()) == [0.0, 0.0, 1.0, 1.0]
    assert all(torch.isfinite(v) for v in out.stats.values())


@pytest.mark.parametrize("entry", ["padded", "packed"])
def test_tiny_temperature_gives_the_core_one_hot_limit(entry):
    x = LOGP.clone().requires_grad_()
    if entry == "padded":
        out = haepo_loss(x, RETURNS, group_ids=GROUPS, temperature=1e-39)
        core = haepo_core.haepo_loss(LOGP, RETURNS, group_ids=GROUPS, temperature=1e-39)
    else:
        seg = torch.arange(4).repeat_interleave(2)
        kw = dict(group_ids=GROUPS, temperature=1e-39)
        out = haepo_loss_packed(x.reshape(-1), seg, RETURNS, **kw)
        core = haepo_core.haepo_loss_packed(LOGP.reshape(-1), seg, RETURNS, **kw)
    torch.testing.assert_close(out.weights, core.weights, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, core.loss)
    _assert_one_hot_limit(out, x)


def test_tiny_temperature_gives_the_one_hot_limit_from_logits_and_hidden():
    logits = _logits().requires_grad_()
    out = haepo_loss_from_logits(logits, ACTS, RETURNS, group_ids=GROUPS, temperature=1e-39)
    core = haepo_core.haepo_loss_from_logits(
        logits.detach(), ACTS, RETURNS, group_ids=GROUPS, temperature=1e-39
    )
    torch.testing.assert_close(out.weights, core.weights, rtol=0, atol=0)
    _assert_one_hot_limit(out, logits)
    hidden, weight = _head()
    hidden.requires_grad_()
    out = haepo_loss_from_hidden(hidden, weight, ACTS, RETURNS, group_ids=GROUPS, temperature=1e-39)
    _assert_one_hot_limit(out, hidden)


def test_from_hidden_rejects_a_weight_of_another_dtype_naming_both():
    hidden, weight = _head()
    with pytest.raises(TypeError, match=r"hidden, weight: .*float32.*float64"):
        haepo_loss_from_hidden(hidden, weight.double(), ACTS, RETURNS)
    with pytest.raises(TypeError, match=r"hidden, bias: "):
        haepo_loss_from_hidden(hidden, weight, ACTS, RETURNS, bias=torch.zeros(5).double())
