"""The ``haepo_backends.jax.backend`` object: the ``haepo_core.Backend`` protocol, its
NumPy boundary, ``value_and_grad`` against the core's closed form, and its variants."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from haepo_backends.jax import JaxBackend, backend  # noqa: E402

import haepo_core as hc  # noqa: E402


def _inputs(seed=0, m=8, t=5):
    rng = np.random.default_rng(seed)
    mask = rng.random((m, t)) < 0.8
    mask[:, 0] = True
    return dict(
        logp=rng.normal(size=(m, t)) - 1, returns=rng.normal(size=m), mask=mask,
        group_ids=rng.integers(0, 3, m) * 5, entropy=rng.random((m, t)),
        ref_logp=rng.normal(size=(m, t)) - 1,
    )


KW = dict(entropy_coef=0.1, kl_coef=0.2, temperature=1.2)


def test_protocol_attributes_and_entry_point():
    assert isinstance(backend, hc.Backend)
    assert "jax" in hc.list_backends()
    loaded = hc.load_backend("jax")
    assert loaded is backend
    assert backend.name == "jax" and backend.xp is jnp
    assert backend.dtypes == ("float32", "float64") and "cpu" in backend.devices
    assert backend.supports_packed and backend.differentiable == ("logp", "entropy")
    assert set(backend.variants()) == {"jit", "jit_num_groups", "chunked", "sharded"}
    assert all(isinstance(v, hc.Backend) for v in backend.variants().values())


def test_asarray_dtypes_and_to_numpy_roundtrip():
    x64 = backend.asarray(np.arange(3.0), dtype="float64")
    assert x64.dtype == jnp.float64 and jax.config.jax_enable_x64  # x64 switched on on demand
    x32 = backend.asarray(np.arange(3.0), dtype="float32")
    assert isinstance(x32, jax.Array) and x32.dtype == jnp.float32
    ids = backend.asarray(np.arange(3), dtype="float32")  # integers keep their kind
    assert jnp.issubdtype(ids.dtype, jnp.integer)
    back = backend.to_numpy(x32)
    assert isinstance(back, np.ndarray) and np.array_equal(back, np.arange(3.0))
    out = backend.haepo_loss(backend.asarray(_inputs()["logp"]), backend.asarray(np.ones(8)))
    assert isinstance(out, hc.HAEPOOutput)


@pytest.mark.parametrize("name", ["eager", "jit", "jit_num_groups", "chunked", "sharded"])
def test_value_and_grad_matches_core_closed_form_in_every_variant(name):
    b = backend if name == "eager" else backend.variants()[name]
    inp = _inputs()
    ref_loss, ref_grads = hc.load_backend("numpy").value_and_grad(
        inp, wrt=("logp", "entropy"), **KW)
    loss, grads = b.value_and_grad(inp, wrt=("logp", "entropy"), **KW)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    for k in ("logp", "entropy"):
        assert isinstance(grads[k], np.ndarray)
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-9, atol=1e-13)


def test_value_and_grad_packed_and_float32():
    inp = _inputs(seed=1)
    mask = inp.pop("mask")
    packed = dict(logp=inp["logp"][mask], segment_ids=np.nonzero(mask)[0],
                  returns=inp["returns"], group_ids=inp["group_ids"],
                  ref_logp=inp["ref_logp"][mask])
    ref = hc.load_backend("numpy").value_and_grad(packed, packed=True, kl_coef=0.3)
    loss, grads = backend.value_and_grad(packed, packed=True, kl_coef=0.3)
    np.testing.assert_allclose(loss, ref[0], rtol=1e-10)
    np.testing.assert_allclose(grads["logp"], ref[1]["logp"], rtol=1e-9, atol=1e-13)
    loss32, grads32 = backend.value_and_grad(packed, packed=True, kl_coef=0.3, dtype="float32")
    assert grads32["logp"].dtype == np.float32
    np.testing.assert_allclose(loss32, ref[0], rtol=1e-5)


def test_value_and_grad_from_logits_inputs_with_chunked_variant():
    rng = np.random.default_rng(2)
    m, t, v = 6, 4, 7
    inp = dict(logits=rng.normal(size=(m, t, v)), actions=rng.integers(0, v, (m, t)),
               returns=rng.normal(size=m), ref_logits=rng.normal(size=(m, t, v)))
    kw = dict(entropy_coef=0.1, kl_coef=0.2)
    loss, grads = backend.value_and_grad(inp, wrt=("logits",), **kw)
    loss_c, grads_c = backend.variants()["chunked"].value_and_grad(inp, wrt=("logits",), **kw)
    core = hc.haepo_loss_from_logits(inp["logits"], inp["actions"], inp["returns"],
                                     ref_logits=inp["ref_logits"], **kw)
    np.testing.assert_allclose([loss, loss_c], float(core.loss), rtol=1e-10)
    np.testing.assert_allclose(grads_c["logits"], grads["logits"], rtol=1e-10, atol=1e-14)


def test_value_and_grad_rejects_bad_requests():
    inp = _inputs()
    with pytest.raises(ValueError, match="wrt: expected a subset of"):
        backend.value_and_grad(inp, wrt=("returns",))
    inp.pop("entropy")
    with pytest.raises(ValueError, match="wrt: 'entropy' needs an entropy input"):
        backend.value_and_grad(inp, wrt=("entropy",))
    with pytest.raises(ValueError, match="mode: expected one of"):
        JaxBackend("pmap")
