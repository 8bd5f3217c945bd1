"""Write the HAEPO golden vectors: JSON cases computed in float64 by ``haepo_core`` on NumPy.

Each case holds the inputs, the seven options, the expected outputs (loss, weights, normalized
returns, log-likelihoods, stats) and the closed-form gradient (``haepo_grad``); the format is
described in ``conformance/vectors`` consumers and in docs/spec.md ("Golden vectors"). Every
input comes from a seeded generator, so re-running the script gives byte-identical files.

Usage::

    python scripts/make_golden_vectors.py                 # writes conformance/vectors/*.json
    python scripts/make_golden_vectors.py --out some/dir   # elsewhere
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import haepo_core as hc

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "conformance" / "vectors"

DEFAULT_OPTIONS: dict[str, Any] = {
    "entropy_coef": 0.0,
    "kl_coef": 0.0,
    "kl_estimator": "k3",
    "normalize_returns": "zscore",
    "temperature": 1.0,
    "length_normalize": False,
    "eps": 1e-8,
}
STAT_KEYS = ("policy_loss", "entropy", "kl", "ess", "max_weight", "weighted_return")
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
# L_k near -1e6: the softmax sees differences of numbers ~1e6, so float64 summation order
# (which differs between libraries) moves the weights by up to ~1e6 * 2.2e-16 relative.
LOOSE = {"rtol": 1e-8, "atol": 1e-10}


# --------------------------------------------------------------------------- input helpers
def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _logp(rng: np.random.Generator, m: int, t: int, low: float = -3.0, high: float = 0.0):
    # Rounded to 4 decimals: short, readable JSON; the outputs keep full float64 precision.
    return np.round(rng.uniform(low, high, size=(m, t)), 4)


def _returns(rng: np.random.Generator, m: int) -> np.ndarray:
    return np.round(rng.normal(size=m), 3)


def _ragged_mask(rng: np.random.Generator, m: int, t: int) -> np.ndarray:
    lengths = rng.integers(1, t + 1, size=m)
    return np.arange(t)[None, :] < lengths[:, None]


def _poison_padding(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill padding with NaN, +inf and -inf in turn: none of it may reach any result."""
    out = x.copy()
    poison = np.array([np.nan, np.inf, -np.inf])
    idx = np.flatnonzero(~mask.reshape(-1))
    out.reshape(-1)[idx] = poison[np.arange(idx.size) % 3]
    return out


def _to_packed(inputs: dict[str, np.ndarray], shuffle_seed: int | None) -> dict[str, np.ndarray]:
    """Padded inputs -> packed ones (steps of valid positions, optionally shuffled)."""
    logp = inputs["logp"]
    mask = inputs.get("mask", np.ones(logp.shape, dtype=bool))
    rows, cols = np.nonzero(mask)
    order = np.arange(rows.size)
    if shuffle_seed is not None:
        order = _rng(shuffle_seed).permutation(rows.size)
    rows, cols = rows[order], cols[order]
    out = {"logp": logp[rows, cols], "segment_ids": rows.astype(np.int64)}
    out["returns"] = inputs["returns"]
    for name in ("group_ids",):
        if name in inputs:
            out[name] = inputs[name]
    for name in ("entropy", "ref_logp"):
        if name in inputs:
            out[name] = inputs[name][rows, cols]
    return out


# --------------------------------------------------------------------------- the cases
Case = tuple[str, str, str, dict[str, np.ndarray], dict[str, Any], dict[str, float]]


def _padded_cases() -> Iterator[Case]:
    r = _rng(1)
    logp = np.log(np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.2]]))
    mask = np.array([[True, True], [True, False], [True, True]])
    yield (
        "worked_example_three_trajectories",
        "docs/spec.md worked example 1: three trajectories, one group, one padded step",
        "haepo_loss",
        {"logp": logp, "returns": np.array([1.0, 0.0, 2.0]), "mask": mask},
        {},
        TIGHT,
    )
    yield (
        "worked_example_two_groups",
        "docs/spec.md worked example 2: two groups of two, temperature 2",
        "haepo_loss",
        {
            "logp": np.array([[-1.0, -1.0], [-0.5, -0.5], [-2.0, 0.0], [-1.0, -2.0]]),
            "returns": np.array([1.0, 0.0, 3.0, 1.0]),
            "group_ids": np.array([0, 0, 1, 1]),
        },
        {"temperature": 2.0},
        TIGHT,
    )
    yield (
        "single_group_no_mask",
        "one group, every step valid, mask omitted",
        "haepo_loss",
        {"logp": _logp(r, 5, 4), "returns": _returns(r, 5)},
        {},
        TIGHT,
    )
    m, t = 6, 5
    mask = _ragged_mask(r, m, t)
    yield (
        "two_groups_ragged_mask",
        "two groups of three, ragged lengths 1..T",
        "haepo_loss",
        {
            "logp": _logp(r, m, t),
            "returns": _returns(r, m),
            "mask": mask,
            "group_ids": np.array([0, 0, 0, 1, 1, 1]),
        },
        {},
        TIGHT,
    )
    mask = _ragged_mask(r, m, t)
    yield (
        "nan_inf_padding",
        "padding holds NaN, +inf and -inf in logp: it must not reach any output or gradient",
        "haepo_loss",
        {
            "logp": _poison_padding(_logp(r, m, t), mask),
            "returns": _returns(r, m),
            "mask": mask,
            "group_ids": np.array([1, 0, 1, 0, 1, 0]),
        },
        {},
        TIGHT,
    )
    yield (
        "arbitrary_group_labels",
        "group labels are arbitrary integers (7, 3, 11, -2), not 0..G-1, interleaved",
        "haepo_loss",
        {
            "logp": _logp(r, 8, 3),
            "returns": _returns(r, 8),
            "group_ids": np.array([7, 3, 7, 11, 3, -2, 11, -2]),
        },
        {},
        TIGHT,
    )
    g = np.repeat(np.arange(8), 3)
    yield (
        "many_groups",
        "eight groups of three (the policy term is averaged over the eight groups)",
        "haepo_loss",
        {"logp": _logp(r, 24, 4), "returns": _returns(r, 24), "group_ids": g},
        {},
        TIGHT,
    )
    base_logp, base_ret, base_mask = _logp(r, 6, 4), _returns(r, 6), _ragged_mask(r, 6, 4)
    for tau in (0.5, 2.0, 10.0):
        yield (
            f"temperature_{str(tau).replace('.', '_')}",
            f"temperature tau = {tau} (larger flattens the weights); same inputs for each tau",
            "haepo_loss",
            {"logp": base_logp, "returns": base_ret, "mask": base_mask},
            {"temperature": tau},
            TIGHT,
        )
    for method in ("zscore", "center", "none"):
        yield (
            f"normalize_{method}",
            f"normalize_returns = {method!r} with two groups",
            "haepo_loss",
            {
                "logp": base_logp,
                "returns": base_ret * 3.0 + 1.0,
                "mask": base_mask,
                "group_ids": np.array([0, 1, 0, 1, 0, 1]),
            },
            {"normalize_returns": method},
            TIGHT,
        )
    yield (
        "zscore_large_eps",
        "eps = 0.5 visibly shrinks the z-scores (eps guards the std only)",
        "haepo_loss",
        {"logp": base_logp, "returns": base_ret, "mask": base_mask},
        {"eps": 0.5},
        TIGHT,
    )
    m, t = 5, 6
    mask = _ragged_mask(r, m, t)
    lp = _logp(r, m, t, -2.0, 0.0)
    ref = np.round(lp + r.normal(scale=0.3, size=(m, t)), 4)
    ent = np.round(r.uniform(0.1, 2.0, size=(m, t)), 4)
    for est in ("k1", "k2", "k3"):
        yield (
            f"kl_{est}",
            f"KL penalty with the {est} estimator (kl_coef 0.1), NaN/inf in padded ref_logp",
            "haepo_loss",
            {
                "logp": lp,
                "returns": _returns(_rng(10), m),
                "mask": mask,
                "ref_logp": _poison_padding(ref, mask),
            },
            {"kl_coef": 0.1, "kl_estimator": est},
            TIGHT,
        )
    yield (
        "entropy_bonus",
        "entropy bonus (entropy_coef 0.05), token mean over valid steps, NaN in padding",
        "haepo_loss",
        {
            "logp": lp,
            "returns": _returns(_rng(11), m),
            "mask": mask,
            "entropy": _poison_padding(ent, mask),
        },
        {"entropy_coef": 0.05},
        TIGHT,
    )
    yield (
        "entropy_and_kl_groups",
        "entropy bonus and k3 KL together, two groups, temperature 1.5",
        "haepo_loss",
        {
            "logp": lp,
            "returns": _returns(_rng(12), m),
            "mask": mask,
            "group_ids": np.array([0, 0, 1, 1, 1]),
            "entropy": ent,
            "ref_logp": ref,
        },
        {"entropy_coef": 0.01, "kl_coef": 0.2, "temperature": 1.5},
        TIGHT,
    )
    yield (
        "kl_k3_far_reference",
        "k3 with a reference far from the policy (r up to ~5): exp(r) - r - 1 is large",
        "haepo_loss",
        {
            "logp": np.array([[-6.0, -4.0, -1.0], [-0.1, -5.0, -3.0]]),
            "returns": np.array([0.0, 1.0]),
            "ref_logp": np.array([[-1.0, -1.0, -1.0], [-0.5, -0.5, -0.5]]),
        },
        {"kl_coef": 0.5, "kl_estimator": "k3"},
        TIGHT,
    )
    m, t = 6, 8
    mask = _ragged_mask(_rng(13), m, t)
    lp = _logp(_rng(14), m, t)
    rt = _returns(_rng(15), m)
    yield (
        "length_normalize",
        "length_normalize: each L_k divided by its number of valid steps before the softmax",
        "haepo_loss",
        {"logp": lp, "returns": rt, "mask": mask},
        {"length_normalize": True},
        TIGHT,
    )
    yield (
        "length_normalize_groups_temperature",
        "length_normalize with two groups and temperature 0.25",
        "haepo_loss",
        {"logp": lp, "returns": rt, "mask": mask, "group_ids": np.array([0, 1, 1, 0, 1, 0])},
        {"length_normalize": True, "temperature": 0.25},
        TIGHT,
    )
    yield (
        "single_trajectory_groups",
        "groups of one: w = 1, R~ = 0, zero policy gradient for them",
        "haepo_loss",
        {
            "logp": _logp(r, 5, 3),
            "returns": _returns(r, 5),
            "group_ids": np.array([0, 1, 1, 2, 3]),
        },
        {},
        TIGHT,
    )
    yield (
        "single_trajectory_batch",
        "M = 1: the loss and the policy gradient are exactly 0",
        "haepo_loss",
        {"logp": _logp(r, 1, 4), "returns": np.array([2.5])},
        {},
        TIGHT,
    )
    yield (
        "equal_returns_group",
        "group 0 has equal returns 0.1 (not exact in binary): R~ = 0 exactly there",
        "haepo_loss",
        {
            "logp": _logp(r, 6, 3),
            "returns": np.array([0.1, 0.1, 0.1, 1.0, -1.0, 0.5]),
            "group_ids": np.array([0, 0, 0, 1, 1, 1]),
        },
        {},
        TIGHT,
    )
    yield (
        "all_equal_returns_center",
        "every return equal under 'center': loss and gradient are exactly 0",
        "haepo_loss",
        {"logp": _logp(r, 4, 3), "returns": np.full(4, 0.7)},
        {"normalize_returns": "center"},
        TIGHT,
    )
    yield (
        "positive_log_densities",
        "continuous actions: log-densities may be positive",
        "haepo_loss",
        {"logp": _logp(r, 4, 3, -1.0, 2.0), "returns": _returns(r, 4)},
        {},
        TIGHT,
    )
    lp = np.array([[-1e6 + 3.0, 0.0], [-1e6, 0.0], [-999_999.0, -2.0], [-1e6 + 0.5, -0.25]])
    yield (
        "extreme_log_likelihood_1e6",
        "L_k near -1e6 (differences of a few nats): finite, log-sum-exp shifted",
        "haepo_loss",
        {"logp": lp, "returns": np.array([1.0, -1.0, 0.5, 2.0])},
        {},
        LOOSE,
    )
    yield (
        "extreme_weight_collapse",
        "L_k spread over [-1e6, 0]: all weight on one trajectory, ESS = 1",
        "haepo_loss",
        {
            "logp": np.array([[-1e6, 0.0], [-10.0, -5.0], [-0.5, -0.5], [-5e5, -5e5]]),
            "returns": np.array([3.0, 1.0, 0.0, 2.0]),
        },
        {},
        LOOSE,
    )
    m = 4096
    rr = _rng(20)
    yield (
        "large_group_4096",
        "M = 4096 trajectories in one group (T = 1, inputs rounded to keep the file small)",
        "haepo_loss",
        {
            "logp": np.round(rr.uniform(-8.0, 0.0, size=(m, 1)), 2),
            "returns": rr.integers(0, 5, size=m).astype(np.float64),
        },
        {},
        TIGHT,
    )
    t = 2048
    rr = _rng(21)
    mask = np.ones((3, t), dtype=bool)
    mask[1, 1500:] = False
    mask[2, 700:] = False
    yield (
        "long_horizon_2048",
        "T = 2048 steps (ragged): L_k in the thousands, the weights collapse",
        "haepo_loss",
        {
            "logp": np.round(rr.uniform(-2.0, 0.0, size=(3, t)), 1),
            "returns": np.array([1.0, 0.0, -1.0]),
            "mask": mask,
        },
        {},
        LOOSE,
    )
    yield (
        "long_horizon_2048_length_normalize",
        "the same T = 2048 batch with length_normalize: the weights stay spread",
        "haepo_loss",
        {
            "logp": np.round(_rng(21).uniform(-2.0, 0.0, size=(3, t)), 1),
            "returns": np.array([1.0, 0.0, -1.0]),
            "mask": mask,
        },
        {"length_normalize": True},
        TIGHT,
    )


def _packed_cases() -> Iterator[Case]:
    r = _rng(30)
    m, t = 6, 5
    mask = _ragged_mask(r, m, t)
    padded = {"logp": _logp(r, m, t), "returns": _returns(r, m), "mask": mask}
    yield (
        "packed_basic",
        "packed layout, steps in trajectory order (same batch as padded_for_packed_basic)",
        "haepo_loss_packed",
        _to_packed(padded, None),
        {},
        TIGHT,
    )
    yield (
        "padded_for_packed_basic",
        "the padded twin of packed_basic: identical loss, weights and gradients",
        "haepo_loss",
        padded,
        {},
        TIGHT,
    )
    padded = {
        "logp": _logp(r, m, t),
        "returns": _returns(r, m),
        "mask": _ragged_mask(r, m, t),
        "group_ids": np.array([2, 0, 2, 0, 2, 0]),
    }
    yield (
        "packed_shuffled_groups",
        "packed layout, steps shuffled (not contiguous per trajectory), two groups",
        "haepo_loss_packed",
        _to_packed(padded, 31),
        {"temperature": 0.7},
        TIGHT,
    )
    padded = dict(padded)
    padded["entropy"] = np.round(r.uniform(0.1, 2.0, size=(m, t)), 4)
    padded["ref_logp"] = np.round(padded["logp"] + r.normal(scale=0.2, size=(m, t)), 4)
    yield (
        "packed_entropy_kl",
        "packed layout with entropy bonus and k2 KL",
        "haepo_loss_packed",
        _to_packed(padded, 32),
        {"entropy_coef": 0.02, "kl_coef": 0.3, "kl_estimator": "k2"},
        TIGHT,
    )
    yield (
        "packed_length_normalize",
        "packed layout with length_normalize and 'center' returns",
        "haepo_loss_packed",
        _to_packed(padded, None),
        {"length_normalize": True, "normalize_returns": "center"},
        TIGHT,
    )


# --------------------------------------------------------------------------- computing
def _packed_grads(inputs: dict[str, np.ndarray], options: dict[str, Any]) -> dict[str, Any]:
    """Closed-form gradients of a packed case, via its padded twin (``haepo_grad``)."""
    seg = inputs["segment_ids"]
    m = inputs["returns"].shape[0]
    counts = np.bincount(seg, minlength=m)
    t = int(counts.max())
    pos = np.zeros(seg.shape[0], dtype=np.int64)
    seen = np.zeros(m, dtype=np.int64)
    for i, s in enumerate(seg):
        pos[i] = seen[s]
        seen[s] += 1
    padded: dict[str, Any] = {"mask": np.zeros((m, t), dtype=bool)}
    padded["mask"][seg, pos] = True
    for name in ("logp", "entropy", "ref_logp"):
        if name in inputs:
            a = np.zeros((m, t))
            a[seg, pos] = inputs[name]
            padded[name] = a
    kw = {k: v for k, v in padded.items() if k in ("entropy", "ref_logp")}
    if "group_ids" in inputs:
        kw["group_ids"] = inputs["group_ids"]
    out, grads = hc.haepo_grad(padded["logp"], inputs["returns"], padded["mask"], **kw, **options)
    packed_out = hc.haepo_loss_packed(
        inputs["logp"],
        seg,
        inputs["returns"],
        **{k: v for k, v in inputs.items() if k in ("group_ids", "entropy", "ref_logp")},
        **options,
    )
    assert abs(float(out.loss) - float(packed_out.loss)) <= 1e-12 * max(1.0, abs(float(out.loss)))
    return {name: g[seg, pos] for name, g in grads.items()}


def _compute(function: str, inputs: dict[str, np.ndarray], options: dict[str, Any]):
    kw = {k: v for k, v in inputs.items() if k in ("group_ids", "entropy", "ref_logp")}
    if function == "haepo_loss":
        out, grads = hc.haepo_grad(
            inputs["logp"], inputs["returns"], inputs.get("mask"), **kw, **options
        )
        return out, grads
    out = hc.haepo_loss_packed(
        inputs["logp"], inputs["segment_ids"], inputs["returns"], **kw, **options
    )
    return out, _packed_grads(inputs, options)


def _encode_floats(x: Any) -> Any:
    """Nested lists of Python floats; NaN/inf become the strings "nan", "inf", "-inf"."""
    if isinstance(x, list):
        return [_encode_floats(v) for v in x]
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    return x


def _array(a: np.ndarray) -> dict[str, Any]:
    a = np.asarray(a)
    if a.dtype == bool:
        dtype, data = "bool", a.tolist()
    elif np.issubdtype(a.dtype, np.integer):
        dtype, data = "int64", a.astype(np.int64).tolist()
    else:
        dtype, data = "float64", _encode_floats(a.astype(np.float64).tolist())
    return {"dtype": dtype, "shape": list(a.shape), "data": data}


def _floats(a: Any) -> Any:
    return _encode_floats(np.asarray(a, dtype=np.float64).tolist())


def build_case(case: Case) -> dict[str, Any]:
    name, description, function, inputs, options, tolerance = case
    opts = {**DEFAULT_OPTIONS, **options}
    out, grads = _compute(function, inputs, opts)
    order = ("logp", "segment_ids", "returns", "mask", "group_ids", "entropy", "ref_logp")
    return {
        "name": name,
        "description": description,
        "function": function,
        "inputs": {k: _array(inputs[k]) for k in order if k in inputs},
        "options": opts,
        "expected": {
            "loss": _floats(out.loss),
            "weights": _floats(out.weights),
            "normalized_returns": _floats(out.normalized_returns),
            "log_likelihood": _floats(out.log_likelihood),
            "stats": {k: _floats(out.stats[k]) for k in STAT_KEYS},
            "grad": {k: _floats(v) for k, v in grads.items()},
        },
        "tolerance": dict(tolerance),
    }


def dumps(obj: Any, level: int = 0) -> str:
    """JSON with one key per line and each array on a single line (short, diffable files)."""
    if isinstance(obj, dict):
        pad = "  " * (level + 1)
        items = [f"{pad}{json.dumps(k)}: {dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def all_cases() -> list[Case]:
    return [*_padded_cases(), *_packed_cases()]


def write_vectors(out_dir: Path, progress: Callable[[str], None] | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    names = set()
    for case in all_cases():
        assert case[0] not in names, f"duplicate case name {case[0]}"
        names.add(case[0])
        doc = build_case(case)
        path = out_dir / f"{case[0]}.json"
        text = dumps(doc) + "\n"
        path.write_text(text, encoding="utf-8")
        written.append(path)
        if progress is not None:
            progress(f"{path.name}: {len(text) / 1024:.1f} KiB")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    paths = write_vectors(args.out, None if args.quiet else print)
    if not args.quiet:
        total = sum(p.stat().st_size for p in paths)
        print(f"wrote {len(paths)} vectors, {total / 1024:.0f} KiB, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
