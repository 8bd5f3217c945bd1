"""The ``backend`` object: the haepo_core.Backend protocol, NumPy in/out, autograd gradients
against the core's closed form, and variants that agree with it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import array_api_compat  # noqa: E402
from haepo_backends.torch import backend  # noqa: E402

import haepo_core  # noqa: E402


def _inputs(seed=0, m=6, t=4):
    rng = np.random.default_rng(seed)
    mask = rng.random((m, t)) > 0.3
    mask[:, 0] = True
    return {
        "logp": -3 * rng.random((m, t)),
        "returns": rng.normal(size=m),
        "mask": mask,
        "group_ids": np.array([0, 0, 5, 5, 2, 2])[:m],
        "entropy": rng.random((m, t)),
        "ref_logp": -3 * rng.random((m, t)),
    }


KW = dict(entropy_coef=0.1, kl_coef=0.3, kl_estimator="k2", temperature=0.6)


def test_is_a_backend_and_loads_by_entry_point():
    assert isinstance(backend, haepo_core.Backend)
    assert "torch" in haepo_core.list_backends()
    loaded = haepo_core.load_backend("torch")
    assert loaded is backend
    assert backend.name == "torch" and backend.supports_packed
    assert set(backend.dtypes) >= {"float32", "float64", "bfloat16", "float16"}
    assert backend.differentiable == ("logp", "entropy")
    assert "cpu" in backend.devices
    assert backend.xp is array_api_compat.array_namespace(torch.zeros(1))


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_asarray_and_to_numpy_round_trip(dtype):
    x = np.array([[0.5, -1.25]])
    t = backend.asarray(x, dtype=dtype)
    assert isinstance(t, torch.Tensor) and str(t.dtype) == f"torch.{dtype}"
    np.testing.assert_allclose(backend.to_numpy(t), x)
    ids = backend.asarray(np.array([1, 2], dtype=np.int32), dtype=dtype)
    assert ids.dtype == torch.int32  # integer arrays keep their kind
    assert backend.asarray(np.array([True])).dtype == torch.bool


def test_value_and_grad_matches_core_closed_form():
    inputs = _inputs()
    loss, grads = backend.value_and_grad(inputs, wrt=("logp", "entropy"), **KW)
    ref = haepo_core.load_backend("numpy")
    loss_ref, grads_ref = ref.value_and_grad(inputs, wrt=("logp", "entropy"), **KW)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(grads["logp"], grads_ref["logp"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["entropy"], grads_ref["entropy"], rtol=1e-9, atol=1e-12)


def test_packed_value_and_grad_matches_core():
    inputs = _inputs(1)
    m = inputs.pop("mask")
    packed = {k: (v[m] if k in ("logp", "entropy", "ref_logp") else v) for k, v in inputs.items()}
    packed["segment_ids"] = np.nonzero(m)[0]
    loss, grads = backend.value_and_grad(packed, packed=True, **KW)
    loss_ref, grads_ref = haepo_core.load_backend("numpy").value_and_grad(packed, packed=True, **KW)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(grads["logp"], grads_ref["logp"], rtol=1e-9, atol=1e-12)


def test_value_and_grad_rejects_what_it_cannot_differentiate():
    with pytest.raises(ValueError, match="wrt"):
        backend.value_and_grad(_inputs(), wrt=("returns",))
    inputs = _inputs()
    del inputs["entropy"]
    with pytest.raises(ValueError, match="entropy"):
        backend.value_and_grad(inputs, wrt=("entropy",))


@pytest.mark.parametrize("name", ["compile", "core_autograd"])
def test_variants_agree_with_the_backend(name):
    variant = backend.variants()[name]
    assert isinstance(variant, haepo_core.Backend)
    inputs = _inputs(2)
    loss, grads = backend.value_and_grad(inputs, wrt=("logp", "entropy"), **KW)
    loss_v, grads_v = variant.value_and_grad(inputs, wrt=("logp", "entropy"), **KW)
    assert loss_v == pytest.approx(loss, rel=1e-10)
    for k in grads:
        np.testing.assert_allclose(grads_v[k], grads[k], rtol=1e-8, atol=1e-12)


def test_float32_value_and_grad_is_close_to_float64():
    inputs = _inputs(3)
    l32, g32 = backend.value_and_grad(inputs, dtype="float32", **KW)
    l64, g64 = backend.value_and_grad(inputs, dtype="float64", **KW)
    assert g32["logp"].dtype == np.float32
    assert l32 == pytest.approx(l64, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(g32["logp"], g64["logp"], rtol=1e-4, atol=1e-6)
