"""Bad input is rejected with the core's errors: the type, the argument's name, what was
expected and what was received."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from haepo_backends.torch import (  # noqa: E402
    haepo_loss,
    haepo_loss_from_hidden,
    haepo_loss_from_logits,
    haepo_loss_packed,
)

import haepo_core  # noqa: E402

LOGP = -torch.rand(3, 4)
R = torch.tensor([1.0, 0.0, 2.0])


@pytest.mark.parametrize(
    ("args", "kwargs", "err", "match"),
    [
        ((LOGP[0], R), {}, ValueError, r"logp: expected a 2-d array of shape \[M, T\]"),
        ((LOGP.long(), R), {}, TypeError, "logp: expected a real floating dtype"),
        ((LOGP, R[:2]), {}, ValueError, "returns: expected length M = 3"),
        ((LOGP, R, torch.ones(3, 5, dtype=torch.bool)), {}, ValueError, "mask: expected shape"),
        ((LOGP, R, torch.full((3, 4), 2.0)), {}, ValueError, "mask: a numeric mask"),
        ((LOGP, R), {"group_ids": torch.zeros(2, dtype=torch.long)}, ValueError, "group_ids"),
        ((LOGP, R), {"group_ids": torch.zeros(3)}, TypeError, "group_ids: expected an integer"),
        ((LOGP, R), {"entropy": torch.rand(3, 5)}, ValueError, "entropy: expected shape"),
        ((LOGP, R), {"entropy_coef": 0.1}, ValueError, "entropy: expected a per-step entropy"),
        ((LOGP, R), {"kl_coef": 0.1}, ValueError, "ref_logp: expected reference log-probs"),
        ((LOGP, R), {"kl_estimator": "k4"}, ValueError, "kl_estimator: expected one of"),
        ((LOGP, R), {"normalize_returns": "rank"}, ValueError, "normalize_returns"),
        ((LOGP, R), {"temperature": 0.0}, ValueError, "temperature: expected a value > 0"),
        ((LOGP, R), {"entropy_coef": -1.0}, ValueError, "entropy_coef: expected a value >= 0"),
        ((LOGP, R), {"length_normalize": 1}, TypeError, "length_normalize: expected a bool"),
        ((LOGP.numpy(), R), {}, TypeError, "logp: expected a torch.Tensor"),
        ((LOGP, [1.0, 0.0, 2.0]), {}, TypeError, "returns: expected a torch.Tensor"),
        (
            (LOGP.index_fill(1, torch.tensor([2]), float("nan")), R),
            {},
            ValueError,
            r"logp: expected finite values at valid positions, got 3 NaN/inf",
        ),
        (
            (LOGP, torch.tensor([1.0, float("inf"), 0.0])),
            {},
            ValueError,
            "returns: expected finite",
        ),
        (
            (LOGP, R, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).bool()),
            {},
            ValueError,
            "mask: expected every trajectory to have at least one valid step",
        ),
    ],
)
def test_haepo_loss_rejects_bad_input_like_the_core(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        haepo_loss(*args, **kwargs)
    # The core raises the same kind of error for the same input (NumPy in, when torch-free).
    np_args = tuple(a.numpy() if isinstance(a, torch.Tensor) else a for a in args)
    np_kwargs = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    if "torch.Tensor" not in match:  # (the core accepts NumPy; those cases are ours only)
        with pytest.raises(err):
            haepo_core.haepo_loss(*np_args, **np_kwargs)


def test_padding_may_hold_nan_without_error():
    logp = LOGP.clone()
    logp[0, 3] = float("nan")
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 3] = False
    assert torch.isfinite(haepo_loss(logp, R, mask).loss)


def test_tensors_on_different_devices_are_rejected():
    meta = torch.zeros(3, device="meta")
    with pytest.raises(ValueError, match="one device"):
        haepo_loss(LOGP, meta)


@pytest.mark.parametrize(
    ("seg", "match"),
    [
        (torch.tensor([0, 1, 2, 5]), r"segment_ids: expected values in 0..M-1 = 0..2"),
        (torch.tensor([0, 0, 2, 2]), "segment_ids: expected every trajectory"),
        (torch.tensor([0, 1, 2]), "segment_ids: expected length 4"),
        (torch.tensor([0.0, 1.0, 2.0, 2.0]), "segment_ids: expected an integer"),
    ],
)
def test_packed_rejects_bad_segments(seg, match):
    with pytest.raises((ValueError, TypeError), match=match):
        haepo_loss_packed(-torch.rand(4), seg, R)


def test_packed_rejects_bad_steps():
    with pytest.raises(ValueError, match=r"entropy: expected shape \[N\]"):
        haepo_loss_packed(-torch.rand(4), torch.tensor([0, 1, 2, 2]), R, entropy=torch.rand(3))
    with pytest.raises(ValueError, match=r"logp: expected a 1-d array"):
        haepo_loss_packed(-torch.rand(4, 1), torch.tensor([0, 1, 2, 2]), R)


LOGITS = torch.randn(2, 3, 5)
ACTS = torch.zeros(2, 3, dtype=torch.long)
R2 = torch.tensor([0.0, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"logits": LOGITS[0]}, ValueError, r"logits: expected a 3-d array of shape \[M, T, V\]"),
        ({"actions": ACTS.float()}, TypeError, "actions: expected an integer dtype"),
        ({"actions": ACTS[:, :2]}, ValueError, "actions: expected shape"),
        ({"actions": ACTS + 5}, ValueError, r"actions: expected values in 0..V-1 = 0..4"),
        ({"ref_logits": LOGITS, "ref_logp": -torch.rand(2, 3)}, ValueError, "at most one"),
        ({"ref_logits": LOGITS[:, :2]}, ValueError, "ref_logits: expected shape"),
        ({"kl_coef": 0.5}, ValueError, "ref_logp: expected reference log-probs"),
        ({"chunk_size": 0}, ValueError, "chunk_size: expected a positive integer"),
        (
            {"logits": LOGITS.index_fill(2, torch.tensor([1]), float("nan"))},
            ValueError,
            "logits: expected finite values",
        ),
    ],
)
def test_from_logits_rejects_bad_input(kwargs, err, match):
    args = {"logits": LOGITS, "actions": ACTS, "returns": R2} | kwargs
    with pytest.raises(err, match=match):
        haepo_loss_from_logits(args.pop("logits"), args.pop("actions"), args.pop("returns"), **args)


def test_from_logits_allows_minus_inf_logits():
    logits = LOGITS.clone()
    logits[..., 4] = -float("inf")
    out = haepo_loss_from_logits(logits, ACTS, R2, entropy_coef=0.1)
    assert torch.isfinite(out.loss)


HID = torch.randn(2, 3, 4)
W = torch.randn(5, 4)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"weight": torch.randn(5, 3)}, ValueError, r"weight: expected shape \[V, H\] with H = 4"),
        ({"hidden": HID[0]}, ValueError, r"hidden: expected a 3-d array"),
        ({"bias": torch.randn(4)}, ValueError, r"bias: expected shape \[V\]"),
        ({"ref_weight": W}, ValueError, "ref_weight, ref_bias: given without ref_hidden"),
        ({"ref_hidden": HID, "ref_logp": -torch.rand(2, 3)}, ValueError, "at most one"),
        ({"ref_hidden": HID[:, :2]}, ValueError, "ref_hidden: expected shape"),
        ({"actions": ACTS + 7}, ValueError, "actions: expected values in 0..V-1 = 0..4"),
        (
            {"weight": W.index_fill(0, torch.tensor([2]), float("inf"))},
            ValueError,
            "weight: expected finite",
        ),
        ({"hidden": HID.half(), "weight": W.long()}, TypeError, "weight: expected a real float"),
    ],
)
def test_from_hidden_rejects_bad_input(kwargs, err, match):
    args = {"hidden": HID, "weight": W, "actions": ACTS, "returns": R2} | kwargs
    with pytest.raises(err, match=match):
        haepo_loss_from_hidden(
            args.pop("hidden"), args.pop("weight"), args.pop("actions"), args.pop("returns"), **args
        )


@pytest.mark.parametrize("name", ["entropy", "ref_logp"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_regularizer_inputs_are_caught_by_the_deferred_check(name, bad):
    """NaN/inf is detected from the sums the loss computes anyway; the error is the core's."""
    arr = -torch.rand(3, 4)
    arr[1, 2] = bad
    kw = {"entropy": -torch.rand(3, 4), "ref_logp": -torch.rand(3, 4), name: arr}
    with pytest.raises(ValueError, match=rf"{name}: expected finite values at valid positions"):
        haepo_loss(LOGP, R, entropy_coef=0.1, kl_coef=0.1, **kw)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2] = False  # the same value at padding is fine
    assert torch.isfinite(haepo_loss(LOGP, R, mask, entropy_coef=0.1, kl_coef=0.1, **kw).loss)
    with pytest.raises(ValueError, match=rf"{name}: expected finite values"):
        haepo_loss_packed(LOGP[0], torch.tensor([0, 1, 2, 2]), R, **{name: arr[1]})


def test_packed_rejects_negative_segment_ids():
    with pytest.raises(ValueError, match=r"segment_ids: expected values in 0..M-1 = 0..2, got"):
        haepo_loss_packed(-torch.rand(4), torch.tensor([0, 1, -1, 2]), R)
