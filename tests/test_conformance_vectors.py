"""Golden vectors: the loader, and the golden property reproducing and rejecting them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from haepo_conformance import PROPERTIES, RunConfig, load_vectors, run_property
from haepo_conformance._vectors import VECTORS_DIR, decode_array, encode_array

import haepo_core


def _write_case(folder, name="tiny", loss_offset=0.0):
    logp = np.array([[-0.5, -1.0, np.nan], [-2.0, -0.25, -0.5]])
    mask = np.array([[True, True, False], [True, True, True]])
    returns = np.array([1.0, -1.0])
    entropy = np.array([[0.5, 0.7, np.inf], [0.1, 0.2, 0.3]])
    opts = {
        "entropy_coef": 0.1,
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "normalize_returns": "zscore",
        "temperature": 1.0,
        "length_normalize": False,
        "eps": 1e-8,
    }
    out, g = haepo_core.haepo_grad(logp, returns, mask, entropy=entropy, **opts)
    case = {
        "name": name,
        "description": "two trajectories, NaN/inf in padding",
        "function": "haepo_loss",
        "inputs": {
            "logp": encode_array(logp),
            "returns": encode_array(returns),
            "mask": encode_array(mask),
            "entropy": encode_array(entropy),
        },
        "options": opts,
        "expected": {
            "loss": float(out.loss) + loss_offset,
            "weights": out.weights.tolist(),
            "normalized_returns": out.normalized_returns.tolist(),
            "log_likelihood": out.log_likelihood.tolist(),
            "stats": {
                k: float(out.stats[k])
                for k in ("policy_loss", "entropy", "kl", "ess", "max_weight", "weighted_return")
            },
            "grad": {"logp": g["logp"].tolist(), "entropy": g["entropy"].tolist()},
        },
        "tolerance": {"rtol": 1e-10, "atol": 1e-12},
    }
    (folder / f"{name}.json").write_text(json.dumps(case))
    return case


def test_arrays_round_trip_with_nonfinite_values():
    x = np.array([[1.5, np.nan], [np.inf, -np.inf]])
    enc = encode_array(x)
    assert enc["data"] == [[1.5, "nan"], ["inf", "-inf"]]
    back = decode_array(json.loads(json.dumps(enc)))
    np.testing.assert_array_equal(back, x)
    assert decode_array(encode_array(np.zeros((0, 3), bool))).shape == (0, 3)


def test_loader_decodes_inputs_and_expected(tmp_path):
    _write_case(tmp_path)
    (case,) = load_vectors(tmp_path)
    assert case["inputs"]["mask"].dtype == np.bool_
    assert np.isnan(case["inputs"]["logp"][0, 2]) and np.isinf(case["inputs"]["entropy"][0, 2])
    assert case["expected"]["grad"]["logp"].shape == (2, 3)
    assert isinstance(case["expected"]["loss"], float)
    assert case["tolerance"] == {"rtol": 1e-10, "atol": 1e-12}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"name": "x"}), "expected a top-level key 'function'"),
        (
            json.dumps(
                {
                    "name": "x",
                    "function": "other",
                    "inputs": {},
                    "options": {},
                    "expected": {},
                    "tolerance": {},
                }
            ),
            "function: expected",
        ),
    ],
)
def test_loader_rejects_malformed_files_naming_them(tmp_path, text, match):
    (tmp_path / "broken.json").write_text(text)
    with pytest.raises(ValueError, match=match) as exc:
        load_vectors(tmp_path)
    assert "broken.json" in str(exc.value)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="expected shape"):
        decode_array({"dtype": "float64", "shape": [3], "data": [1.0, 2.0]})


def test_absent_directory_gives_no_vectors(tmp_path):
    assert load_vectors(tmp_path / "missing") == []


def test_packaged_vectors_load_and_follow_the_format():
    cases = load_vectors()
    if not cases:
        pytest.skip(f"no golden vectors in {VECTORS_DIR} yet")
    assert {c["function"] for c in cases} <= {"haepo_loss", "haepo_loss_packed"}
    for c in cases:
        assert c["inputs"]["logp"].dtype == np.float64
        assert "loss" in c["expected"] and "grad" in c["expected"]


def test_golden_property_reproduces_good_and_rejects_wrong_vectors(tmp_path):
    _write_case(tmp_path, "good")
    cfg = RunConfig(vectors_dir=str(tmp_path))
    numpy_backend = haepo_core.load_backend("numpy")
    ok = run_property(numpy_backend, PROPERTIES["golden"], cfg)
    assert ok.status == "PASS" and ok.note == "1 golden vectors reproduced in float64"
    _write_case(tmp_path, "wrong", loss_offset=1e-6)
    bad = run_property(numpy_backend, PROPERTIES["golden"], cfg)
    assert bad.status == "FAIL"
    assert "golden vector 'wrong'" in bad.message and "loss" in bad.message


def test_golden_property_skips_without_vectors(tmp_path):
    res = run_property(
        haepo_core.load_backend("numpy"), PROPERTIES["golden"], RunConfig(vectors_dir=str(tmp_path))
    )
    assert res.status == "SKIP" and "no golden vectors" in res.note
