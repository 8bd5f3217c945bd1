"""Pieces of the suite on their own: tolerances, the Case repr, the variants property, the
Backend protocol and its discovery, and the worked third-party example."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from haepo_conformance import MUTANTS, PROPERTIES, RunConfig, run_property
from haepo_conformance._boundary import LossFn, backend_grad
from haepo_conformance._reference import ConformanceError, Tolerance, assert_close
from haepo_conformance._strategies import BigCase, Case

import haepo_core

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third_party_backend"


def test_tolerances_scale_with_the_dtype():
    assert Tolerance("float64").rtol == pytest.approx(4 * math.sqrt(np.finfo(np.float64).eps))
    assert Tolerance("float32").rtol == pytest.approx(4 * math.sqrt(np.finfo(np.float32).eps))
    assert Tolerance("bfloat16").rtol == pytest.approx(8 * 2.0**-7)
    # Conditioning: |L| / tau of 1e4 in float32 loosens the weights by 16 * eps32 * 1e4.
    t = Tolerance("float32", cond=1e4)
    assert t.weight_atol == pytest.approx(t.rtol + 16 * np.finfo(np.float32).eps * 1e4)
    with pytest.raises(ValueError, match="dtype"):
        Tolerance("int8")


def test_assert_close_checks_shape_nonfinite_and_values():
    assert_close("x", [1.0, np.nan], [1.0 + 1e-9, np.nan], rtol=1e-6, atol=0.0)
    with pytest.raises(ConformanceError, match="expected shape"):
        assert_close("x", [1.0], [1.0, 2.0], rtol=1e-6, atol=0.0)
    with pytest.raises(ConformanceError, match="non-finite values differ"):
        assert_close("x", [np.nan], [1.0], rtol=1e-6, atol=0.0)
    with pytest.raises(ConformanceError, match="max error"):
        assert_close("x", [1.1], [1.0], rtol=1e-6, atol=0.0)


def test_case_repr_is_python_that_rebuilds_the_case():
    case = Case(
        logp=np.array([[-0.5, np.nan]]),
        mask=np.array([[True, False]]),
        returns=np.array([1.0]),
        group_ids=np.array([3]),
        options={"temperature": 0.5},
        dtype="float32",
    )
    again = eval(repr(case), {"np": np, "Case": Case})
    np.testing.assert_array_equal(again.logp, case.logp)
    np.testing.assert_array_equal(again.mask, case.mask)
    assert again.group_ids.dtype == np.int64 and again.options == case.options


def test_big_cases_reach_the_limits_of_the_spec():
    big = BigCase("extreme_L", 8, 16, seed=0, top=-1e3).build()
    total = np.where(big.valid, big.logp, 0.0).sum(axis=1)
    assert total.min() == pytest.approx(-1e6) and total.max() == pytest.approx(-1e3)
    assert BigCase("many_trajectories", 4096, 2, seed=1).build().logp.shape == (4096, 2)
    assert BigCase("long", 2, 8192, seed=2).build().logp.shape == (2, 8192)


class _WithVariants(haepo_core.ArrayAPIBackend):
    """NumPy backend whose variants are given (stands for jit/compile/chunked modes)."""

    def __init__(self, variants):
        super().__init__("numpy_with_variants", "numpy")
        self._variants = variants

    def variants(self):
        return self._variants


def test_variants_property_passes_equal_variants_and_fails_a_broken_one():
    cfg = RunConfig(max_examples=15, derandomize=True, shrink=False)
    good = _WithVariants({"chunked": haepo_core.load_backend("numpy")})
    assert run_property(good, PROPERTIES["variants"], cfg).status == "PASS"
    broken = _WithVariants(
        {"chunked": haepo_core.load_backend("numpy"), "jit": MUTANTS["entropy_sign"]()}
    )
    res = run_property(broken, PROPERTIES["variants"], cfg)
    assert res.status == "FAIL" and "variant 'jit' vs eager" in res.message
    assert (
        run_property(haepo_core.load_backend("numpy"), PROPERTIES["variants"], cfg).status == "SKIP"
    )


def test_unsupported_dtype_or_device_is_skipped_with_a_note():
    numpy_backend = haepo_core.load_backend("numpy")
    res = run_property(numpy_backend, PROPERTIES["values"], RunConfig(dtypes=("bfloat16",)))
    assert res.status == "SKIP" and "bfloat16" in res.note
    res = run_property(numpy_backend, PROPERTIES["values"], RunConfig(device="cuda"))
    assert res.status == "SKIP" and "cuda" in res.note


def test_backend_protocol_and_discovery():
    names = haepo_core.list_backends()
    assert {"numpy", "array_api_strict", "torch", "jax"} <= set(names)
    for name in ("numpy", "array_api_strict"):
        b = haepo_core.load_backend(name)
        assert isinstance(b, haepo_core.Backend) and b.name == name
    assert isinstance(
        haepo_core.load_backend("haepo_conformance._mutants:sample_std"), haepo_core.Backend
    )
    with pytest.raises(ValueError, match="registered backend"):
        haepo_core.load_backend("no_such_backend")
    with pytest.raises(TypeError, match=r"does not give a haepo_core\.Backend"):
        haepo_core.load_backend("math:pi")
    with pytest.raises(TypeError, match="spec"):
        haepo_core.load_backend(3)


def test_array_api_backend_packed_grad_on_array_api_strict():
    """Regression: the packing order must stay a NumPy index (it was converted to an
    array-api-strict array, and len() failed)."""
    strict = haepo_core.load_backend("array_api_strict")
    inputs = {
        "logp": np.array([-0.5, -1.0, -0.2, -0.3]),
        "segment_ids": np.array([1, 0, 1, 0]),
        "returns": np.array([1.0, 0.0]),
    }
    loss, grads = backend_grad(strict, "haepo_loss_packed", inputs, {}, ("logp",), "float64")
    numpy_backend = haepo_core.load_backend("numpy")
    ref_loss, ref_grads = backend_grad(
        numpy_backend, "haepo_loss_packed", inputs, {}, ("logp",), "float64"
    )
    assert loss == pytest.approx(ref_loss)
    np.testing.assert_allclose(grads["logp"], ref_grads["logp"])
    # trajectory 1 (steps 0 and 2) has the lower return: its log-probs are pushed down
    assert grads["logp"].shape == (4,) and np.all(grads["logp"][[0, 2]] > 0)


def test_core_grad_refuses_calls_it_has_no_closed_form_for():
    numpy_backend = haepo_core.load_backend("numpy")
    args = {"logp": np.zeros((2, 1)), "returns": np.array([0.0, 1.0])}
    with pytest.raises(TypeError, match="fn: expected a haepo_loss"):
        numpy_backend.grad(lambda a: a["logp"].sum(), args, ("logp",))
    fn = LossFn(numpy_backend, "haepo_loss", {})
    with pytest.raises(ValueError, match="wrt"):
        numpy_backend.grad(fn, args, ("returns",))
    with pytest.raises(ValueError, match="entropy"):
        numpy_backend.grad(fn, args, ("entropy",))


def test_third_party_example_backend_passes_the_suite():
    pytest.importorskip("torch")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "haepo_conformance",
            "--backend",
            "my_backend:backend",
            "--max-examples",
            "5",
            "--derandomize",
            "-q",
        ],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "backend my_torch: torch 2." in proc.stdout
    assert "bfloat16" in proc.stdout


def test_shift_invariance_expects_what_a_float16_backend_saw():
    """logp - 1000 is rounded in float16 (spacing 0.5 there): L -0.3 and -0.7 both become
    -1000.5 or -1000, so the correct weights of the shifted batch are not those of the
    unshifted one. The property expects the reference on what the backend saw."""
    pytest.importorskip("torch")
    from haepo_conformance._properties import Context, _shift

    torch_backend = haepo_core.load_backend("torch")
    options = {
        "entropy_coef": 0.0,
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "normalize_returns": "zscore",
        "temperature": 1.0,
        "length_normalize": False,
        "eps": 1e-8,
    }
    case = Case(
        logp=np.array([[-0.3], [-0.7]]),
        mask=None,
        returns=np.array([0.0, 1.0]),
        options=options,
        dtype="float16",
    )
    _, check = _shift(torch_backend, Context(dtypes=("float16",)))
    check((case, np.array([-1000.0])))  # passes: the rounded batch is what is expected
    broken = MUTANTS["no_logsumexp"](haepo_core.load_backend("numpy"))
    _, check32 = _shift(broken, Context(dtypes=("float32",)))
    with pytest.raises(ConformanceError):
        check32((case.replace(dtype="float32"), np.array([-1000.0])))
