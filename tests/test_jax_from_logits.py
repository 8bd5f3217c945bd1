"""haepo_backends.jax.haepo_loss_from_logits / _from_hidden: chunked custom-VJP paths checked
against the core's materializing ``haepo_loss_from_logits`` (values and autodiff gradients),
and their compiled temporaries pinned flat in the number of tokens."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from haepo_backends.jax import haepo_loss_from_hidden, haepo_loss_from_logits  # noqa: E402
from haepo_backends.jax._lean import default_chunk_size  # noqa: E402

import haepo_core as hc  # noqa: E402

M, T, V, H = 6, 5, 11, 4


def _data(seed=0, masked_vocab=False):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(M, T, V)) * 2
    ref_logits = logits + 0.5 * rng.normal(size=(M, T, V))
    actions = rng.integers(0, V, (M, T))
    mask = rng.random((M, T)) < 0.8
    mask[:, 0] = True
    if masked_vocab:  # -inf logits = actions the policy may not take
        logits[..., -2:] = -np.inf
        ref_logits[..., -1] = -np.inf  # ref forbids one action the policy also forbids
        actions = np.minimum(actions, V - 3)
    clean = logits.copy()
    logits[~mask] = np.nan  # padding garbage
    actions[~mask] = -100
    return dict(
        logits=logits,
        clean=clean,
        ref_logits=ref_logits,
        actions=actions,
        mask=mask,
        returns=rng.normal(size=M),
        group_ids=np.array([0, 0, 1, 1, 1, 2]),
        ref_logp=rng.normal(size=(M, T)) - 2,
        hidden=rng.normal(size=(M, T, H)),
        weight=rng.normal(size=(V, H)),
        bias=rng.normal(size=V),
        ref_hidden=rng.normal(size=(M, T, H)),
        ref_weight=rng.normal(size=(V, H)),
    )


def _core_loss(d, logits, ref, **kw):
    """The core on JAX arrays (autodiff reference); padding rows zeroed for the gradient."""
    mask = jnp.asarray(d["mask"])
    return hc.haepo_loss_from_logits(
        jnp.where(mask[..., None], logits, 0.0),
        jnp.asarray(d["actions"]),
        jnp.asarray(d["returns"]),
        mask,
        group_ids=jnp.asarray(d["group_ids"]),
        ref_logits=ref,
        **kw,
    )


KW = dict(entropy_coef=0.1, kl_coef=0.2, temperature=1.3)


@pytest.mark.parametrize("chunk", [1, 4, 7, 30, None])  # 30 = all tokens, 7: overlapping tail
def test_from_logits_exact_kl_matches_core_values_and_grads(chunk):
    d = _data()
    ref = jnp.asarray(d["ref_logits"])

    def mine(lg):
        return haepo_loss_from_logits(
            lg,
            jnp.asarray(d["actions"]),
            jnp.asarray(d["returns"]),
            jnp.asarray(d["mask"]),
            ref_logits=ref,
            group_ids=jnp.asarray(d["group_ids"]),
            chunk_size=chunk,
            **KW,
        )

    out = mine(jnp.asarray(d["logits"]))
    core = _core_loss(d, jnp.asarray(d["clean"]), ref, **KW)
    np.testing.assert_allclose(out.loss, core.loss, rtol=1e-12)
    for k in ("entropy", "kl", "policy_loss", "ess"):
        np.testing.assert_allclose(out.stats[k], core.stats[k], rtol=1e-12, err_msg=k)
    g = jax.jit(jax.grad(lambda x: mine(x).loss))(jnp.asarray(d["logits"]))
    g_core = jax.grad(lambda x: _core_loss(d, x, ref, **KW).loss)(jnp.asarray(d["clean"]))
    assert np.all(np.asarray(g)[~d["mask"]] == 0.0)  # NaN padding never reaches the gradient
    np.testing.assert_allclose(g, g_core, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_from_logits_estimator_and_masked_vocabulary_match_core(estimator):
    d = _data(seed=1, masked_vocab=True)
    kw = dict(KW, kl_estimator=estimator)

    def mine(lg):
        return haepo_loss_from_logits(
            lg,
            jnp.asarray(d["actions"]),
            jnp.asarray(d["returns"]),
            jnp.asarray(d["mask"]),
            ref_logp=jnp.asarray(d["ref_logp"]),
            group_ids=jnp.asarray(d["group_ids"]),
            chunk_size=4,
            **kw,
        )

    def core(lg):
        mask = jnp.asarray(d["mask"])
        return hc.haepo_loss_from_logits(
            jnp.where(mask[..., None], lg, 0.0),
            jnp.asarray(d["actions"]),
            jnp.asarray(d["returns"]),
            mask,
            group_ids=jnp.asarray(d["group_ids"]),
            ref_logp=jnp.asarray(d["ref_logp"]),
            **kw,
        )

    out = mine(jnp.asarray(d["logits"]))
    ref = core(jnp.asarray(d["clean"]))
    np.testing.assert_allclose(out.loss, ref.loss, rtol=1e-12)
    np.testing.assert_allclose(out.stats["entropy"], ref.stats["entropy"], rtol=1e-12)
    g = jax.grad(lambda x: mine(x).loss)(jnp.asarray(d["logits"]))
    g_ref = jax.grad(lambda x: core(x).loss)(jnp.asarray(d["clean"]))
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(g, np.nan_to_num(np.asarray(g_ref), nan=0.0), rtol=1e-9, atol=1e-13)


def test_from_logits_exact_kl_with_masked_vocabulary_matches_core():
    d = _data(seed=2, masked_vocab=True)
    ref = jnp.asarray(d["ref_logits"])
    out = haepo_loss_from_logits(
        jnp.asarray(d["logits"]),
        jnp.asarray(d["actions"]),
        jnp.asarray(d["returns"]),
        jnp.asarray(d["mask"]),
        ref_logits=ref,
        group_ids=jnp.asarray(d["group_ids"]),
        chunk_size=3,
        **KW,
    )
    core = _core_loss(d, jnp.asarray(d["clean"]), ref, **KW)
    assert np.isfinite(float(out.loss))
    np.testing.assert_allclose(out.loss, core.loss, rtol=1e-12)
    np.testing.assert_allclose(out.stats["kl"], core.stats["kl"], rtol=1e-12)


@pytest.mark.parametrize("own_ref_head", [False, True])
def test_from_hidden_matches_core_on_materialized_logits(own_ref_head):
    d = _data(seed=3)
    a = {k: jnp.asarray(v) for k, v in d.items()}
    rw, rb = (a["ref_weight"], a["bias"] * 0.5) if own_ref_head else (a["weight"], a["bias"])
    refkw = dict(ref_weight=rw, ref_bias=rb) if own_ref_head else {}
    hidden = a["hidden"].at[~a["mask"]].set(jnp.nan)  # padding garbage

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
            chunk_size=4,
            **refkw,
            **KW,
        )

    def core(h, w, b):
        ref = jax.lax.stop_gradient(a["ref_hidden"] @ rw.T + rb)
        if not own_ref_head:  # default reference head = the (constant) current head
            ref = jax.lax.stop_gradient(a["ref_hidden"] @ w.T + b)
        return _core_loss(d, h @ w.T + b, ref, **KW)

    out = mine(hidden, a["weight"], a["bias"])
    ref = core(a["hidden"], a["weight"], a["bias"])
    np.testing.assert_allclose(out.loss, ref.loss, rtol=1e-12)
    np.testing.assert_allclose(out.stats["kl"], ref.stats["kl"], rtol=1e-12)
    g = jax.jit(jax.grad(lambda *x: mine(*x).loss, argnums=(0, 1, 2)))(
        hidden, a["weight"], a["bias"]
    )
    g_ref = jax.grad(lambda *x: core(*x).loss, argnums=(0, 1, 2))(
        a["hidden"], a["weight"], a["bias"]
    )
    for name, x, y in zip(("hidden", "weight", "bias"), g, g_ref):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, err_msg=name)


def test_from_hidden_with_ref_logp_estimator_and_no_bias():
    d = _data(seed=4)
    a = {k: jnp.asarray(v) for k, v in d.items()}
    kw = dict(KW, kl_estimator="k2")

    def mine(h, w):
        return haepo_loss_from_hidden(
            h,
            w,
            a["actions"],
            a["returns"],
            a["mask"],
            ref_logp=a["ref_logp"],
            group_ids=a["group_ids"],
            chunk_size=7,
            **kw,
        ).loss

    def core(h, w):
        return hc.haepo_loss_from_logits(
            h @ w.T,
            a["actions"],
            a["returns"],
            a["mask"],
            ref_logp=a["ref_logp"],
            group_ids=a["group_ids"],
            **kw,
        ).loss

    np.testing.assert_allclose(
        mine(a["hidden"], a["weight"]), core(a["hidden"], a["weight"]), rtol=1e-12
    )
    g = jax.grad(mine, argnums=(0, 1))(a["hidden"], a["weight"])
    g_ref = jax.grad(core, argnums=(0, 1))(a["hidden"], a["weight"])
    for x, y in zip(g, g_ref):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_from_hidden_bfloat16_accumulates_in_float32():
    d = _data(seed=5)
    h16 = jnp.asarray(d["hidden"], jnp.bfloat16)
    w16 = jnp.asarray(d["weight"], jnp.bfloat16)
    kw = dict(group_ids=jnp.asarray(d["group_ids"]), entropy_coef=0.1, chunk_size=4)
    out = haepo_loss_from_hidden(
        h16,
        w16,
        jnp.asarray(d["actions"]),
        jnp.asarray(d["returns"], jnp.float32),
        jnp.asarray(d["mask"]),
        **kw,
    )
    assert out.loss.dtype == jnp.bfloat16
    ref = haepo_loss_from_hidden(
        jnp.asarray(h16, jnp.float32),
        jnp.asarray(w16, jnp.float32),
        jnp.asarray(d["actions"]),
        jnp.asarray(d["returns"], jnp.float32),
        jnp.asarray(d["mask"]),
        **kw,
    )
    np.testing.assert_allclose(float(out.loss), float(ref.loss), rtol=1e-2, atol=1e-2)
    gh, gw = jax.grad(
        lambda h, w: (
            haepo_loss_from_hidden(
                h,
                w,
                jnp.asarray(d["actions"]),
                jnp.asarray(d["returns"], jnp.float32),
                jnp.asarray(d["mask"]),
                **kw,
            ).loss
        ),
        argnums=(0, 1),
    )(h16, w16)
    assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(gw, np.float32)))


def test_default_chunk_size_budget():
    assert default_chunk_size(32000) == 128
    assert default_chunk_size(2) == 4096
    assert default_chunk_size(10**7) == 16


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("path", ["logits", "hidden"])
def test_compiled_temporaries_stay_flat_in_tokens(path):
    # Pins the chunking trick: XLA's own buffer assignment for value_and_grad, at a fixed
    # chunk, must not grow with M*T beyond the gradient-sized [N, H] rows (hidden path), while
    # the materializing core's temporaries grow with M*T*V.
    v, h, m, chunk = 2000, 16, 4, 32

    def temps(t, which):
        a = jnp.zeros((m, t), jnp.int32)
        r = jnp.arange(m, dtype=jnp.float32)
        kw = dict(entropy_coef=0.1, kl_coef=0.1)
        if path == "logits":
            lg = jnp.zeros((m, t, v), jnp.float32)
            if which == "core":
                f = lambda x, y: hc.haepo_loss_from_logits(x, a, r, ref_logits=y, **kw).loss
            else:
                f = lambda x, y: (
                    haepo_loss_from_logits(x, a, r, ref_logits=y, chunk_size=chunk, **kw).loss
                )
            return _temp_bytes(jax.value_and_grad(f), lg, lg)
        hid = jnp.zeros((m, t, h), jnp.float32)
        w = jnp.zeros((v, h), jnp.float32)
        if which == "core":
            f = lambda x, y: (
                hc.haepo_loss_from_logits(
                    x @ y.T, a, r, ref_logits=jax.lax.stop_gradient(x @ y.T + 1), **kw
                ).loss
            )
        else:
            f = lambda x, y: (
                haepo_loss_from_hidden(x, y, a, r, ref_hidden=x + 1, chunk_size=chunk, **kw).loss
            )
        return _temp_bytes(jax.value_and_grad(f, argnums=(0, 1)), hid, w)

    small, large = temps(64, "fused"), temps(512, "fused")
    grad_rows = m * (512 - 64) * h * 4 * 4  # a few [N, H] float32 buffers (d hidden, ref rows)
    assert large <= small * 1.1 + (grad_rows if path == "hidden" else 0)
    core_large = temps(512, "core")
    assert large < 0.25 * core_large
    assert core_large > 2 * m * 512 * v * 4  # the reference does hold [N, V] temporaries


@pytest.mark.parametrize("own_ref_head", [False, True])
def test_from_hidden_matches_core_across_several_overlapping_vocabulary_tiles(
    monkeypatch, own_ref_head
):
    """The from-hidden walk splits V into tiles (a running log-sum-exp, entropy and KL per
    token; d weight written tile by tile). Force tiles of 8 columns on V = 11, so there are
    two and the last one overlaps the first, and check values and gradients as above."""
    from haepo_backends.jax import _fused_linear

    monkeypatch.setattr(_fused_linear, "_MIN_TILE", 1)
    monkeypatch.setattr(_fused_linear, "_TILE_BUDGET", 4 * 6)
    tile = _fused_linear._vocab_tile(V, 4)
    assert tile < V < 2 * tile  # two tiles, the second overlapping the first
    test_from_hidden_matches_core_on_materialized_logits(own_ref_head)
