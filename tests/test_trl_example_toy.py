"""examples/trl_haepo_toy.py: its reward function, and a 2-step run of both algorithms."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "trl_haepo_toy.py"


def _module():
    spec = importlib.util.spec_from_file_location("trl_haepo_toy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reverse_reward_scores_characters_in_place_and_penalizes_extra_ones() -> None:
    reward = _module().reverse_reward
    got = reward(["cba", "cbd", "", "cbaa", "xyz"], target=["cba"] * 5)
    assert got == pytest.approx([1.0, 2 / 3, 0.0, 0.75, 0.0])


def test_example_runs_haepo_and_grpo_offline_and_saves_the_plot(tmp_path) -> None:
    png, js = tmp_path / "curve.png", tmp_path / "curves.json"
    flags = "--compare --steps 2 --prompts 2 --generations 4 --threads 1".split()
    cmd = [sys.executable, str(SCRIPT), *flags, "--png", str(png), "--json", str(js)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert png.stat().st_size > 10_000
    runs = json.loads(js.read_text())
    assert [r["algo"] for r in runs] == ["haepo", "grpo"]
    for run in runs:
        assert [h["step"] for h in run["history"]] == [1, 2]
    assert all("haepo/ess" in h for h in runs[0]["history"])
    assert not any("haepo/ess" in h for h in runs[1]["history"])
    assert "haepo: 2 steps" in done.stdout and "grpo: 2 steps" in done.stdout
