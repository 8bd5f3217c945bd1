"""haepo_backends.torch.haepo_loss / haepo_loss_packed against the core (the reference).

Values and gradients agree with ``haepo_core`` run on the same torch tensors (plain autograd
through the softmax), and the closed-form backward equals ``haepo_core.haepo_grad``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from haepo_backends.torch import haepo_loss, haepo_loss_packed  # noqa: E402
from haepo_backends.torch._segments import dense_group_index  # noqa: E402

import haepo_core  # noqa: E402


def _batch(seed, m=6, t=5, dtype=torch.float64, groups=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(m, t, generator=g) > 0.35
    mask[:, 0] = True
    return dict(
        logp=-3 * torch.rand(m, t, generator=g, dtype=dtype),
        returns=torch.randn(m, generator=g, dtype=dtype),
        mask=mask,
        group_ids=torch.randint(0, groups, (m,), generator=g) * 7 - 3,  # arbitrary labels
        entropy=torch.rand(m, t, generator=g, dtype=dtype),
        ref_logp=-3 * torch.rand(m, t, generator=g, dtype=dtype),
    )


def _both(b, **kw):
    """(torch-backend output, its grads, core output, core grads) for logp and entropy."""
    res = []
    for fn in (haepo_loss, haepo_core.haepo_loss):
        logp = b["logp"].clone().requires_grad_()
        ent = b["entropy"].clone().requires_grad_()
        out = fn(
            logp,
            b["returns"],
            b["mask"],
            group_ids=b["group_ids"],
            entropy=ent,
            ref_logp=b["ref_logp"],
            **kw,
        )
        gl, ge = torch.autograd.grad(out.loss, [logp, ent])
        res.append((out, gl, ge))
    return res


OPTIONS = st.fixed_dictionaries(
    {
        "entropy_coef": st.sampled_from([0.0, 0.01, 0.3]),
        "kl_coef": st.sampled_from([0.0, 0.05, 1.0]),
        "kl_estimator": st.sampled_from(["k1", "k2", "k3"]),
        "normalize_returns": st.sampled_from(["zscore", "center", "none"]),
        "temperature": st.sampled_from([0.3, 1.0, 4.0]),
        "length_normalize": st.booleans(),
    }
)


@given(seed=st.integers(0, 10_000), m=st.integers(1, 9), t=st.integers(1, 6), kw=OPTIONS)
def test_padded_matches_core_values_and_gradients(seed, m, t, kw):
    b = _batch(seed, m, t)
    (o, gl, ge), (oc, glc, gec) = _both(b, **kw)
    torch.testing.assert_close(o.loss, oc.loss)
    torch.testing.assert_close(o.weights, oc.weights)
    torch.testing.assert_close(o.normalized_returns, oc.normalized_returns)
    torch.testing.assert_close(o.log_likelihood, oc.log_likelihood)
    for k in oc.stats.keys():
        torch.testing.assert_close(o.stats[k], oc.stats[k], msg=k)
    torch.testing.assert_close(gl, glc)
    torch.testing.assert_close(ge, gec)


def test_closed_form_backward_equals_core_haepo_grad():
    b = _batch(1, 8, 7)
    kw = dict(
        group_ids=b["group_ids"],
        entropy=b["entropy"],
        ref_logp=b["ref_logp"],
        entropy_coef=0.1,
        kl_coef=0.2,
        temperature=0.5,
        length_normalize=True,
    )
    logp = b["logp"].clone().requires_grad_()
    out = haepo_loss(logp, b["returns"], b["mask"], **kw)
    (g,) = torch.autograd.grad(out.loss, [logp])
    _, want = haepo_core.haepo_grad(
        b["logp"].numpy(),
        b["returns"].numpy(),
        b["mask"].numpy(),
        **{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in kw.items()},
    )
    np.testing.assert_allclose(g.numpy(), want["logp"], rtol=1e-10, atol=1e-12)


def test_policy_backward_keeps_no_softmax_graph():
    """The autograd graph saves only w (and constants): no exp/normalizer temporaries."""
    b = _batch(2, 6, 4)
    saved = []

    def pack(x):
        saved.append(tuple(x.shape))
        return x

    logp = b["logp"].clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = haepo_loss(logp, b["returns"], b["mask"], group_ids=b["group_ids"])
    core_saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: core_saved.append(x) or x, lambda x: x):
        haepo_core.haepo_loss(
            b["logp"].clone().requires_grad_(), b["returns"], b["mask"], group_ids=b["group_ids"]
        )
    # Every [M]-sized tensor saved: w, r_norm, index (+ n_groups 0-d); the core keeps more.
    assert sum(1 for s in saved if s == (6,)) <= 3
    assert len(saved) < len(core_saved)
    out.loss.backward()
    assert torch.isfinite(logp.grad).all()


def test_weights_output_is_differentiable_like_the_core():
    b = _batch(3, 7, 3)
    res = []
    for fn in (haepo_loss, haepo_core.haepo_loss):
        logp = b["logp"].clone().requires_grad_()
        out = fn(logp, b["returns"], b["mask"], group_ids=b["group_ids"])
        z = (out.weights * torch.arange(7.0, dtype=torch.float64)).sum() + 0.3 * out.loss
        res.append(torch.autograd.grad(z, [logp])[0])
    torch.testing.assert_close(res[0], res[1])


@given(seed=st.integers(0, 10_000), kw=OPTIONS)
def test_packed_matches_padded(seed, kw):
    b = _batch(seed, 5, 6)
    m = b["mask"]
    # Shuffle the packed steps: trajectories need not be contiguous.
    perm = torch.randperm(int(m.sum()), generator=torch.Generator().manual_seed(seed))
    seg = torch.arange(5)[:, None].expand_as(m)[m][perm]
    flat = b["logp"][m][perm].clone().requires_grad_()
    o = haepo_loss_packed(
        flat,
        seg,
        b["returns"],
        group_ids=b["group_ids"],
        entropy=b["entropy"][m][perm],
        ref_logp=b["ref_logp"][m][perm],
        **kw,
    )
    (g,) = torch.autograd.grad(o.loss, [flat])
    (oc, glc, _), _ = _both(b, **kw)
    torch.testing.assert_close(o.loss, oc.loss)
    torch.testing.assert_close(o.weights, oc.weights)
    torch.testing.assert_close(g, glc[m][perm])


def test_packed_matches_core_packed():
    b = _batch(5, 6, 4)
    m = b["mask"]
    seg = torch.arange(6)[:, None].expand_as(m)[m]
    res = []
    for fn in (haepo_loss_packed, haepo_core.haepo_loss_packed):
        flat = b["logp"][m].clone().requires_grad_()
        o = fn(
            flat,
            seg,
            b["returns"],
            group_ids=b["group_ids"],
            entropy=b["entropy"][m],
            ref_logp=b["ref_logp"][m],
            entropy_coef=0.1,
            kl_coef=0.1,
        )
        res.append((o.loss, torch.autograd.grad(o.loss, [flat])[0]))
    torch.testing.assert_close(res[0][0], res[1][0])
    torch.testing.assert_close(res[0][1], res[1][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_upcast_for_reductions(dtype):
    b = _batch(4, 8, 64)
    b["logp"] = b["logp"] * 20  # |L| ~ 600: summing in 16 bits would be far off
    lo = b["logp"].to(dtype)
    logp = lo.clone().requires_grad_()
    out = haepo_loss(logp, b["returns"], b["mask"], group_ids=b["group_ids"])
    out.loss.backward()
    assert out.loss.dtype == dtype and out.weights.dtype == dtype and logp.grad.dtype == dtype
    ref = haepo_core.haepo_loss(
        lo.to(torch.float32), b["returns"].float(), b["mask"], group_ids=b["group_ids"]
    )
    # Same as the float32 computation on the rounded inputs, up to the output rounding.
    torch.testing.assert_close(out.log_likelihood.float(), ref.log_likelihood, rtol=1e-2, atol=0.0)
    torch.testing.assert_close(out.loss.float(), ref.loss, rtol=2e-2, atol=2e-2)


def test_padding_never_reaches_value_or_gradient():
    b = _batch(6, 5, 6)
    poisoned = b["logp"].clone()
    poisoned[~b["mask"]] = float("nan")
    poisoned[~b["mask"] & (torch.arange(6) % 2 == 0)] = float("inf")
    kw = dict(group_ids=b["group_ids"], entropy_coef=0.1, kl_coef=0.1)
    a = poisoned.clone().requires_grad_()
    ent = b["entropy"].clone()
    ent[~b["mask"]] = float("-inf")
    o = haepo_loss(a, b["returns"], b["mask"], entropy=ent, ref_logp=b["ref_logp"], **kw)
    o.loss.backward()
    c = b["logp"].clone().requires_grad_()
    oc = haepo_loss(c, b["returns"], b["mask"], entropy=b["entropy"], ref_logp=b["ref_logp"], **kw)
    oc.loss.backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(o.loss, oc.loss)
    torch.testing.assert_close(a.grad, c.grad)
    assert (a.grad[~b["mask"]] == 0).all()


def test_extreme_log_likelihoods_stay_finite():
    logp = torch.tensor([[-1e6], [-1e6 + 3.0], [0.0], [-5.0]], requires_grad=True)
    out = haepo_loss(logp, torch.tensor([1.0, 2.0, 3.0, 4.0]), group_ids=torch.tensor([0, 0, 1, 1]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logp.grad).all()
    torch.testing.assert_close(out.weights[:2], torch.softmax(torch.tensor([0.0, 3.0]), 0))


def test_flat_groups_and_singletons_give_zero_policy_gradient():
    logp = torch.tensor([[-1.0], [-2.0], [-0.5], [-3.0]], dtype=torch.float64, requires_grad=True)
    out = haepo_loss(
        logp,
        torch.tensor([2.0, 2.0, 5.0, 1.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0, 1, 2]),
    )
    out.loss.backward()
    assert (out.normalized_returns == 0).all()
    assert (logp.grad == 0).all()


def test_sort_based_group_index_matches_unique():
    ids = torch.tensor([5, -2, 5, 9, -2, 0, 9, 9])
    index, num = dense_group_index(ids, 8, ids.device)
    _, inverse = torch.unique(ids, return_inverse=True)
    assert num == 8
    assert torch.equal(index, inverse)


def test_outputs_keep_device_and_dtype():
    b = _batch(7, 4, 3, dtype=torch.float32)
    out = haepo_loss(b["logp"], b["returns"], b["mask"])
    for x in (
        out.loss,
        out.weights,
        out.normalized_returns,
        out.log_likelihood,
        *out.stats.values(),
    ):
        assert x.dtype == torch.float32 and x.device == b["logp"].device
