"""haepo_loss_from_logits / haepo_loss_from_hidden (chunked, recomputed in backward) against
the core's materializing ``haepo_core.haepo_loss_from_logits``."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from haepo_backends.torch import (  # noqa: E402
    default_chunk_size,
    haepo_loss_from_hidden,
    haepo_loss_from_logits,
)

import haepo_core  # noqa: E402

M, T, V, H = 6, 5, 11, 4
KW = dict(entropy_coef=0.1, kl_coef=0.2, temperature=0.7)


def _data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(M, T, generator=g) > 0.3
    mask[:, 0] = True
    actions = torch.randint(0, V, (M, T), generator=g)
    actions[~mask] = -100  # padding may hold anything
    logits = torch.randn(M, T, V, generator=g, dtype=dtype) * 2
    logits[0, 0, (actions[0, 0] + 1) % V] = -float("inf")  # a masked vocabulary entry
    return dict(
        logits=logits,
        ref_logits=torch.randn(M, T, V, generator=g, dtype=dtype),
        ref_logp=-2 * torch.rand(M, T, generator=g, dtype=dtype),
        actions=actions,
        mask=mask,
        returns=torch.randn(M, generator=g, dtype=dtype),
        group_ids=torch.tensor([3, 3, 1, 1, 7, 7]),
        hidden=torch.randn(M, T, H, generator=g, dtype=dtype),
        weight=torch.randn(V, H, generator=g, dtype=dtype),
        bias=torch.randn(V, generator=g, dtype=dtype),
        ref_hidden=torch.randn(M, T, H, generator=g, dtype=dtype),
        ref_weight=torch.randn(V, H, generator=g, dtype=dtype),
    )


def _logits_run(fn, d, logits, kl, **kw):
    x = logits.clone().requires_grad_()
    ref = {"ref_logits": d["ref_logits"]} if kl == "exact" else {"ref_logp": d["ref_logp"]}
    out = fn(x, d["actions"], d["returns"], d["mask"], group_ids=d["group_ids"], **ref, **kw)
    (g,) = torch.autograd.grad(out.loss, [x])
    return out, g


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("kl", ["exact", "estimator"])
def test_from_logits_matches_core(chunk, kl):
    d = _data()
    o, g = _logits_run(haepo_loss_from_logits, d, d["logits"], kl, chunk_size=chunk, **KW)
    oc, gc = _logits_run(haepo_core.haepo_loss_from_logits, d, d["logits"], kl, **KW)
    torch.testing.assert_close(o.loss, oc.loss)
    torch.testing.assert_close(o.weights, oc.weights)
    for k in oc.stats.keys():
        torch.testing.assert_close(o.stats[k], oc.stats[k], msg=k)
    torch.testing.assert_close(g, gc)


def test_from_logits_padding_never_reaches_value_or_gradient():
    d = _data(1)
    poisoned = d["logits"].clone()
    poisoned[~d["mask"]] = float("nan")
    o, g = _logits_run(haepo_loss_from_logits, d, poisoned, "exact", chunk_size=3, **KW)
    oc, gc = _logits_run(haepo_core.haepo_loss_from_logits, d, d["logits"], "exact", **KW)
    torch.testing.assert_close(o.loss, oc.loss)
    assert torch.isfinite(g).all() and (g[~d["mask"]] == 0).all()
    torch.testing.assert_close(g, gc)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_logits_low_precision_computes_in_float32(dtype):
    d = _data(2, torch.float32)
    lo = d["logits"].to(dtype)
    o, g = _logits_run(haepo_loss_from_logits, d, lo, "exact", chunk_size=4, **KW)
    assert o.loss.dtype == dtype and g.dtype == dtype
    oc, gc = _logits_run(haepo_core.haepo_loss_from_logits, d, lo.float(), "exact", **KW)
    torch.testing.assert_close(o.loss.float(), oc.loss, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(g.float(), gc, rtol=2e-2, atol=2e-3)


def test_zero_coefficients_skip_their_backward_terms_but_keep_stats():
    d = _data(3)
    kw = dict(entropy_coef=0.0, kl_coef=0.0)
    o, g = _logits_run(haepo_loss_from_logits, d, d["logits"], "exact", chunk_size=2, **kw)
    oc, gc = _logits_run(haepo_core.haepo_loss_from_logits, d, d["logits"], "exact", **kw)
    torch.testing.assert_close(o.stats["entropy"], oc.stats["entropy"])
    torch.testing.assert_close(o.stats["kl"], oc.stats["kl"])
    torch.testing.assert_close(g, gc)


def test_from_logits_keeps_no_vocab_sized_tensor_for_backward():
    """The chunking trick: nothing [rows, V]-sized is saved but the input logits themselves."""
    d = _data(4)
    logits = d["logits"].clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        haepo_loss_from_logits(
            logits,
            d["actions"],
            d["returns"],
            d["mask"],
            ref_logits=d["ref_logits"],
            chunk_size=2,
            **KW,
        )
    big = [x for x in saved if x.numel() >= M * T * V]
    assert all(x.data_ptr() in (logits.data_ptr(), d["ref_logits"].data_ptr()) for x in big)


def _hidden_run(d, use_bias, ref, chunk):
    ps = [d["hidden"].clone().requires_grad_(), d["weight"].clone().requires_grad_()]
    bias = d["bias"].clone().requires_grad_() if use_bias else None
    kw = dict(KW)
    if ref == "head":
        kw.update(ref_hidden=d["ref_hidden"], ref_weight=d["ref_weight"])
    elif ref == "shared_head":
        kw.update(ref_hidden=d["ref_hidden"])
    else:
        kw.update(ref_logp=d["ref_logp"])
    out = haepo_loss_from_hidden(
        ps[0],
        ps[1],
        d["actions"],
        d["returns"],
        d["mask"],
        bias=bias,
        group_ids=d["group_ids"],
        chunk_size=chunk,
        **kw,
    )
    leaves = ps + ([bias] if use_bias else [])
    return out, torch.autograd.grad(out.loss, leaves)


def _hidden_core(d, use_bias, ref):
    ps = [d["hidden"].clone().requires_grad_(), d["weight"].clone().requires_grad_()]
    bias = d["bias"].clone().requires_grad_() if use_bias else None
    logits = ps[0] @ ps[1].T + (bias if use_bias else 0)
    kw = dict(KW)
    if ref == "estimator":
        kw.update(ref_logp=d["ref_logp"])
    else:
        rw = d["ref_weight"] if ref == "head" else d["weight"]
        kw.update(
            ref_logits=d["ref_hidden"] @ rw.T + (d["bias"] if use_bias and ref != "head" else 0)
        )
    out = haepo_core.haepo_loss_from_logits(
        logits, d["actions"], d["returns"], d["mask"], group_ids=d["group_ids"], **kw
    )
    leaves = ps + ([bias] if use_bias else [])
    return out, torch.autograd.grad(out.loss, leaves)


@pytest.mark.parametrize(
    ("use_bias", "ref", "chunk"),
    [(True, "head", 3), (False, "head", 1), (True, "shared_head", 7), (True, "estimator", None)],
)
def test_from_hidden_matches_core_on_materialized_logits(use_bias, ref, chunk):
    d = _data(5)
    o, grads = _hidden_run(d, use_bias, ref, chunk)
    oc, grads_c = _hidden_core(d, use_bias, ref)
    torch.testing.assert_close(o.loss, oc.loss)
    torch.testing.assert_close(o.stats["entropy"], oc.stats["entropy"])
    torch.testing.assert_close(o.stats["kl"], oc.stats["kl"])
    for a, b in zip(grads, grads_c):
        torch.testing.assert_close(a, b)


def test_from_hidden_bfloat16_runs_and_tracks_float32():
    d = _data(6, torch.float32)
    lo = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in d.items()}
    o, grads = _hidden_run(lo, True, "head", 4)
    assert o.loss.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    up = {k: (v.float() if v.is_floating_point() else v) for k, v in lo.items()}
    oc, grads_c = _hidden_run(up, True, "head", 4)
    torch.testing.assert_close(o.loss.float(), oc.loss, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(grads[1].float(), grads_c[1], rtol=5e-2, atol=5e-2)


def test_from_hidden_never_materializes_all_logits():
    d = _data(7)
    hidden = d["hidden"].clone().requires_grad_()
    weight = d["weight"].clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        out = haepo_loss_from_hidden(
            hidden,
            weight,
            d["actions"],
            d["returns"],
            d["mask"],
            ref_hidden=d["ref_hidden"],
            chunk_size=2,
            **KW,
        )
    assert max(x.numel() for x in saved) < M * T * V
    out.loss.backward()
    assert hidden.grad.shape == hidden.shape and weight.grad.shape == weight.shape


def test_default_chunk_size_depends_on_device_and_vocabulary():
    cpu = default_chunk_size("cpu", 32000)
    cuda = default_chunk_size("cuda", 32000)
    assert cpu == 96 and cuda == 1048 // 8 * 8
    assert default_chunk_size("cpu", 10**9) == 1
    assert default_chunk_size("cpu", 7) % 8 == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_every_path_runs_on_cuda():
    d = {k: v.cuda() for k, v in _data(8, torch.float32).items()}
    o, _ = _logits_run(haepo_loss_from_logits, d, d["logits"], "exact", **KW)
    o2, _ = _hidden_run(d, True, "head", None)
    assert o.loss.is_cuda and o2.loss.is_cuda


def test_all_valid_steps_walk_views_and_match_core():
    """With no mask, chunks are views of the inputs (no gather): same results as the core."""
    d = _data(9)
    x = d["logits"].clone().requires_grad_()
    acts = d["actions"].clamp(min=0)
    o = haepo_loss_from_logits(
        x, acts, d["returns"], ref_logits=d["ref_logits"], chunk_size=4, **KW
    )
    (g,) = torch.autograd.grad(o.loss, [x])
    y = d["logits"].clone().requires_grad_()
    oc = haepo_core.haepo_loss_from_logits(y, acts, d["returns"], ref_logits=d["ref_logits"], **KW)
    (gc,) = torch.autograd.grad(oc.loss, [y])
    torch.testing.assert_close(o.loss, oc.loss)
    torch.testing.assert_close(g, gc)
    # the input was not modified in place by the view-based walk
    torch.testing.assert_close(x.detach(), d["logits"])

    h = d["hidden"].clone().requires_grad_()
    w = d["weight"].clone().requires_grad_()
    o = haepo_loss_from_hidden(
        h, w, acts, d["returns"], ref_hidden=d["ref_hidden"], chunk_size=5, **KW
    )
    gh, gw = torch.autograd.grad(o.loss, [h, w])
    h2 = d["hidden"].clone().requires_grad_()
    w2 = d["weight"].clone().requires_grad_()
    oc = haepo_core.haepo_loss_from_logits(
        h2 @ w2.T, acts, d["returns"], ref_logits=d["ref_hidden"] @ w2.detach().T, **KW
    )
    gh2, gw2 = torch.autograd.grad(oc.loss, [h2, w2])
    torch.testing.assert_close(o.loss, oc.loss)
    torch.testing.assert_close(gh, gh2)
    torch.testing.assert_close(gw, gw2)


# ---------------------------------------------------------------- two-pass fused linear head
# haepo_loss_from_hidden computes every gradient in its forward (pass 1: policy log-sum-exp and
# taken-action log-probs; pass 2: re-projection, entropy/KL and d logits, then d hidden and
# d weight): 5 GEMMs instead of 6. These tests pin that path to the core on materialized logits.


def _two_pass_case(kl, use_bias, seed=11):
    d = _data(seed)
    h = d["hidden"].clone().requires_grad_()
    w = d["weight"].clone().requires_grad_()
    b = d["bias"].clone().requires_grad_() if use_bias else None
    kw = dict(KW, length_normalize=True, normalize_returns="center")
    if kl == "exact":
        ours = dict(ref_hidden=d["ref_hidden"], ref_weight=d["ref_weight"])
        core = dict(ref_logits=d["ref_hidden"] @ d["ref_weight"].T)
    else:
        ours = core = dict(ref_logp=d["ref_logp"], kl_estimator="k2")
    common = dict(group_ids=d["group_ids"], **kw)
    out = haepo_loss_from_hidden(
        h, w, d["actions"], d["returns"], d["mask"], bias=b, chunk_size=4, **ours, **common
    )
    h2 = d["hidden"].clone().requires_grad_()
    w2 = d["weight"].clone().requires_grad_()
    b2 = d["bias"].clone().requires_grad_() if use_bias else None
    logits = h2 @ w2.T + (b2 if use_bias else 0)
    ref = haepo_core.haepo_loss_from_logits(
        logits, d["actions"], d["returns"], d["mask"], **core, **common
    )
    return (
        out,
        ref,
        [x for x in (h, w, b) if x is not None],
        [x for x in (h2, w2, b2) if x is not None],
    )


@pytest.mark.parametrize("kl", ["exact", "estimator"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_two_pass_from_hidden_matches_core_values_and_gradients(kl, use_bias):
    out, ref, ours, theirs = _two_pass_case(kl, use_bias)
    torch.testing.assert_close(out.loss, ref.loss)
    for key in ("entropy", "kl", "policy_loss", "ess"):
        torch.testing.assert_close(out.stats[key], ref.stats[key])
    torch.testing.assert_close(out.weights, ref.weights)
    torch.testing.assert_close(out.log_likelihood, ref.log_likelihood)
    for a, b in zip(torch.autograd.grad(out.loss, ours), torch.autograd.grad(ref.loss, theirs)):
        torch.testing.assert_close(a, b)


def test_two_pass_loss_gradient_scales_with_upstream_and_survives_a_second_backward():
    """The stored gradients are for an upstream 1.0; backward scales them, and a second
    backward (retain_graph) recomputes them instead of reusing the handed-over buffers."""
    out, ref, ours, theirs = _two_pass_case("exact", True)
    g1 = torch.autograd.grad(-2.5 * out.loss, ours, retain_graph=True)
    g2 = torch.autograd.grad(out.loss, ours)
    gc = torch.autograd.grad(ref.loss, theirs)
    for a, b, c in zip(g1, g2, gc):
        torch.testing.assert_close(a, -2.5 * c)
        torch.testing.assert_close(b, c)


def test_two_pass_weights_and_log_likelihood_stay_differentiable():
    """weights and log_likelihood get gradients through the pass-1 log-probs (a re-projection
    backward that runs only for them), as in the core; the loss is added on top."""
    out, ref, ours, theirs = _two_pass_case("exact", True)
    probe = torch.linspace(-1.0, 1.0, M, dtype=torch.float64)
    f = (out.weights * probe).sum() + (out.log_likelihood * probe).sum() + out.loss
    fc = (ref.weights * probe).sum() + (ref.log_likelihood * probe).sum() + ref.loss
    for a, b in zip(torch.autograd.grad(f, ours), torch.autograd.grad(fc, theirs)):
        torch.testing.assert_close(a, b)
    for v in out.stats.values():
        assert not v.requires_grad


def test_two_pass_skips_gradients_of_frozen_inputs_and_no_grad_mode():
    d = _data(12)
    h = d["hidden"].clone().requires_grad_()
    w = d["weight"].clone()  # frozen head
    kw = dict(ref_hidden=d["ref_hidden"], group_ids=d["group_ids"], chunk_size=3, **KW)
    out = haepo_loss_from_hidden(h, w, d["actions"], d["returns"], d["mask"], **kw)
    (gh,) = torch.autograd.grad(out.loss, [h])
    h2 = d["hidden"].clone().requires_grad_()
    ref = haepo_core.haepo_loss_from_logits(
        h2 @ w.T,
        d["actions"],
        d["returns"],
        d["mask"],
        ref_logits=d["ref_hidden"] @ w.T,
        group_ids=d["group_ids"],
        **KW,
    )
    (gc,) = torch.autograd.grad(ref.loss, [h2])
    torch.testing.assert_close(gh, gc)
    with torch.no_grad():
        o = haepo_loss_from_hidden(h, w, d["actions"], d["returns"], d["mask"], **kw)
    assert not o.loss.requires_grad
    torch.testing.assert_close(o.loss, ref.loss.detach())
    torch.testing.assert_close(o.stats["kl"], ref.stats["kl"])


def test_in_place_log_softmax_matches_torch():
    """The fused head's log_softmax runs in place on CPU (no second [chunk, V] block)."""
    from haepo_backends.torch._vocab import log_softmax

    g = torch.Generator().manual_seed(13)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(7, 3000, generator=g, dtype=dtype) * 5
        want = torch.log_softmax(x, dim=1)
        got = log_softmax(x, inplace=True)
        assert got.data_ptr() == x.data_ptr()
        torch.testing.assert_close(got, want)


def test_two_pass_coefficient_gradients_match_core():
    """Tensor coefficients being differentiated get their gradient next to the stored ones."""
    d = _data(14)
    kw = dict(group_ids=d["group_ids"], kl_estimator="k3")

    def run(fn, x, **extra):
        ec = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        kc = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
        tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        out = fn(
            *x, d["actions"], d["returns"], d["mask"], entropy_coef=ec, kl_coef=kc,
            temperature=tau, **kw, **extra,
        )  # fmt: skip
        return out, torch.autograd.grad(out.loss, [ec, kc, tau, x[0]])

    h = d["hidden"].clone().requires_grad_()
    o, g = run(haepo_loss_from_hidden, (h, d["weight"]), ref_hidden=d["ref_hidden"], chunk_size=4)
    h2 = d["hidden"].clone().requires_grad_()
    oc, gc = run(
        lambda hh, w, *a, **k: haepo_core.haepo_loss_from_logits(hh @ w.T, *a, **k),
        (h2, d["weight"]),
        ref_logits=d["ref_hidden"] @ d["weight"].T,
    )
    torch.testing.assert_close(o.loss, oc.loss)
    for a, b in zip(g, gc):
        torch.testing.assert_close(a, b)
