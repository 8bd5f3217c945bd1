"""Bad input: the JAX backend raises the core's errors (same type, same message) on concrete
arrays; shape errors surface at trace time under jit; value checks under tracing follow the
documented rules (NaN propagation by default, checkify with ``traced_checks=True``)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import haepo_backends.jax as hj  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import checkify  # noqa: E402

import haepo_core as hc  # noqa: E402

M, T = 4, 3
LOGP = np.log(np.full((M, T), 0.5))
R = np.array([1.0, 0.0, 2.0, 1.0])
MASK = np.ones((M, T), dtype=bool)

# (name, function name, args, kwargs): every case is run on the core (NumPy) and on the backend
# (JAX) and must raise the same exception type with the same message.
BAD = [
    ("logp rank", "haepo_loss", (LOGP[0], R), {}),
    ("logp int", "haepo_loss", (np.zeros((M, T), np.int32), R), {}),
    ("returns length", "haepo_loss", (LOGP, np.ones(5)), {}),
    ("returns 2-d", "haepo_loss", (LOGP, np.ones((M, 1))), {}),
    ("mask shape", "haepo_loss", (LOGP, R, np.ones((M, T + 1), bool)), {}),
    ("mask values", "haepo_loss", (LOGP, R, np.full((M, T), 2, np.int32)), {}),
    (
        "mask float ok but empty row",
        "haepo_loss",
        (LOGP, R, np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]], np.float32)),
        {},
    ),
    ("nan logp", "haepo_loss", (np.where(np.eye(M, T) > 0, np.nan, LOGP), R), {}),
    ("inf returns", "haepo_loss", (LOGP, np.array([1.0, np.inf, 0.0, 0.0])), {}),
    ("group_ids float", "haepo_loss", (LOGP, R), {"group_ids": np.zeros(M)}),
    ("group_ids length", "haepo_loss", (LOGP, R), {"group_ids": np.zeros(M + 1, np.int32)}),
    ("entropy shape", "haepo_loss", (LOGP, R), {"entropy": np.zeros((M, T + 1))}),
    ("entropy missing", "haepo_loss", (LOGP, R), {"entropy_coef": 0.1}),
    ("ref missing", "haepo_loss", (LOGP, R), {"kl_coef": 0.1}),
    ("negative coef", "haepo_loss", (LOGP, R), {"entropy_coef": -1.0}),
    ("zero temperature", "haepo_loss", (LOGP, R), {"temperature": 0.0}),
    ("bad estimator", "haepo_loss", (LOGP, R), {"kl_estimator": "k4"}),
    ("bad normalization", "haepo_loss", (LOGP, R), {"normalize_returns": "minmax"}),
    ("length_normalize type", "haepo_loss", (LOGP, R), {"length_normalize": 1}),
    (
        "packed segment range",
        "haepo_loss_packed",
        (LOGP.reshape(-1), np.repeat(np.arange(M), T) + 1, R),
        {},
    ),
    (
        "packed empty trajectory",
        "haepo_loss_packed",
        (LOGP.reshape(-1), np.repeat(np.arange(M), T) % 3, R),
        {},
    ),
    ("packed float ids", "haepo_loss_packed", (LOGP.reshape(-1), np.zeros(M * T), R), {}),
    ("logits rank", "haepo_loss_from_logits", (LOGP, np.zeros((M, T), np.int32), R), {}),
    ("actions dtype", "haepo_loss_from_logits", (np.zeros((M, T, 5)), np.zeros((M, T)), R), {}),
    (
        "actions range",
        "haepo_loss_from_logits",
        (np.zeros((M, T, 5)), np.full((M, T), 5, np.int32), R),
        {},
    ),
    (
        "both refs",
        "haepo_loss_from_logits",
        (np.zeros((M, T, 5)), np.zeros((M, T), np.int32), R),
        {"ref_logits": np.zeros((M, T, 5)), "ref_logp": np.zeros((M, T))},
    ),
    (
        "ref_logits shape",
        "haepo_loss_from_logits",
        (np.zeros((M, T, 5)), np.zeros((M, T), np.int32), R),
        {"ref_logits": np.zeros((M, T, 6))},
    ),
    (
        "nan logits",
        "haepo_loss_from_logits",
        (np.full((M, T, 5), np.nan), np.zeros((M, T), np.int32), R),
        {},
    ),
]


@pytest.mark.parametrize(("name", "fn", "args", "kwargs"), BAD, ids=[b[0] for b in BAD])
def test_same_error_as_core_on_concrete_arrays(name, fn, args, kwargs):
    with pytest.raises((ValueError, TypeError)) as core_err:
        getattr(hc, fn)(*args, **kwargs)
    j_args = [jnp.asarray(a) for a in args]
    j_kwargs = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    with pytest.raises(core_err.type) as err:
        getattr(hj, fn)(*j_args, **j_kwargs)
    assert str(err.value) == str(core_err.value)


def test_from_hidden_errors_name_the_argument():
    h = jnp.zeros((M, T, 8))
    w = jnp.zeros((5, 8))
    a = jnp.zeros((M, T), jnp.int32)
    r = jnp.asarray(R)
    with pytest.raises(ValueError, match=r"weight: expected shape \[V, H\] with H = 8"):
        hj.haepo_loss_from_hidden(h, jnp.zeros((5, 7)), a, r)
    with pytest.raises(ValueError, match=r"bias: expected shape \[V\]"):
        hj.haepo_loss_from_hidden(h, w, a, r, bias=jnp.zeros(6))
    with pytest.raises(ValueError, match=r"ref_weight, ref_bias: given without ref_hidden"):
        hj.haepo_loss_from_hidden(h, w, a, r, ref_weight=w)
    with pytest.raises(ValueError, match="ref_hidden, ref_logp: expected at most one"):
        hj.haepo_loss_from_hidden(h, w, a, r, ref_hidden=h, ref_logp=jnp.zeros((M, T)))
    with pytest.raises(ValueError, match="hidden: expected finite values"):
        hj.haepo_loss_from_hidden(h.at[0, 0, 0].set(jnp.nan), w, a, r)
    with pytest.raises(TypeError, match="chunk_size: expected a static Python int"):
        hj.haepo_loss_from_hidden(h, w, a, r, chunk_size=2.0)
    with pytest.raises(ValueError, match="chunk_size: expected an int >= 1, got 0"):
        hj.haepo_loss_from_hidden(h, w, a, r, chunk_size=0)


def test_backend_specific_keywords_and_library_errors():
    lp, r = jnp.asarray(LOGP), jnp.asarray(R)
    with pytest.raises(TypeError, match="num_groups: expected a static Python int"):
        hj.haepo_loss(lp, r, group_ids=jnp.zeros(M, jnp.int32), num_groups=2.0)
    with pytest.raises(ValueError, match=r"group_ids: expected dense ids in 0..num_groups-1"):
        hj.haepo_loss(lp, r, group_ids=jnp.asarray([0, 1, 2, 7]), num_groups=3)
    with pytest.raises(ValueError, match="num_groups: expected a static int when axis_name"):
        hj.haepo_loss(lp, r, group_ids=jnp.zeros(M, jnp.int32), axis_name="d")
    with pytest.raises(TypeError, match=r"logp: expected a jax\.Array"):
        hj.haepo_loss(LOGP, R)
    with pytest.raises(TypeError, match=r"returns: expected a jax\.Array"):
        hj.haepo_loss(lp, R)
    with pytest.raises(TypeError, match="traced_checks: expected a bool"):
        hj.haepo_loss(lp, r, traced_checks="yes")


def test_shape_errors_raise_at_trace_time_under_jit():
    f = jax.jit(lambda lp, r: hj.haepo_loss(lp, r).loss)
    with pytest.raises(ValueError, match=r"returns: expected length M = 4"):
        f.lower(jnp.asarray(LOGP), jnp.ones(5))  # lowering traces; nothing is compiled or run
    g = jax.jit(lambda lp, r, e: hj.haepo_loss(lp, r, entropy=e, entropy_coef=0.1).loss)
    with pytest.raises(ValueError, match=r"entropy: expected shape \[M, T\]"):
        g.lower(jnp.asarray(LOGP), jnp.asarray(R), jnp.zeros((M, T + 1)))


def test_value_checks_under_jit_propagate_nan_by_default():
    bad = jnp.asarray(LOGP).at[1, 1].set(jnp.nan)
    f = jax.jit(lambda lp, mk: hj.haepo_loss(lp, jnp.asarray(R), mk).loss)
    assert np.isnan(float(f(bad, jnp.asarray(MASK))))  # NaN at a valid step: NaN loss
    pad = jnp.asarray(MASK).at[1, 1].set(False)
    assert np.isfinite(float(f(bad, pad)))  # the same NaN in padding: no effect
    g = jax.jit(jax.grad(lambda lp: hj.haepo_loss(lp, jnp.asarray(R), pad).loss))(bad)
    assert np.all(np.isfinite(np.asarray(g))) and float(g[1, 1]) == 0.0


def test_traced_checks_report_through_checkify():
    bad = jnp.asarray(LOGP).at[1, 1].set(jnp.nan)

    def f(lp, mk, seg):
        out = hj.haepo_loss(lp, jnp.asarray(R), mk, traced_checks=True)
        packed = hj.haepo_loss_packed(lp.reshape(-1), seg, jnp.asarray(R), traced_checks=True)
        return out.loss + packed.loss

    checked = checkify.checkify(jax.jit(f))
    seg = jnp.repeat(jnp.arange(M), T)
    err, _ = checked(jnp.asarray(LOGP), jnp.asarray(MASK), seg)
    assert err.get() is None
    err, _ = checked(bad, jnp.asarray(MASK), seg)
    assert "logp: expected finite values at valid positions, got 1 NaN/inf" in err.get()
    empty = jnp.asarray(MASK).at[2].set(False)
    err, _ = checked(jnp.asarray(LOGP), empty, seg)
    assert "mask: expected every trajectory to have at least one valid step, got 1" in err.get()
    err, _ = checked(jnp.asarray(LOGP), jnp.asarray(MASK), seg.at[0].set(9))
    assert "segment_ids: expected values in 0..M-1 = 0..3, got 1 values outside" in err.get()
    # Without the checkify wrapper JAX refuses to stage the checks: that is the documented
    # contract of traced_checks=True.
    with pytest.raises(ValueError, match="checkify"):
        jax.jit(f)(jnp.asarray(LOGP), jnp.asarray(MASK), seg)
