"""A training run's outputs: moving average, CSVs and curve (haepo_adapters.cleanrl)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from haepo_adapters.cleanrl import moving_average, plot_training_curve, write_run


def test_moving_average_is_the_trailing_mean_of_the_last_window_returns():
    x = np.array([4.0, -2.0, 7.0, 1.0, 0.5, 9.0])
    want = [np.mean(x[max(0, e - 3) : e]) for e in range(1, len(x) + 1)]
    np.testing.assert_allclose(moving_average(x, 3), want, rtol=0, atol=1e-12)
    assert moving_average(x, 3).dtype == np.float64
    np.testing.assert_array_equal(moving_average(x, 1), x)
    np.testing.assert_allclose(moving_average(x, 100), np.cumsum(x) / np.arange(1, 7))
    assert moving_average([], 20).shape == (0,)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(window=0), ValueError, "window: expected an int >= 1, got 0"),
        (dict(window=2.0), TypeError, "window: expected an int >= 1, got float"),
        (dict(window=True), TypeError, "window"),
        (dict(returns=[[1.0, 2.0]]), ValueError, r"returns: expected a 1-D sequence \[E\]"),
    ],
)
def test_moving_average_rejects_bad_input_naming_it(kwargs, exc, match):
    args = dict(returns=[1.0, 2.0], window=2) | kwargs
    with pytest.raises(exc, match=match):
        moving_average(**args)


def test_write_run_writes_both_csvs_and_returns_the_final_moving_average(tmp_path):
    episodes = [(10, 1.0, 10), (30, 5.0, 20), (45, 3.0, 15)]
    updates = [{"loss": 0.5, "kl": 0.01}, {"loss": 0.25, "ess": 3.0}]
    ep, final = write_run(tmp_path, episodes, updates, window=2, plot=False)
    assert ep.shape == (3, 3) and ep.dtype == np.float64
    assert final == pytest.approx(4.0)  # mean of the last two returns
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["kind", "global_step", "episodic_return", "episodic_length"]
    assert rows[1:] == [["episode", "10", "1.0", "10"], ["episode", "30", "5.0", "20"],
                        ["episode", "45", "3.0", "15"]]  # fmt: skip
    with open(tmp_path / "updates.csv") as f:
        ups = list(csv.DictReader(f))
    assert list(ups[0]) == ["ess", "kl", "loss"]  # the union of the rows' keys, sorted
    assert ups[0] == {"ess": "", "kl": "0.01", "loss": "0.5"}
    assert not (tmp_path / "curve.png").exists()


def test_write_run_without_episodes_gives_nan_and_no_curve(tmp_path):
    ep, final = write_run(tmp_path, [], [], window=20, plot=True)
    assert ep.shape == (0, 3) and math.isnan(final)
    assert not (tmp_path / "curve.png").exists()
    assert (tmp_path / "metrics.csv").read_text().strip() == (
        "kind,global_step,episodic_return,episodic_length"
    )


def test_write_run_rejects_bad_input_naming_it(tmp_path):
    with pytest.raises(ValueError, match="out_dir: expected an existing folder"):
        write_run(tmp_path / "missing", [], [])
    with pytest.raises(ValueError, match=r"episodes: expected .* triples \[E, 3\], got .*\[2\]"):
        write_run(tmp_path, [(1, 2.0)], [])
    with pytest.raises(ValueError, match=r"episodes: .*lengths \[2, 3\]"):
        write_run(tmp_path, [(1, 2.0, 3), (1, 2.0)], [])
    with pytest.raises(ValueError, match="window: expected an int >= 1, got -1"):
        write_run(tmp_path, [], [], window=-1)


def test_the_curve_has_entropy_and_ess_panels_only_with_haepo_diagnostics(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    steps = np.arange(1, 41) * 25.0
    returns = np.linspace(10, 200, 40)
    ups = [
        dict(global_step=100.0 * i, entropy=0.6 - 0.01 * i, ess=3.0, episodes=4) for i in range(8)
    ]
    plot_training_curve(tmp_path / "haepo.png", steps, returns, window=5, title="t", updates=ups)
    plot_training_curve(tmp_path / "ppo.png", steps, returns, window=5, title="t")
    haepo = matplotlib.image.imread(tmp_path / "haepo.png")
    ppo = matplotlib.image.imread(tmp_path / "ppo.png")
    assert haepo.shape[1] == ppo.shape[1] == 600  # 6 in at 100 dpi
    assert ppo.shape[0] == 350 and haepo.shape[0] == 750  # two 2-in panels under the curve


def test_plot_training_curve_rejects_bad_input_naming_it(tmp_path):
    with pytest.raises(ValueError, match="steps, returns: expected the same length"):
        plot_training_curve(tmp_path / "c.png", [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"updates: row 0 has 'ess' but lacks \['episodes'\]"):
        plot_training_curve(
            tmp_path / "c.png", [1.0], [1.0], updates=[dict(global_step=1, entropy=0.5, ess=1)]
        )
    with pytest.raises(TypeError, match="window"):
        plot_training_curve(tmp_path / "c.png", [1.0], [1.0], window="20")
    assert not (tmp_path / "c.png").exists()
