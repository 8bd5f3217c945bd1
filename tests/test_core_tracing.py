"""The core under tracing (``jax.jit``, ``torch.compile``), exactly as docs/spec.md
("Under tracing") says: shape, rank, dtype and option errors still raise at trace time; value
checks (NaN/inf at valid positions, empty trajectories, ids out of range) are skipped and
non-finite values propagate as NaN/inf; padding still never reaches the result; traced results
equal eager ones. Also: importing ``haepo_core`` imports no array framework."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import haepo_core as hc

LOGP = np.array([[-1.0, -0.5, -0.2], [-2.0, -0.1, -0.3], [-0.4, -0.4, -0.4], [-3.0, -1.0, -0.5]])
MASK = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], bool)
RETURNS = np.array([1.0, 0.0, 2.0, -1.0])
GIDS = np.array([4, 4, 9, 9])
REF = LOGP - 0.3


@pytest.fixture
def jax_np():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jax, jnp


def _loss_fn(**opts):
    def f(logp, returns, mask, group_ids, ref_logp):
        return hc.haepo_loss(
            logp, returns, mask, group_ids=group_ids, ref_logp=ref_logp, kl_coef=0.2, **opts
        ).loss

    return f


def test_jit_matches_eager_with_traced_group_ids_and_gradient(jax_np):
    """Under jit the group labels are traced (the core then uses M segments, empty ones
    ignored): value and gradient equal the eager result and the closed form."""
    jax, jnp = jax_np
    args = [jnp.asarray(a) for a in (LOGP, RETURNS, MASK, GIDS, REF)]
    for opts in ({}, {"temperature": 0.5, "length_normalize": True, "normalize_returns": "center"}):
        f = _loss_fn(**opts)
        eager = float(f(*args))
        traced = float(jax.jit(f)(*args))
        assert traced == pytest.approx(eager, rel=1e-12, abs=1e-14)
        g = jax.jit(jax.grad(f))(*args)
        _, closed = hc.haepo_grad(
            LOGP, RETURNS, MASK, group_ids=GIDS, ref_logp=REF, kl_coef=0.2, **opts
        )
        np.testing.assert_allclose(np.asarray(g), closed["logp"], rtol=1e-10, atol=1e-13)


def test_jit_with_traced_coefficients(jax_np):
    """Coefficients and temperature may be traced scalars (their range is then not checked)."""
    jax, jnp = jax_np

    def f(logp, kl_coef, temperature):
        return hc.haepo_loss(
            logp,
            jnp.asarray(RETURNS),
            jnp.asarray(MASK),
            ref_logp=jnp.asarray(REF),
            kl_coef=kl_coef,
            temperature=temperature,
        ).loss

    traced = jax.jit(f)(jnp.asarray(LOGP), 0.3, 2.0)
    eager = hc.haepo_loss(LOGP, RETURNS, MASK, ref_logp=REF, kl_coef=0.3, temperature=2.0).loss
    assert float(traced) == pytest.approx(float(eager), rel=1e-12)


@pytest.mark.parametrize(
    ("bad", "exc", "pattern"),
    [
        ({"logp": LOGP[0]}, ValueError, r"logp: expected a 2-d array"),
        ({"logp": LOGP.astype(np.int64)}, TypeError, r"logp: expected a real floating dtype"),
        ({"returns": RETURNS[:3]}, ValueError, r"returns: expected length M = 4"),
        ({"mask": MASK[:, :2]}, ValueError, r"mask: expected shape"),
        ({"group_ids": GIDS.astype(np.float64)}, TypeError, r"group_ids: expected an integer"),
        ({"ref_logp": REF[:2]}, ValueError, r"ref_logp: expected shape"),
    ],
    ids=["rank", "dtype", "returns_length", "mask_shape", "group_ids_dtype", "ref_shape"],
)
def test_shape_and_dtype_errors_still_raise_at_trace_time_under_jit(jax_np, bad, exc, pattern):
    jax, jnp = jax_np
    args = {"logp": LOGP, "returns": RETURNS, "mask": MASK, "group_ids": GIDS, "ref_logp": REF}
    args.update(bad)
    with pytest.raises(exc, match=pattern):
        jax.jit(_loss_fn())(*(jnp.asarray(v) for v in args.values()))


def test_option_errors_still_raise_under_jit(jax_np):
    jax, jnp = jax_np
    for opts, pattern in (
        ({"temperature": 0.0}, "temperature"),
        ({"kl_estimator": "k5"}, "kl_estimator: expected one of"),
        ({"normalize_returns": "rank"}, "normalize_returns: expected one of"),
    ):
        with pytest.raises(ValueError, match=pattern):
            jax.jit(_loss_fn(**opts))(*(jnp.asarray(a) for a in (LOGP, RETURNS, MASK, GIDS, REF)))


def test_value_checks_are_skipped_under_jit_and_nan_propagates(jax_np):
    jax, jnp = jax_np
    f = jax.jit(_loss_fn())
    rest = [jnp.asarray(a) for a in (RETURNS, MASK, GIDS, REF)]
    bad = LOGP.copy()
    bad[0, 0] = np.nan  # a valid position: eager raises, jit cannot look at values
    with pytest.raises(ValueError, match="logp: expected finite values"):
        _loss_fn()(jnp.asarray(bad), *rest)
    assert np.isnan(float(f(jnp.asarray(bad), *rest)))
    bad[0, 0] = np.inf
    assert not np.isfinite(float(f(jnp.asarray(bad), *rest)))
    # padding is still sanitized under jit: NaN/inf there change nothing
    padded = np.where(MASK, LOGP, np.nan)
    assert float(f(jnp.asarray(padded), *rest)) == pytest.approx(float(f(jnp.asarray(LOGP), *rest)))

    # an empty trajectory is not detected under jit: it counts with L_k = 0 (check eagerly)
    def plain(logp, mask):
        return hc.haepo_loss(logp, rest[0], mask, group_ids=rest[2]).loss

    empty = MASK.copy()
    empty[1] = False
    with pytest.raises(ValueError, match="at least one valid step"):
        plain(jnp.asarray(LOGP), jnp.asarray(empty))
    traced = jax.jit(plain)(jnp.asarray(LOGP), jnp.asarray(empty))
    zeroed = LOGP.copy()
    zeroed[1] = 0.0
    one_step = empty.copy()
    one_step[1, 0] = True  # a single step of log-prob 0: L_1 = 0
    want = plain(jnp.asarray(zeroed), jnp.asarray(one_step))
    assert float(traced) == pytest.approx(float(want), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_matches_eager_and_skips_value_checks():
    torch = pytest.importorskip("torch")
    f = _loss_fn()
    args = [torch.asarray(a) for a in (LOGP, RETURNS, MASK, GIDS, REF)]
    # backend="eager": Dynamo traces the core (is_compiling() is True) without Inductor codegen
    compiled = torch.compile(f, backend="eager")
    assert float(compiled(*args)) == pytest.approx(float(f(*args)), rel=1e-12)
    bad = args[0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="logp: expected finite values"):
        f(bad, *args[1:])
    assert torch.isnan(compiled(bad, *args[1:]))


def test_import_haepo_core_imports_no_array_framework():
    """haepo_core depends on array-api-compat alone: importing it (and listing backends) pulls
    in neither torch, jax nor NumPy."""
    code = (
        "import sys, json, haepo_core\n"
        "haepo_core.list_backends()\n"
        "print(json.dumps(sorted(m for m in ('torch', 'jax', 'jaxlib', 'numpy', 'array_api_strict',"
        " 'cupy', 'tensorflow') if m in sys.modules)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
