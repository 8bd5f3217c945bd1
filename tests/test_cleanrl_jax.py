"""The JAX adapter agrees with the torch adapter; frozen references; import isolation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from haepo_adapters.cleanrl import (
    TrajectoryBuilder,
    categorical_terms,
    gaussian_terms,
    haepo_trajectory_loss,
)

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy


def _buffers(seed: int, s: int = 24, e: int = 3):
    rng = np.random.default_rng(seed)
    ends = rng.random((s, e)) < 0.2
    for t in range(1, s):
        ends[t] &= ~ends[t - 1]  # gymnasium never ends on a reset step
    trunc = ends & (rng.random((s, e)) < 0.3)
    return dict(
        rewards=rng.normal(size=(s, e)).astype(np.float32),
        terminated=ends & ~trunc,
        truncated=trunc,
        obs=rng.normal(size=(s, e, 4)).astype(np.float32),
        actions=rng.integers(0, 2, size=(s, e)).astype(np.int32),
    )


def _build(lib: str, bufs: list[dict]) -> list:
    conv = {"torch": torch.as_tensor, "jax": jnp.asarray}[lib]
    b = TrajectoryBuilder(autoreset="next_step")
    out = []
    for buf in bufs:
        flags = {k: buf[k] for k in ("terminated", "truncated")}
        out.append(
            b.build(
                conv(buf["rewards"]), obs=conv(buf["obs"]), actions=conv(buf["actions"]), **flags
            )
        )
    return out


def test_jax_and_torch_builders_give_the_same_trajectories():
    bufs = [_buffers(0), _buffers(1), _buffers(2)]
    for tt, tj in zip(_build("torch", bufs), _build("jax", bufs)):
        assert isinstance(tt.returns, torch.Tensor) and isinstance(tj.returns, jax.Array)
        assert tt.num_trajectories == tj.num_trajectories > 0
        for name in ("segment_ids", "lengths", "env_ids", "truncated", "carried_steps", "mask"):
            np.testing.assert_array_equal(
                np.asarray(getattr(tt, name)), np.asarray(getattr(tj, name))
            )
        np.testing.assert_allclose(np.asarray(tt.returns), np.asarray(tj.returns), rtol=1e-6)
        np.testing.assert_array_equal(tt.steps["obs"].numpy(), np.asarray(tj.steps["obs"]))


def test_jax_loss_and_gradient_agree_with_torch_on_the_same_buffer():
    from haepo_adapters.cleanrl import (
        ReferenceParams,
        make_haepo_loss_fn,
        rollout_to_trajectories,
        to_jax,
    )

    buf = _buffers(3, s=40)
    tr_np = rollout_to_trajectories(
        buf["rewards"].astype(np.float64),
        terminated=buf["terminated"],
        truncated=buf["truncated"],
        autoreset="next_step",
        obs=buf["obs"].astype(np.float64),
        actions=buf["actions"].astype(np.int64),
    )
    assert tr_np.num_trajectories >= 3
    rng = np.random.default_rng(5)
    w = rng.normal(size=(4, 2)).astype(np.float32)
    w_ref = w + 0.2 * rng.normal(size=(4, 2)).astype(np.float32)
    kw = dict(entropy_coef=0.03, kl_coef=0.5, temperature=1.5, length_normalize=True)

    # torch
    tw = torch.tensor(w, requires_grad=True)
    obs_t = torch.as_tensor(tr_np.steps["obs"], dtype=torch.float32)
    act_t = torch.as_tensor(tr_np.steps["actions"])
    tr_t = tr_np._replace(
        returns=torch.as_tensor(tr_np.returns, dtype=torch.float32),
        segment_ids=torch.as_tensor(tr_np.segment_ids),
    )
    out_t = haepo_trajectory_loss(
        tr_t, categorical_terms(obs_t @ tw, act_t, obs_t @ torch.tensor(w_ref)), **kw
    )
    out_t.loss.backward()

    # JAX, packed and padded layouts
    tr_j = to_jax(
        tr_np._replace(
            steps={
                "obs": tr_np.steps["obs"].astype(np.float32),
                "actions": tr_np.steps["actions"].astype(np.int32),
            },
            returns=tr_np.returns.astype(np.float32),
        )
    )
    # jit: one XLA compile of the whole loss instead of one per primitive in eager mode.
    loss_fn = make_haepo_loss_fn(lambda p, o: o @ p, **kw)
    (loss_j, stats_j), g_j = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        jnp.asarray(w), ReferenceParams(jnp.asarray(w_ref)).params, tr_j
    )
    np.testing.assert_allclose(float(loss_j), float(out_t.loss.detach()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_j), tw.grad.numpy(), rtol=1e-4, atol=1e-6)
    for k in ("ess", "max_weight", "entropy", "kl"):
        np.testing.assert_allclose(float(stats_j[k]), float(out_t.stats[k]), rtol=1e-5)

    padded_fn = jax.jit(make_haepo_loss_fn(lambda p, o: o @ p, layout="padded", **kw))
    batch = {
        "obs": tr_np.pad(tr_np.steps["obs"].astype(np.float32)),
        "actions": tr_np.pad(tr_np.steps["actions"].astype(np.int32)),
        "mask": tr_np.mask,
        "returns": tr_np.returns.astype(np.float32),
    }
    (loss_p, _), g_p = jax.value_and_grad(padded_fn, has_aux=True)(
        jnp.asarray(w), jnp.asarray(w_ref), batch
    )
    np.testing.assert_allclose(float(loss_p), float(out_t.loss.detach()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_p), tw.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_jax_gaussian_terms_agree_with_torch():
    rng = np.random.default_rng(6)
    m, ls, a, rm, rls = (
        rng.normal(size=s).astype(np.float32) for s in [(5, 2), (2,), (5, 2), (5, 2), (2,)]
    )
    tj = gaussian_terms(*(jnp.asarray(x) for x in (m, ls, a, rm, rls)))
    tt = gaussian_terms(*(torch.as_tensor(x) for x in (m, ls, a, rm, rls)))
    for x, y in zip(tj, tt):
        np.testing.assert_allclose(np.asarray(x), y.numpy(), rtol=1e-5, atol=1e-6)


def test_make_haepo_loss_fn_rejects_bad_input():
    from haepo_adapters.cleanrl import make_haepo_loss_fn, to_jax

    with pytest.raises(ValueError, match="kind: expected"):
        make_haepo_loss_fn(lambda p, o: o, kind="beta")
    with pytest.raises(ValueError, match="layout: expected"):
        make_haepo_loss_fn(lambda p, o: o, layout="ragged")
    with pytest.raises(TypeError, match="policy_fn: expected a callable"):
        make_haepo_loss_fn(3)
    with pytest.raises(ValueError, match="batch: expected keys"):
        make_haepo_loss_fn(lambda p, o: o, layout="padded")(None, None, {"obs": jnp.zeros(1)})
    with pytest.raises(TypeError, match="batch: expected Trajectories"):
        make_haepo_loss_fn(lambda p, o: o)(None, None, {"obs": jnp.zeros(1)})
    with pytest.raises(TypeError, match="traj: expected Trajectories"):
        to_jax({"a": 1})


def test_reference_policy_is_frozen_and_refreshed_on_schedule():
    from haepo_adapters.cleanrl import ReferencePolicy

    agent = torch.nn.Linear(3, 2)
    ref = ReferencePolicy(agent, refresh_every=2)
    assert not any(p.requires_grad for p in ref.module.parameters())
    with torch.no_grad():
        agent.weight.add_(1.0)
    assert not torch.equal(ref.module.weight, agent.weight)  # a copy, not a view
    assert ref(torch.ones(1, 3)).requires_grad is False
    assert ref.step() is False and not torch.equal(ref.module.weight, agent.weight)
    assert ref.step() is True and torch.equal(ref.module.weight, agent.weight)
    with pytest.raises(ValueError, match="refresh_every: expected an int >= 1"):
        ReferencePolicy(agent, refresh_every=0)
    with pytest.raises(TypeError, match=r"module: expected a torch\.nn\.Module"):
        ReferencePolicy(lambda x: x)


def test_reference_params_refresh_on_schedule():
    from haepo_adapters.cleanrl import ReferenceParams

    ref = ReferenceParams({"w": jnp.zeros(2)})  # every update by default
    assert ref.step({"w": jnp.ones(2)}) is True
    assert ref.params["w"].tolist() == [1.0, 1.0]
    ref3 = ReferenceParams({"w": jnp.zeros(2)}, refresh_every=3)
    assert [ref3.step({"w": jnp.full(2, i)}) for i in range(1, 7)] == [False, False, True] * 2
    assert ref3.params["w"].tolist() == [6.0, 6.0]
    with pytest.raises(ValueError, match="refresh_every"):
        ReferenceParams({}, refresh_every=True)


@pytest.mark.parametrize(
    "code, absent",
    [
        # The array-API part and the JAX names: torch is never imported.
        ("import haepo_adapters.cleanrl as c; c.TrajectoryBuilder; c.make_haepo_loss_fn", "torch"),
        # The torch names: JAX is never imported.
        ("import haepo_adapters.cleanrl as c; c.ReferencePolicy", "jax"),
    ],
)
def test_torch_part_never_imports_jax_and_vice_versa(code, absent):
    check = f"{code}; import sys; assert {absent!r} not in sys.modules, 'imported {absent}'"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_padded_loss_fn_takes_group_ids_from_the_batch():
    from haepo_adapters.cleanrl import haepo_padded_loss, make_haepo_loss_fn

    rng = np.random.default_rng(4)
    m, t, d, a = 6, 5, 3, 2
    obs = rng.normal(size=(m, t, d)).astype(np.float32)
    batch = {
        "obs": obs,
        "actions": rng.integers(0, a, size=(m, t)).astype(np.int32),
        "mask": np.arange(t)[None, :] < rng.integers(1, t + 1, size=(m, 1)),
        "returns": rng.normal(size=m).astype(np.float32),
    }
    w = jnp.asarray(rng.normal(size=(d, a)).astype(np.float32))
    fn = jax.jit(make_haepo_loss_fn(lambda p, o: o @ p, layout="padded", entropy_coef=0.01))
    ungrouped, _ = fn(w, None, batch)
    ids = np.array([4, 9, 4, 9, 9, 4], np.int32)
    grouped, stats = fn(w, None, {**batch, "group_ids": ids})
    logits = jnp.asarray(obs) @ w
    terms = categorical_terms(logits.reshape(m * t, a), jnp.asarray(batch["actions"]).ravel())
    terms = terms._replace(**{k: getattr(terms, k).reshape(m, t) for k in ("logp", "entropy")})
    want = haepo_padded_loss(terms, jnp.asarray(batch["returns"]), jnp.asarray(batch["mask"]),
                             entropy_coef=0.01,
                             group_ids=jnp.asarray(ids))  # fmt: skip
    np.testing.assert_allclose(float(grouped), float(want.loss), rtol=1e-5, atol=1e-7)
    assert int(stats["num_groups"]) == 2
    assert abs(float(grouped) - float(ungrouped)) > 1e-4  # the labels changed the objective
