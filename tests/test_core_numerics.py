"""Numerics of the HAEPO core on every array library: agreement with a direct NumPy formula,
extreme log-likelihoods, low-precision inputs, edge cases (equal returns, single trajectory),
temperature, length normalization, every estimator and normalization, and outputs that stay in
the input's namespace, dtype and device."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

import haepo_core as hc


def to_np(x) -> np.ndarray:
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().float().numpy() if x.dtype.itemsize == 2 else x.detach().numpy()
    if hasattr(x, "__array_namespace__") and array_api_compat.is_array_api_strict_namespace(
        x.__array_namespace__()
    ):
        return np.from_dlpack(x)
    if array_api_compat.is_jax_array(x) and x.dtype.itemsize == 2:
        return np.asarray(x.astype("float32"))
    return np.asarray(x)


def close(a, b, rtol=1e-12, atol=1e-14, msg=""):
    np.testing.assert_allclose(to_np(a), to_np(b), rtol=rtol, atol=atol, err_msg=msg)


def lib(xp) -> str:
    name = xp.__name__
    return "torch" if "torch" in name else "jax" if name.startswith("jax") else name


# --------------------------------------------------------------------------- reference formula
def reference(
    logp,
    mask,
    returns,
    group_ids=None,
    entropy=None,
    ref_logp=None,
    *,
    entropy_coef=0.0,
    kl_coef=0.0,
    kl_estimator="k3",
    normalize_returns="zscore",
    temperature=1.0,
    length_normalize=False,
    eps=1e-8,
):
    """The objective of the spec written directly, group by group, in float64 NumPy."""
    logp = np.asarray(logp, dtype=np.float64)
    m = logp.shape[0]
    mask = np.ones(logp.shape, bool) if mask is None else np.asarray(mask, bool)
    L = np.array([logp[k][mask[k]].sum() for k in range(m)])
    if length_normalize:
        L = L / mask.sum(axis=1)
    gid = np.zeros(m, np.int64) if group_ids is None else np.asarray(group_ids)
    r = np.asarray(returns, np.float64)
    w, rn = np.zeros(m), np.zeros(m)
    labels = np.unique(gid)
    for g in labels:
        k = np.flatnonzero(gid == g)
        z = L[k] / temperature
        e = np.exp(z - z.max())
        w[k] = e / e.sum()
        rg = r[k]
        if normalize_returns == "none":
            rn[k] = rg
        elif np.all(rg == rg[0]):
            rn[k] = 0.0
        elif normalize_returns == "center":
            rn[k] = rg - rg.mean()
        else:
            rn[k] = (rg - rg.mean()) / (rg.std() + eps)
    policy = -np.sum(w * rn) / labels.size
    ent = 0.0 if entropy is None else np.asarray(entropy, np.float64)[mask].mean()
    kl = 0.0
    if ref_logp is not None:
        d = np.asarray(ref_logp, np.float64)[mask] - logp[mask]
        kl = {"k1": -d, "k2": d**2 / 2, "k3": np.exp(d) - d - 1}[kl_estimator].mean()
    return {
        "loss": policy - entropy_coef * ent + kl_coef * kl,
        "weights": w,
        "normalized_returns": rn,
        "log_likelihood": L,
        "policy_loss": policy,
        "entropy": ent,
        "kl": kl,
        "ess": np.mean([1 / np.sum(w[gid == g] ** 2) for g in labels]),
        "max_weight": w.max(),
        "weighted_return": np.mean([np.sum((w * r)[gid == g]) for g in labels]),
    }


def batch(seed, m=6, t=5, groups=True):
    rng = np.random.default_rng(seed)
    mask = np.arange(t)[None, :] < rng.integers(1, t + 1, size=(m, 1))
    logp = np.where(mask, rng.uniform(-3, 0.5, (m, t)), np.nan)
    returns = rng.normal(size=m)
    gid = rng.integers(0, 2, size=m) if groups else None
    entropy = rng.uniform(0, 2, (m, t))
    ref = logp + rng.normal(scale=0.5, size=(m, t))
    return logp, mask, returns, gid, entropy, ref


OPTION_CASES = [
    {},
    {"temperature": 0.3},
    {"temperature": 4.0, "normalize_returns": "center"},
    {"normalize_returns": "none", "length_normalize": True},
    {"entropy_coef": 0.1, "kl_coef": 0.2, "kl_estimator": "k1"},
    {"entropy_coef": 0.3, "kl_coef": 0.5, "kl_estimator": "k2", "length_normalize": True},
    {"kl_coef": 1.5, "kl_estimator": "k3", "eps": 0.1},
]


@pytest.mark.parametrize(
    "opts", OPTION_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_loss_matches_direct_numpy_formula(xp, opts):
    """Every output and stat equals the spec written directly in NumPy (groups, masks,
    temperature, every normalization and KL estimator, entropy bonus, length_normalize)."""
    logp, mask, returns, gid, entropy, ref = batch(1)
    kw = dict(opts)
    if opts.get("entropy_coef"):
        kw["entropy"] = xp.asarray(entropy)
    if opts.get("kl_coef"):
        kw["ref_logp"] = xp.asarray(ref)
    out = hc.haepo_loss(
        xp.asarray(logp), xp.asarray(returns), xp.asarray(mask), group_ids=xp.asarray(gid), **kw
    )
    want = reference(
        logp,
        mask,
        returns,
        gid,
        entropy if "entropy" in kw else None,
        ref if "ref_logp" in kw else None,
        **opts,
    )
    close(out.loss, want["loss"])
    for field in ("weights", "normalized_returns", "log_likelihood"):
        close(getattr(out, field), want[field], msg=field)
    for key in ("policy_loss", "entropy", "kl", "ess", "max_weight", "weighted_return"):
        close(out.stats[key], want[key], msg=key)
    assert float(out.stats["num_groups"]) == len(np.unique(gid))


# --------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("method", ["zscore", "center", "none"])
def test_normalize_returns_matches_direct_formula(xp, method):
    r = np.array([1.0, 4.0, 2.0, 0.1, 0.1, 0.1, 7.0])
    g = np.array([0, 0, 0, 1, 1, 1, 2])
    got = hc.normalize_returns(xp.asarray(r), xp.asarray(g), method=method, eps=1e-3)
    first = r[:3]
    want = {
        "zscore": np.r_[(first - first.mean()) / (first.std() + 1e-3), 0, 0, 0, 0],
        "center": np.r_[first - first.mean(), 0, 0, 0, 0],
        "none": r,
    }[method]
    close(got, want)
    if method != "none":
        # equal returns (0.1 is not exact in binary) and a single trajectory: exactly 0
        assert np.all(to_np(got)[3:] == 0.0)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimate_matches_direct_formula(xp, estimator):
    logp = np.array([[-1.0, -2.0, -0.5], [-3.0, -0.1, -4.0]])
    ref = np.array([[-1.5, -0.5, -0.5], [-1.0, -2.0, -6.0]])
    d = ref - logp
    want = {"k1": -d, "k2": d**2 / 2, "k3": np.exp(d) - d - 1}[estimator]
    close(hc.kl_estimate(xp.asarray(logp), xp.asarray(ref), estimator), want)
    if estimator == "k3":
        assert np.all(want >= 0)


def test_entropy_and_kl_from_logits_match_direct_formula(xp):
    rng = np.random.default_rng(2)
    logits, ref = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    logits[0, 0, 1] = -np.inf  # a masked vocabulary entry contributes 0, not NaN
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(ref - ref.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)
        kl = np.nansum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), axis=-1)
    close(hc.entropy_from_logits(xp.asarray(logits)), ent, rtol=1e-12, atol=1e-13)
    close(hc.kl_from_logits(xp.asarray(logits), xp.asarray(ref)), kl, rtol=1e-11, atol=1e-13)


def test_loss_from_logits_equals_loss_on_gathered_log_probs(xp):
    rng = np.random.default_rng(3)
    m, t, v = 4, 3, 6
    logits, ref = rng.normal(size=(m, t, v)), rng.normal(size=(m, t, v))
    actions = rng.integers(0, v, size=(m, t))
    mask = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], bool)
    actions[~mask] = -100  # padding may hold anything
    logits_dirty = logits.copy()
    logits_dirty[~mask] = np.nan
    returns = rng.normal(size=m)
    lsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = np.take_along_axis(lsm, np.where(mask, actions, 0)[..., None], -1)[..., 0]
    ent = -(np.exp(lsm) * lsm).sum(-1)
    lsm_ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    kl_exact = (np.exp(lsm) * (lsm - lsm_ref)).sum(-1)
    out = hc.haepo_loss_from_logits(
        xp.asarray(logits_dirty),
        xp.asarray(actions),
        xp.asarray(returns),
        xp.asarray(mask),
        ref_logits=xp.asarray(ref),
        entropy_coef=0.1,
        kl_coef=0.3,
    )
    want = reference(logp, mask, returns, None, ent, None, entropy_coef=0.1)
    close(out.weights, want["weights"])
    close(out.stats["entropy"], want["entropy"])
    close(out.stats["kl"], kl_exact[mask].mean())
    close(out.loss, want["loss"] + 0.3 * kl_exact[mask].mean())
    # with ref_logp instead of ref_logits, the estimator is used
    ref_logp = np.take_along_axis(lsm_ref, np.where(mask, actions, 0)[..., None], -1)[..., 0]
    out2 = hc.haepo_loss_from_logits(
        xp.asarray(logits),
        xp.asarray(actions),
        xp.asarray(returns),
        xp.asarray(mask),
        ref_logp=xp.asarray(ref_logp),
        kl_coef=0.3,
        kl_estimator="k2",
    )
    want2 = reference(logp, mask, returns, None, None, ref_logp, kl_coef=0.3, kl_estimator="k2")
    close(out2.loss, want2["loss"])


def test_trajectory_log_likelihood_and_length_normalize_divide_by_valid_steps(xp):
    logp = np.array([[-1.0, -2.0, np.nan], [-0.5, np.inf, -np.inf], [-3.0, -1.0, -2.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    close(hc.trajectory_log_likelihood(xp.asarray(logp), xp.asarray(mask)), [-3.0, -0.5, -6.0])
    close(
        hc.trajectory_log_likelihood(xp.asarray(logp), xp.asarray(mask), length_normalize=True),
        [-1.5, -0.5, -2.0],
    )
    returns = np.array([1.0, 0.0, 2.0])
    out = hc.haepo_loss(
        xp.asarray(logp), xp.asarray(returns), xp.asarray(mask), length_normalize=True
    )
    close(out.log_likelihood, [-1.5, -0.5, -2.0])
    e = np.exp(np.array([-1.5, -0.5, -2.0]))
    close(out.weights, e / e.sum())
    # a numeric 0/1 mask means the same as the bool one
    out_int = hc.haepo_loss(
        xp.asarray(logp),
        xp.asarray(returns),
        xp.asarray(mask.astype(np.int64)),
        length_normalize=True,
    )
    close(out_int.loss, out.loss)


def test_plackett_luce_weights_and_effective_sample_size_match_formula(xp):
    L = np.array([-1.0, -3.0, -2.0, -10.0, -10.5])
    g = np.array([5, 5, 5, 9, 9])
    w = hc.plackett_luce_weights(xp.asarray(L), xp.asarray(g), temperature=0.5)
    e1, e2 = np.exp(L[:3] / 0.5), np.exp(L[3:] / 0.5)
    want = np.r_[e1 / e1.sum(), e2 / e2.sum()]
    close(w, want)
    ess = np.array([1 / np.sum(want[:3] ** 2), 1 / np.sum(want[3:] ** 2)])
    close(hc.effective_sample_size(w, xp.asarray(g)), ess.mean())
    close(hc.effective_sample_size(w, xp.asarray(g), reduce="none"), ess)
    close(hc.effective_sample_size(xp.asarray(np.full(4, 0.25))), 4.0)


# --------------------------------------------------------------------------- edge cases
# One [6, 5] batch shared by the edge-case tests (the shape of the property tests too): eager
# JAX compiles each primitive once per shape, so reusing shapes keeps the JAX runs short.
EDGE_LOGP = np.round(np.random.default_rng(7).uniform(-2.0, 0.0, size=(6, 5)), 3)


@pytest.mark.parametrize("method", ["zscore", "center"])
def test_equal_returns_group_gives_zero_normalized_returns_and_zero_policy_gradient(xp, method):
    logp = EDGE_LOGP
    returns = np.array([0.1, 0.1, 0.1, 1.0, -1.0, 0.5])  # 0.1 * 3 / 3 != 0.1 in binary
    g = np.array([0, 0, 0, 1, 1, 1])
    for dtype in (xp.float64, xp.float32):
        out, grads = hc.haepo_grad(
            xp.asarray(logp, dtype=dtype),
            xp.asarray(returns, dtype=dtype),
            group_ids=xp.asarray(g),
            normalize_returns=method,
        )
        assert np.all(to_np(out.normalized_returns)[:3] == 0.0)
        assert np.all(to_np(grads["logp"])[:3] == 0.0)
        assert np.any(to_np(grads["logp"])[3:] != 0.0)
    if lib(xp) in ("torch", "jax"):
        d = _autodiff_grad(xp, logp, returns, g, normalize_returns=method)
        assert np.all(d[:3] == 0.0) and np.any(d[3:] != 0.0)
    # every return equal: the loss is exactly 0
    out = hc.haepo_loss(xp.asarray(logp), xp.asarray(np.full(6, 0.7)), normalize_returns=method)
    assert float(out.loss) == 0.0


def test_single_trajectory_group_gives_unit_weight_and_zero_policy_gradient(xp):
    logp = EDGE_LOGP
    returns = np.array([5.0, 1.0, -1.0, 0.5, 0.0, 2.0])
    g = np.array([7, 1, 1, 3, 3, 3])
    out, grads = hc.haepo_grad(xp.asarray(logp), xp.asarray(returns), group_ids=xp.asarray(g))
    assert float(to_np(out.weights)[0]) == 1.0
    assert float(to_np(out.normalized_returns)[0]) == 0.0
    assert np.all(to_np(grads["logp"])[0] == 0.0)
    assert float(out.stats["num_groups"]) == 3.0
    if lib(xp) in ("torch", "jax"):
        assert np.all(_autodiff_grad(xp, logp, returns, g)[0] == 0.0)
    solo = hc.haepo_loss(xp.asarray(logp[:1]), xp.asarray(returns[:1]))
    assert float(solo.loss) == 0.0 and float(solo.stats["ess"]) == 1.0


def _autodiff_grad(xp, logp, returns, g, **kw):
    if lib(xp) == "torch":
        import torch

        x = torch.tensor(logp, requires_grad=True)
        hc.haepo_loss(x, torch.tensor(returns), group_ids=torch.tensor(g), **kw).loss.backward()
        return x.grad.numpy()
    import jax

    f = lambda x: hc.haepo_loss(x, xp.asarray(returns), group_ids=xp.asarray(g), **kw).loss
    return np.asarray(jax.grad(f)(xp.asarray(logp)))


def test_temperature_flattens_the_weights(xp):
    logp = EDGE_LOGP
    returns = np.array([1.0, 0.0, 2.0, -1.0, 0.5, 0.3])
    L = logp.sum(1)
    prev_max, prev_ess = np.inf, 0.0
    for tau in (0.1, 0.5, 1.0, 4.0, 1e6):
        out = hc.haepo_loss(xp.asarray(logp), xp.asarray(returns), temperature=tau)
        e = np.exp((L - L.max()) / tau)
        close(out.weights, e / e.sum(), msg=f"tau={tau}")
        mw, ess = float(out.stats["max_weight"]), float(out.stats["ess"])
        assert mw <= prev_max and ess >= prev_ess
        prev_max, prev_ess = mw, ess
    close(out.weights, np.full(6, 1 / 6), rtol=1e-5)  # tau -> inf: uniform
    assert float(out.stats["ess"]) == pytest.approx(6.0, rel=1e-5)


# --------------------------------------------------------------------------- extremes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_likelihoods_down_to_minus_1e6_stay_finite(xp, dtype):
    dt = getattr(xp, dtype)
    rng = np.random.default_rng(4)
    # four trajectories with L in [-1e6, 0], two of them 1 nat apart near -1e6
    logp = np.array([[-5e5, -5e5], [-5e5, -499_999.0], [-0.5, -0.25], [-3.0, -200.0]])
    returns = np.array([1.0, 2.0, 0.0, 3.0])
    g = np.array([0, 0, 1, 1])
    out, grads = hc.haepo_grad(
        xp.asarray(logp, dtype=dt), xp.asarray(returns, dtype=dt), group_ids=xp.asarray(g)
    )
    for arr in (
        out.loss,
        out.weights,
        out.normalized_returns,
        out.log_likelihood,
        grads["logp"],
        *out.stats.values(),
    ):
        assert np.all(np.isfinite(to_np(arr)))
    e = np.exp(np.array([0.0, 1.0]))
    close(to_np(out.weights)[:2], e / e.sum(), rtol=1e-6 if dtype == "float32" else 1e-12)
    close(to_np(out.weights)[2:], [1.0, 0.0], atol=1e-30)
    if lib(xp) in ("torch", "jax"):
        assert np.all(np.isfinite(_autodiff_grad(xp, logp, returns, g)))
    if lib(xp) == "jax":
        return  # the large shapes below cost JAX ~10 s of compiling; the code path is shared
    # one group of M = 4096 with L spread over [-1e6, 0], and T = 8192 steps
    big = -rng.uniform(0, 1e6, size=(4096, 1))
    out = hc.haepo_loss(xp.asarray(big, dtype=dt), xp.asarray(rng.normal(size=4096), dtype=dt))
    assert np.isfinite(float(out.loss)) and float(xp.sum(out.weights)) == pytest.approx(1.0)
    long = rng.uniform(-122.0, 0.0, size=(3, 8192))  # L_k around -5e5
    out = hc.haepo_loss(xp.asarray(long, dtype=dt), xp.asarray([1.0, 0.0, 2.0], dtype=dt))
    assert np.all(np.isfinite(to_np(out.weights))) and np.isfinite(float(out.loss))
    close(out.log_likelihood, long.sum(1), rtol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
def test_low_precision_inputs_compute_in_float32(xp, low):
    """bf16/fp16 inputs are upcast: the result equals the float32 computation on the same
    (rounded) values, cast back, within the low-precision format's rounding."""
    if lib(xp) not in ("torch", "jax"):
        pytest.skip(f"{lib(xp)} has no {low}")
    rng = np.random.default_rng(5)
    t = 4096  # L_k ~ -41: a 16-bit running sum would stall far from it
    logp32 = rng.uniform(-0.02, 0.0, size=(3, t)).astype(np.float32)
    returns = np.array([1.0, 0.0, 2.0], np.float32)
    ent = rng.uniform(0, 1, size=(3, t)).astype(np.float32)
    if lib(xp) == "torch":
        import torch

        dt = getattr(torch, low)
        lp = torch.tensor(logp32).to(dt).requires_grad_(True)
        args = (torch.tensor(returns).to(dt),)
        kw = {"entropy": torch.tensor(ent).to(dt), "entropy_coef": 0.01}
        out = hc.haepo_loss(lp, *args, **kw)
        out.loss.backward()
        grad = lp.grad
        rounded = lp.detach().float().numpy()
        rounded_ent = kw["entropy"].float().numpy()
    else:
        import jax
        import jax.numpy as jnp

        dt = getattr(jnp, low)
        lp = jnp.asarray(logp32).astype(dt)
        args = (jnp.asarray(returns).astype(dt),)
        kw = {"entropy": jnp.asarray(ent).astype(dt), "entropy_coef": 0.01}
        out = hc.haepo_loss(lp, *args, **kw)
        grad = jax.grad(lambda x: hc.haepo_loss(x, *args, **kw).loss)(lp)
        rounded = np.asarray(lp.astype(jnp.float32))
        rounded_ent = np.asarray(kw["entropy"].astype(jnp.float32))
    assert out.loss.dtype == dt and out.weights.dtype == dt and grad.dtype == dt
    assert all(v.dtype == dt for v in out.stats.values())
    ret_r = to_np(args[0]).astype(np.float64)
    _, ref_grad = hc.haepo_grad(
        rounded, ret_r.astype(np.float32), entropy=rounded_ent, entropy_coef=0.01
    )
    want = reference(rounded, None, ret_r, entropy=rounded_ent, entropy_coef=0.01)
    tol = 2.0**-7 if low == "bfloat16" else 2.0**-10  # one rounding of the 16-bit format
    close(out.log_likelihood, want["log_likelihood"], rtol=tol, atol=0)
    close(out.weights, want["weights"], rtol=tol, atol=1e-6)
    close(out.loss, want["loss"], rtol=tol, atol=1e-4)
    close(grad, to_np(ref_grad["logp"]), rtol=2 * tol, atol=1e-6)


# --------------------------------------------------------------------------- namespace/dtype/device
def _check_array(x, ns, dtype, device, what):
    assert array_api_compat.array_namespace(x) is ns, f"{what}: namespace"
    assert x.dtype == dtype, f"{what}: dtype {x.dtype} != {dtype}"
    assert array_api_compat.device(x) == device, f"{what}: device"


def _devices(xp):
    if lib(xp) == "array_api_strict":
        # array-api-strict simulates several devices: a non-default one proves that every
        # array the core creates follows its input's device.
        return [xp.Device("CPU_DEVICE"), xp.Device("device1")]
    return [None]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outputs_stay_in_input_namespace_dtype_and_device(xp, dtype):
    dt = getattr(xp, dtype)
    logp, mask, returns, gid, entropy, ref = batch(6)
    logp = np.where(mask, logp, 0.0)
    for device in _devices(xp):
        kw_dev = {} if device is None else {"device": device}

        def floats(a, kw_dev=kw_dev):
            return xp.asarray(a, dtype=dt, **kw_dev)

        def ints(a, kw_dev=kw_dev):  # integer and bool arrays keep their dtype
            return xp.asarray(a, **kw_dev)

        lp = floats(logp)
        ns = array_api_compat.array_namespace(lp)
        dev = array_api_compat.device(lp)
        common = {"group_ids": ints(gid), "entropy_coef": 0.1, "kl_coef": 0.1}
        outs = {
            "haepo_loss": hc.haepo_loss(
                lp,
                floats(returns),
                ints(mask),
                entropy=floats(entropy),
                ref_logp=floats(ref),
                **common,
            ),
            "haepo_loss_packed": hc.haepo_loss_packed(
                floats(logp[mask]),
                ints(np.nonzero(mask)[0]),
                floats(returns),
                entropy=floats(entropy[mask]),
                ref_logp=floats(ref[mask]),
                **common,
            ),
            "haepo_loss_from_logits": hc.haepo_loss_from_logits(
                floats(np.ones((6, 5, 3))),
                ints(np.zeros((6, 5), np.int64)),
                floats(returns),
                ints(mask),
                ref_logits=floats(np.zeros((6, 5, 3))),
                **common,
            ),
        }
        grad_out, grads = hc.haepo_grad(
            lp, floats(returns), ints(mask), entropy=floats(entropy), ref_logp=floats(ref), **common
        )
        outs["haepo_grad"] = grad_out
        for name, out in outs.items():
            assert isinstance(out, hc.HAEPOOutput)
            for field in ("loss", "weights", "normalized_returns", "log_likelihood"):
                _check_array(getattr(out, field), ns, dt, dev, f"{name}.{field}")
            assert out.loss.ndim == 0 and out.weights.shape == (6,)
            for key in ("policy_loss", "entropy", "kl", "ess", "max_weight", "weighted_return"):
                _check_array(out.stats[key], ns, dt, dev, f"{name}.stats[{key}]")
                assert out.stats[key].ndim == 0
        for key, g in grads.items():
            _check_array(g, ns, dt, dev, f"haepo_grad[{key}]")
        blocks = {
            "trajectory_log_likelihood": hc.trajectory_log_likelihood(lp, ints(mask)),
            "plackett_luce_weights": hc.plackett_luce_weights(floats(returns), ints(gid)),
            "normalize_returns": hc.normalize_returns(floats(returns), ints(gid)),
            "entropy_from_logits": hc.entropy_from_logits(floats(np.ones((2, 3)))),
            "kl_from_logits": hc.kl_from_logits(floats(np.ones((2, 3))), floats(np.zeros((2, 3)))),
            "kl_estimate": hc.kl_estimate(lp, floats(ref)),
            "effective_sample_size": hc.effective_sample_size(floats(np.full(6, 0.5)), ints(gid)),
        }
        for name, value in blocks.items():
            _check_array(value, ns, dt, dev, name)
