"""haepo_loss_from_token_logps: TRL-shaped tensors in, the core's HAEPO loss out."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from haepo_adapters.trl import haepo_loss_from_token_logps  # noqa: E402

from haepo_core import haepo_loss  # noqa: E402

G = 4


def _batch(seed: int = 0, groups: int = 3, t: int = 7):
    gen = torch.Generator().manual_seed(seed)
    b = groups * G
    logps = (-torch.rand(b, t, generator=gen) * 3).requires_grad_(True)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    rewards = torch.randint(0, 3, (b,), generator=gen).float()
    ent = (torch.rand(b, t, generator=gen) * 2).requires_grad_(True)
    ref = -torch.rand(b, t, generator=gen) * 3
    return logps, mask, rewards, ent, ref


@pytest.mark.parametrize("length_normalize", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_same_value_and_gradient_as_core(length_normalize: bool, temperature: float) -> None:
    logps, mask, rewards, ent, ref = _batch()
    kw = dict(
        entropy_coef=0.03,
        kl_coef=0.2,
        temperature=temperature,
        length_normalize=length_normalize,
    )
    out = haepo_loss_from_token_logps(
        logps, mask, rewards, G, entropies=ent, ref_per_token_logps=ref, **kw
    )
    g_logp, g_ent = torch.autograd.grad(out.loss, (logps, ent))
    core = haepo_loss(
        logps,
        rewards,
        mask.bool(),
        group_ids=torch.arange(logps.shape[0]) // G,
        entropy=ent,
        ref_logp=ref,
        **kw,
    )
    c_logp, c_ent = torch.autograd.grad(core.loss, (logps, ent))
    torch.testing.assert_close(out.loss, core.loss)
    torch.testing.assert_close(g_logp, c_logp)
    torch.testing.assert_close(g_ent, c_ent)
    torch.testing.assert_close(out.weights, core.weights)
    for k in core.stats.keys():
        torch.testing.assert_close(out.stats[k], core.stats[k])
    # Padding never gets a gradient.
    assert torch.all(g_logp[mask == 0] == 0)


def test_rows_are_grouped_by_consecutive_blocks_of_num_generations() -> None:
    logps, mask, rewards, _, _ = _batch(seed=1)
    out = haepo_loss_from_token_logps(logps, mask, rewards, G)
    w = out.weights.detach().view(-1, G)
    torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0]))
    # Shuffling whole groups, or rows inside a group, changes nothing.
    perm = torch.tensor([2, 0, 1])
    rows = (perm[:, None] * G + torch.arange(G)).reshape(-1)
    out2 = haepo_loss_from_token_logps(logps[rows], mask[rows], rewards[rows], G)
    torch.testing.assert_close(out2.loss, out.loss)
    inner = torch.tensor([3, 1, 0, 2, 4, 5, 6, 7, 11, 10, 9, 8])
    out3 = haepo_loss_from_token_logps(logps[inner], mask[inner], rewards[inner], G)
    torch.testing.assert_close(out3.loss, out.loss)
    # A different num_generations is a different grouping, hence a different loss.
    out6 = haepo_loss_from_token_logps(logps, mask, rewards, 6)
    assert not torch.allclose(out6.loss, out.loss)


def test_rewards_are_normalized_within_each_group_not_batch() -> None:
    logps, mask, _, _, _ = _batch(seed=2, groups=2)
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0, 10.0, 10.0, 10.0, 10.0])
    out = haepo_loss_from_token_logps(logps, mask, rewards, G)
    expect = torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(out.normalized_returns, expect)
    g = torch.autograd.grad(out.loss, logps)[0]
    assert torch.all(g[G:] == 0)  # an all-equal-rewards group gives no policy gradient


def test_tool_mask_is_multiplied_into_the_completion_mask() -> None:
    logps, mask, rewards, ent, _ = _batch(seed=3)
    tool = torch.ones_like(mask)
    tool[:, 1:3] = 0
    out = haepo_loss_from_token_logps(
        logps, mask, rewards, G, tool_mask=tool, entropies=ent, entropy_coef=0.1
    )
    ref = haepo_loss_from_token_logps(
        logps, mask * tool, rewards, G, entropies=ent, entropy_coef=0.1
    )
    torch.testing.assert_close(out.loss, ref.loss)
    g = torch.autograd.grad(out.loss, logps)[0]
    assert torch.all(g[:, 1:3] == 0)


def test_rows_without_valid_tokens_are_dropped_from_their_group() -> None:
    logps, mask, rewards, _, _ = _batch(seed=4, groups=2)
    mask = mask.clone()
    mask[1] = 0  # e.g. a truncated completion under mask_truncated_completions
    out = haepo_loss_from_token_logps(logps, mask, rewards, G)
    keep = torch.tensor([0, 2, 3, 4, 5, 6, 7])
    core = haepo_loss(
        logps[keep], rewards[keep], mask[keep].bool(), group_ids=keep // G, length_normalize=True
    )
    torch.testing.assert_close(out.loss, core.loss)
    assert out.weights[1] == 0
    torch.testing.assert_close(out.weights[keep], core.weights)
    g = torch.autograd.grad(out.loss, logps)[0]
    assert torch.all(g[1] == 0) and torch.isfinite(g).all()


def test_all_rows_empty_gives_zero_loss_with_zero_finite_gradient() -> None:
    logps, mask, rewards, _, _ = _batch(seed=5)
    logps = torch.full_like(logps, float("nan")).requires_grad_(True)
    out = haepo_loss_from_token_logps(logps, torch.zeros_like(mask), rewards, G)
    assert out.loss.item() == 0.0 and out.stats["num_groups"].item() == 0
    g = torch.autograd.grad(out.loss, logps)[0]
    assert torch.all(g == 0)


def test_nan_and_inf_in_padding_never_reach_value_or_gradient() -> None:
    logps, mask, rewards, _, _ = _batch(seed=6)
    dirty = logps.detach().clone()
    dirty[mask == 0] = float("nan")
    dirty[0, -1] = float("inf") if mask[0, -1] == 0 else dirty[0, -1]
    dirty.requires_grad_(True)
    out = haepo_loss_from_token_logps(dirty, mask, rewards, G)
    clean = haepo_loss_from_token_logps(logps, mask, rewards, G)
    torch.testing.assert_close(out.loss, clean.loss)
    g = torch.autograd.grad(out.loss, dirty)[0]
    assert torch.isfinite(g).all()


def test_bfloat16_inputs_compute_in_float32_and_return_bfloat16() -> None:
    logps, mask, rewards, _, _ = _batch(seed=7)
    out = haepo_loss_from_token_logps(logps.detach().bfloat16(), mask, rewards, G)
    ref = haepo_loss_from_token_logps(logps.detach().bfloat16().float(), mask, rewards, G)
    assert out.loss.dtype == torch.bfloat16
    torch.testing.assert_close(out.loss.float(), ref.loss, rtol=1e-2, atol=1e-2)


def test_rewards_may_be_a_python_sequence() -> None:
    logps, mask, rewards, _, _ = _batch(seed=8)
    a = haepo_loss_from_token_logps(logps, mask, rewards.tolist(), G)
    b = haepo_loss_from_token_logps(logps, mask, rewards, G)
    torch.testing.assert_close(a.loss, b.loss)


def _bad_cases():
    logps, mask, rewards, ent, ref = _batch()
    b, t = logps.shape
    yield "np_logps", dict(per_token_logps=logps.detach().numpy()), TypeError, "per_token_logps"
    yield "rank", dict(per_token_logps=logps[0]), ValueError, "per_token_logps: expected rank 2"
    yield "int_logps", dict(per_token_logps=mask), TypeError, "per_token_logps: expected a float"
    yield "mask_shape", dict(completion_mask=mask[:, :-1]), ValueError, "completion_mask"
    yield "float_mask", dict(completion_mask=mask.float()), TypeError, "completion_mask"
    yield "mask_values", dict(completion_mask=mask * 2), ValueError, "completion_mask"
    yield "tool_shape", dict(tool_mask=mask[:-1]), ValueError, "tool_mask"
    yield "rewards_shape", dict(rewards=rewards[:-1]), ValueError, "rewards: expected shape"
    yield "rewards_type", dict(rewards=object()), TypeError, "rewards"
    yield (
        "rewards_nan",
        dict(rewards=torch.full((b,), float("nan"))),
        ValueError,
        "rewards: expected finite",
    )
    yield "g_float", dict(num_generations=4.0), TypeError, "num_generations"
    yield "g_bool", dict(num_generations=True), TypeError, "num_generations"
    yield "g_zero", dict(num_generations=0), ValueError, "num_generations"
    yield "g_not_dividing", dict(num_generations=5), ValueError, "dividing the batch size"
    yield "ent_shape", dict(entropies=ent[:, :-1]), ValueError, "entropies"
    yield "ent_missing", dict(entropy_coef=0.1), ValueError, "entropies"
    yield "ref_missing", dict(kl_coef=0.1), ValueError, "ref_per_token_logps"
    yield "ref_dtype", dict(ref_per_token_logps=mask), TypeError, "ref_per_token_logps"
    yield "temperature", dict(temperature=0.0), ValueError, "temperature"
    yield "estimator", dict(kl_estimator="k9", ref_per_token_logps=ref), ValueError, "k9"
    yield "normalize", dict(normalize_returns="batch"), ValueError, "normalize_returns"
    nan = torch.full((b, t), float("nan"))
    yield "logp_nan", dict(per_token_logps=nan), ValueError, "per_token_logps: expected finite"
    yield "ent_nan", dict(entropies=nan), ValueError, "entropies: expected finite"


@pytest.mark.parametrize(
    ("case", "override", "exc", "match"), list(_bad_cases()), ids=[c[0] for c in _bad_cases()]
)
def test_bad_input_raises_a_clear_error(case, override, exc, match) -> None:
    logps, mask, rewards, _, _ = _batch()
    kw = dict(per_token_logps=logps, completion_mask=mask, rewards=rewards, num_generations=G)
    kw.update(override)
    with pytest.raises(exc, match=match):
        haepo_loss_from_token_logps(**kw)
