"""Stabilizers around the objective (adaptive coefficient, collapse monitor, stuck exploration)
and the wrappers' checks on the KL coefficient, the KL terms and the padded layout without
entropy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from haepo_adapters.cleanrl import (
    AdaptiveCoefficient,
    CollapseMonitor,
    CollapseWarning,
    StepTerms,
    StuckExploration,
    haepo_padded_loss,
    haepo_trajectory_loss,
    rollout_to_trajectories,
)


def _traj():
    dones = np.array([[0, 0], [0, 1], [1, 0], [0, 0]])
    rew = np.arange(8, dtype=np.float64).reshape(4, 2)
    return rollout_to_trajectories(rew, dones=dones, next_done=np.array([1, 1]))


def _terms(n: int, kl: np.ndarray | None = None, entropy: bool = True) -> StepTerms:
    logp = -0.1 * np.arange(1, n + 1, dtype=np.float64)
    ent = np.full(n, 0.6) if entropy else None
    return StepTerms(logp, ent, np.full(n, 0.05) if kl is None else kl)


# --- the wrappers refuse what the core refuses ------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_wrappers_reject_negative_or_non_finite_kl_coef(bad):
    tr = _traj()
    with pytest.raises(ValueError, match="kl_coef"):
        haepo_trajectory_loss(tr, _terms(tr.num_steps), kl_coef=bad)
    t = StepTerms(*(tr.pad(x) for x in _terms(tr.num_steps)))
    with pytest.raises(ValueError, match="kl_coef"):
        haepo_padded_loss(t, tr.returns, tr.mask, kl_coef=bad)


@pytest.mark.parametrize("bad", [True, "0.1", None])
def test_wrappers_reject_a_kl_coef_that_is_not_a_real_number(bad):
    tr = _traj()
    with pytest.raises(TypeError, match="kl_coef"):
        haepo_trajectory_loss(tr, _terms(tr.num_steps), kl_coef=bad)
    t = StepTerms(*(tr.pad(x) for x in _terms(tr.num_steps)))
    with pytest.raises(TypeError, match="kl_coef"):
        haepo_padded_loss(t, tr.returns, tr.mask, kl_coef=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_non_finite_kl_terms_are_rejected_naming_terms_kl(bad, layout):
    tr = _traj()
    kl = np.full(tr.num_steps, 0.05)
    kl[3] = bad
    with pytest.raises(ValueError, match=r"terms\.kl"):
        haepo_trajectory_loss(tr, _terms(tr.num_steps, kl), kl_coef=0.1, layout=layout)
    t = StepTerms(*(tr.pad(x) for x in _terms(tr.num_steps, kl)))
    with pytest.raises(ValueError, match=r"terms\.kl"):
        haepo_padded_loss(t, tr.returns, tr.mask, kl_coef=0.1)


def test_padded_kl_terms_may_hold_nan_in_the_padding():
    tr = _traj()
    t = StepTerms(*(tr.pad(x) for x in _terms(tr.num_steps)))
    kl = np.where(tr.mask, t.kl, np.nan)
    ok = haepo_padded_loss(t, tr.returns, tr.mask, kl_coef=0.1)
    out = haepo_padded_loss(t._replace(kl=kl), tr.returns, tr.mask, kl_coef=0.1)
    assert np.isfinite(out.loss) and float(out.loss) == pytest.approx(float(ok.loss))


def test_padded_layout_without_entropy_equals_packed():
    tr = _traj()
    terms = _terms(tr.num_steps, entropy=False)
    packed = haepo_trajectory_loss(tr, terms, kl_coef=0.1)
    padded = haepo_trajectory_loss(tr, terms, kl_coef=0.1, layout="padded")
    assert float(padded.loss) == pytest.approx(float(packed.loss), rel=1e-12)
    assert float(padded.stats["kl"]) == pytest.approx(0.05)


# --- AdaptiveCoefficient ----------------------------------------------------------------------


def test_adaptive_floor_rises_geometrically_below_target_and_decays_back_to_min():
    c = AdaptiveCoefficient(0.01, target=0.1, mode="floor", factor=2.0, max_value=0.05)
    got = [c.update(s) for s in (0.5, 0.05, 0.05, 0.05, 0.05, 0.2, 0.2, 0.2, 0.2)]
    assert got == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05, 0.025, 0.0125, 0.01, 0.01])


def test_adaptive_ceiling_is_the_mirror_image():
    c = AdaptiveCoefficient(0.1, target=0.02, mode="ceiling", factor=1.5, min_value=0.01)
    assert c.update(0.05) == pytest.approx(0.15)  # above the ceiling: stronger penalty
    assert c.update(0.001) == pytest.approx(0.1)
    assert c.update(0.001) == pytest.approx(0.1 / 1.5)
    assert float(c) == pytest.approx(0.1 / 1.5)


def test_adaptive_floor_accepts_a_negative_target_gaussian_entropy():
    c = AdaptiveCoefficient(0.001, target=-0.9, factor=1.5)
    assert c.update(-2.0) == pytest.approx(0.0015) and c.update(1.0) == pytest.approx(0.001)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(value=-0.1), ValueError, "value"),
        (dict(value=float("nan")), ValueError, "value"),
        (dict(value="0.1"), TypeError, "value"),
        (dict(target=float("inf")), ValueError, "target"),
        (dict(target=True), TypeError, "target"),
        (dict(mode="above"), ValueError, "mode"),
        (dict(factor=1.0), ValueError, "factor"),
        (dict(factor=0.5), ValueError, "factor"),
        (dict(min_value=0.5), ValueError, "min_value"),
        (dict(min_value=-1.0), ValueError, "min_value"),
        (dict(max_value=0.01), ValueError, "max_value"),
        (dict(max_value=float("nan")), ValueError, "max_value"),
    ],
)
def test_adaptive_coefficient_rejects_bad_options_naming_them(kwargs, err, match):
    base = dict(value=0.1, target=0.0)
    base.update(kwargs)
    value, target = base.pop("value"), base.pop("target")
    with pytest.raises(err, match=match):
        AdaptiveCoefficient(value, target, **base)


@pytest.mark.parametrize("bad, err", [(float("nan"), ValueError), ("x", TypeError)])
def test_adaptive_coefficient_rejects_a_bad_statistic(bad, err):
    with pytest.raises(err, match="stat"):
        AdaptiveCoefficient(0.1, 0.0).update(bad)


# --- CollapseMonitor --------------------------------------------------------------------------


def test_monitor_warns_once_on_entropy_collapse_and_records_every_event():
    mon = CollapseMonitor(entropy_threshold=0.01, patience=3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert mon.update(entropy=0.5, returns=[1.0, 2.0]) == []
        assert mon.update(entropy=1e-9, returns=[1.0, 2.0]) == ["entropy"]
        assert mon.update(entropy=1e-9, returns=[1.0, 3.0]) == ["entropy"]
    (msg,) = [x for x in w if issubclass(x.category, CollapseWarning)]
    assert "entropy" in str(msg.message) and "deterministic" in str(msg.message)
    assert mon.events == [(2, "entropy"), (3, "entropy")]


def test_monitor_warns_after_patience_updates_of_all_equal_returns_and_resets_the_streak():
    mon = CollapseMonitor(entropy_threshold=0.0, patience=3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        held = [mon.update(entropy=0.5, returns=np.full(5, -500.0)) for _ in range(2)]
        held.append(mon.update(entropy=0.5, returns=[-500.0, -480.0]))  # signal again
        held += [mon.update(entropy=0.5, returns=np.full(5, -500.0)) for _ in range(3)]
    assert held == [[], [], [], [], [], ["equal_returns"]]
    (msg,) = [x for x in w if issubclass(x.category, CollapseWarning)]
    assert "all-equal returns" in str(msg.message) and "-500" in str(msg.message)


def test_monitor_counts_returns_equal_up_to_rtol():
    mon = CollapseMonitor(entropy_threshold=0.0, patience=1, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)
        assert mon.update(entropy=1.0, returns=[500.0, 500.0 + 1e-5]) == ["equal_returns"]
        assert mon.update(entropy=1.0, returns=[500.0, 501.0]) == []


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(entropy_threshold=float("nan")), ValueError, "entropy_threshold"),
        (dict(entropy_threshold="0"), TypeError, "entropy_threshold"),
        (dict(entropy_threshold=0.0, patience=0), ValueError, "patience"),
        (dict(entropy_threshold=0.0, patience=2.0), ValueError, "patience"),
        (dict(entropy_threshold=0.0, rtol=-1.0), ValueError, "rtol"),
    ],
)
def test_monitor_rejects_bad_options_naming_them(kwargs, err, match):
    with pytest.raises(err, match=match):
        CollapseMonitor(**kwargs)


def test_monitor_rejects_bad_measurements():
    mon = CollapseMonitor(entropy_threshold=0.0)
    with pytest.raises(ValueError, match="entropy"):
        mon.update(entropy=math.nan, returns=[1.0, 2.0])
    with pytest.raises(ValueError, match="returns"):
        mon.update(entropy=1.0, returns=[1.0, math.nan])
    with pytest.raises(ValueError, match="returns"):
        mon.update(entropy=1.0, returns=[])


def test_stuck_exploration_turns_on_at_the_worst_return_and_decays_with_signal():
    ex = StuckExploration(0.75, decay=0.5, cutoff=0.1)
    assert ex.value == 0.0 and ex.repeat_logit == -math.inf  # off until a stuck batch
    assert ex.update(np.full(8, -500.0)) == 0.75  # nothing better seen: stuck
    assert ex.repeat_logit == pytest.approx(math.log(3.0))
    assert ex.update([-500.0, -420.0, -500.0]) == 0.375  # a learning signal: decay
    assert ex.update([-300.0, -100.0]) == 0.1875
    assert ex.update(np.full(4, -500.0)) == 0.75  # back at the worst return: stuck again
    assert ex.update([-90.0, -80.0]) == 0.375
    assert ex.update([-90.0, -85.0]) == 0.1875
    assert ex.update([-90.0, -85.0]) == 0.0  # below the cutoff: off
    assert ex.update(np.full(4, -80.0)) == 0.0  # all equal but better than seen: converged
    assert ex.stuck_updates == 2


def test_stuck_exploration_never_fires_on_a_converged_run():
    ex = StuckExploration(0.75)
    for r in ([10.0, 24.0, 31.0], [120.0, 400.0], [500.0] * 8, [500.0] * 8, [500.0] * 8):
        assert ex.update(r) == 0.0
    assert ex.stuck_updates == 0


def test_stuck_exploration_off_when_repeat_is_zero():
    ex = StuckExploration(0.0)
    assert ex.update(np.full(8, -500.0)) == 0.0 and ex.repeat_logit == -math.inf


@pytest.mark.parametrize(
    ("kw", "err", "match"),
    [
        (dict(repeat=1.0), ValueError, r"repeat: expected a probability in \[0, 1\), got 1.0"),
        (dict(repeat=-0.1), ValueError, r"repeat: expected a value >= 0.0"),
        (dict(repeat=float("nan")), ValueError, r"repeat: expected a finite number"),
        (dict(repeat="0.5"), TypeError, r"repeat: expected a real number, got str"),
        (dict(repeat=0.5, decay=1.0), ValueError, r"decay: expected a factor in \[0, 1\)"),
        (dict(repeat=0.5, cutoff=-1.0), ValueError, r"cutoff: expected a value >= 0.0"),
    ],
)
def test_stuck_exploration_rejects_bad_options(kw, err, match):
    with pytest.raises(err, match=match):
        StuckExploration(**kw)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_stuck_exploration_rejects_bad_returns(bad):
    with pytest.raises(ValueError, match="returns: expected >= 1 finite values"):
        StuckExploration(0.5).update(bad)


def _equal_returns_message(batches: list[list[float]]) -> str:
    mon = CollapseMonitor(entropy_threshold=0.0, patience=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for r in batches:
            mon.update(entropy=0.5, returns=r)
    (msg,) = [x for x in w if issubclass(x.category, CollapseWarning)]
    return str(msg.message)


def test_equal_returns_warning_tells_converged_stuck_and_collapsed_apart():
    converged = _equal_returns_message([[20.0, 90.0], [500.0] * 4, [500.0] * 4])
    assert "best seen so far" in converged and "converged" in converged
    stuck = _equal_returns_message([[-500.0] * 8, [-500.0] * 8])
    assert "no return so far was better" in stuck and "stuck" in stuck
    collapsed = _equal_returns_message([[-90.0, -500.0], [-500.0] * 8, [-500.0] * 8])
    assert "a collapse" in collapsed and "best -90" in collapsed
