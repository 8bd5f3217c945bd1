"""torch.compile(fullgraph=True) on haepo_loss / haepo_loss_packed: no graph break, same
values and gradients as eager.

Dynamo decides graph breaks, so ``fullgraph=True`` with the ``aot_eager`` backend proves there
is none (and traces the backward through AOTAutograd) without paying for Inductor's C++ build;
one Inductor run is kept as a slow test (about 100 s on the 2-core CI box).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dynamo = pytest.importorskip("torch._dynamo")
from haepo_backends.torch import backend, haepo_loss, haepo_loss_packed  # noqa: E402


def _batch(m=8, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(m, t, generator=g) > 0.3
    mask[:, 0] = True
    return dict(
        logp=-torch.rand(m, t, generator=g),
        returns=torch.randn(m, generator=g),
        mask=mask,
        group_ids=torch.tensor([4, 4, 1, 1, 9, 9, 2, 2])[:m],
        entropy=torch.rand(m, t, generator=g),
        ref_logp=-torch.rand(m, t, generator=g),
    )


KW = dict(entropy_coef=0.1, kl_coef=0.2, temperature=0.7, length_normalize=True)


@pytest.mark.parametrize(
    ("with_groups", "mask_kind"), [(True, "bool"), (False, "none"), (True, "float")]
)
def test_haepo_loss_has_no_graph_break(with_groups, mask_kind):
    b = _batch()
    mask = {"none": None, "bool": b["mask"], "float": b["mask"].float()}[mask_kind]
    gid = b["group_ids"] if with_groups else None
    explained = dynamo.explain(haepo_loss)(
        b["logp"].requires_grad_(),
        b["returns"],
        mask,
        group_ids=gid,
        entropy=b["entropy"],
        ref_logp=b["ref_logp"],
        **KW,
    )
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_haepo_loss_packed_has_no_graph_break():
    b = _batch()
    m = b["mask"]
    seg = torch.arange(8)[:, None].expand_as(m)[m]
    explained = dynamo.explain(haepo_loss_packed)(
        b["logp"][m],
        seg,
        b["returns"],
        group_ids=b["group_ids"],
        entropy=b["entropy"][m],
        ref_logp=b["ref_logp"][m],
        **KW,
    )
    assert explained.graph_break_count == 0, explained.break_reasons


def _eager_and_compiled(fn, args, kw, backend_name):
    results = []
    for f in (fn, torch.compile(fn, fullgraph=True, backend=backend_name)):
        x = args[0].detach().clone().requires_grad_()
        out = f(x, *args[1:], **kw)
        (g,) = torch.autograd.grad(out.loss, [x])
        results.append((out, g))
    return results


def test_compiled_padded_matches_eager_values_and_gradients():
    dynamo.reset()
    b = _batch()
    kw = dict(group_ids=b["group_ids"], entropy=b["entropy"], ref_logp=b["ref_logp"], **KW)
    (o, g), (oc, gc) = _eager_and_compiled(
        haepo_loss, (b["logp"], b["returns"], b["mask"]), kw, "aot_eager"
    )
    torch.testing.assert_close(oc.loss, o.loss)
    torch.testing.assert_close(oc.weights, o.weights)
    for k in o.stats.keys():
        torch.testing.assert_close(oc.stats[k], o.stats[k], msg=k)
    torch.testing.assert_close(gc, g)


def test_compiled_packed_matches_eager():
    dynamo.reset()
    b = _batch()
    m = b["mask"]
    seg = torch.arange(8)[:, None].expand_as(m)[m]
    kw = dict(group_ids=b["group_ids"], entropy=b["entropy"][m], ref_logp=b["ref_logp"][m], **KW)
    (o, g), (oc, gc) = _eager_and_compiled(
        haepo_loss_packed, (b["logp"][m], seg, b["returns"]), kw, "aot_eager"
    )
    torch.testing.assert_close(oc.loss, o.loss)
    torch.testing.assert_close(gc, g)


def test_value_checks_are_skipped_while_compiling_and_run_eagerly():
    b = _batch()
    bad = b["logp"].clone()
    bad[b["mask"]] = bad[b["mask"]].index_fill(0, torch.tensor([0]), float("nan"))
    with pytest.raises(ValueError, match="logp: expected finite values"):
        haepo_loss(bad, b["returns"], b["mask"])
    compiled = torch.compile(haepo_loss, fullgraph=True, backend="aot_eager")
    out = compiled(bad, b["returns"], b["mask"])  # no break, no raise: NaN propagates
    assert torch.isnan(out.loss)


def test_compile_variant_of_the_backend_agrees_and_still_raises():
    variant = backend.variants()["compile"]
    b = _batch()
    out = variant.haepo_loss(b["logp"], b["returns"], b["mask"], group_ids=b["group_ids"])
    ref = haepo_loss(b["logp"], b["returns"], b["mask"], group_ids=b["group_ids"])
    torch.testing.assert_close(out.loss, ref.loss)
    with pytest.raises(ValueError, match="returns"):
        variant.haepo_loss(b["logp"], b["returns"][:3], b["mask"])


@pytest.mark.slow
def test_inductor_fullgraph_matches_eager():
    dynamo.reset()
    b = _batch()
    kw = dict(group_ids=b["group_ids"], entropy=b["entropy"], ref_logp=b["ref_logp"], **KW)
    (o, g), (oc, gc) = _eager_and_compiled(
        haepo_loss, (b["logp"], b["returns"], b["mask"]), kw, "inductor"
    )
    torch.testing.assert_close(oc.loss, o.loss)
    torch.testing.assert_close(gc, g)
