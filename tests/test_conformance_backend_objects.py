"""The backend objects of the project (numpy, array-api-strict, torch, JAX) under the Backend
protocol: what each declares, the suite's NumPy boundary on their arrays, their ``grad`` and
``hvp`` against the core's closed form and finite differences, and their variants (the JAX jit
variants jit the loss itself)."""

from __future__ import annotations

import numpy as np
import pytest
from haepo_conformance._boundary import (
    LossFn,
    backend_grad,
    backend_hvp,
    call_entry,
    to_backend,
    to_numpy,
)
from haepo_conformance._runner import capabilities

import haepo_core


def _inputs(seed: int = 0, m: int = 6, t: int = 4) -> dict[str, np.ndarray]:
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


KW = {"entropy_coef": 0.1, "kl_coef": 0.3, "kl_estimator": "k2", "temperature": 0.6}
WRT = ("logp", "entropy")


def _core_grad(inputs):
    return backend_grad(haepo_core.load_backend("numpy"), "haepo_loss", inputs, KW, WRT, "float64")


def test_a_backend_needs_only_name_namespace_dtypes_and_haepo_loss():
    class Minimal:
        name = "minimal"
        xp = np
        dtypes = ("float64",)

        def haepo_loss(self, logp, returns, mask=None, **kw):
            return haepo_core.haepo_loss(logp, returns, mask, **kw)

    b = Minimal()
    assert isinstance(b, haepo_core.Backend)
    assert capabilities(b) == ["haepo_loss"]
    from haepo_conformance import PROPERTIES, RunConfig, run_property

    cfg = RunConfig(max_examples=3, derandomize=True)
    assert run_property(b, PROPERTIES["values"], cfg).status == "PASS"
    for name in ("gradient", "invariance.packed", "logits.values", "gradient.second_order"):
        assert run_property(b, PROPERTIES[name], cfg).status == "SKIP"


def test_core_backends_declare_the_padded_and_packed_losses_and_grad():
    for name in ("numpy", "array_api_strict"):
        b = haepo_core.load_backend(name)
        assert capabilities(b) == ["haepo_loss", "haepo_loss_packed", "grad"]


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_boundary_round_trips_torch_arrays_in_every_dtype(dtype):
    torch = pytest.importorskip("torch")
    from haepo_backends.torch import backend

    x = np.array([[0.5, -1.25]])
    t = to_backend(backend, x, dtype)
    assert isinstance(t, torch.Tensor) and str(t.dtype) == f"torch.{dtype}"
    np.testing.assert_allclose(to_numpy(t), x)
    ids = to_backend(backend, np.array([1, 2], dtype=np.int32), dtype)
    assert ids.dtype == torch.int32  # integer arrays keep their kind
    assert to_backend(backend, np.array([True])).dtype == torch.bool
    tracked = torch.ones(2, requires_grad=True)
    np.testing.assert_array_equal(to_numpy(tracked * 2), [2.0, 2.0])


def test_torch_backend_capabilities_grad_and_variants():
    pytest.importorskip("torch")
    from haepo_backends.torch import backend

    assert haepo_core.load_backend("torch") is backend
    assert capabilities(backend) == [
        "haepo_loss",
        "haepo_loss_packed",
        "haepo_loss_from_logits",
        "haepo_loss_from_hidden",
        "grad",
        "hvp",
        "chunked",
    ]
    inputs = _inputs()
    loss, grads = backend_grad(backend, "haepo_loss", inputs, KW, WRT, "float64")
    ref_loss, ref = _core_grad(inputs)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k in WRT:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-9, atol=1e-12)
    variants = backend.variants()
    assert {"compile", "core_autograd"} <= set(variants)
    core = variants["core_autograd"]
    assert core.second_order == ("haepo_loss", "haepo_loss_packed", "haepo_loss_from_logits")
    for name in ("compile", "core_autograd"):
        loss_v, grads_v = backend_grad(variants[name], "haepo_loss", inputs, KW, WRT, "float64")
        assert loss_v == pytest.approx(loss, rel=1e-10)
        for k in WRT:
            np.testing.assert_allclose(grads_v[k], grads[k], rtol=1e-8, atol=1e-12)


def test_torch_triton_variant_is_present_only_where_triton_can_run():
    pytest.importorskip("torch")
    import inspect

    import haepo_backends.torch as pkg
    from haepo_backends.torch import backend

    try:
        from haepo_backends.torch import _triton

        runs = bool(_triton.available())
    except ImportError:
        runs = False
    has_kernel = "kernel" in inspect.signature(pkg.haepo_loss_from_logits).parameters
    variants = backend.variants()
    assert ("triton" in variants) == (runs and has_kernel)
    if "triton" in variants:
        triton = variants["triton"]
        assert not hasattr(triton, "haepo_loss")  # the lean paths only
        assert hasattr(triton, "haepo_loss_from_logits")


def test_torch_hvp_of_the_core_matches_finite_differences_of_grad():
    pytest.importorskip("torch")
    from haepo_backends.torch import backend

    core = backend.variants()["core_autograd"]
    inputs = _inputs(1)
    v = {"logp": np.random.default_rng(2).standard_normal(inputs["logp"].shape)}
    hv = backend_hvp(core, "haepo_loss", inputs, KW, ("logp",), v, "float64")["logp"]
    h = 1e-5
    plus = backend_grad(
        core,
        "haepo_loss",
        {**inputs, "logp": inputs["logp"] + h * v["logp"]},
        KW,
        ("logp",),
        "float64",
    )[1]["logp"]
    minus = backend_grad(
        core,
        "haepo_loss",
        {**inputs, "logp": inputs["logp"] - h * v["logp"]},
        KW,
        ("logp",),
        "float64",
    )[1]["logp"]
    np.testing.assert_allclose(hv, (plus - minus) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.fixture()
def jax_backend():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from haepo_backends.jax import backend

    return backend


def test_jax_backend_capabilities_and_boundary(jax_backend):
    import jax
    import jax.numpy as jnp

    assert haepo_core.load_backend("jax") is jax_backend
    assert "grad" in capabilities(jax_backend) and "hvp" in capabilities(jax_backend)
    assert set(jax_backend.variants()) == {"jit", "jit_num_groups", "chunked", "sharded"}
    x = to_backend(jax_backend, np.arange(3.0), "float32")
    assert isinstance(x, jax.Array) and x.dtype == jnp.float32
    assert to_backend(jax_backend, np.arange(3.0), "float64").dtype == jnp.float64
    np.testing.assert_array_equal(to_numpy(x), np.arange(3.0))


@pytest.mark.parametrize("mode", ["eager", "jit", "jit_num_groups", "sharded"])
def test_jax_grad_matches_the_core_in_every_mode(jax_backend, mode):
    b = jax_backend if mode == "eager" else jax_backend.variants()[mode]
    inputs = _inputs(3)
    loss, grads = backend_grad(b, "haepo_loss", inputs, KW, WRT, "float64")
    ref_loss, ref = _core_grad(inputs)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    for k in WRT:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-9, atol=1e-13)


def test_jax_jit_variant_jits_the_loss_itself(jax_backend):
    """The jit variant's loss is a jax.jit function per static options, then reused."""
    jit = jax_backend.variants()["jit"]
    inputs = _inputs(4)
    args = {k: to_backend(jit, v, "float64") for k, v in inputs.items()}
    out = call_entry(jit, "haepo_loss", args, KW)
    assert len(jit._jitted) == 1
    (compiled,) = jit._jitted.values()
    assert hasattr(compiled, "lower")  # a jax.jit-wrapped function
    call_entry(jit, "haepo_loss", args, KW)
    assert len(jit._jitted) == 1  # same static options: the cached compiled function
    eager = call_entry(jax_backend, "haepo_loss", args, KW)
    np.testing.assert_allclose(np.asarray(out.loss), np.asarray(eager.loss), rtol=1e-12)


def test_jax_hvp_matches_finite_differences_of_grad(jax_backend):
    inputs = _inputs(5)
    v = {"logp": np.random.default_rng(6).standard_normal(inputs["logp"].shape)}
    hv = backend_hvp(jax_backend, "haepo_loss", inputs, KW, ("logp",), v, "float64")["logp"]
    h = 1e-5
    g = [
        backend_grad(
            jax_backend,
            "haepo_loss",
            {**inputs, "logp": inputs["logp"] + s * h * v["logp"]},
            KW,
            ("logp",),
            "float64",
        )[1]["logp"]
        for s in (1, -1)
    ]
    np.testing.assert_allclose(hv, (g[0] - g[1]) / (2 * h), rtol=1e-5, atol=1e-7)


def test_loss_fn_carries_its_entry_and_options():
    b = haepo_core.load_backend("numpy")
    fn = LossFn(b, "haepo_loss", {"temperature": 2.0})
    assert fn.entry == "haepo_loss" and fn.options == {"temperature": 2.0}
    value = fn({"logp": np.zeros((2, 1)), "returns": np.array([0.0, 1.0])})
    assert float(value) == pytest.approx(0.0, abs=1e-12)
    assert "haepo_loss" in repr(fn)


def test_runner_releases_compiled_programs_every_few_examples(monkeypatch):
    import haepo_conformance._runner as runner
    from haepo_conformance import PROPERTIES, RunConfig, run_property

    released: list[str] = []
    monkeypatch.setattr(runner, "RELEASE_EVERY", 2)
    monkeypatch.setattr(runner, "release_compiled", lambda b: released.append(b.name))
    b = haepo_core.load_backend("numpy")
    res = run_property(b, PROPERTIES["values"], RunConfig(max_examples=7, derandomize=True))
    assert res.status == "PASS"
    assert released == [b.name] * (res.examples // 2)
    assert res.examples >= 4


def test_release_compiled_empties_jax_caches_and_leaves_other_libraries_alone():
    from haepo_conformance._boundary import release_compiled

    release_compiled(haepo_core.load_backend("numpy"))  # nothing to drop; must not raise
    jax = pytest.importorskip("jax")
    f = jax.jit(lambda x: x * 2.0)
    for n in (1, 2, 3):
        f(jax.numpy.ones(n))
    assert f._cache_size() == 3
    release_compiled(haepo_core.load_backend("jax"))
    assert f._cache_size() == 0
