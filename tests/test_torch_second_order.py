"""Second derivatives of the torch backend: exact where the custom backward is written with
differentiable ops (the policy term, the KL-estimate sum), a clear refusal where it is not
(the chunked from-logits backward, the from-hidden gradients computed in the forward).

Hessian-vector products are compared, in float64, against ``haepo_core`` on the same tensors
differentiated twice by plain torch autograd (no custom backward anywhere)."""

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

DT = torch.float64


def _batch(seed: int, m: int = 6, t: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(m, t, generator=g) > 0.3
    mask[:, 0] = True
    return dict(
        logp=-2 * torch.rand(m, t, generator=g, dtype=DT),
        returns=torch.randn(m, generator=g, dtype=DT),
        mask=mask,
        group_ids=torch.tensor([5, 5, 5, -1, -1, 2])[:m],
        entropy=torch.rand(m, t, generator=g, dtype=DT),
        ref_logp=-2 * torch.rand(m, t, generator=g, dtype=DT),
        v=torch.randn(m, t, generator=g, dtype=DT),
    )


def _hvp(fn, x: torch.Tensor, v: torch.Tensor, *args, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient, Hessian-vector product) of ``fn(x, ...).loss`` with respect to ``x``."""
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(out.loss, x, create_graph=True)
    (h,) = torch.autograd.grad((g * v).sum(), x)
    return g.detach(), h


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_padded_hessian_vector_product_matches_core(estimator, length_normalize):
    b = _batch(1)
    kw = dict(
        group_ids=b["group_ids"],
        entropy=b["entropy"],
        ref_logp=b["ref_logp"],
        entropy_coef=0.1,
        kl_coef=0.7,
        kl_estimator=estimator,
        temperature=0.6,
        length_normalize=length_normalize,
    )
    args = (b["returns"], b["mask"])
    g, h = _hvp(haepo_loss, b["logp"], b["v"], *args, **kw)
    gc, hc = _hvp(haepo_core.haepo_loss, b["logp"], b["v"], *args, **kw)
    torch.testing.assert_close(g, gc)
    torch.testing.assert_close(h, hc)
    assert h.abs().max() > 1e-3  # a real curvature, not two zeros agreeing


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_packed_hessian_vector_product_matches_core(estimator):
    b = _batch(2)
    seg = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    g = torch.Generator().manual_seed(3)
    logp = -2 * torch.rand(10, generator=g, dtype=DT)
    ref = -2 * torch.rand(10, generator=g, dtype=DT)
    v = torch.randn(10, generator=g, dtype=DT)
    kw = dict(group_ids=b["group_ids"], ref_logp=ref, kl_coef=0.5, kl_estimator=estimator)
    _, h = _hvp(haepo_loss_packed, logp, v, seg, b["returns"], **kw)
    _, hc = _hvp(haepo_core.haepo_loss_packed, logp, v, seg, b["returns"], **kw)
    torch.testing.assert_close(h, hc)


def test_policy_term_hessian_through_the_weights_matches_core():
    """A second backward that also flows through ``weights`` (the policy term's second
    output) takes the ``gw`` branch of the closed-form backward twice."""
    b = _batch(4)
    res = []
    for fn in (haepo_loss, haepo_core.haepo_loss):
        x = b["logp"].clone().requires_grad_()
        out = fn(x, b["returns"], b["mask"], group_ids=b["group_ids"], temperature=0.8)
        obj = out.loss + (out.weights**2).sum()
        (g,) = torch.autograd.grad(obj, x, create_graph=True)
        (h,) = torch.autograd.grad((g * b["v"]).sum(), x)
        res.append(h)
    torch.testing.assert_close(res[0], res[1])


def _logits_args(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 7, generator=g, dtype=DT, requires_grad=True)
    actions = torch.randint(0, 7, (3, 4), generator=g)
    return logits, actions, torch.tensor([0.0, 1.0, 3.0], dtype=DT)


def test_from_logits_refuses_second_derivatives_clearly():
    logits, actions, returns = _logits_args()
    out = haepo_loss_from_logits(logits, actions, returns, entropy_coef=0.1)
    with pytest.raises(RuntimeError, match="second derivatives are not supported"):
        torch.autograd.grad(out.loss, logits, create_graph=True)
    # First derivatives are unaffected.
    out = haepo_loss_from_logits(logits, actions, returns, entropy_coef=0.1)
    (g,) = torch.autograd.grad(out.loss, logits)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("through", ["loss", "log_likelihood"])
def test_from_hidden_refuses_second_derivatives_clearly(through):
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(3, 4, 5, generator=g, dtype=DT, requires_grad=True)
    weight = torch.randn(7, 5, generator=g, dtype=DT, requires_grad=True)
    actions = torch.randint(0, 7, (3, 4), generator=g)
    out = haepo_loss_from_hidden(hidden, weight, actions, torch.tensor([0.0, 1.0, 3.0], dtype=DT))
    target = out.loss if through == "loss" else out.log_likelihood.sum()
    with pytest.raises(RuntimeError, match=r"haepo_loss_from_hidden: second derivatives"):
        torch.autograd.grad(target, (hidden, weight), create_graph=True)
