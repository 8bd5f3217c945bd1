"""Bad input raises ValueError/TypeError naming the argument, what was expected and what came,
for haepo_loss, haepo_loss_packed, haepo_loss_from_logits, haepo_grad and every public building
block, on every array library; plus arrays of two libraries mixed in one call."""

from __future__ import annotations

import re

import numpy as np
import pytest

import haepo_core as hc

M, T, V = 3, 4, 5
LOGP = -np.linspace(0.1, 1.2, M * T).reshape(M, T)
MASK = np.ones((M, T), bool)
RETURNS = np.array([1.0, 0.0, 2.0])
GIDS = np.array([0, 0, 1])
PACKED_LOGP = -np.linspace(0.1, 0.6, 6)
SEG = np.array([0, 0, 1, 2, 2, 2])
LOGITS = np.linspace(-1, 1, M * T * V).reshape(M, T, V)
ACTIONS = np.zeros((M, T), np.int64)


def with_nan(a: np.ndarray, idx, value=np.nan) -> np.ndarray:
    b = np.array(a, dtype=np.float64)
    b[idx] = value
    return b


def row_empty(mask: np.ndarray) -> np.ndarray:
    b = mask.copy()
    b[1] = False
    return b


# Each case: (id, function name, {argument: value or marker}, exception type, message regex).
# Arrays are NumPy here and converted to the library under test; non-arrays pass unchanged.
LOSS = {"logp": LOGP, "returns": RETURNS, "mask": MASK}
PACKED = {"logp": PACKED_LOGP, "segment_ids": SEG, "returns": RETURNS}
FROM_LOGITS = {"logits": LOGITS, "actions": ACTIONS, "returns": RETURNS, "mask": MASK}

OPTION_CASES = [
    (
        "temperature_zero",
        {"temperature": 0.0},
        ValueError,
        r"temperature: expected a value > 0, got 0",
    ),
    ("temperature_negative", {"temperature": -1.0}, ValueError, r"temperature: .*> 0, got -1"),
    (
        "temperature_string",
        {"temperature": "hot"},
        TypeError,
        r"temperature: expected a real number",
    ),
    (
        "entropy_coef_negative",
        {"entropy_coef": -0.1},
        ValueError,
        r"entropy_coef: .*>= 0, got -0.1",
    ),
    ("kl_coef_negative", {"kl_coef": -1.0}, ValueError, r"kl_coef: .*>= 0, got -1"),
    ("eps_zero", {"eps": 0.0}, ValueError, r"eps: expected a value > 0"),
    ("kl_coef_nan", {"kl_coef": float("nan")}, ValueError, r"kl_coef: expected a finite number"),
    (
        "kl_estimator_unknown",
        {"kl_estimator": "k4"},
        ValueError,
        r"kl_estimator: expected one of 'k1', 'k2', 'k3', got 'k4'",
    ),
    (
        "normalize_returns_unknown",
        {"normalize_returns": "minmax"},
        ValueError,
        r"normalize_returns: expected one of 'zscore', 'center', 'none', got 'minmax'",
    ),
    (
        "length_normalize_not_bool",
        {"length_normalize": 1},
        TypeError,
        r"length_normalize: expected a bool, got int",
    ),
]

CASES = [
    # ---- haepo_loss: shapes, ranks, dtypes
    (
        "loss_logp_rank1",
        "haepo_loss",
        {**LOSS, "logp": LOGP[0], "mask": None},
        ValueError,
        r"logp: expected a 2-d array of shape \[M, T\], got 1-d array with shape \(4,\)",
    ),
    (
        "loss_logp_rank3",
        "haepo_loss",
        {**LOSS, "logp": LOGP[None]},
        ValueError,
        r"logp: expected a 2-d array .* got 3-d",
    ),
    (
        "loss_logp_int",
        "haepo_loss",
        {**LOSS, "logp": np.zeros((M, T), np.int64)},
        TypeError,
        r"logp: expected a real floating dtype .* got .*int64",
    ),
    (
        "loss_logp_bool",
        "haepo_loss",
        {**LOSS, "logp": MASK},
        TypeError,
        r"logp: expected a real floating dtype .* got .*bool",
    ),
    (
        "loss_logp_list",
        "haepo_loss",
        {**LOSS, "logp": LOGP.tolist()},
        TypeError,
        r"logp: expected an array .* got list",
    ),
    (
        "loss_returns_short",
        "haepo_loss",
        {**LOSS, "returns": RETURNS[:2]},
        ValueError,
        r"returns: expected length M = 3 .* got length 2",
    ),
    (
        "loss_returns_rank2",
        "haepo_loss",
        {**LOSS, "returns": RETURNS[:, None]},
        ValueError,
        r"returns: expected a 1-d array of shape \[M\], got 2-d",
    ),
    (
        "loss_returns_bool",
        "haepo_loss",
        {**LOSS, "returns": np.array([True, False, True])},
        TypeError,
        r"returns: expected a real floating or integer dtype, got .*bool",
    ),
    (
        "loss_group_ids_long",
        "haepo_loss",
        {**LOSS, "group_ids": np.array([0, 0, 1, 1])},
        ValueError,
        r"group_ids: expected length 3 \(\[M\]\), got length 4",
    ),
    (
        "loss_group_ids_float",
        "haepo_loss",
        {**LOSS, "group_ids": np.array([0.0, 0.0, 1.0])},
        TypeError,
        r"group_ids: expected an integer dtype, got .*float64",
    ),
    (
        "loss_mask_shape",
        "haepo_loss",
        {**LOSS, "mask": MASK[:, :3]},
        ValueError,
        r"mask: expected shape \[M, T\] \(same as logp\) = \(3, 4\), got \(3, 3\)",
    ),
    (
        "loss_mask_values",
        "haepo_loss",
        {**LOSS, "mask": np.full((M, T), 2, np.int64)},
        ValueError,
        r"mask: a numeric mask must hold only 0 and 1",
    ),
    (
        "loss_entropy_shape",
        "haepo_loss",
        {**LOSS, "entropy": LOGP[:, :2], "entropy_coef": 0.1},
        ValueError,
        r"entropy: expected shape \[M, T\] \(same as logp\) = \(3, 4\), got \(3, 2\)",
    ),
    (
        "loss_ref_logp_shape",
        "haepo_loss",
        {**LOSS, "ref_logp": LOGP.T, "kl_coef": 0.1},
        ValueError,
        r"ref_logp: expected shape .* = \(3, 4\), got \(4, 3\)",
    ),
    (
        "loss_ref_logp_int",
        "haepo_loss",
        {**LOSS, "ref_logp": np.zeros((M, T), np.int64), "kl_coef": 0.1},
        TypeError,
        r"ref_logp: expected a real floating dtype",
    ),
    # ---- haepo_loss: values
    (
        "loss_logp_nan_valid",
        "haepo_loss",
        {**LOSS, "logp": with_nan(LOGP, (1, 2))},
        ValueError,
        r"logp: expected finite values at valid positions, "
        r"got 1 NaN/inf \(first at index \(1, 2\)\)",
    ),
    (
        "loss_logp_inf_valid",
        "haepo_loss",
        {**LOSS, "logp": with_nan(LOGP, (0, 0), np.inf)},
        ValueError,
        r"logp: expected finite values .* got 1 NaN/inf",
    ),
    (
        "loss_returns_inf",
        "haepo_loss",
        {**LOSS, "returns": with_nan(RETURNS, 2, -np.inf)},
        ValueError,
        r"returns: expected finite values .* \(first at index 2\)",
    ),
    (
        "loss_entropy_nan_valid",
        "haepo_loss",
        {**LOSS, "entropy": with_nan(LOGP, (2, 3)), "entropy_coef": 0.1},
        ValueError,
        r"entropy: expected finite values",
    ),
    (
        "loss_ref_logp_inf_valid",
        "haepo_loss",
        {**LOSS, "ref_logp": with_nan(LOGP, (0, 1), np.inf), "kl_coef": 0.1},
        ValueError,
        r"ref_logp: expected finite values",
    ),
    (
        "loss_empty_trajectory",
        "haepo_loss",
        {**LOSS, "mask": row_empty(MASK)},
        ValueError,
        r"mask: expected every trajectory to have at least one valid step, got 1 empty "
        r"trajectories \(first: trajectory 1\)",
    ),
    (
        "loss_entropy_coef_without_entropy",
        "haepo_loss",
        {**LOSS, "entropy_coef": 0.1},
        ValueError,
        r"entropy: expected a per-step entropy array since entropy_coef = 0.1 > 0",
    ),
    (
        "loss_kl_coef_without_ref",
        "haepo_loss",
        {**LOSS, "kl_coef": 0.1},
        ValueError,
        r"ref_logp: expected reference log-probs .* since kl_coef = 0.1 > 0",
    ),
    # ---- haepo_grad shares haepo_loss's checks
    (
        "grad_returns_short",
        "haepo_grad",
        {**LOSS, "returns": RETURNS[:1]},
        ValueError,
        r"returns: expected length M = 3",
    ),
    (
        "grad_logp_int",
        "haepo_grad",
        {**LOSS, "logp": np.zeros((M, T), np.int32)},
        TypeError,
        r"logp: expected a real floating dtype",
    ),
    (
        "grad_empty_trajectory",
        "haepo_grad",
        {**LOSS, "mask": row_empty(MASK)},
        ValueError,
        r"mask: expected every trajectory to have at least one valid step",
    ),
    # ---- haepo_loss_packed
    (
        "packed_logp_rank2",
        "haepo_loss_packed",
        {**PACKED, "logp": LOGP},
        ValueError,
        r"logp: expected a 1-d array of shape \[N\], got 2-d",
    ),
    (
        "packed_logp_int",
        "haepo_loss_packed",
        {**PACKED, "logp": SEG},
        TypeError,
        r"logp: expected a real floating dtype",
    ),
    (
        "packed_segment_ids_length",
        "haepo_loss_packed",
        {**PACKED, "segment_ids": SEG[:5]},
        ValueError,
        r"segment_ids: expected length 6 \(\[N\], same as logp\), got length 5",
    ),
    (
        "packed_segment_ids_float",
        "haepo_loss_packed",
        {**PACKED, "segment_ids": SEG.astype(np.float64)},
        TypeError,
        r"segment_ids: expected an integer dtype",
    ),
    (
        "packed_segment_ids_range",
        "haepo_loss_packed",
        {**PACKED, "segment_ids": np.array([0, 0, 1, 2, 2, 3])},
        ValueError,
        r"segment_ids: expected values in 0..M-1 = 0..2, got values in 0..3",
    ),
    (
        "packed_segment_ids_negative",
        "haepo_loss_packed",
        {**PACKED, "segment_ids": np.array([-1, 0, 1, 2, 2, 2])},
        ValueError,
        r"segment_ids: expected values in 0..M-1 = 0..2, got values in -1..2",
    ),
    (
        "packed_empty_trajectory",
        "haepo_loss_packed",
        {**PACKED, "segment_ids": np.array([0, 0, 2, 2, 2, 2])},
        ValueError,
        r"segment_ids: expected every trajectory to have at least one valid step.*trajectory 1",
    ),
    (
        "packed_returns_rank2",
        "haepo_loss_packed",
        {**PACKED, "returns": RETURNS[None]},
        ValueError,
        r"returns: expected a 1-d array",
    ),
    (
        "packed_group_ids_short",
        "haepo_loss_packed",
        {**PACKED, "group_ids": GIDS[:2]},
        ValueError,
        r"group_ids: expected length 3",
    ),
    (
        "packed_entropy_shape",
        "haepo_loss_packed",
        {**PACKED, "entropy": PACKED_LOGP[:4], "entropy_coef": 0.1},
        ValueError,
        r"entropy: expected shape \[N\] \(same as logp\) = \(6,\), got \(4,\)",
    ),
    (
        "packed_logp_nan",
        "haepo_loss_packed",
        {**PACKED, "logp": with_nan(PACKED_LOGP, 3)},
        ValueError,
        r"logp: expected finite values .* \(first at index 3\)",
    ),
    (
        "packed_ref_logp_inf",
        "haepo_loss_packed",
        {**PACKED, "ref_logp": with_nan(PACKED_LOGP, 0, np.inf), "kl_coef": 0.2},
        ValueError,
        r"ref_logp: expected finite values",
    ),
    # ---- haepo_loss_from_logits
    (
        "logits_rank2",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "logits": LOGP},
        ValueError,
        r"logits: expected a 3-d array of shape \[M, T, V\], got 2-d",
    ),
    (
        "logits_int",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "logits": np.zeros((M, T, V), np.int64)},
        TypeError,
        r"logits: expected a real floating dtype",
    ),
    (
        "logits_actions_shape",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "actions": ACTIONS[:2]},
        ValueError,
        r"actions: expected shape \[M, T\] \(logits.shape\[:2\]\) = \(3, 4\), got \(2, 4\)",
    ),
    (
        "logits_actions_float",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "actions": ACTIONS.astype(np.float64)},
        TypeError,
        r"actions: expected an integer dtype",
    ),
    (
        "logits_actions_range",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "actions": np.full((M, T), V, np.int64)},
        ValueError,
        r"actions: expected values in 0..V-1 = 0..4 at valid steps",
    ),
    (
        "logits_nan_valid",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "logits": with_nan(LOGITS, (0, 1, 2))},
        ValueError,
        r"logits: expected finite values",
    ),
    (
        "logits_plus_inf_valid",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "logits": with_nan(LOGITS, (2, 0, 0), np.inf)},
        ValueError,
        r"logits: expected finite values",
    ),
    (
        "logits_both_references",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "ref_logits": LOGITS, "ref_logp": LOGP},
        ValueError,
        r"ref_logits, ref_logp: expected at most one of them, got both",
    ),
    (
        "logits_ref_logits_shape",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "ref_logits": LOGITS[:, :, :2]},
        ValueError,
        r"ref_logits: expected shape \[M, T, V\] \(same as logits\) = \(3, 4, 5\), got \(3, 4, 2\)",
    ),
    (
        "logits_returns_short",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "returns": RETURNS[:2]},
        ValueError,
        r"returns: expected length M = 3",
    ),
    (
        "logits_empty_trajectory",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "mask": row_empty(MASK)},
        ValueError,
        r"mask: expected every trajectory to have at least one valid step",
    ),
    (
        "logits_kl_without_reference",
        "haepo_loss_from_logits",
        {**FROM_LOGITS, "kl_coef": 0.5},
        ValueError,
        r"ref_logp: expected reference log-probs \(or ref_logits\)",
    ),
    # ---- building blocks
    (
        "tll_rank1",
        "trajectory_log_likelihood",
        {"logp": LOGP[0]},
        ValueError,
        r"logp: expected a 2-d array of shape \[M, T\]",
    ),
    (
        "tll_int",
        "trajectory_log_likelihood",
        {"logp": np.ones((M, T), np.int64)},
        TypeError,
        r"logp: expected a real floating dtype",
    ),
    (
        "tll_mask_shape",
        "trajectory_log_likelihood",
        {"logp": LOGP, "mask": MASK[:2]},
        ValueError,
        r"mask: expected shape",
    ),
    (
        "tll_nan_valid",
        "trajectory_log_likelihood",
        {"logp": with_nan(LOGP, (0, 0))},
        ValueError,
        r"logp: expected finite values",
    ),
    (
        "tll_length_normalize",
        "trajectory_log_likelihood",
        {"logp": LOGP, "length_normalize": "yes"},
        TypeError,
        r"length_normalize: expected a bool",
    ),
    (
        "plw_rank2",
        "plackett_luce_weights",
        {"log_likelihood": LOGP},
        ValueError,
        r"log_likelihood: expected a 1-d array of shape \[M\], got 2-d",
    ),
    (
        "plw_int",
        "plackett_luce_weights",
        {"log_likelihood": SEG},
        TypeError,
        r"log_likelihood: expected a real floating dtype",
    ),
    (
        "plw_group_ids_length",
        "plackett_luce_weights",
        {"log_likelihood": RETURNS, "group_ids": SEG},
        ValueError,
        r"group_ids: expected length 3 \(\[M\]\), got length 6",
    ),
    (
        "plw_temperature",
        "plackett_luce_weights",
        {"log_likelihood": RETURNS, "temperature": 0},
        ValueError,
        r"temperature: expected a number > 0, got 0",
    ),
    (
        "plw_nan",
        "plackett_luce_weights",
        {"log_likelihood": with_nan(RETURNS, 1)},
        ValueError,
        r"log_likelihood: expected finite values",
    ),
    (
        "norm_rank2",
        "normalize_returns",
        {"returns": LOGP},
        ValueError,
        r"returns: expected a 1-d array of shape \[M\], got 2-d",
    ),
    (
        "norm_group_ids_length",
        "normalize_returns",
        {"returns": RETURNS, "group_ids": SEG},
        ValueError,
        r"group_ids: expected length 3",
    ),
    (
        "norm_method",
        "normalize_returns",
        {"returns": RETURNS, "method": "rank"},
        ValueError,
        r"method: expected one of 'zscore', 'center', 'none', got 'rank'",
    ),
    (
        "norm_eps",
        "normalize_returns",
        {"returns": RETURNS, "eps": -1.0},
        ValueError,
        r"eps: expected a number > 0, got -1.0",
    ),
    (
        "norm_nan",
        "normalize_returns",
        {"returns": with_nan(RETURNS, 0)},
        ValueError,
        r"returns: expected finite values",
    ),
    (
        "entropy_logits_int",
        "entropy_from_logits",
        {"logits": SEG},
        TypeError,
        r"logits: expected a real floating dtype",
    ),
    (
        "entropy_logits_0d",
        "entropy_from_logits",
        {"logits": np.float64(1.0)},
        ValueError,
        r"logits: expected at least 1 dimension \[..., V\], got a 0-d array",
    ),
    (
        "kl_logits_shape",
        "kl_from_logits",
        {"logits": LOGITS, "ref_logits": LOGITS[:, :, :3]},
        ValueError,
        r"ref_logits: expected shape \[..., V\] \(same as logits\) = \(3, 4, 5\)",
    ),
    (
        "kl_logits_ref_int",
        "kl_from_logits",
        {"logits": LOGITS, "ref_logits": np.zeros((M, T, V), np.int64)},
        TypeError,
        r"ref_logits: expected a real floating dtype",
    ),
    (
        "kl_estimate_shape",
        "kl_estimate",
        {"logp": LOGP, "ref_logp": LOGP[:2]},
        ValueError,
        r"ref_logp: expected shape same as logp = \(3, 4\), got \(2, 4\)",
    ),
    (
        "kl_estimate_int",
        "kl_estimate",
        {"logp": np.zeros((M, T), np.int64), "ref_logp": LOGP},
        TypeError,
        r"logp: expected a real floating dtype",
    ),
    (
        "kl_estimate_unknown",
        "kl_estimate",
        {"logp": LOGP, "ref_logp": LOGP, "estimator": "k9"},
        ValueError,
        r"estimator: expected one of 'k1', 'k2', 'k3', got 'k9'",
    ),
    (
        "ess_rank2",
        "effective_sample_size",
        {"weights": LOGP},
        ValueError,
        r"weights: expected a 1-d array",
    ),
    (
        "ess_group_ids_length",
        "effective_sample_size",
        {"weights": RETURNS, "group_ids": SEG},
        ValueError,
        r"group_ids: expected length 3",
    ),
    (
        "ess_reduce",
        "effective_sample_size",
        {"weights": RETURNS, "reduce": "max"},
        ValueError,
        r"reduce: expected 'mean' or 'none', got 'max'",
    ),
    (
        "ess_nan",
        "effective_sample_size",
        {"weights": with_nan(RETURNS, 0)},
        ValueError,
        r"weights: expected finite values",
    ),
]
for fn, base in (
    ("haepo_loss", LOSS),
    ("haepo_loss_packed", PACKED),
    ("haepo_loss_from_logits", FROM_LOGITS),
    ("haepo_grad", LOSS),
):
    for case_id, opts, exc, pattern in OPTION_CASES:
        CASES.append((f"{fn}_{case_id}", fn, {**base, **opts}, exc, pattern))

POSITIONAL = {
    "haepo_loss": ("logp", "returns", "mask"),
    "haepo_grad": ("logp", "returns", "mask"),
    "haepo_loss_packed": ("logp", "segment_ids", "returns"),
    "haepo_loss_from_logits": ("logits", "actions", "returns", "mask"),
}


def _convert(xp, value):
    if isinstance(value, (np.ndarray, np.generic)):
        return xp.asarray(value)
    return value


def call(xp, fn_name: str, args: dict):
    fn = getattr(hc, fn_name)
    conv = {k: _convert(xp, v) for k, v in args.items() if v is not None}
    pos = [conv.pop(k) for k in POSITIONAL.get(fn_name, ()) if k in conv]
    if fn_name not in POSITIONAL:  # blocks: first argument positional, the rest by name
        first = next(iter(args))
        pos = [conv.pop(first)]
    return fn(*pos, **conv)


@pytest.mark.parametrize(
    ("fn_name", "args", "exc", "pattern"),
    [pytest.param(fn, args, exc, pat, id=cid) for cid, fn, args, exc, pat in CASES],
)
def test_bad_input_raises_error_naming_the_argument(xp, fn_name, args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(xp, fn_name, args)


def test_the_same_calls_succeed_with_good_input(xp):
    """The base inputs of the table above are valid: each error comes from the one bad part."""
    for fn_name, base in (
        ("haepo_loss", LOSS),
        ("haepo_loss_packed", PACKED),
        ("haepo_loss_from_logits", FROM_LOGITS),
        ("haepo_grad", LOSS),
    ):
        call(xp, fn_name, base)
    call(xp, "trajectory_log_likelihood", {"logp": LOGP, "mask": MASK})
    call(xp, "plackett_luce_weights", {"log_likelihood": RETURNS, "group_ids": GIDS})
    call(xp, "normalize_returns", {"returns": RETURNS, "group_ids": GIDS})
    call(xp, "kl_estimate", {"logp": LOGP, "ref_logp": LOGP})
    call(xp, "effective_sample_size", {"weights": RETURNS / 3, "group_ids": GIDS})
    # padding may hold NaN/inf (only valid positions are checked)
    mask = MASK.copy()
    mask[0, 3] = False
    call(xp, "haepo_loss", {**LOSS, "logp": with_nan(LOGP, (0, 3), np.inf), "mask": mask})


MIXES = [
    ("haepo_loss", lambda np_, t: (t(LOGP), np_(RETURNS)), r"logp=torch, returns=numpy"),
    (
        "haepo_loss",
        lambda np_, t: (np_(LOGP), np_(RETURNS), t(MASK)),
        r"logp=numpy, returns=numpy, mask=torch",
    ),
    (
        "haepo_loss_packed",
        lambda np_, t: (np_(PACKED_LOGP), t(SEG), np_(RETURNS)),
        r"segment_ids=torch",
    ),
    (
        "haepo_loss_from_logits",
        lambda np_, t: (np_(LOGITS), t(ACTIONS), np_(RETURNS)),
        r"actions=torch",
    ),
    ("haepo_grad", lambda np_, t: (t(LOGP), np_(RETURNS)), r"logp=torch, returns=numpy"),
    ("plackett_luce_weights", lambda np_, t: (np_(RETURNS), t(GIDS)), r"group_ids=torch"),
    ("normalize_returns", lambda np_, t: (t(RETURNS), np_(GIDS)), r"returns=torch"),
    ("trajectory_log_likelihood", lambda np_, t: (t(LOGP), np_(MASK)), r"mask=numpy"),
    ("kl_estimate", lambda np_, t: (t(LOGP), np_(LOGP)), r"ref_logp=numpy"),
    ("kl_from_logits", lambda np_, t: (np_(LOGITS), t(LOGITS)), r"ref_logits=torch"),
    ("effective_sample_size", lambda np_, t: (t(RETURNS), np_(GIDS)), r"group_ids=numpy"),
]


@pytest.mark.parametrize(("fn_name", "make", "pattern"), MIXES, ids=[m[0] for m in MIXES])
def test_arrays_from_two_libraries_in_one_call_raise_type_error(fn_name, make, pattern):
    torch = pytest.importorskip("torch")
    args = make(np.asarray, torch.asarray)
    with pytest.raises(TypeError, match=r"arrays from different libraries were mixed") as err:
        getattr(hc, fn_name)(*args)
    assert re.search(pattern, str(err.value)), str(err.value)


def test_numpy_mixed_with_jax_or_array_api_strict_raises_type_error():
    xs = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match=r"logp=array_api_strict, returns=numpy"):
        hc.haepo_loss(xs.asarray(LOGP), RETURNS)
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(TypeError, match=r"logp=numpy, returns=jax"):
        hc.haepo_loss(LOGP, jnp.asarray(RETURNS))
